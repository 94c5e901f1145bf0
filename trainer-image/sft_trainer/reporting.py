"""The end-of-run figures that go to the SFTJob's status (``status.evaluation``)."""

from __future__ import annotations

from typing import Any


def _set_status(row: dict[str, Any]) -> dict[str, Any]:
    """One scored set, base and final side by side (``status.evaluation.sets.<name>``)."""
    keys = {"base": "base", "final": "final", "delta": "delta", "base_by_task": "baseByTask",
            "final_by_task": "finalByTask"}
    return {camel: row[k] for k, camel in keys.items() if row.get(k) is not None}


def evaluation_status(result: Any) -> dict[str, Any]:
    evaluation: dict[str, Any] = {}
    if result.golden_after is not None:
        evaluation["goldenSetPassRate"] = result.golden_after["pass_rate"]
        evaluation["goldenSetByTask"] = result.golden_after["by_task"]
    if result.golden_checkpoints:
        evaluation["goldenCheckpoints"] = [{"step": c["step"], "passRate": c["pass_rate"], "byTask": c["by_task"]}
                                           for c in result.golden_checkpoints]
    if result.golden_stop is not None:
        evaluation["bestGoldenStep"] = result.golden_stop["best_step"]
    if result.exported is not None:
        exported = result.exported
        evaluation["exportedCheckpoint"] = {"step": exported["step"], "criterion": exported["criterion"],
                                            "reason": exported["reason"],
                                            **({"checkpointUri": exported["checkpoint_uri"]}
                                               if exported.get("checkpoint_uri") else {})}
    if result.scored_sets:
        evaluation["sets"] = {name: _set_status(row) for name, row in result.scored_sets.items()}
    if result.exact_match_after:
        by_task = {t: r for t, r in result.exact_match_after.items() if t != "overall"}
        evaluation["exactMatch"] = result.exact_match_after["overall"]
        evaluation["exactMatchByTask"] = by_task
    if result.test_loss is not None:
        evaluation["testLoss"] = result.test_loss
    if result.eval_loss_by_task:
        evaluation["evalLossByTask"] = result.eval_loss_by_task
    return evaluation


def report_evaluation(callbacks: list[Any], result: Any) -> None:
    """Send the evaluation through the run's progress reporter (the one the callbacks share)."""
    evaluation = evaluation_status(result)
    if not evaluation:
        return
    for cb in callbacks:
        reporter = getattr(cb, "reporter", None)
        if reporter is not None:
            reporter.report({"evaluation": evaluation})
            return
