"""The end-of-run figures that go to the SFTJob's status (``status.evaluation``)."""

from __future__ import annotations

from typing import Any


def evaluation_status(result: Any) -> dict[str, Any]:
    evaluation: dict[str, Any] = {}
    if result.golden_after is not None:
        evaluation["goldenSetPassRate"] = result.golden_after["pass_rate"]
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
