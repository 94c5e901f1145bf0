"""Create-backoff policy: after the apiserver refused a child of an attempt (an exceeded quota, a
PodSecurity or webhook rejection), creation is retried with exponential backoff per SFTJob.

The failures of the current attempt live in the annotation `sft.dev/create-failures` as
`{"attempt": N, "failures": F, "time": RFC3339 of the last refusal}`, so the backoff survives an
operator restart and every other trigger of the job (its own status write, a progress patch) waits
it out instead of hammering the apiserver. The next try is `base * 2**(F-1)` seconds (at most `cap`)
after the last refusal.
"""

from __future__ import annotations

import json
from datetime import datetime

from ..observe import fmt_time, parse_time

__all__ = ["ANNOTATION", "parse", "record", "delay", "wait_left"]

ANNOTATION = "sft.dev/create-failures"


def parse(raw: str | None) -> dict | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    ok = isinstance(value, dict) and isinstance(value.get("failures"), int) and _is_time(value.get("time"))
    return value if ok else None


def _is_time(value) -> bool:
    try:
        return parse_time(value) is not None
    except (TypeError, ValueError):
        return False


def record(previous: dict | None, *, attempt: int, now: datetime) -> dict:
    """The record after one more refusal in `attempt` (a new attempt starts counting again)."""
    failures = int(previous["failures"]) + 1 if previous and previous.get("attempt") == attempt else 1
    return {"attempt": attempt, "failures": failures, "time": fmt_time(now)}


def delay(failures: int, base: float, cap: float) -> float:
    """Seconds between the `failures`-th refusal and the next try."""
    if failures <= 0:
        return 0.0
    return float(min(cap, base * 2 ** min(failures - 1, 62)))


def wait_left(rec: dict | None, *, attempt: int, now: datetime, base: float, cap: float) -> float:
    """Seconds until creation may be tried again (0: now)."""
    if rec is None or rec.get("attempt") != attempt:
        return 0.0
    since = (now - parse_time(rec["time"])).total_seconds()
    return max(delay(int(rec["failures"]), base, cap) - since, 0.0)
