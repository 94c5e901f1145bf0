"""The golden set at checkpoints (``eval.goldenSet.everyCheckpoints``) and the ``maxDrop`` stop.

At every Nth checkpoint, after it is committed, rank 0 generates answers to the golden set with the
model as it is at that step and scores them with the set's checks (every rank under ZeRO-3, where
generation is collective). The pass rate, overall and per task_type, goes to:

- ``status.evaluation.goldenCheckpoints`` (through the run's progress reporter);
- Prometheus, ``sftjob_golden_pass_ratio{task_type}`` (``all`` for the whole set);
- ``state.log_history`` (``golden_pass_rate``, ``golden_<task>_pass_rate``), so that the loss-curve
  picture draws it and a resumed run knows the best checkpoint so far (trainer_state.json keeps it).

``maxDrop``: when a checkpoint's pass rate is lower than the best checkpoint's so far by more than
this, training stops at that checkpoint. ``onRegression: fail`` ends the job Failed/GoldenSetRegression
(gates.py); ``exportBest`` exports the best checkpoint: export_choice.py loads it back from the
checkpoint store (under ZeRO-3 too), so that the final evaluation and the export are the best
checkpoint's. Without a store (no ``checkpoints.uri``), the best checkpoint's trainable weights are
kept as a CPU copy when it is scored (the adapters under LoRA, every weight under full fine-tuning;
not under ZeRO-3) and put back at the end of training.

Retention (checkpoint_store.py) always keeps the best checkpoint by golden pass rate: its score comes
after its commit, so the commit callback asks this callback for it (``best_steps``) at each retention.
A resumed run scores its resume checkpoint again when that checkpoint was due and its score was lost
with the attempt that wrote it (the score is logged after the save, so the checkpoint's own
trainer_state.json lacks it).

A checkpoint is due when its step is a multiple of ``everyCheckpoints x checkpoints.everySteps``,
and at the last one (the end of training, a time-budget stop): the same checkpoints on a resume.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from transformers import TrainerCallback

from .callbacks import any_rank
from .evaluation import score_golden
from .metrics import OVERALL_TASK

log = logging.getLogger("sft_trainer")

RATE_KEY = "golden_pass_rate"
_TASK_KEY = re.compile(r"^golden_(.+)_pass_rate$")


def golden_entries(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The golden-set scores recorded in ``log_history``: ``{step, pass_rate, by_task}`` in step order."""
    out = []
    for e in log_history:
        if RATE_KEY in e and "step" in e:
            by_task = {m.group(1): float(v) for k, v in e.items() if (m := _TASK_KEY.match(k))}
            out.append({"step": int(e["step"]), "pass_rate": float(e[RATE_KEY]), "by_task": by_task})
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


