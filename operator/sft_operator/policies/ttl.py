"""TTL policy: `spec.ttlSecondsAfterFinished` counts from `status.completionTime`; when it expires the
children go and the SFTJob stays with its final status. `sft.dev/children-removed` records that it
was done, so it is done once.
"""

from __future__ import annotations

from datetime import datetime

from ..observe import parse_time

__all__ = ["ttl_expired", "seconds_left", "CLEANED_ANNOTATION"]

CLEANED_ANNOTATION = "sft.dev/children-removed"


def seconds_left(completion_time: str | None, ttl: int | None, now: datetime, already_cleaned: bool) -> float | None:
    """Seconds until the children go (<= 0: now); None when nothing is pending."""
    if ttl is None or not completion_time or already_cleaned:
        return None
    done = parse_time(completion_time)
    return float(ttl) - (now - done).total_seconds()


def ttl_expired(completion_time: str | None, ttl: int | None, now: datetime, already_cleaned: bool) -> bool:
    left = seconds_left(completion_time, ttl, now, already_cleaned)
    return left is not None and left <= 0
