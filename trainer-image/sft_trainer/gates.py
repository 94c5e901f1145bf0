"""Evaluation gates against the base model, per task and at the end (``spec.eval``).

The golden set and each ``eval.regressionSets`` entry (a safety or refusal set, with its own checks)
are scored on the base model before training and on the final model after it. A set whose final
pass rate is lower than the base model's by more than its ``maxRegressionVsBase`` fails the job with
``GoldenSetRegression`` (exit 65): a model that improves on its task but drops points on a fixed set
has learned to pass tests, not to behave better. Base and final figures sit side by side in
``result.json`` (``scored_sets``) and ``status.evaluation.sets``.

Steps of ``train()``: ``score_base`` (after the model is loaded, before training), ``score_final``
(after the final evaluation) and ``evaluation_gates`` (the exit code). Generation runs on rank 0,
or on every rank under ZeRO-3 where it is collective.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from .evaluation import GoldenItem, load_golden, measure_untrained, score_golden
from .exit_codes import GOLDEN_REGRESSION, ConfigError

log = logging.getLogger("sft_trainer")

GOLDEN = "golden"  # the golden set's name among the scored sets


@dataclass
class ScoredSet:
    name: str
    items: list[GoldenItem]
    max_new_tokens: int
    max_regression: float | None  # None: scored and reported, not gated
    field: str  # the spec field, for messages


def load_scored_sets(cfg: Any, inputs: Any) -> list[ScoredSet]:
    """The golden set and the regression sets, parsed (a malformed row is exit 64 naming the field)."""
    if cfg.min_exact_match_by_task and not inputs.splits.test:
        raise ConfigError("spec.eval.minExactMatchByTask: needs a test split to measure (spec.split.test > 0)")
    sets = []
    if inputs.golden is not None:
        sets.append(ScoredSet(GOLDEN, inputs.golden, cfg.golden_set.max_new_tokens,
                              cfg.golden_max_regression_vs_base, "spec.eval.goldenSet"))
    seen = {GOLDEN}
    for i, rs in enumerate(cfg.regression_sets):
        field = f"spec.eval.regressionSets[{i}]"
        if rs.name in seen:
            raise ConfigError(f"{field}.name: {rs.name!r} is taken (the golden set is 'golden'; names must be unique)")
        seen.add(rs.name)
        items = load_golden(rs.uri, base_dir=cfg.base_dir, storage=cfg.storage, field=f"{field}.uri")
        sets.append(ScoredSet(rs.name, items, rs.max_new_tokens, rs.max_regression_vs_base, field))
    return sets


def _score(model: Any, tokenizer: Any, s: ScoredSet, *, synced_gpus: bool) -> dict[str, Any]:
    t0 = time.monotonic()
    out = score_golden(model, tokenizer, s.items, max_new_tokens=s.max_new_tokens, synced_gpus=synced_gpus).to_dict()
    out["seconds"] = round(time.monotonic() - t0, 3)
    return out


def score_base(cfg: Any, model: Any, inputs: Any, result: Any, *, rank: int, phase: Callable[[str], None],
               measure: bool) -> list[ScoredSet]:
    """The base model's figures: every scored set (for the deltas) and, when ``measure`` (sftctl run on a
    fresh run), the held-out exact match of the before/after table. Returns the sets for ``score_final``."""
    sets = load_scored_sets(cfg, inputs)
    if rank != 0 or (not sets and not measure):
        return sets  # ZeRO-3 (generation on every rank) would need the engine: base scores are rank 0's
    if cfg.zero3:
        log.warning("base-model scores are not computed under DeepSpeed ZeRO-3: the deltas are skipped")
        return sets
    if sets:
        phase("scoring the base model: " + ", ".join(f"{s.name} ({len(s.items)})" for s in sets))
    for s in sets:
        scores = _score(model, inputs.tokenizer, s, synced_gpus=False)
        if s.name == GOLDEN:
            result.golden_before = scores  # the table's "before" column too
        result.scored_sets[s.name] = {"total": len(s.items), "base": scores["pass_rate"], "base_by_task": scores["by_task"],
                                      "max_regression_vs_base": s.max_regression, "base_seconds": scores["seconds"]}
    if measure:
        phase("measuring the untrained model")
        measure_untrained(cfg, model, inputs, result)
    return sets


def score_final(cfg: Any, trainer: Any, inputs: Any, sets: list[ScoredSet], result: Any, *, rank: int,
                phase: Callable[[str], None]) -> None:
    """The final model's figures next to the base model's: the regression sets are generated here, the
    golden set's come from ``final_evaluation``."""
    if rank != 0 and not cfg.zero3:
        return
    extra = [s for s in sets if s.name != GOLDEN]
    if extra:
        phase("scoring the regression sets: " + ", ".join(s.name for s in extra))
    for s in sets:
        scores = result.golden_after if s.name == GOLDEN else _score(trainer.model, inputs.tokenizer, s,
                                                                       synced_gpus=cfg.zero3)
        if scores is None or rank != 0:
            continue
        row = result.scored_sets.setdefault(s.name, {"total": len(s.items), "max_regression_vs_base": s.max_regression})
        row.update(final=scores["pass_rate"], final_by_task=scores["by_task"])
        if "seconds" in scores:  # the golden set's final score is final_evaluation's
            row["final_seconds"] = scores["seconds"]
        if row.get("base") is not None:
            row["delta"] = scores["pass_rate"] - row["base"]
        if s.name == GOLDEN:
            _record_final_golden(trainer, scores)


