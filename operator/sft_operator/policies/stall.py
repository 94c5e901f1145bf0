"""Stall policy: restart an attempt whose `status.progress.step` has not changed for
`failurePolicy.stallTimeoutSeconds` while all its pods run.

The time of the last step change lives in the annotation `sft.dev/progress-seen` as
`{"attempt": N, "step": S, "time": RFC3339}`; the clock restarts with each attempt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from ..observe import fmt_time, parse_time

__all__ = ["ANNOTATION", "StallCheck", "check", "parse_seen"]

ANNOTATION = "sft.dev/progress-seen"


@dataclass(frozen=True)
class StallCheck:
    seen: dict  # the record to store (unchanged object when nothing moved)
    changed: bool
    stalled: bool
    idle_seconds: float


def parse_seen(raw: str | None) -> dict | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) and "time" in value else None


def check(seen: dict | None, *, attempt: int, step: int | None, now: datetime, timeout: float | None) -> StallCheck:
    if seen is None or seen.get("attempt") != attempt or seen.get("step") != step:
        record = {"attempt": attempt, "step": step, "time": fmt_time(now)}
        return StallCheck(record, True, False, 0.0)
    since = parse_time(seen.get("time")) or now
    idle = max((now - since).total_seconds(), 0.0)
    stalled = bool(timeout) and idle >= float(timeout)
    return StallCheck(seen, False, stalled, idle)
