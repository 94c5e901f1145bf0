"""Stall policy: restart an attempt that is hung, judged by the phase the trainer reports.

- In `training` (and when the trainer reports no phase) the clock counts only time without step
  progress: `status.progress.step` unchanged for `failurePolicy.stallTimeoutSeconds`.
- Every other phase (downloading, preflight, evaluating, checkpointing, exporting) has no steps; it
  gets its own generous timeout, counted from when the phase began. A trainer that also reports
  `status.progress.heartbeatTime` is hung, not slow, when the heartbeat stops for
  `stallTimeoutSeconds` (but never less than `heartbeat_grace`: the trainer beats every 30 s, so a
  short stall timeout must not mistake the gap between two beats for a hang).

The clock lives in the annotation `sft.dev/progress-seen` as
`{"attempt": N, "phase": P, "step": S, "time": RFC3339}`: the time the attempt, the phase or (in
training) the step last changed. A record without a phase is a training record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Mapping

from ..observe import fmt_time, parse_time

__all__ = ["ANNOTATION", "TRAINING", "DEFAULT_PHASE_TIMEOUTS", "StallCheck", "check", "parse_seen"]

ANNOTATION = "sft.dev/progress-seen"
TRAINING = "training"
# Seconds each non-training phase may last (generous: a 70B download or a full export is slow).
DEFAULT_PHASE_TIMEOUTS: dict[str, int] = {
    "downloading": 4 * 3600,
    "preflight": 2 * 3600,
    "evaluating": 4 * 3600,
    "checkpointing": 2 * 3600,
    "exporting": 4 * 3600,
}
UNKNOWN_PHASE_TIMEOUT = 4 * 3600  # a phase name this operator does not know yet
HEARTBEAT_GRACE = 90.0  # three of the trainer's 30 s heartbeats (SFT_HEARTBEAT_SECONDS)


@dataclass(frozen=True)
class StallCheck:
    seen: dict  # the record to store (unchanged object when nothing moved)
    changed: bool
    stalled: bool
    idle_seconds: float
    phase: str = TRAINING
    message: str = ""  # why it stalled, naming the phase
    wake_in: float | None = None  # seconds until this check can next turn stalled (None: never)


def parse_seen(raw: str | None) -> dict | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) and "time" in value else None


def _moved(seen: dict | None, attempt: int, phase: str, step: int | None) -> bool:
    if seen is None or seen.get("attempt") != attempt or (seen.get("phase") or TRAINING) != phase:
        return True
    return phase == TRAINING and seen.get("step") != step


def check(seen: dict | None, *, attempt: int, step: int | None, now: datetime, timeout: float | None,
          phase: str | None = None, heartbeat: str | None = None,
          phase_timeouts: Mapping[str, float] | None = None, heartbeat_grace: float = HEARTBEAT_GRACE) -> StallCheck:
    phase = phase or TRAINING
    if _moved(seen, attempt, phase, step):
        # A new attempt, phase or step starts the clock; a fresh clock never stalls at once.
        record = {"attempt": attempt, "phase": phase, "step": step, "time": fmt_time(now)}
        first = _limit(phase, timeout, phase_timeouts)
        return StallCheck(record, True, False, 0.0, phase, "", first)
    since = parse_time(seen.get("time")) or now
    idle = max((now - since).total_seconds(), 0.0)
    if phase == TRAINING:
        if not timeout:
            return StallCheck(seen, False, False, idle, phase)
        msg = f"no progress for {int(idle)}s in phase {phase} (stallTimeoutSeconds={timeout}); last step {step}"
        return StallCheck(seen, False, idle >= float(timeout), idle, phase, msg, float(timeout) - idle)
    limit = _limit(phase, timeout, phase_timeouts)
    if idle >= limit:
        return StallCheck(seen, False, True, idle, phase, f"phase {phase} has lasted {int(idle)}s (its timeout is {int(limit)}s)", 0.0)
    wake = limit - idle
    beat = _parse(heartbeat)
    if beat is not None and timeout:
        silent = max((now - beat).total_seconds(), 0.0)
        allowed = max(float(timeout), float(heartbeat_grace))
        if silent >= allowed:
            msg = f"no heartbeat for {int(silent)}s in phase {phase} (stallTimeoutSeconds={timeout})"
            return StallCheck(seen, False, True, silent, phase, msg, 0.0)
        wake = min(wake, allowed - silent)
    return StallCheck(seen, False, False, idle, phase, "", wake)


def _limit(phase: str, timeout: float | None, phase_timeouts: Mapping[str, float] | None) -> float | None:
    if phase == TRAINING:
        return float(timeout) if timeout else None
    return float({**DEFAULT_PHASE_TIMEOUTS, **(phase_timeouts or {})}.get(phase, UNKNOWN_PHASE_TIMEOUT))


def _parse(value: str | None) -> datetime | None:
    try:
        return parse_time(value)
    except (TypeError, ValueError):
        return None
