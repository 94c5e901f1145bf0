"""ttl: ttlSecondsAfterFinished counts from status.completionTime, and acts once."""

import pytest
from sftop_factories import at

from sft_operator.policies.ttl import seconds_left, ttl_expired

DONE = "2026-01-01T12:00:00Z"


@pytest.mark.parametrize(
    "done, ttl, t, cleaned, expired, left",
    [
        pytest.param(DONE, 30, 29, False, False, 1.0, id="one second before the TTL the children stay"),
        pytest.param(DONE, 30, 30, False, True, 0.0, id="at the TTL the children go"),
        pytest.param(DONE, 30, 99, True, False, None, id="children already removed are not removed again"),
        pytest.param(None, 30, 99, False, False, None, id="an unfinished job has no TTL clock"),
        pytest.param(DONE, None, 99, False, False, None, id="no ttlSecondsAfterFinished keeps the children"),
        pytest.param(DONE, 0, 0, False, True, 0.0, id="a zero TTL removes them at once"),
    ],
)
def test_ttl(done, ttl, t, cleaned, expired, left):
    assert ttl_expired(done, ttl, at(t), cleaned) is expired
    assert seconds_left(done, ttl, at(t), cleaned) == left
