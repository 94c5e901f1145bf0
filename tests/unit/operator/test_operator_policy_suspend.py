"""suspend: enter and leave Suspended."""

import pytest

from sft_operator.policies.suspend import action


@pytest.mark.parametrize(
    "suspend, phase, expected",
    [
        pytest.param(True, None, "suspend", id="suspend before the first pass suspends"),
        pytest.param(True, "Running", "suspend", id="suspend while running suspends"),
        pytest.param(True, "Suspended", "suspend", id="suspended stays suspended"),
        pytest.param(False, "Suspended", "resume", id="clearing suspend resumes"),
        pytest.param(False, "Running", None, id="running without suspend does nothing"),
        pytest.param(False, None, None, id="a new job without suspend does nothing"),
        pytest.param(True, "Succeeded", None, id="a succeeded job is never suspended"),
        pytest.param(True, "Failed", None, id="a failed job is never suspended"),
        pytest.param(False, "Failed", None, id="a failed job is never resumed"),
    ],
)
def test_action(suspend, phase, expected):
    assert action(suspend, phase) == expected
