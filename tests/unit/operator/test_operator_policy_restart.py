"""restart_policy: classification of a failed attempt and the restart/fail decision."""

import pytest
from sftop_factories import kjob, pod

from sft_operator.conditions import Reason
from sft_operator.observe import observe_job, observe_pod
from sft_operator.policies.restart_policy import Failure, classify, decide, pod_failure


@pytest.mark.parametrize(
    "raw, reason, fragment",
    [
        (pod(phase="Running"), None, None),
        (pod(phase="Succeeded", exit_code=0), None, None),
        (pod(phase="Failed", exit_code=1), Reason.POD_FAILED, "exited with code 1"),
        (pod(phase="Failed", exit_code=137, term_reason="OOMKilled"), Reason.OOM_KILLED, "OOMKilled"),
        (pod(phase="Failed", exit_code=64), Reason.DATA_ERROR, "code 64"),
        (pod(phase="Failed", exit_code=65), Reason.GOLDEN_SET_REGRESSION, "code 65"),
        (pod(phase="Failed", exit_code=66), Reason.TOPOLOGY_MISMATCH, "code 66"),
        (pod(phase="Failed", disruption="EvictionByEvictionAPI"), Reason.EVICTED, "EvictionByEvictionAPI"),
        (pod(phase="Failed"), Reason.POD_FAILED, "failed"),
        (pod(phase="Failed", exit_code=75), Reason.INTERRUPTED, "SIGTERM"),
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
        ([pod(index=0, phase="Failed", exit_code=1), pod(index=1, phase="Failed", exit_code=137, term_reason="OOMKilled")], Reason.OOM_KILLED),
        ([pod(index=0, phase="Failed", exit_code=1), pod(index=1, phase="Failed", disruption="DeletionByTaintManager")], Reason.NODE_LOST),
        ([pod(index=0, phase="Failed", disruption="PreemptionByScheduler"), pod(index=1, phase="Failed", exit_code=65)], Reason.GOLDEN_SET_REGRESSION),
        ([pod(index=0), pod(index=1)], None),
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
        (Reason.POD_FAILED, 0, 0, True, "restarts", Reason.POD_FAILED),
        (Reason.POD_FAILED, 2, 0, True, "restarts", Reason.POD_FAILED),
        (Reason.POD_FAILED, 3, 0, False, None, Reason.MAX_RESTARTS),
        (Reason.STALLED, 3, 0, False, None, Reason.MAX_RESTARTS),
        (Reason.PREEMPTED, 3, 0, True, "preemptions", Reason.PREEMPTED),
        (Reason.NODE_LOST, 0, 9, True, "preemptions", Reason.NODE_LOST),
        (Reason.EVICTED, 0, 10, False, None, Reason.MAX_PREEMPTIONS),
        (Reason.DATA_ERROR, 0, 0, False, None, Reason.DATA_ERROR),
        (Reason.TOPOLOGY_MISMATCH, 0, 0, False, None, Reason.TOPOLOGY_MISMATCH),
    ],
)
def test_decide(reason, restarts, preemptions, restart, counts_as, final):
    d = decide(Failure(reason, "why"), restarts=restarts, preemptions=preemptions, max_restarts=3, max_preemptions=10)
    assert (d.restart, d.counts_as, d.reason) == (restart, counts_as, final)
    assert "why" in d.message


def test_zero_max_restarts_fails_first_failure():
    d = decide(Failure(Reason.POD_FAILED, "x"), restarts=0, preemptions=0, max_restarts=0, max_preemptions=10)
    assert not d.restart and d.reason == Reason.MAX_RESTARTS
