"""The trainer: SFTJob spec → data → preflight → TRL SFTTrainer (+ PEFT, DeepSpeed) → evaluation
→ export. No training loop of our own: TRL/transformers train, save and resume; our callbacks
commit checkpoints to object storage, export metrics and report progress.

``train(job, workdir=...)`` is the one code path for pods (under torchrun) and ``sftctl run``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import exit_codes
from .config import ResolvedConfig
from .distributed import barrier
from .distributed import rank as _rank
from .data import Splits, load_datasets, storage_options_for
from .exit_codes import ConfigError, TopologyMismatch
from .export_choice import select_export

from .methods.sft import OVERALL

log = logging.getLogger("sft_trainer")


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
    sanity_check: dict[str, Any] | None = None  # sanity.py: the pre-run's losses and verdict
    scored_sets: dict[str, Any] = field(default_factory=dict)  # gates.py: base and final pass rate per set
    golden_checkpoints: list[dict[str, Any]] = field(default_factory=list)  # golden set at checkpoints
    golden_stop: dict[str, Any] | None = None  # a maxDrop stop: the step, the best step, onRegression
    exported: dict[str, Any] | None = None  # export_choice.py: the step exported (and evaluated), and why
    checkpoint_uri: str | None = None
    output_uri: str | None = None
    loss_curve: str | None = None
    preflight: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] | None = None  # lineage.json: {"uri", "digest", "modelUri"}
    tracking: dict[str, Any] | None = None  # status.tracking: the MLflow run's link, TensorBoard's URI, health
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ helpers
def seen_world_size(env: dict[str, str] | None = None) -> int:
    """The world size this process was started in: torchrun's WORLD_SIZE, or 1 when it runs alone.

    Outside torchrun the pod's WORLD_SIZE is the operator's *intended* size, not one we joined.
    """
    env = os.environ if env is None else env
    if "LOCAL_RANK" in env or "TORCHELASTIC_RUN_ID" in env:
        return int(env.get("WORLD_SIZE", "1"))
    return 1


def check_topology(cfg: ResolvedConfig, seen: int) -> None:
    expected = cfg.nodes * cfg.topology.nproc_per_node
    if seen != expected:
        raise TopologyMismatch(
            f"TopologyMismatch: world size {seen} != spec.workers.nodes {cfg.nodes} x "
            f"{cfg.topology.nproc_per_node} processes per node ({expected})"
        )


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


@dataclass
class Inputs:
    """What training reads, all loaded and checked before any accelerator time is spent."""

    splits: Splits
    sources: list[Any]
    golden: list[Any] | None
    location: str
    tokenizer: Any


# ----------------------------------------------------------------------------------- steps
def prepare_inputs(cfg: ResolvedConfig, result: TrainResult, *, rank: int, phase: Callable[[str], None],
                   on_preflight: Callable[[Any], None] | None = None) -> Inputs:
    """Data, golden set, tokenizer and chat template, then the preflight report (exit 64 on bad data)."""
    from . import phases
    from .evaluation import load_golden
    from .modeling import load_tokenizer, model_location
    from .preflight import run_preflight

    phase("loading data")
    phases.enter("downloading")
    splits, sources = load_datasets(cfg.data, base_dir=cfg.base_dir)
    golden = None
    if cfg.golden_set is not None:
        golden = load_golden(cfg.golden_set.uri, base_dir=cfg.base_dir, storage=cfg.storage)
    location = model_location(cfg)
    tokenizer = load_tokenizer(cfg, location)
    phases.enter("preflight")
    report = run_preflight(splits, sources, tokenizer, loss_on=cfg.loss_on, max_seq_length=cfg.max_seq_length,
                           max_bad_row_ratio=cfg.max_bad_row_ratio)
    report.warnings.extend(cfg.warnings)
    result.preflight = report.to_dict()
    if rank == 0:
        (cfg.workdir / "preflight.json").write_text(json.dumps(result.preflight, indent=2))
        if on_preflight is not None:
            on_preflight(report)
        else:
            for line in report.lines():
                log.info("preflight: %s", line)
    return Inputs(splits, sources, golden, location, tokenizer)


def resume_point(cfg: ResolvedConfig, result: TrainResult, *, rank: int, phase: Callable[[str], None],
                 job: Any = None, env: dict[str, str] | None = None) -> tuple[Any, Path | None]:
    """The checkpoint store, and the node's copy of the committed checkpoint this run may resume
    (its own newest, or spec.checkpoints.resumeFrom): see resume.py. A spec.output.checkpoint other than
    last needs the store (export_choice.py loads the chosen checkpoint back from it)."""
    from .export_choice import check_export_source
    from .resume import resume_point as choose_and_download

    store, resume_dir = choose_and_download(cfg, result, rank=rank, phase=phase, job=job, env=env)
    check_export_source(cfg, store)
    return store, resume_dir


def build_trainer(cfg: ResolvedConfig, method: Any, inputs: Inputs, model: Any, *, store: Any, reporter: Any,
                  metrics_port: int | None, serve_metrics: bool, extra_callbacks: list[Any] | None,
                  result: TrainResult) -> tuple[Any, list[Any], "_CountingCollator"]:
    """The method's trainer with our callbacks (commit, metrics, progress, early stop, time budget)."""
    from .callbacks import build_callbacks
    from .golden_checkpoints import golden_checkpoint_callbacks

    train_set, eval_sets = method.datasets(cfg, inputs.splits)
    args = method.training_args(cfg, has_eval=eval_sets is not None)
    check_topology(cfg, int(args.world_size))  # what torch.distributed actually joined
    result.world_size = int(args.world_size)
    if reporter is None:
        from .progress import make_reporter

        reporter = make_reporter(dict(os.environ))
    callbacks = build_callbacks(store=store, keep=cfg.checkpoints_keep, reporter=reporter, namespace=cfg.namespace,
                                job=cfg.job_name, metrics_port=metrics_port, serve_metrics=serve_metrics,
                                seq_len=cfg.max_seq_length)
    if cfg.early_stopping_patience and eval_sets is not None:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    if cfg.max_train_seconds:
        callbacks.append(_time_budget_callback(cfg.max_train_seconds))
    callbacks.extend(golden_checkpoint_callbacks(cfg, inputs, callbacks, result))  # everyCheckpoints, maxDrop
    callbacks.extend(extra_callbacks or [])
    trainer = method.trainer_class()(model=model, args=args, train_dataset=train_set, eval_dataset=eval_sets,
                                     processing_class=inputs.tokenizer, peft_config=cfg.lora_config(),
                                     callbacks=callbacks)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # raw dict prints; ProgressCallback writes the summary lines
    if isinstance(trainer.eval_dataset, dict):
        trainer.task_eval_datasets = {k: v for k, v in trainer.eval_dataset.items() if k != OVERALL}
        trainer.eval_dataset = trainer.eval_dataset[OVERALL]
    counting = _CountingCollator(trainer.data_collator)
    trainer.data_collator = counting
    if "seq_lengths" in trainer.train_dataset.column_names:
        lengths = trainer.train_dataset["seq_lengths"]
        result.row_fill = sum(sum(x) for x in lengths) / (len(lengths) * cfg.max_seq_length)
    return trainer, callbacks, counting


