"""preemption: what counts as a disruption (a preemption), not a restart."""

import pytest
from sftop_factories import kjob, pod

from sft_operator.conditions import Reason
from sft_operator.observe import observe_job, observe_pod
from sft_operator.policies.preemption import disruption_of, job_disruption


@pytest.mark.parametrize(
    "raw, missing, reason",
    [
        pytest.param(pod(disruption="PreemptionByScheduler"), set(), Reason.PREEMPTED, id="scheduler preemption is Preempted"),
        pytest.param(pod(disruption="EvictionByEvictionAPI", phase="Failed"), set(), Reason.EVICTED, id="the Eviction API is Evicted"),
        pytest.param(pod(disruption="TerminationByKubelet", phase="Failed"), set(), Reason.EVICTED, id="a kubelet termination is Evicted"),
        pytest.param(pod(disruption="DeletionByTaintManager"), set(), Reason.NODE_LOST, id="a taint-manager deletion is NodeLost"),
        pytest.param(pod(disruption="DeletionByPodGC", phase="Failed"), set(), Reason.NODE_LOST, id="pod GC after node loss is NodeLost"),
        pytest.param(pod(disruption="SomethingNew"), set(), Reason.PREEMPTED, id="an unknown disruption counts as Preempted"),
        pytest.param(pod(node="gpu-9"), {"gpu-9"}, Reason.NODE_LOST, id="a pod on a vanished node is NodeLost"),
        pytest.param(pod(phase="Failed", status_reason="Evicted"), set(), Reason.EVICTED, id="a kubelet eviction is Evicted"),
        pytest.param(pod(phase="Failed", exit_code=1), set(), None, id="a crash is not a disruption"),
        pytest.param(pod(node="gpu-1"), {"gpu-9"}, None, id="another node's loss does not disrupt this pod"),
    ],
)
def test_disruption_of(raw, missing, reason):
    got = disruption_of(observe_pod(raw), frozenset(missing))
    assert (got[0] if got else None) == reason
    if got:
        assert "demo-a1-0-x" in got[1]


@pytest.mark.parametrize(
    "reason, message, disrupted",
    [
        pytest.param("PodFailurePolicy", "Pod ns/p has condition DisruptionTarget matching FailJob rule at index 1", True,
                     id="the DisruptionTarget rule is a disruption"),
        pytest.param("PodFailurePolicy", "Container trainer for pod ns/p failed with exit code 64 matching FailJob rule at index 0",
                     False, id="the exit-code rule is not"),
        pytest.param("BackoffLimitExceeded", "Job has reached the specified backoff limit", False, id="a backoff limit is not"),
    ],
)
def test_job_disruption(reason, message, disrupted):
    assert (job_disruption(observe_job(kjob(failed_reason=reason, failed_message=message))) is not None) == disrupted
