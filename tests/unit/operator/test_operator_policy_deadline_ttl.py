"""deadline_ttl: activeDeadlineSeconds and ttlSecondsAfterFinished clocks."""

import pytest
from sftop_factories import at

from sft_operator.policies.deadline_ttl import deadline_exceeded, ttl_expired

START = "2026-01-01T12:00:00Z"


@pytest.mark.parametrize(
    "start, deadline, t, exceeded",
    [(START, 60, 59, False), (START, 60, 60, True), (None, 60, 1000, False), (START, None, 1000, False), (START, 0, 0, True)],
)
def test_deadline(start, deadline, t, exceeded):
    assert deadline_exceeded(start, deadline, at(t)) is exceeded


@pytest.mark.parametrize(
    "done, ttl, t, cleaned, expired",
    [(START, 30, 29, False, False), (START, 30, 30, False, True), (START, 30, 99, True, False),
     (None, 30, 99, False, False), (START, None, 99, False, False), (START, 0, 0, False, True)],
)
def test_ttl(done, ttl, t, cleaned, expired):
    assert ttl_expired(done, ttl, at(t), cleaned) is expired