def run_training(trainer: Any, callbacks: list[Any], counting: "_CountingCollator", resume_dir: Path | None,
                 result: TrainResult) -> bool:
    """Train (resuming when a checkpoint was found) and harvest the figures; False after SIGTERM."""
    from . import phases
    from .callbacks import AlreadyAtMaxSteps, CheckpointCommitCallback, SigtermCallback

    t0 = time.monotonic()
    phases.enter("training")
    try:
        out = trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
    except AlreadyAtMaxSteps as e:  # a finished run re-run: its checkpoint holds the final state
        log.info("resumed at the end of training (%s): no step to train", e)
        trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
        out = None
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
    commit_cb = next((c for c in callbacks if isinstance(c, CheckpointCommitCallback)), None)
    if commit_cb is not None and commit_cb.last_commit:
        result.checkpoint_uri = commit_cb.last_commit.get("uri")
    sigterm = next((c for c in callbacks if isinstance(c, SigtermCallback)), None)
    if sigterm is not None and sigterm.received:
        result.interrupted = True
        result.exit_code = exit_codes.INTERRUPTED
        result.message = f"stopped by SIGTERM at step {state.global_step} after committing a checkpoint"
        return False
    phases.enter("evaluating")  # what follows training: the test split, generation, golden set
    return True


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
    from .evaluation import final_evaluation
    from .export import export_model, write_loss_curve
    from .gates import evaluation_gates, score_base, score_final
    from .run_records import record_inputs, record_outcome
    from .methods import get_method
    from .modeling import load_model
    from .phases import start_reporting
    from .reporting import report_evaluation
    from .sanity import sanity_check

    env = dict(os.environ if env is None else env)
    phase = on_phase or (lambda msg: log.info("%s", msg))
    Path(workdir).mkdir(parents=True, exist_ok=True)
    cfg = ResolvedConfig.from_job(job, workdir=Path(workdir), base_dir=base_dir, env=env,
                                  max_train_seconds=max_train_seconds)
    rank = _rank()
    check_topology(cfg, seen_world_size(env))
    method = get_method(cfg.objective)
    result = TrainResult(min_pass_rate=cfg.min_pass_rate)
    for w in cfg.warnings:
        log.warning("%s", w)
    reporter = start_reporting(reporter, env, rank=rank)  # with status.progress.phase and a heartbeat

    # Data, template and preflight: all before any accelerator time.
    inputs = prepare_inputs(cfg, result, rank=rank, phase=phase, on_preflight=on_preflight)
    # Resume from the latest committed checkpoint, if any.
    store, resume_dir = resume_point(cfg, result, rank=rank, phase=phase, job=job, env=env)
    model = load_model(cfg, inputs.location, inputs.tokenizer)
    # What trains this model (lineage.json beside the checkpoints), and the trackers (spec.tracking).
    tracker = record_inputs(cfg, inputs, model, result, reporter, rank=rank)
    # Overfit a few examples from the base weights, then restore them: fail fast on a run that cannot learn.
    sanity_check(cfg, method, inputs, model, result, rank=rank, phase=phase, resume_dir=resume_dir, reporter=reporter)
    # The base model's figures: golden and regression sets (for the deltas), the before/after table.
    scored = score_base(cfg, model, inputs, result, rank=rank, phase=phase, measure=measure_before and not resume_dir)
    trainer, callbacks, counting = build_trainer(
        cfg, method, inputs, model, store=store, reporter=reporter, metrics_port=metrics_port,
        serve_metrics=serve_metrics, extra_callbacks=tracker.callbacks + list(extra_callbacks or []), result=result)
    try:
        phase("training")
        if not run_training(trainer, callbacks, counting, resume_dir, result):
            return result  # SIGTERM: the checkpoint is committed; the rest belongs to the next attempt
        select_export(cfg, trainer, store, result, rank=rank, phase=phase)  # output.checkpoint: evaluated, gated
        # Test loss, held-out exact match and the golden set on the trained model.
        final_evaluation(cfg, trainer, method, inputs, result, rank=rank, phase=phase)
        score_final(cfg, trainer, inputs, scored, result, rank=rank, phase=phase)  # regression sets, deltas
        # Export the model, draw the loss curve, report the evaluation to status.
        if cfg.output_uri:
            phase(f"exporting the model to {cfg.output_uri}")
            result.output_uri = export_model(trainer, inputs.tokenizer, cfg, exported=result.exported)
        if rank == 0:
            result.loss_curve = write_loss_curve(cfg, trainer.state.log_history)
            report_evaluation(callbacks, result)
            record_outcome(cfg, tracker, result)  # lineage.json beside the model; the trackers' final figures
            (cfg.workdir / "result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
        barrier()
        # The evaluation gates decide the exit code: minPassRate(ByTask), maxDrop, maxRegressionVsBase.
        evaluation_gates(cfg, result)
        return result
    finally:
        _flush_metrics(callbacks, rank)
