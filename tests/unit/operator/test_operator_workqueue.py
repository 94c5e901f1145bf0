"""workqueue: bursts coalesce, a key never runs twice at once, a trigger during a pass runs it again,
failures back off exponentially per key, passes can ask to run again later."""

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


class Temporary(Exception):
    def __init__(self, delay=None):
        super().__init__("temporary")
        self.delay = delay


class Permanent(Exception):
    permanent = True


def run_queue(process, **kw):
    q = WorkQueue(process, workers=2, **kw)
    q.start()
    return q


def test_failures_back_off_exponentially_per_key_and_reset_on_success():
    times: list[float] = []

    def process(key):
        times.append(time.monotonic())
        if len(times) <= 4:
            raise RuntimeError("apiserver hiccup")

    q = run_queue(process, retry_seconds=0.05, max_retry_seconds=10)
    try:
        q.add("k")
        wait_for(lambda: len(times) == 5)
        gaps = [b - a for a, b in zip(times, times[1:])]
        # 0.05, 0.1, 0.2, 0.4 s: each retry waits about twice the one before
        for gap, want in zip(gaps, [0.05, 0.1, 0.2, 0.4]):
            assert want * 0.9 <= gap < want + 0.5, gaps
        assert q.failures("k") == 0  # the fifth pass succeeded: the backoff starts over
    finally:
        q.stop()


def test_backoff_is_capped():
    q = WorkQueue(lambda key: None, retry_seconds=1, max_retry_seconds=5)
    assert [q.backoff("a") for _ in range(5)] == [1, 2, 4, 5, 5]
    assert q.backoff("b") == 1  # per key
    q.forget("a")
    assert q.backoff("a") == 1


def test_a_temporary_error_with_a_delay_waits_that_delay():
    times: list[float] = []

    def process(key):
        times.append(time.monotonic())
        if len(times) == 1:
            raise Temporary(delay=0.3)

    q = run_queue(process, retry_seconds=0.01)
    try:
        q.add("k")
        wait_for(lambda: len(times) == 2)
        assert times[1] - times[0] >= 0.29
    finally:
        q.stop()


def test_a_permanent_error_is_not_retried_until_the_next_trigger():
    calls = []

    def process(key):
        calls.append(key)
        raise Permanent("422 Invalid")

    q = run_queue(process, retry_seconds=0.01)
    try:
        q.add("k")
        wait_for(lambda: len(calls) == 1)
        time.sleep(0.2)
        assert calls == ["k"]
        q.add("k")
        wait_for(lambda: len(calls) == 2)
    finally:
        q.stop()


def test_requeue_after_runs_the_key_again_and_the_earliest_request_wins():
    times: list[float] = []

    def process(key):
        times.append(time.monotonic())
        return 0.2 if len(times) == 1 else None

    q = run_queue(process)
    try:
        q.add("k")
        wait_for(lambda: len(times) == 1)
        q.add_after("k", 5.0)  # later than the pass's own request: moot
        wait_for(lambda: len(times) == 2)
        assert 0.19 <= times[1] - times[0] < 1.0
        time.sleep(0.3)
        assert len(times) == 2
    finally:
        q.stop()


def test_add_soon_makes_one_pass_of_a_burst_and_skips_a_key_already_queued():
    times: list[float] = []
    gate = threading.Event()

    def process(key):
        if key == "block":
            gate.wait(5)
            return None
        times.append(time.monotonic())
        return None

    q = WorkQueue(process, workers=1)
    q.start()
    try:
        t0 = time.monotonic()
        for _ in range(20):  # a gang's pod and Job events within a few ms
            q.add_soon("k", 0.3)
        wait_for(lambda: len(times) == 1)
        assert times[0] - t0 >= 0.29  # it waited for the rest of the burst
        time.sleep(0.5)
        assert len(times) == 1  # ... and the burst was one pass
        # A key already waiting in the queue takes no delayed add: that pass reads the newest state.
        q.add("block")
        q.add("k")  # queued behind "block"
        q.add_soon("k", 0.1)
        gate.set()
        wait_for(lambda: len(times) == 2)
        time.sleep(0.4)
        assert len(times) == 2
    finally:
        q.stop()


def test_urgent_keys_run_before_the_queued_ones_and_each_key_runs_once():
    gate = threading.Event()
    runs: list[str] = []

    def process(key):
        if key == "block":
            gate.wait(5)
            return None
        runs.append(key)
        return None

    q = WorkQueue(process, workers=1)
    q.start()
    try:
        q.add("block")
        wait_for(lambda: len(q) == 0)  # "block" is being processed
        for k in ("s1", "s2", "s3", "moved"):
            q.add(k)  # status changes, queued in order
        q.add("new", urgent=True)  # a new SFTJob
        q.add("moved", urgent=True)  # a pod of a queued job failed: it jumps the line, and runs once
        q.add("new", urgent=True)
        assert len(q) == 5
        gate.set()
        wait_for(lambda: len(runs) == 5)
        time.sleep(0.2)
        assert runs == ["new", "moved", "s1", "s2", "s3"]
    finally:
        q.stop()


def test_an_urgent_trigger_during_a_pass_runs_the_key_again_in_the_urgent_lane():
    gate = threading.Event()
    runs: list[str] = []

    def process(key):
        runs.append(key)
        if key == "k" and runs.count("k") == 1:
            gate.wait(5)
        return None

    q = WorkQueue(process, workers=1)
    q.start()
    try:
        q.add("k")
        wait_for(lambda: runs == ["k"])
        q.add("other")
        q.add("k", urgent=True)  # its pod failed while its pass ran
        gate.set()
        wait_for(lambda: len(runs) == 3)
        assert runs == ["k", "k", "other"]
        q.add_soon("late", 5.0, urgent=True)  # urgent ignores the coalescing delay
        wait_for(lambda: "late" in runs, timeout=1.0)
    finally:
        q.stop()
