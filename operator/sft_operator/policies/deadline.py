"""Deadline policy: `spec.activeDeadlineSeconds` fails the SFTJob with `DeadlineExceeded`.

The clock is `status.startTime`, set when the first child of the first attempt is created (the
preflight pod or the gang), not when a Job is first seen: a job whose children the apiserver keeps
refusing still reaches its deadline. It restarts on resume, as for a batch Job; a Job queued by
Kueue starts it on admission.
"""

from __future__ import annotations

from datetime import datetime

from ..observe import parse_time

__all__ = ["deadline_exceeded", "seconds_left"]


def seconds_left(start_time: str | None, active_deadline: int | None, now: datetime) -> float | None:
    """Seconds until the deadline (<= 0: exceeded); None when no clock runs."""
    if active_deadline is None or not start_time:
        return None
    started = parse_time(start_time)
    return float(active_deadline) - (now - started).total_seconds()


def deadline_exceeded(start_time: str | None, active_deadline: int | None, now: datetime) -> bool:
    left = seconds_left(start_time, active_deadline, now)
    return left is not None and left <= 0
