"""Which checkpoint goes to ``output.uri``: ``spec.output.checkpoint``, or the best by golden pass rate after
a ``maxDrop`` stop with ``onRegression: exportBest``.

The choice is made when training ends, before the final evaluation, so that the test loss, the held-out exact
match, the golden set and the gates are those of the exported model. A checkpoint other than the last one is
loaded back from its committed copy in the checkpoint store (downloaded once per node, every file checked
against the manifest's sha256) with the HF Trainer's own loader (``_load_best_model``: the safetensors or the
adapters, DeepSpeed's engine checkpoint under ZeRO, where every rank loads its partition). The exported weights
are therefore exactly those of the committed checkpoint.

- ``last`` (the default, and what every run did before the field existed): the weights at the end of training,
  which the last checkpoint holds too.
- ``bestEvalLoss``: the lowest ``eval_loss`` in the manifests of this run's committed checkpoints, the newer of
  equals, as retention ranks them (so retention has kept it). When no checkpoint has one (``eval.everySteps``
  never fell on a checkpoint step), the last, and the reason says so.
- ``bestGoldenPassRate``: the highest golden pass rate of the checkpoints scored at ``everyCheckpoints``, the
  earlier of equals (the one ``maxDrop`` measures from). Retention always keeps it.

The choice goes to ``result.exported`` (result.json), ``status.evaluation.exportedCheckpoint`` and
``export.json`` beside the exported model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from .checkpoint_store import CheckpointError
from .exit_codes import ConfigError

log = logging.getLogger("sft_trainer")

LAST, BEST_EVAL_LOSS, BEST_GOLDEN = "last", "bestEvalLoss", "bestGoldenPassRate"
FIELD = "spec.output.checkpoint"


@dataclass(frozen=True)
class ExportChoice:
    step: int
    criterion: str  # the rule that chose it: last, bestEvalLoss or bestGoldenPassRate
    reason: str
    checkpoint_uri: str | None = None  # the committed checkpoint loaded back; None: the weights in memory
    load_seconds: float | None = None  # what loading it back cost (download, sha256 checks, load): result.json

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_status(self) -> dict[str, Any]:
        out = {"step": self.step, "criterion": self.criterion, "reason": self.reason}
        if self.checkpoint_uri:
            out["checkpointUri"] = self.checkpoint_uri
        return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _best_golden(golden: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(golden, key=lambda e: (e["pass_rate"], -e["step"])) if golden else None


def choose_export(criterion: str, *, last_step: int, eval_losses: dict[int, float],
                  golden: list[dict[str, Any]], golden_stop: dict[str, Any] | None = None) -> ExportChoice:
    """The checkpoint to export (a pure function of the run's figures).

    ``eval_losses``: step -> eval_loss of this run's committed checkpoints; ``golden``: the golden-set scores at
    checkpoints (``{step, pass_rate}``); ``golden_stop``: the maxDrop stop, if training stopped on one.
    """
    if golden_stop is not None and golden_stop.get("on_regression") == "exportBest":
        return ExportChoice(int(golden_stop["best_step"]), BEST_GOLDEN,
                            f"onRegression: exportBest after the maxDrop stop at checkpoint {golden_stop['step']}: "
                            f"checkpoint {golden_stop['best_step']} has the best golden pass rate "
                            f"{_pct(golden_stop['best_pass_rate'])}")
    if criterion == BEST_EVAL_LOSS:
        if not eval_losses:
            return ExportChoice(last_step, LAST, f"{FIELD}: bestEvalLoss, but no committed checkpoint has an eval "
                                "loss (spec.eval.everySteps never fell on a checkpoint step): the last one")
        step = min(eval_losses, key=lambda s: (eval_losses[s], -s))
        return ExportChoice(step, BEST_EVAL_LOSS, f"{FIELD}: bestEvalLoss: eval loss {eval_losses[step]:.4f} at "
                            f"checkpoint {step}, the lowest of {len(eval_losses)} committed checkpoints")
    if criterion == BEST_GOLDEN:
        best = _best_golden(golden)
        if best is None:
            return ExportChoice(last_step, LAST, f"{FIELD}: bestGoldenPassRate, but no checkpoint was scored: "
                                "the last one")
        return ExportChoice(int(best["step"]), BEST_GOLDEN, f"{FIELD}: bestGoldenPassRate: golden pass rate "
                            f"{_pct(best['pass_rate'])} at checkpoint {best['step']}, the highest of "
                            f"{len(golden)} scored checkpoints")
    return ExportChoice(last_step, LAST, f"{FIELD}: last: the weights at the end of training (step {last_step})")


def check_export_source(cfg: Any, store: Any) -> None:
    """Before training: a best-checkpoint criterion loads that checkpoint from the store, so it needs one."""
    criterion = cfg.export_checkpoint
    if criterion != LAST and store is None:
        raise ConfigError(f"{FIELD}: {criterion} loads the chosen checkpoint back from the checkpoint store; "
                          "set spec.checkpoints.uri")


def _eval_losses(store: Any) -> dict[int, float]:
    committed = store.committed() if store is not None else []
    if store is not None and store.owner is not None:
        committed = [c for c in committed if store.owner.owns(c.identity)]
    return {c.step: float(c.metrics["eval_loss"]) for c in committed
            if isinstance(c.metrics.get("eval_loss"), (int, float))}


def _from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (the golden scores live on rank 0 only)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return value
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _load_checkpoint(trainer: Any, store: Any, step: int, workdir: Any) -> str:
    """Put the committed checkpoint ``step``'s weights into ``trainer.model``; returns its URI."""
    from .resume import download_for_node

    ckpt = store.get(step)  # CheckpointError when retention or a user removed it
    local = download_for_node(store, ckpt, workdir)
    weights = [p.name for p in local.iterdir() if p.name.endswith((".safetensors", ".bin", ".index.json"))
               or p.name.startswith("global_step")]
    if not weights:  # HF's loader would only warn, and the export would silently be the last weights
        raise CheckpointError(f"{ckpt.uri}: no model, adapter or DeepSpeed weights to export")
    earlier = trainer.state.best_model_checkpoint
    trainer.state.best_model_checkpoint = str(local)
    try:
        trainer._load_best_model()  # HF's loader for load_best_model_at_end: full, adapters, DeepSpeed
    finally:
        trainer.state.best_model_checkpoint = earlier
    return ckpt.uri


def select_export(cfg: Any, trainer: Any, store: Any, result: Any, *, rank: int, phase: Any) -> ExportChoice:
    """Choose the checkpoint to export and, when it is not the last, load it into the model (every rank)."""
    choice = None
    if rank == 0:
        choice = choose_export(cfg.export_checkpoint, last_step=trainer.state.global_step,
                               eval_losses=_eval_losses(store), golden=result.golden_checkpoints,
                               golden_stop=result.golden_stop)
    choice = _from_rank0(choice)
    if choice.step != trainer.state.global_step:
        if store is None and cfg.zero3:  # exportBest without a store keeps no weights under ZeRO-3
            choice = ExportChoice(trainer.state.global_step, LAST, choice.reason + "; but without a checkpoint "
                                  "store and under ZeRO-3 its weights were not kept: the last one")
        elif store is None:  # exportBest without a store: golden_checkpoints.py put the kept weights back
            choice = ExportChoice(choice.step, choice.criterion, choice.reason + " (its weights kept in memory)")
        else:
            phase(f"loading checkpoint {choice.step} for the export ({choice.criterion})")
            t0 = time.monotonic()
            uri = _load_checkpoint(trainer, store, choice.step, cfg.workdir)
            choice = ExportChoice(choice.step, choice.criterion, choice.reason, uri,
                                  round(time.monotonic() - t0, 3))
    if rank == 0:
        log.info("export: checkpoint %d (%s)", choice.step, choice.reason)
    result.exported = choice.to_dict()
    return choice