class GoldenCheckpointCallback(TrainerCallback):
    """Scores the golden set at due checkpoints, reports it, and stops on a drop of more than ``max_drop``."""

    def __init__(self, *, items: list[Any], tokenizer: Any, max_new_tokens: int, every: int, save_steps: int,
                 max_drop: float | None, on_regression: str, result: Any, reporter: Any = None,
                 metrics: Any = None, zero3: bool = False, keep_best_weights: bool = True):
        self.items, self.tokenizer, self.max_new_tokens = items, tokenizer, max_new_tokens
        self.every, self.save_steps = every, save_steps
        self.max_drop, self.on_regression = max_drop, on_regression
        self.result, self.reporter, self.metrics, self.zero3 = result, reporter, metrics, zero3
        self.best: dict[str, Any] | None = None
        self.stopped = False  # a maxDrop stop, on every rank
        self.best_weights: dict[str, Any] | None = None
        self.keep_best_weights = keep_best_weights  # no checkpoint store to load the best one back from

    def best_steps(self) -> tuple[int, ...]:
        """The best checkpoint by golden pass rate so far (the earliest of equals), for retention."""
        best = self.best
        return (int(best["step"]),) if best is not None else ()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # a resumed run: the scores of earlier attempts are in the restored log_history
        earlier = golden_entries(state.log_history)
        self.result.golden_checkpoints = earlier
        if earlier:
            self.best = max(earlier, key=lambda e: (e["pass_rate"], -e["step"]))
        step = state.global_step
        if (model is not None and step > 0 and step % (self.every * self.save_steps) == 0
                and all(e["step"] != step for e in earlier)):
            # the resume checkpoint's own score went with the attempt that wrote it: score it again
            entry = self._score(state, model) if state.is_world_process_zero or self.zero3 else None
            stop = self._judge(entry)[1] if entry is not None and state.is_world_process_zero else False
            if any_rank(stop):
                control.should_training_stop = self.stopped = True
        return control

    def _due(self, state, control) -> bool:
        step = state.global_step
        return (step % (self.every * self.save_steps) == 0 or step >= state.max_steps
                or bool(control.should_training_stop))

    def on_save(self, args, state, control, model=None, **kwargs):
        if not self._due(state, control):
            return control
        entry = None
        if state.is_world_process_zero or self.zero3:
            entry = self._score(state, model)
        new_best, stop = self._judge(entry) if entry is not None and state.is_world_process_zero else (False, False)
        # every rank keeps the best weights (DDP replicas are identical) and stops at the same checkpoint
        if (any_rank(new_best) and self.max_drop is not None and self.on_regression == "exportBest"
                and self.keep_best_weights and not self.zero3):
            self.best_weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
                                 if p.requires_grad}
        if any_rank(stop):
            control.should_training_stop = self.stopped = True
        return control

    def _score(self, state: Any, model: Any) -> dict[str, Any]:
        t0 = time.monotonic()
        g = score_golden(model, self.tokenizer, self.items, max_new_tokens=self.max_new_tokens,
                         synced_gpus=self.zero3)
        entry = {"step": state.global_step, "pass_rate": g.pass_rate, "by_task": g.by_task,
                 "total": g.total, "passed": g.passed, "failures": g.failures,
                 "seconds": round(time.monotonic() - t0, 3)}
        if not state.is_world_process_zero:
            return entry
        state.log_history.append({"step": state.global_step, RATE_KEY: g.pass_rate,
                                  **{f"golden_{t}_pass_rate": r for t, r in g.by_task.items()}})
        self.result.golden_checkpoints.append(entry)
        log.info("golden set at checkpoint %d: %s (%s) in %.1fs", state.global_step, _pct(g.pass_rate),
                 ", ".join(f"{t} {_pct(r)}" for t, r in g.by_task.items()), entry["seconds"])
        if self.metrics is not None:
            self.metrics.set_golden(g.pass_rate, g.by_task)
        if self.reporter is not None:
            self.reporter.report({"evaluation": {"goldenCheckpoints": [
                {"step": e["step"], "passRate": e["pass_rate"], "byTask": e["by_task"]}
                for e in self.result.golden_checkpoints]}})
        return entry

    def _judge(self, entry: dict[str, Any]) -> tuple[bool, bool]:
        """(a new best checkpoint, this one fell by more than maxDrop from the best)."""
        if self.best is None or entry["pass_rate"] > self.best["pass_rate"]:
            self.best = entry
            return True, False
        drop = self.best["pass_rate"] - entry["pass_rate"]
        if self.max_drop is None or drop <= self.max_drop + 1e-12:
            return False, False
        message = (f"golden-set pass rate fell from {_pct(self.best['pass_rate'])} (checkpoint {self.best['step']}, "
                   f"the best so far) to {_pct(entry['pass_rate'])} at checkpoint {entry['step']}: a drop of "
                   f"{100 * drop:.2f} points > spec.eval.goldenSet.maxDrop {_pct(self.max_drop)}")
        self.result.golden_stop = {"step": entry["step"], "best_step": self.best["step"],
                                   "best_pass_rate": self.best["pass_rate"], "pass_rate": entry["pass_rate"],
                                   "on_regression": self.on_regression, "message": message}
        log.warning("%s: stopping training (onRegression: %s)", message, self.on_regression)
        return False, True

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.stopped or self.on_regression != "exportBest" or model is None:
            return
        stop = self.result.golden_stop  # rank 0's figures
        if self.best_weights is None:
            if not self.keep_best_weights:
                return  # export_choice.py loads the best checkpoint from the store
            log.warning("exportBest: the best checkpoint's weights were not kept (ZeRO-3 or an earlier attempt) "
                        "and there is no checkpoint store to load them from; exporting the final weights")
            return
        import torch

        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.best_weights.items():
                params[name].copy_(value.to(params[name].device))
        if stop is not None:
            log.info("exportBest: the model holds checkpoint %d's weights again (golden pass rate %s)",
                     stop["best_step"], _pct(stop["best_pass_rate"]))


def golden_checkpoint_callbacks(cfg: Any, inputs: Any, callbacks: list[Any], result: Any) -> list[Any]:
    """[the callback] when ``eval.goldenSet.everyCheckpoints`` is set, else []; wired to the run's reporter
    and metrics (the ones the other callbacks share)."""
    every = cfg.golden_every_checkpoints
    if inputs.golden is None or not every:
        return []
    reporter = next((cb.reporter for cb in callbacks if getattr(cb, "reporter", None) is not None), None)
    metrics = next((cb.metrics for cb in callbacks if getattr(cb, "metrics", None) is not None
                    and hasattr(cb.metrics, "set_golden")), None)
    commit = next((cb for cb in callbacks if hasattr(cb, "protected_steps")), None)
    golden = GoldenCheckpointCallback(items=inputs.golden, tokenizer=inputs.tokenizer,
                                      max_new_tokens=cfg.golden_set.max_new_tokens, every=every,
                                      save_steps=cfg.checkpoints_every_steps, max_drop=cfg.golden_max_drop,
                                      on_regression=cfg.golden_on_regression, result=result, reporter=reporter,
                                      metrics=metrics, zero3=cfg.zero3, keep_best_weights=commit is None)
    if commit is not None:
        commit.protected_steps = golden.best_steps  # retention keeps the best by golden pass rate
    return [golden]
