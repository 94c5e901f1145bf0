"""stall: the step-change clock per attempt."""

import pytest
from sftop_factories import at

from sft_operator.observe import fmt_time
from sft_operator.policies.stall import check, parse_seen


def rec(attempt, step, t):
    return {"attempt": attempt, "step": step, "time": fmt_time(at(t))}


@pytest.mark.parametrize(
    "seen, attempt, step, t, timeout, changed, stalled",
    [
        (None, 1, None, 0, 10, True, False),  # first sight starts the clock
        (rec(1, 5, 0), 1, 5, 9, 10, False, False),
        (rec(1, 5, 0), 1, 5, 10, 10, False, True),
        (rec(1, 5, 0), 1, 6, 100, 10, True, False),  # progress moved: clock restarts
        (rec(1, 5, 0), 2, 5, 100, 10, True, False),  # new attempt: clock restarts
        (rec(1, 5, 0), 1, 5, 10000, None, False, False),  # no timeout configured
        (rec(1, 5, 0), 1, 5, 10000, 0, False, False),
    ],
)
def test_check(seen, attempt, step, t, timeout, changed, stalled):
    c = check(seen, attempt=attempt, step=step, now=at(t), timeout=timeout)
    assert (c.changed, c.stalled) == (changed, stalled)
    if changed:
        assert c.seen == rec(attempt, step, t)


@pytest.mark.parametrize("raw, ok", [(None, False), ("", False), ("{bad", False), ("[1]", False), ('{"time": "x"}', True)])
def test_parse_seen(raw, ok):
    assert (parse_seen(raw) is not None) == ok
