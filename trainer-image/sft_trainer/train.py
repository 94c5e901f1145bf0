"""The trainer: SFTJob spec → data → preflight → TRL SFTTrainer (+ PEFT, DeepSpeed) → evaluation
→ export. No training loop of our own: TRL/transformers train, save and resume; our callbacks
commit checkpoints to object storage, export metrics and report progress.

``train(job, workdir=...)`` is the one code path for pods (under torchrun) and ``sftctl run``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import exit_codes
from .config import ResolvedConfig
from .data import Splits, load_datasets, storage_options_for, task_types, to_trl_rows
from .exit_codes import ConfigError, TopologyMismatch

log = logging.getLogger("sft_trainer")

OVERALL = "all"  # metrics.OVERALL_TASK: the eval set of every task together


@dataclass
class TrainResult:
    exit_code: int = exit_codes.SUCCESS
    global_step: int = 0
    max_steps: int = 0
    world_size: int = 1
    resumed_from: int | None = None
    uncommitted_ignored: list[str] = field(default_factory=list)
    interrupted: bool = False
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_loss_by_task: dict[str, float] = field(default_factory=dict)
    test_loss: float | None = None
    train_seconds: float = 0.0
    tokens_per_second: float | None = None
    trained_tokens: float | None = None
    packing_efficiency: float | None = None
    row_fill: float | None = None
    exact_match_before: dict[str, float] | None = None
    exact_match_after: dict[str, float] | None = None
    golden_before: dict[str, Any] | None = None
    golden_after: dict[str, Any] | None = None
    min_pass_rate: float | None = None
    checkpoint_uri: str | None = None
    output_uri: str | None = None
    loss_curve: str | None = None
    preflight: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ helpers
def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def seen_world_size(env: dict[str, str] | None = None) -> int:
    """The world size this process was started in: torchrun's WORLD_SIZE, or 1 when it runs alone.

    Outside torchrun the pod's WORLD_SIZE is the operator's *intended* size, not one we joined.
    """
    env = os.environ if env is None else env
    if "LOCAL_RANK" in env or "TORCHELASTIC_RUN_ID" in env:
        return int(env.get("WORLD_SIZE", "1"))
    return 1


def check_topology(cfg: ResolvedConfig, seen: int) -> None:
    expected = cfg.spec.workers.nodes * cfg.topology.nproc_per_node
    if seen != expected:
        raise TopologyMismatch(
            f"TopologyMismatch: world size {seen} != spec.workers.nodes {cfg.spec.workers.nodes} x "
            f"{cfg.topology.nproc_per_node} processes per node ({expected})"
        )


def _join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def _barrier() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    except Exception:  # noqa: BLE001
        pass


class _CountingCollator:
    """Wraps the data collator to measure padding: real tokens / positions processed."""

    def __init__(self, inner: Callable):
        self.inner = inner
        self.real = 0
        self.slots = 0

    def __call__(self, features):
        batch = self.inner(features)
        ids = batch["input_ids"]
        self.slots += int(ids.numel())
        mask = batch.get("attention_mask")
        # padding-free batches are one flattened row with no pad at all
        self.real += int(mask.sum()) if mask is not None else int(ids.numel())
        return batch

    @property
    def efficiency(self) -> float | None:
        return self.real / self.slots if self.slots else None


def _flush_metrics(callbacks: list[Any], rank: int) -> None:
    """Hold /metrics open for one more scrape, so that Prometheus sees the run's last values.

    Skipped after SIGTERM: the grace period belongs to the checkpoint.
    """
    from .callbacks import PrometheusMetricsCallback, SigtermCallback

    if rank != 0 or any(isinstance(cb, SigtermCallback) and cb.received for cb in callbacks):
        return
    prom = next((cb for cb in callbacks if isinstance(cb, PrometheusMetricsCallback)), None)
    if prom is not None:
        prom.metrics.flush()


def _time_budget_callback(seconds: float):
    from transformers import TrainerCallback

    class TimeBudgetCallback(TrainerCallback):
        """Stops (with a final save) once the wall-clock budget is spent: ``sftctl run --time-budget``."""

        def __init__(self) -> None:
            self.t0 = time.monotonic()
            self.hit = False

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - self.t0 > seconds and not control.should_training_stop:
                self.hit = True
                log.info("time budget of %.0fs spent at step %d: stopping", seconds, state.global_step)
                control.should_training_stop = True
                control.should_save = True
            return control

    return TimeBudgetCallback()


def _trainer_class():
    from trl import SFTTrainer

    class TaskEvalSFTTrainer(SFTTrainer):
        """SFTTrainer whose evaluation also reports the loss of each task_type.

        The overall eval set goes through the normal path (``eval_loss``, callbacks, early
        stopping, best-checkpoint tracking); each task's set adds ``eval_<task>_loss`` to the same
        log entry, which the metrics callback exports as ``sftjob_eval_loss{task_type=...}``.
        """

        task_eval_datasets: dict[str, Any] = {}
        _pending: dict[str, float] = {}

        def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
            """Training rows packed in data order (packing.py), not TRL's length-sorted BFD, whose
            rows hold one task each when length follows the task; evaluation sets keep TRL's."""
            from datasets import Dataset

            from .packing import pack_mixed

            mixed = (dataset_name == "train" and packing and args.packing_strategy == "bfd"
                     and isinstance(dataset, Dataset))
            out = super()._prepare_dataset(dataset, processing_class, args, packing and not mixed,
                                           formatting_func, dataset_name)
            return pack_mixed(out, args.max_length) if mixed else out

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            per_task: dict[str, float] = {}
            if eval_dataset is None and metric_key_prefix == "eval":
                for task, ds in self.task_eval_datasets.items():
                    out = self.evaluation_loop(
                        self.get_eval_dataloader(ds), description=f"Evaluation ({task})",
                        prediction_loss_only=True, ignore_keys=ignore_keys, metric_key_prefix=f"eval_{task}",
                    )
                    if f"eval_{task}_loss" in out.metrics:
                        per_task[f"eval_{task}_loss"] = float(out.metrics[f"eval_{task}_loss"])
                self._metrics["eval"].clear()  # token stats of the per-task passes would skew the overall ones
            self._pending = per_task
            try:
                metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            finally:
                self._pending = {}
            metrics.update(per_task)
            return metrics

        def log(self, logs, start_time=None):
            if self._pending and "eval_loss" in logs:
                logs = {**logs, **self._pending}
            return super().log(logs, start_time)

    return TaskEvalSFTTrainer


