"""A keyed work queue with a fixed pool of worker threads, in the manner of client-go's workqueue:

- a key waiting in the queue is there once, however many triggers arrive (bursts coalesce); `add_soon`
  lets a trigger wait a moment for the rest of its burst;
- a key is never processed by two workers at once; a trigger during processing runs it again after;
- a pass may ask to run again later: `process(key)` returns seconds (the reconcile's
  `requeue_after`) and the key is re-added then; an earlier request for the same key wins;
- a failed pass is retried with exponential backoff per key (`base * 2**(failures-1)`, at most
  `max_retry_seconds`), reset by the key's next successful pass. An error with a `delay` (a
  TemporaryError that knows when to retry) waits that long instead; one marked `permanent` is not
  retried (the next trigger of the key runs it again), as kopf treats PermanentError.

- an `urgent` add goes to a lane that workers empty first: a new SFTJob, a pod or Job that finished
  or is gone, a lost node. Those are the passes that create or tear down children (apply -> Job,
  failure -> next attempt); the passes of status changes wait behind them. A burst of 1000 new jobs
  otherwise queued each new job behind the earlier jobs' pod-progress passes (12 per job).

kopf handlers only `add()` keys and return at once, so a slow apiserver never blocks kopf's own
event processing (a blocked handler would delay every other object's events).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from typing import Callable, Hashable

log = logging.getLogger("sft_operator.workqueue")

__all__ = ["WorkQueue"]


class WorkQueue:
    def __init__(self, process: Callable[[Hashable], float | None], *, workers: int = 4, retry_seconds: float = 2.0,
                 max_retry_seconds: float = 300.0):
        self._process = process
        self._workers = workers
        self._retry = retry_seconds
        self._max_retry = max_retry_seconds
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)  # workers wait here
        self._delay_cv = threading.Condition(self._lock)  # the delay thread waits here
        self._queue: deque[Hashable] = deque()
        self._urgent: deque[Hashable] = deque()  # drained first; a key may also sit in _queue (skipped)
        self._queued: set[Hashable] = set()
        self._queued_urgent: set[Hashable] = set()
        self._active: set[Hashable] = set()
        self._again: set[Hashable] = set()
        self._again_urgent: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._due: dict[Hashable, float] = {}  # key -> monotonic time of its delayed add
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def start(self) -> None:
        with self._lock:
            if self._threads:
                return
            self._stopped = False
            targets = [(self._run, f"sft-reconcile-{i}") for i in range(self._workers)] + [(self._delays, "sft-requeue")]
            for target, name in targets:
                t = threading.Thread(target=target, name=name, daemon=True)
                t.start()
                self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopped = True
            self._cv.notify_all()
            self._delay_cv.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def add(self, key: Hashable, urgent: bool = False) -> None:
        with self._lock:
            self._add_locked(key, urgent)

    def _add_locked(self, key: Hashable, urgent: bool = False) -> None:
        if key in self._active:
            self._again.add(key)  # it changed while being processed: once more afterwards
            if urgent:
                self._again_urgent.add(key)
            return
        if urgent and key not in self._queued_urgent:
            self._queued.add(key)
            self._queued_urgent.add(key)
            self._urgent.append(key)  # an entry of the key in the normal lane is skipped once it ran
            self._cv.notify()
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            self._cv.notify()

    def add_soon(self, key: Hashable, seconds: float, urgent: bool = False) -> None:
        """A trigger that may wait `seconds` for the next ones of the same key (one pass for a burst):
        nothing when the key is queued (that pass reads the newest state) or due sooner already. An
        urgent one is added now."""
        if urgent:
            self.add(key, urgent=True)
            return
        with self._lock:
            if key in self._queued:
                return
        self.add_after(key, seconds)

    def add_after(self, key: Hashable, seconds: float) -> None:
        """Add `key` in `seconds`; a delayed add already due sooner for the key makes this one moot."""
        if seconds <= 0:
            self.add(key)
            return
        due = time.monotonic() + seconds
        with self._lock:
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            self._delay_cv.notify()

    def backoff(self, key: Hashable) -> float:
        """Count one more failure of `key`; the seconds to wait before its retry."""
        with self._lock:
            n = self._failures[key] = self._failures.get(key, 0) + 1
        return min(self._max_retry, self._retry * 2 ** min(n - 1, 62))

    def failures(self, key: Hashable) -> int:
        with self._lock:
            return self._failures.get(key, 0)

    def forget(self, key: Hashable) -> None:
        """The key's pass succeeded: its next failure starts the backoff from the beginning."""
        with self._lock:
            self._failures.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._queued)

    def _delays(self) -> None:
        with self._lock:
            while not self._stopped:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    due, _, key = heapq.heappop(self._heap)
                    if self._due.get(key) == due:  # not superseded by an earlier request
                        del self._due[key]
                        self._add_locked(key)
                timeout = self._heap[0][0] - now if self._heap else None
                self._delay_cv.wait(timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                key = None
                while key is None:
                    while not (self._urgent or self._queue) and not self._stopped:
                        self._cv.wait()
                    if self._stopped:
                        return
                    lane = self._urgent if self._urgent else self._queue
                    key = lane.popleft()
                    if key not in self._queued:
                        key = None  # a stale entry: the key ran from the other lane already
                self._queued.discard(key)
                self._queued_urgent.discard(key)
                self._active.add(key)
            try:
                self._once(key)
            finally:
                with self._lock:
                    self._active.discard(key)
                    if key in self._again:
                        self._again.discard(key)
                        urgent = key in self._again_urgent
                        self._again_urgent.discard(key)
                        self._add_locked(key, urgent)

    def _once(self, key: Hashable) -> None:
        try:
            requeue = self._process(key)
        except Exception as exc:  # the error is in the log and in a metric
            if getattr(exc, "permanent", False):
                self.forget(key)
                log.error(f"reconcile of {key} failed permanently, not retried until its next change: {exc}")
                return
            delay = getattr(exc, "delay", None)
            backoff = self.backoff(key)
            wait = float(delay) if delay is not None else backoff
            log.warning(f"reconcile of {key} failed (failure {self.failures(key)}); retrying in {wait:.1f}s: {exc}",
                        exc_info=not hasattr(exc, "delay"))
            self.add_after(key, wait)
            return
        self.forget(key)
        if requeue is not None:
            self.add_after(key, float(requeue))
