"""Typed phases, condition types and reasons of SFTJob status, in one place.

A condition is rewritten only when its status, reason or message changes, so that
`lastTransitionTime` means what it says and an unchanged world produces no status write.
"""

from __future__ import annotations

from enum import Enum
from typing import Iterable

from sft_trainer import exit_codes as _exit

__all__ = ["Phase", "CondType", "Reason", "set_condition", "get_condition", "truncate", "NON_RETRYABLE_EXIT_CODES"]

MAX_MESSAGE = 1024  # Event messages are capped by the apiserver; keep conditions readable too


class _Str(str, Enum):
    def __str__(self) -> str:  # so f-strings print the value, not the member name
        return self.value


class Phase(_Str):
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class CondType(_Str):
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STALLED = "Stalled"


class Reason(_Str):
    # pending / progress
    CREATED = "AttemptCreated"
    QUEUED = "Queued"
    UNSCHEDULABLE = "Unschedulable"
    PODS_PENDING = "PodsPending"
    PODS_RUNNING = "PodsRunning"
    TEARING_DOWN = "TearingDown"
    PROGRESSING = "Progressing"
    # retryable failures (count as restarts)
    POD_FAILED = "PodFailed"
    OOM_KILLED = "OOMKilled"
    STALLED = "Stalled"
    # disruptions (count as preemptions)
    PREEMPTED = "Preempted"
    EVICTED = "Evicted"
    NODE_LOST = "NodeLost"
    INTERRUPTED = "Interrupted"
    # terminal
    COMPLETED = "Completed"
    DATA_ERROR = "DataError"
    GOLDEN_SET_REGRESSION = "GoldenSetRegression"
    TOPOLOGY_MISMATCH = "TopologyMismatch"
    MAX_RESTARTS = "MaxRestartsExceeded"
    MAX_PREEMPTIONS = "MaxPreemptionsExceeded"
    DEADLINE = "DeadlineExceeded"
    INVALID_SPEC = "InvalidSpec"
    # lifecycle
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    TTL_EXPIRED = "TTLExpired"
    NOT_STALLED = "ProgressReported"


# Trainer exit codes that must not be retried, and their reasons (the trainer owns the numbers).
NON_RETRYABLE_EXIT_CODES: dict[int, Reason] = {
    _exit.CONFIG_ERROR: Reason.DATA_ERROR,
    _exit.GOLDEN_REGRESSION: Reason.GOLDEN_SET_REGRESSION,
    _exit.TOPOLOGY_MISMATCH: Reason.TOPOLOGY_MISMATCH,
}
# The trainer stopped on SIGTERM after committing a checkpoint: a disruption, not the job's fault.
INTERRUPTED_EXIT_CODE = _exit.INTERRUPTED

DISRUPTION_REASONS = {Reason.PREEMPTED, Reason.EVICTED, Reason.NODE_LOST, Reason.INTERRUPTED}


def truncate(message: str, limit: int = MAX_MESSAGE) -> str:
    message = " ".join(str(message).split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


def get_condition(conditions: Iterable[dict] | None, ctype: str) -> dict | None:
    for c in conditions or ():
        if c.get("type") == str(ctype):
            return c
    return None


def set_condition(
    conditions: list[dict] | None,
    ctype: str,
    status: bool,
    reason: str,
    message: str,
    now: str,
) -> tuple[list[dict], bool]:
    """Return (new conditions, changed). Keeps lastTransitionTime when only the message changes."""
    out = [dict(c) for c in conditions or ()]
    want_status = "True" if status else "False"
    message = truncate(message)
    existing = get_condition(out, ctype)
    if existing is None:
        out.append(
            {"type": str(ctype), "status": want_status, "reason": str(reason), "message": message, "lastTransitionTime": now}
        )
        return out, True
    if existing.get("status") == want_status and existing.get("reason") == str(reason) and existing.get("message") == message:
        return out, False
    if existing.get("status") != want_status:
        existing["lastTransitionTime"] = now
    existing.update(status=want_status, reason=str(reason), message=message)
    return out, True
