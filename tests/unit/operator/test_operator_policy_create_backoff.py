"""create_backoff: a refused child is retried with exponential backoff per SFTJob and attempt."""

import pytest
from sftop_factories import at

from sft_operator.observe import fmt_time
from sft_operator.policies.create_backoff import delay, parse, record, wait_left


def rec(attempt, failures, t):
    return {"attempt": attempt, "failures": failures, "time": fmt_time(at(t))}


@pytest.mark.parametrize(
    "failures, expected",
    [
        pytest.param(0, 0.0, id="no failure means no wait"),
        pytest.param(1, 2.0, id="the first refusal waits the base delay"),
        pytest.param(2, 4.0, id="the second doubles it"),
        pytest.param(5, 32.0, id="the fifth waits base times sixteen"),
        pytest.param(20, 300.0, id="the delay is capped"),
        pytest.param(10_000, 300.0, id="a huge count stays capped without overflow"),
    ],
)
def test_delay(failures, expected):
    assert delay(failures, 2.0, 300.0) == expected


@pytest.mark.parametrize(
    "previous, attempt, failures",
    [
        pytest.param(None, 1, 1, id="the first refusal counts one"),
        pytest.param(rec(1, 3, 0), 1, 4, id="another refusal of the same attempt counts on"),
        pytest.param(rec(1, 3, 0), 2, 1, id="a new attempt counts from one again"),
    ],
)
def test_record(previous, attempt, failures):
    assert record(previous, attempt=attempt, now=at(10)) == rec(attempt, failures, 10)


@pytest.mark.parametrize(
    "current, attempt, t, left",
    [
        pytest.param(None, 1, 0, 0.0, id="nothing refused: create now"),
        pytest.param(rec(1, 1, 0), 1, 1, 1.0, id="one second into a two-second backoff"),
        pytest.param(rec(1, 3, 0), 1, 3, 5.0, id="third refusal waits eight seconds"),
        pytest.param(rec(1, 3, 0), 1, 9, 0.0, id="the backoff has passed"),
        pytest.param(rec(1, 3, 0), 2, 1, 0.0, id="another attempt does not wait for this one"),
    ],
)
def test_wait_left(current, attempt, t, left):
    assert wait_left(current, attempt=attempt, now=at(t), base=2.0, cap=300.0) == left


@pytest.mark.parametrize(
    "raw, ok",
    [
        pytest.param(None, False, id="no annotation"),
        pytest.param("{bad", False, id="not JSON"),
        pytest.param('{"failures": "2", "time": "2026-01-01T00:00:00Z"}', False, id="a count that is not a number"),
        pytest.param('{"failures": 2, "time": "yesterday"}', False, id="a time that is not RFC 3339"),
        pytest.param('{"attempt": 1, "failures": 2, "time": "2026-01-01T00:00:00Z"}', True, id="a valid record"),
    ],
)
def test_parse(raw, ok):
    assert (parse(raw) is not None) is ok
