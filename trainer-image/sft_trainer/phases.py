"""What the trainer is doing, with a heartbeat: ``status.progress.phase``, ``phaseStartedAt`` and
``heartbeatTime`` (docs/api.md, Progress).

The operator's stall policy counts missing step progress only in ``training``; every other phase
(downloading, preflight, evaluating, checkpointing, exporting) has its own timeout, and a heartbeat
that stops means a hung process, not a slow phase. Rank 0 reports: ``enter(phase)`` at once, and a
daemon thread refreshes ``heartbeatTime`` every ``SFT_HEARTBEAT_SECONDS`` (default 30) whatever the
main thread is doing (a long download, a collective, a generation), so it stops only when the
process stops or hangs with the GIL held.

One process-wide instance, installed by ``train()`` (``start``/``stop``); ``enter`` is a no-op
without one, so library code can mark its phase without plumbing.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import logging
import os
import threading
from typing import Any

from sft_api.models import TrainerPhase

log = logging.getLogger(__name__)

PHASES = tuple(p.value for p in TrainerPhase)
INTERVAL_ENV = "SFT_HEARTBEAT_SECONDS"
DEFAULT_INTERVAL_S = 30.0


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class PhaseReporter:
    """Reports the phase on change and a heartbeat every ``interval_s`` through a ProgressReporter."""

    def __init__(self, reporter: Any, *, interval_s: float | None = None):
        self.reporter = reporter
        self.interval_s = float(interval_s if interval_s is not None
                                else os.environ.get(INTERVAL_ENV) or DEFAULT_INTERVAL_S)
        self.phase: str | None = None
        self.phase_started_at: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def enter(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown trainer phase {phase!r}; known: {', '.join(PHASES)}")
        with self._lock:
            if phase == self.phase:
                return
            now = _utcnow()
            self.phase, self.phase_started_at = phase, now
            self._send({"phase": phase, "phaseStartedAt": now, "heartbeatTime": now})
        log.debug("trainer phase: %s", phase)

    def beat(self) -> None:
        with self._lock:
            self._send({"heartbeatTime": _utcnow()})

    def _send(self, progress: dict[str, Any]) -> None:
        try:
            self.reporter.report({"progress": progress})
        except Exception as e:  # noqa: BLE001 - status is best effort; training never fails over it
            log.warning("cannot report the trainer phase: %s", e)

    def start(self) -> "PhaseReporter":
        if self._thread is None and self.interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="sft-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None


_current: PhaseReporter | None = None


def start(reporter: Any, *, enabled: bool = True, interval_s: float | None = None) -> PhaseReporter | None:
    """Install (and start) the process's phase reporter; ``enabled`` is False on ranks other than 0."""
    global _current
    stop()
    if enabled and reporter is not None:
        _current = PhaseReporter(reporter, interval_s=interval_s).start()
        atexit.register(stop)
    return _current


def enter(phase: str) -> None:
    """Mark the trainer's phase (rank 0 reports it; elsewhere, and outside ``train()``, a no-op)."""
    if _current is not None:
        _current.enter(phase)


def stop() -> None:
    global _current
    if _current is not None:
        _current.stop()
        _current = None


def start_reporting(reporter: Any, env: dict[str, str], *, rank: int) -> Any:
    """The run's status reporter (``progress.make_reporter`` unless given), with the phase reporter
    installed on it for rank 0. The heartbeat thread ends with the process, or at the next start."""
    from .progress import make_reporter

    reporter = reporter if reporter is not None else make_reporter(env)
    start(reporter, enabled=rank == 0)
    return reporter
