"""deadline: activeDeadlineSeconds counts from status.startTime."""

import pytest
from sftop_factories import at

from sft_operator.policies.deadline import deadline_exceeded, seconds_left

START = "2026-01-01T12:00:00Z"


@pytest.mark.parametrize(
    "start, deadline, t, exceeded, left",
    [
        pytest.param(START, 60, 59, False, 1.0, id="one second before the deadline it still runs"),
        pytest.param(START, 60, 60, True, 0.0, id="at the deadline it is exceeded"),
        pytest.param(START, 60, 90, True, -30.0, id="past the deadline it stays exceeded"),
        pytest.param(None, 60, 1000, False, None, id="no startTime yet means no clock runs"),
        pytest.param(START, None, 1000, False, None, id="no activeDeadlineSeconds means no deadline"),
        pytest.param(START, 0, 0, True, 0.0, id="a zero deadline is exceeded at once"),
    ],
)
def test_deadline(start, deadline, t, exceeded, left):
    assert deadline_exceeded(start, deadline, at(t)) is exceeded
    assert seconds_left(start, deadline, at(t)) == left
