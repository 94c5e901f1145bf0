"""apply._wave: a pass's independent writes run at once; the first error in call order is raised
after every call has finished."""

from __future__ import annotations

import threading
import time

import pytest

from sft_operator.apply import _wave


def test_calls_run_at_once_and_results_keep_their_order():
    barrier = threading.Barrier(4, timeout=5)  # only passes if all four calls are in flight together

    def call(i):
        barrier.wait()
        return i * 10

    assert _wave([lambda i=i: call(i) for i in range(4)]) == [0, 10, 20, 30]


def test_the_first_error_in_call_order_is_raised_after_all_calls_finished():
    done = []

    def slow_ok():
        time.sleep(0.2)
        done.append("slow")

    def fail(msg, delay):
        time.sleep(delay)
        raise ValueError(msg)

    with pytest.raises(ValueError, match="first"):
        _wave([lambda: fail("first", 0.1), lambda: fail("second", 0.0), slow_ok])
    assert done == ["slow"]


def test_a_single_call_runs_in_the_callers_thread():
    assert _wave([threading.current_thread]) == [threading.current_thread()]
    assert _wave([]) == []