def _record_final_golden(trainer: Any, scores: dict[str, Any]) -> None:
    """The final golden figures as the last point of the picture's golden curve and in Prometheus."""
    from .golden_checkpoints import RATE_KEY, golden_entries

    state = trainer.state
    done = golden_entries(state.log_history)
    if not done or done[-1]["step"] != state.global_step:
        state.log_history.append({"step": state.global_step, RATE_KEY: scores["pass_rate"],
                                  **{f"golden_{t}_pass_rate": r for t, r in scores["by_task"].items()}})
    for cb in trainer.callback_handler.callbacks:
        metrics = getattr(cb, "metrics", None)
        if metrics is not None and hasattr(metrics, "set_golden"):
            metrics.set_golden(scores["pass_rate"], scores["by_task"])
            return


# ------------------------------------------------------------------------------------- the gates
def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def gate_failures(cfg: Any, result: Any) -> list[str]:
    """Every gate that failed, one message each with its figures and field."""
    out = []
    after = result.golden_after
    if after is not None and result.min_pass_rate is not None and after["pass_rate"] < result.min_pass_rate:
        out.append(f"golden-set pass rate {_pct(after['pass_rate'])} < spec.eval.goldenSet.minPassRate "
                   f"{_pct(result.min_pass_rate)}")
    if after is not None:
        for task, floor in sorted(cfg.min_pass_rate_by_task.items()):
            rate = after["by_task"].get(task)
            if rate is None:
                out.append(f"spec.eval.goldenSet.minPassRateByTask: the golden set has no task_type {task!r}")
            elif rate < floor:
                out.append(f"golden-set pass rate of task_type {task!r} {_pct(rate)} < "
                           f"spec.eval.goldenSet.minPassRateByTask[{task}] {_pct(floor)}")
    # Rank 0 measures the held-out exact match; the other ranks of a gang have no figures to gate on
    # (without this guard every rank > 0 failed the gate, and so the job).
    floors = cfg.min_exact_match_by_task if result.exact_match_after is not None else {}
    for task, floor in sorted(floors.items()):
        rate = result.exact_match_after.get(task)
        if rate is None:
            out.append(f"spec.eval.minExactMatchByTask: the test split has no task_type {task!r}")
        elif rate < floor:
            out.append(f"held-out exact match of task_type {task!r} {_pct(rate)} < "
                       f"spec.eval.minExactMatchByTask[{task}] {_pct(floor)}")
    for name, row in result.scored_sets.items():
        limit = row.get("max_regression_vs_base")
        if limit is None or row.get("delta") is None or -row["delta"] <= limit + 1e-12:
            continue
        field = ("spec.eval.goldenSet" if name == GOLDEN else
                 f"spec.eval.regressionSets[{[r.name for r in cfg.regression_sets].index(name)}]")
        what = "golden set" if name == GOLDEN else f"regression set {name!r}"
        out.append(f"{what} pass rate {_pct(row['final'])} vs {_pct(row['base'])} on the base model "
                   f"({100 * row['delta']:+.2f} points) regresses by more than {field}.maxRegressionVsBase "
                   f"{_pct(limit)}")
    stop = result.golden_stop
    if stop is not None and stop.get("on_regression") == "fail":
        out.append(stop["message"])
    return out


def evaluation_gates(cfg: Any, result: Any) -> None:
    """The gates decide the exit code: GOLDEN_REGRESSION (65, non-retryable) with every failed gate's figures."""
    failures = gate_failures(cfg, result)
    if failures:
        result.exit_code = GOLDEN_REGRESSION
        result.message = "GoldenSetRegression: " + "; ".join(failures)
