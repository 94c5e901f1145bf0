"""What a run leaves behind for audit and comparison: the data-lineage manifest (lineage.py) and the
experiment trackers (tracking.py). Two steps of train(): before training and at its end."""

from __future__ import annotations

from typing import Any

from .config import ResolvedConfig
from .lineage import write_beside_model, write_lineage
from .tracking import Tracker, finish_tracking, start_tracking


def record_inputs(cfg: ResolvedConfig, inputs: Any, model: Any, result: Any, reporter: Any, *,
                  rank: int) -> Tracker:
    """lineage.json beside the checkpoints (and status.lineage), then rank 0's trackers."""
    write_lineage(cfg, inputs, model, result, rank=rank)
    if rank == 0 and result.lineage and reporter is not None:
        reporter.report({"lineage": {"uri": result.lineage["uri"], "digest": result.lineage["digest"]}})
    return start_tracking(cfg, result, reporter, rank=rank)


def record_outcome(cfg: ResolvedConfig, tracker: Tracker, result: Any) -> None:
    """Rank 0, after the export: the manifest beside the model, the trackers' final figures."""
    write_beside_model(cfg, result)
    finish_tracking(tracker, result)
