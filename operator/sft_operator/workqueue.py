"""A keyed work queue with a fixed pool of worker threads, in the manner of client-go's workqueue:

- a key waiting in the queue is there once, however many triggers arrive (bursts coalesce);
- a key is never processed by two workers at once; a trigger during processing runs it again after;
- a failed pass is retried after a delay.

kopf handlers only `add()` keys and return at once, so a slow apiserver never blocks kopf's own
event processing (a blocked handler would delay every other object's events).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable, Hashable

log = logging.getLogger("sft_operator.workqueue")

__all__ = ["WorkQueue"]


class WorkQueue:
    def __init__(self, process: Callable[[Hashable], None], *, workers: int = 4, retry_seconds: float = 2.0):
        self._process = process
        self._workers = workers
        self._retry = retry_seconds
        self._cv = threading.Condition()
        self._queue: deque[Hashable] = deque()
        self._queued: set[Hashable] = set()
        self._active: set[Hashable] = set()
        self._again: set[Hashable] = set()
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def start(self) -> None:
        with self._cv:
            if self._threads:
                return
            self._stopped = False
            for i in range(self._workers):
                t = threading.Thread(target=self._run, name=f"sft-reconcile-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def add(self, key: Hashable) -> None:
        with self._cv:
            if key in self._active:
                self._again.add(key)  # it changed while being processed: once more afterwards
            elif key not in self._queued:
                self._queued.add(key)
                self._queue.append(key)
                self._cv.notify()

    def add_after(self, key: Hashable, seconds: float) -> None:
        timer = threading.Timer(seconds, self.add, args=(key,))
        timer.daemon = True
        timer.start()

    def __len__(self) -> int:
        with self._cv:
            return len(self._queue)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return
                key = self._queue.popleft()
                self._queued.discard(key)
                self._active.add(key)
            try:
                self._process(key)
            except Exception:  # the pass is retried; the error is in the log and in a metric
                log.exception(f"reconcile of {key} failed; retrying in {self._retry:.0f}s")
                self.add_after(key, self._retry)
            finally:
                with self._cv:
                    self._active.discard(key)
                    if key in self._again:
                        self._again.discard(key)
                        if key not in self._queued:
                            self._queued.add(key)
                            self._queue.append(key)
                            self._cv.notify()