# -------------------------------------------------------------------------------- train
def train(
    job: Any,
    *,
    workdir: str | os.PathLike[str],
    base_dir: Path | None = None,
    env: dict[str, str] | None = None,
    measure_before: bool = False,
    max_train_seconds: float | None = None,
    metrics_port: int | None = None,
    serve_metrics: bool = True,
    reporter: Any = None,
    extra_callbacks: list[Any] | None = None,
    on_preflight: Callable[[Any], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run one SFTJob to completion (or to SIGTERM) in this process.

    Raises ``TrainerError`` subclasses (ConfigError, TopologyMismatch) for non-retryable problems;
    returns a ``TrainResult`` whose ``exit_code`` is 0, GOLDEN_REGRESSION or INTERRUPTED otherwise.
    """
    env = dict(os.environ if env is None else env)
    phase = on_phase or (lambda msg: log.info("%s", msg))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = ResolvedConfig.from_job(job, workdir=workdir, base_dir=base_dir, env=env,
                                  max_train_seconds=max_train_seconds)
    rank = _rank()
    check_topology(cfg, seen_world_size(env))
    result = TrainResult(min_pass_rate=(cfg.spec.eval.golden_set.min_pass_rate
                                        if cfg.spec.eval and cfg.spec.eval.golden_set else None))
    for w in cfg.warnings:
        log.warning("%s", w)

    # ---- data, model and template, preflight: all before any accelerator time
    from .evaluation import exact_match, load_golden, score_golden
    from .modeling import load_model, load_tokenizer, model_location
    from .preflight import run_preflight

    phase("loading data")
    splits, sources = load_datasets(cfg.spec, base_dir=base_dir)
    golden = None
    if cfg.spec.eval and cfg.spec.eval.golden_set:
        golden = load_golden(cfg.spec.eval.golden_set.uri, base_dir=base_dir, storage=cfg.spec.storage)
    location = model_location(cfg)
    tokenizer = load_tokenizer(cfg, location)
    report = run_preflight(
        splits, sources, tokenizer, loss_on=cfg.loss_on, max_seq_length=cfg.spec.training.max_seq_length,
        max_bad_row_ratio=cfg.spec.preflight.max_bad_row_ratio,
    )
    report.warnings.extend(cfg.warnings)
    result.preflight = report.to_dict()
    if rank == 0:
        (workdir / "preflight.json").write_text(json.dumps(result.preflight, indent=2))
        if on_preflight is not None:
            on_preflight(report)
        else:
            for line in report.lines():
                log.info("preflight: %s", line)

    # ---- checkpoints: resume from the latest *committed* one
    from .checkpoint_store import CheckpointStore

    store = None
    resume_dir = None
    if cfg.checkpoints_uri:
        store = CheckpointStore(cfg.checkpoints_uri, storage_options_for(cfg.checkpoints_uri, cfg.spec.storage))
        result.uncommitted_ignored = store.uncommitted()
        if result.uncommitted_ignored and rank == 0:
            log.warning("ignoring uncommitted checkpoint directories: %s", ", ".join(result.uncommitted_ignored))
        latest = store.latest_committed()
        if latest is not None:
            # each process downloads its own copy: no shared filesystem between nodes is assumed
            resume_dir = store.download(latest, workdir / f"resume-rank{rank}" / f"checkpoint-{latest.step}")
            result.resumed_from = latest.step
            phase(f"resuming from committed checkpoint {latest.step}")

    model = load_model(cfg, location, tokenizer)
    zero3 = cfg.use_deepspeed and cfg.spec.training.deepspeed.zero_stage == 3

    if measure_before and resume_dir is None and rank == 0:
        phase("measuring the untrained model")
        result.exact_match_before = exact_match(model, tokenizer, splits.test)
        if golden is not None:
            result.golden_before = score_golden(model, tokenizer, golden,
                                                max_new_tokens=cfg.spec.eval.golden_set.max_new_tokens).to_dict()

    # ---- trainer
    from datasets import Dataset

    from .callbacks import SigtermCallback, build_callbacks

    has_eval = bool(splits.validation)
    args = cfg.sft_config(has_eval=has_eval)
    check_topology(cfg, int(args.world_size))  # what torch.distributed actually joined
    result.world_size = int(args.world_size)
    eval_sets = None
    if has_eval:
        eval_sets = {OVERALL: Dataset.from_list(to_trl_rows(splits.validation, cfg.loss_on))}
        for t in task_types(splits.validation):
            if t != OVERALL:
                rows = [e for e in splits.validation if e["task_type"] == t]
                eval_sets[t] = Dataset.from_list(to_trl_rows(rows, cfg.loss_on))
        if len(eval_sets) == 2:  # a single task: its loss is the overall loss
            eval_sets = {OVERALL: eval_sets[OVERALL]}
    if reporter is None:
        from .progress import make_reporter

        reporter = make_reporter(env)
    callbacks = build_callbacks(
        store=store,
        keep=cfg.spec.checkpoints.keep,
        reporter=reporter,
        namespace=cfg.namespace,
        job=cfg.job_name,
        metrics_port=metrics_port,
        serve_metrics=serve_metrics,
        seq_len=cfg.spec.training.max_seq_length,
    )
    if cfg.early_stopping_patience and has_eval:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    budget_cb = _time_budget_callback(cfg.max_train_seconds) if cfg.max_train_seconds else None
    if budget_cb is not None:
        callbacks.append(budget_cb)
    callbacks.extend(extra_callbacks or [])

    try:
        trainer_cls = _trainer_class()
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(to_trl_rows(splits.train, cfg.loss_on)),
            eval_dataset=eval_sets,
            processing_class=tokenizer,
            peft_config=cfg.lora_config(),
            callbacks=callbacks,
        )
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # raw dict prints; ProgressCallback writes the summary lines
        if isinstance(trainer.eval_dataset, dict):
            trainer.task_eval_datasets = {k: v for k, v in trainer.eval_dataset.items() if k != OVERALL}
            trainer.eval_dataset = trainer.eval_dataset[OVERALL]
        counting = _CountingCollator(trainer.data_collator)
        trainer.data_collator = counting
        if "seq_lengths" in trainer.train_dataset.column_names:
            lengths = trainer.train_dataset["seq_lengths"]
            result.row_fill = sum(sum(x) for x in lengths) / (len(lengths) * cfg.spec.training.max_seq_length)

        phase("training")
        t0 = time.monotonic()
        out = trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
        result.train_seconds = time.monotonic() - t0
        state = trainer.state
        result.global_step, result.max_steps = state.global_step, state.max_steps
        result.packing_efficiency = counting.efficiency
        train_logs = [h for h in state.log_history if "loss" in h]
        if train_logs:
            result.train_loss = float(train_logs[-1]["loss"])
        tokens = next((h["num_tokens"] for h in reversed(state.log_history) if "num_tokens" in h), None)
        runtime = out.metrics.get("train_runtime") if out is not None else None
        if tokens and runtime:
            result.trained_tokens = float(tokens)
            result.tokens_per_second = float(tokens) / float(runtime)
        evals = [h for h in state.log_history if "eval_loss" in h]
        if evals:
            result.eval_loss = float(evals[-1]["eval_loss"])
            result.eval_loss_by_task = {k[len("eval_"):-len("_loss")]: float(v) for k, v in evals[-1].items()
                                        if k.startswith("eval_") and k.endswith("_loss") and k != "eval_loss"}
        commit_cb = next((c for c in callbacks if type(c).__name__ == "CheckpointCommitCallback"), None)
        if commit_cb is not None and commit_cb.last_commit:
            result.checkpoint_uri = commit_cb.last_commit.get("uri")

        sigterm = next((c for c in callbacks if isinstance(c, SigtermCallback)), None)
        if sigterm is not None and sigterm.received:
            result.interrupted = True
            result.exit_code = exit_codes.INTERRUPTED
            result.message = f"stopped by SIGTERM at step {state.global_step} after committing a checkpoint"
            return result

        # ---- final evaluation: test split (all ranks), then generation (rank 0, or all under ZeRO-3)
        if splits.test:
            phase("evaluating the test split")
            test = trainer.evaluate(eval_dataset=Dataset.from_list(to_trl_rows(splits.test, cfg.loss_on)),
                                    metric_key_prefix="test")
            result.test_loss = test.get("test_loss")
        gen_model = trainer.model
        if rank == 0 or zero3:
            phase("generating answers for the held-out and golden sets")
            if measure_before:
                result.exact_match_after = exact_match(gen_model, tokenizer, splits.test, synced_gpus=zero3)
            if golden is not None:
                result.golden_after = score_golden(gen_model, tokenizer, golden,
                                                   max_new_tokens=cfg.spec.eval.golden_set.max_new_tokens,
                                                   synced_gpus=zero3).to_dict()

        # ---- export, loss curve, status
        if cfg.output_uri:
            phase(f"exporting the model to {cfg.output_uri}")
            result.output_uri = export_model(trainer, tokenizer, cfg)
        if rank == 0:
            if cfg.checkpoints_uri:
                from .plots import write_loss_curve

                png = _join(cfg.checkpoints_uri, "loss.png")
                try:
                    result.loss_curve = write_loss_curve(state.log_history, png, title=f"{cfg.job_name}: loss",
                                                         storage_options=storage_options_for(png, cfg.spec.storage))
                except OSError as e:  # a missing plot must not fail a finished run
                    log.warning("cannot write the loss curve to %s: %s", png, e)
            evaluation: dict[str, Any] = {}
            if result.golden_after is not None:
                evaluation["goldenSetPassRate"] = result.golden_after["pass_rate"]
            if result.test_loss is not None:
                evaluation["testLoss"] = result.test_loss
            if result.eval_loss_by_task:
                evaluation["evalLossByTask"] = result.eval_loss_by_task
            if evaluation:
                for cb in callbacks:
                    rep = getattr(cb, "reporter", None)
                    if rep is not None:
                        rep.report({"evaluation": evaluation})
                        break
            (workdir / "result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
        _barrier()

        if result.golden_after is not None and result.min_pass_rate is not None:
            rate = result.golden_after["pass_rate"]
            if rate < result.min_pass_rate:
                result.exit_code = exit_codes.GOLDEN_REGRESSION
                result.message = (f"GoldenSetRegression: golden-set pass rate {rate:.2%} < "
                                  f"spec.eval.goldenSet.minPassRate {result.min_pass_rate:.2%}")
        return result
    finally:
        _flush_metrics(callbacks, rank)


def export_model(trainer: Any, tokenizer: Any, cfg: ResolvedConfig) -> str:
    """Save the final model (adapters merged when ``output.mergeAdapters``) to ``output.uri``."""
    import fsspec

    uri = cfg.output_uri
    local_target = None
    if "://" not in uri or uri.startswith("file://"):
        local_target = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    staging = local_target if local_target is not None else cfg.workdir / "final-model"
    if staging.exists() and _rank() == 0:
        shutil.rmtree(staging)
    _barrier()
    merge = bool(cfg.spec.output and cfg.spec.output.merge_adapters) and cfg.method != "full"
    if merge and not (cfg.use_deepspeed and cfg.spec.training.deepspeed.zero_stage == 3):
        if _rank() == 0:
            merged = trainer.model.merge_and_unload() if hasattr(trainer.model, "merge_and_unload") else trainer.model
            merged.save_pretrained(str(staging))
            tokenizer.save_pretrained(str(staging))
    else:
        if merge:
            log.warning("output.mergeAdapters under ZeRO-3 is not supported: exporting the adapters unmerged")
        trainer.save_model(str(staging))  # collective under DeepSpeed: every rank calls it
        if _rank() == 0:
            tokenizer.save_pretrained(str(staging))
    if local_target is None and _rank() == 0:
        fs, path = fsspec.core.url_to_fs(uri, **storage_options_for(uri, cfg.spec.storage))
        fs.put(str(staging) + "/", path.rstrip("/") + "/", recursive=True)
    _barrier()
    return uri
