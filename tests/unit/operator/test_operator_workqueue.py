"""workqueue: bursts coalesce, a key never runs twice at once, a trigger during a pass runs it again,
failures are retried."""

import threading
import time

from sft_operator.workqueue import WorkQueue


def wait_for(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_burst_coalesces_and_key_is_never_concurrent():
    gate = threading.Event()
    runs: list[str] = []
    concurrent = []
    active = set()
    lock = threading.Lock()

    def process(key):
        with lock:
            if key in active:
                concurrent.append(key)
            active.add(key)
        gate.wait(5)
        runs.append(key)
        with lock:
            active.discard(key)

    q = WorkQueue(process, workers=4)
    q.start()
    try:
        q.add("a")
        wait_for(lambda: "a" in active)
        for _ in range(50):  # a burst while "a" is being processed
            q.add("a")
        q.add("b")
        gate.set()
        wait_for(lambda: runs.count("a") == 2 and "b" in runs)
        time.sleep(0.2)
        assert runs.count("a") == 2  # once, plus exactly one more for the whole burst
        assert concurrent == []
    finally:
        q.stop()


def test_failed_pass_is_retried():
    calls = []

    def process(key):
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("apiserver hiccup")

    q = WorkQueue(process, workers=1, retry_seconds=0.05)
    q.start()
    try:
        q.add("x")
        wait_for(lambda: len(calls) == 2)
    finally:
        q.stop()
