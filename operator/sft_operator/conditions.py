"""Typed phases, condition types and reasons of SFTJob status, in one place.

A condition is rewritten only when its status, reason or message changes, so that
`lastTransitionTime` means what it says and an unchanged world produces no status write.
"""

from __future__ import annotations

from typing import Iterable

from sft_api.contract import DISRUPTION_REASONS, INTERRUPTED, NON_RETRYABLE_REASONS, CondType, Phase, Reason

__all__ = ["Phase", "CondType", "Reason", "set_condition", "get_condition", "truncate", "NON_RETRYABLE_EXIT_CODES",
           "INTERRUPTED_EXIT_CODE", "DISRUPTION_REASONS"]

MAX_MESSAGE = 1024  # Event messages are capped by the apiserver; keep conditions readable too

# Trainer exit codes that must not be retried, and their reasons (the one table is sft_api.contract).
NON_RETRYABLE_EXIT_CODES: dict[int, Reason] = NON_RETRYABLE_REASONS
# The trainer stopped on SIGTERM after committing a checkpoint: a disruption, not the job's fault.
INTERRUPTED_EXIT_CODE = INTERRUPTED


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
