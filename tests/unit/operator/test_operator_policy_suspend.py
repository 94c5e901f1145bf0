"""suspend: enter and leave Suspended."""

import pytest

from sft_operator.policies.suspend import action


@pytest.mark.parametrize(
    "suspend, phase, expected",
    [
        (True, None, "suspend"), (True, "Running", "suspend"), (True, "Suspended", "suspend"),
        (False, "Suspended", "resume"), (False, "Running", None), (False, None, None),
        (True, "Succeeded", None), (True, "Failed", None), (False, "Failed", None),
    ],
)
def test_action(suspend, phase, expected):
    assert action(suspend, phase) == expected
