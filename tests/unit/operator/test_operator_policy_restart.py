"""restart_policy: classification of a failed attempt and the restart/fail decision."""

import pytest
from sftop_factories import kjob, pod

from sft_operator.conditions import Reason
from sft_operator.observe import observe_job, observe_pod
from sft_operator.policies.restart_policy import Failure, classify, decide, pod_failure


@pytest.mark.parametrize(
    "raw, reason, fragment",
    [
        pytest.param(pod(phase="Running"), None, None, id="a running pod has not failed"),
        pytest.param(pod(phase="Succeeded", exit_code=0), None, None, id="a succeeded pod has not failed"),
        pytest.param(pod(phase="Failed", exit_code=1), Reason.POD_FAILED, "exited with code 1", id="exit 1 is PodFailed"),
        pytest.param(pod(phase="Failed", exit_code=137, term_reason="OOMKilled"), Reason.OOM_KILLED, "OOMKilled",
                     id="an OOM kill is OOMKilled"),
        pytest.param(pod(phase="Failed", exit_code=64), Reason.DATA_ERROR, "code 64", id="exit 64 is DataError"),
        pytest.param(pod(phase="Failed", exit_code=65), Reason.GOLDEN_SET_REGRESSION, "code 65", id="exit 65 is GoldenSetRegression"),
        pytest.param(pod(phase="Failed", exit_code=66), Reason.TOPOLOGY_MISMATCH, "code 66", id="exit 66 is TopologyMismatch"),
        pytest.param(pod(phase="Failed", exit_code=67), Reason.SANITY_CHECK_FAILED, "code 67",
                     id="exit 67 is SanityCheckFailed"),
        pytest.param(pod(phase="Failed", disruption="EvictionByEvictionAPI"), Reason.EVICTED, "EvictionByEvictionAPI",
                     id="a disruption wins over the exit code"),
        pytest.param(pod(phase="Failed"), Reason.POD_FAILED, "failed", id="a failed pod without an exit code is PodFailed"),
        pytest.param(pod(phase="Failed", exit_code=75), Reason.INTERRUPTED, "SIGTERM", id="exit 75 is Interrupted"),
    ],
)
def test_pod_failure(raw, reason, fragment):
    f = pod_failure(observe_pod(raw))
    if reason is None:
        assert f is None
    else:
        assert f.reason == reason and fragment in f.message and "demo-a1-0-x" in f.message


@pytest.mark.parametrize(
    "pods, reason",
    [
        pytest.param([pod(index=0, phase="Failed", exit_code=1), pod(index=1, phase="Failed", exit_code=137, term_reason="OOMKilled")],
                     Reason.OOM_KILLED, id="OOMKilled wins over a peer's crash"),
        pytest.param([pod(index=0, phase="Failed", exit_code=1), pod(index=1, phase="Failed", disruption="DeletionByTaintManager")],
                     Reason.NODE_LOST, id="a node loss wins over a peer's crash"),
        pytest.param([pod(index=0, phase="Failed", disruption="PreemptionByScheduler"), pod(index=1, phase="Failed", exit_code=65)],
                     Reason.GOLDEN_SET_REGRESSION, id="a non-retryable code wins over a preemption"),
        pytest.param([pod(index=0), pod(index=1)], None, id="a running gang has no failure"),
    ],
)
def test_classify_priority(pods, reason):
    f = classify(observe_job(kjob()), [observe_pod(p) for p in pods])
    assert (f.reason if f else None) == reason


def test_classify_falls_back_to_job_condition():
    j = observe_job(kjob(failed=1, failed_reason="BackoffLimitExceeded", failed_message="Job has reached the specified backoff limit"))
    f = classify(j, [])
    assert f.reason == Reason.POD_FAILED and "backoff limit" in f.message


@pytest.mark.parametrize(
    "reason, restarts, preemptions, restart, counts_as, final",
    [
        pytest.param(Reason.POD_FAILED, 0, 0, True, "restarts", Reason.POD_FAILED, id="a first crash restarts"),
        pytest.param(Reason.POD_FAILED, 2, 0, True, "restarts", Reason.POD_FAILED, id="a crash below maxRestarts restarts"),
        pytest.param(Reason.POD_FAILED, 3, 0, False, None, Reason.MAX_RESTARTS, id="a crash at maxRestarts fails"),
        pytest.param(Reason.STALLED, 3, 0, False, None, Reason.MAX_RESTARTS, id="a stall at maxRestarts fails"),
        pytest.param(Reason.PREEMPTED, 3, 0, True, "preemptions", Reason.PREEMPTED,
                     id="a preemption restarts even when restarts are exhausted"),
        pytest.param(Reason.NODE_LOST, 0, 9, True, "preemptions", Reason.NODE_LOST, id="a node loss below maxPreemptions restarts"),
        pytest.param(Reason.EVICTED, 0, 10, False, None, Reason.MAX_PREEMPTIONS, id="an eviction at maxPreemptions fails"),
        pytest.param(Reason.DATA_ERROR, 0, 0, False, None, Reason.DATA_ERROR, id="a data error fails at once"),
        pytest.param(Reason.TOPOLOGY_MISMATCH, 0, 0, False, None, Reason.TOPOLOGY_MISMATCH, id="a topology mismatch fails at once"),
    ],
)
def test_decide(reason, restarts, preemptions, restart, counts_as, final):
    d = decide(Failure(reason, "why"), restarts=restarts, preemptions=preemptions, max_restarts=3, max_preemptions=10)
    assert (d.restart, d.counts_as, d.reason) == (restart, counts_as, final)
    assert "why" in d.message


def test_zero_max_restarts_fails_first_failure():
    d = decide(Failure(Reason.POD_FAILED, "x"), restarts=0, preemptions=0, max_restarts=0, max_preemptions=10)
    assert not d.restart and d.reason == Reason.MAX_RESTARTS
