"""stall: the step clock in training, and a timeout of its own for every other trainer phase."""

import pytest
from sftop_factories import at

from sft_operator.observe import fmt_time
from sft_operator.policies.stall import DEFAULT_PHASE_TIMEOUTS, check, parse_seen


def rec(attempt, step, t, phase="training"):
    return {"attempt": attempt, "phase": phase, "step": step, "time": fmt_time(at(t))}


LEGACY = {"attempt": 1, "step": 5, "time": fmt_time(at(0))}  # written before phases existed
DL = DEFAULT_PHASE_TIMEOUTS["downloading"]


@pytest.mark.parametrize(
    "seen, attempt, step, t, timeout, changed, stalled",
    [
        pytest.param(None, 1, None, 0, 10, True, False, id="first sight starts the clock"),
        pytest.param(rec(1, 5, 0), 1, 5, 9, 10, False, False, id="below the stall timeout it runs"),
        pytest.param(rec(1, 5, 0), 1, 5, 10, 10, False, True, id="no step for stallTimeoutSeconds stalls"),
        pytest.param(rec(1, 5, 0), 1, 6, 100, 10, True, False, id="a new step restarts the clock"),
        pytest.param(rec(1, 5, 0), 2, 5, 100, 10, True, False, id="a new attempt restarts the clock"),
        pytest.param(rec(1, 5, 0), 1, 5, 10000, None, False, False, id="no stall timeout never stalls"),
        pytest.param(rec(1, 5, 0), 1, 5, 10000, 0, False, False, id="a zero stall timeout never stalls"),
        pytest.param(LEGACY, 1, 5, 10, 10, False, True, id="a record without a phase is a training record"),
    ],
)
def test_training_clock(seen, attempt, step, t, timeout, changed, stalled):
    c = check(seen, attempt=attempt, step=step, now=at(t), timeout=timeout)
    assert (c.changed, c.stalled) == (changed, stalled)
    if changed:
        assert c.seen == rec(attempt, step, t)
    if stalled:
        assert "in phase training" in c.message and f"stallTimeoutSeconds={timeout}" in c.message


@pytest.mark.parametrize(
    "seen, phase, t, heartbeat, stalled, fragment",
    [
        pytest.param(rec(1, None, 0, "downloading"), "downloading", 1800, None, False, "",
                     id="a slow download past stallTimeoutSeconds is not a stall"),
        pytest.param(rec(1, None, 0, "downloading"), "downloading", DL, None, True, "phase downloading has lasted",
                     id="a download past its own timeout stalls, naming the phase"),
        pytest.param(rec(1, None, 0, "exporting"), "exporting", 1800, 1790, False, "",
                     id="an export with a fresh heartbeat is live"),
        pytest.param(rec(1, None, 0, "evaluating"), "evaluating", 1800, 1000, True, "no heartbeat for 800s in phase evaluating",
                     id="an evaluation whose heartbeat stopped for stallTimeoutSeconds is hung"),
        pytest.param(rec(1, None, 0, "checkpointing"), "checkpointing", 7199, None, False, "",
                     id="a checkpoint just inside its timeout runs"),
        pytest.param(rec(1, None, 0, "checkpointing"), "checkpointing", 7200, None, True, "phase checkpointing",
                     id="a checkpoint at its timeout stalls"),
        pytest.param(rec(1, 5, 0, "training"), "evaluating", 100000, None, False, "",
                     id="entering another phase restarts the clock"),
        pytest.param(rec(1, None, 0, "reticulating"), "reticulating", 4 * 3600, None, True, "phase reticulating",
                     id="an unknown phase gets the generous default timeout"),
    ],
)
def test_phase_clock(seen, phase, t, heartbeat, stalled, fragment):
    beat = fmt_time(at(heartbeat)) if heartbeat is not None else None
    c = check(seen, attempt=1, step=None, now=at(t), timeout=600, phase=phase, heartbeat=beat, heartbeat_grace=90)
    assert c.stalled is stalled
    assert fragment in c.message
    if not stalled:
        assert c.wake_in is not None and c.wake_in > 0


@pytest.mark.parametrize(
    "timeout, silent, grace, stalled",
    [
        pytest.param(10, 60, 90, False, id="a short stall timeout does not mistake the gap between beats for a hang"),
        pytest.param(10, 90, 90, True, id="three missed beats are a hang"),
        pytest.param(600, 300, 90, False, id="a long stall timeout waits for itself"),
        pytest.param(10, 10, 0, True, id="without grace the stall timeout alone counts"),
    ],
)
def test_heartbeat_grace(timeout, silent, grace, stalled):
    seen = rec(1, None, 0, "downloading")
    c = check(seen, attempt=1, step=None, now=at(1000), timeout=timeout, phase="downloading",
              heartbeat=fmt_time(at(1000 - silent)), heartbeat_grace=grace)
    assert c.stalled is stalled


def test_phase_timeouts_can_be_overridden():
    seen = rec(1, None, 0, "downloading")
    c = check(seen, attempt=1, step=None, now=at(61), timeout=600, phase="downloading", phase_timeouts={"downloading": 60})
    assert c.stalled and "its timeout is 60s" in c.message


def test_back_to_training_counts_steps_from_then():
    """The download took an hour; the step clock starts only when training begins."""
    seen = rec(1, None, 0, "downloading")
    entered = check(seen, attempt=1, step=0, now=at(3600), timeout=600, phase="training")
    assert entered.changed and not entered.stalled and entered.wake_in == 600
    later = check(entered.seen, attempt=1, step=0, now=at(3600 + 599), timeout=600, phase="training")
    assert not later.stalled and later.wake_in == pytest.approx(1)
    assert check(entered.seen, attempt=1, step=0, now=at(4200), timeout=600, phase="training").stalled


@pytest.mark.parametrize(
    "raw, ok",
    [
        pytest.param(None, False, id="no annotation"),
        pytest.param("", False, id="empty annotation"),
        pytest.param("{bad", False, id="not JSON"),
        pytest.param("[1]", False, id="not an object"),
        pytest.param('{"time": "x"}', True, id="an object with a time"),
    ],
)
def test_parse_seen(raw, ok):
    assert (parse_seen(raw) is not None) == ok
