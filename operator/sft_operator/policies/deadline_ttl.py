"""Deadline and TTL policies.

- `activeDeadlineSeconds` counts from `status.startTime` (reset on resume, as for a batch Job)
  and fails the job with `DeadlineExceeded`.
- `ttlSecondsAfterFinished` counts from `status.completionTime`; when it expires the children go,
  the SFTJob stays with its final status. `sft.dev/children-removed` records that it was done.
"""

from __future__ import annotations

from datetime import datetime

from ..observe import parse_time

__all__ = ["deadline_exceeded", "ttl_expired", "CLEANED_ANNOTATION"]

CLEANED_ANNOTATION = "sft.dev/children-removed"


def deadline_exceeded(start_time: str | None, active_deadline: int | None, now: datetime) -> bool:
    if active_deadline is None or not start_time:
        return False
    started = parse_time(start_time)
    return (now - started).total_seconds() >= float(active_deadline)


def ttl_expired(completion_time: str | None, ttl: int | None, now: datetime, already_cleaned: bool) -> bool:
    if ttl is None or not completion_time or already_cleaned:
        return False
    done = parse_time(completion_time)
    return (now - done).total_seconds() >= float(ttl)
