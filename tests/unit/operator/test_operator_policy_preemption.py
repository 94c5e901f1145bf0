"""preemption: what counts as a disruption (a preemption), not a restart."""

import pytest
from sftop_factories import kjob, pod

from sft_operator.conditions import Reason
from sft_operator.observe import observe_job, observe_pod
from sft_operator.policies.preemption import disruption_of, job_disruption


@pytest.mark.parametrize(
    "raw, missing, reason",
    [
        (pod(disruption="PreemptionByScheduler"), set(), Reason.PREEMPTED),
        (pod(disruption="EvictionByEvictionAPI", phase="Failed"), set(), Reason.EVICTED),
        (pod(disruption="TerminationByKubelet", phase="Failed"), set(), Reason.EVICTED),
        (pod(disruption="DeletionByTaintManager"), set(), Reason.NODE_LOST),
        (pod(disruption="DeletionByPodGC", phase="Failed"), set(), Reason.NODE_LOST),
        (pod(disruption="SomethingNew"), set(), Reason.PREEMPTED),
        (pod(node="gpu-9"), {"gpu-9"}, Reason.NODE_LOST),
        (pod(phase="Failed", status_reason="Evicted"), set(), Reason.EVICTED),
        (pod(phase="Failed", exit_code=1), set(), None),
        (pod(node="gpu-1"), {"gpu-9"}, None),
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
        ("PodFailurePolicy", "Pod ns/p has condition DisruptionTarget matching FailJob rule at index 1", True),
        ("PodFailurePolicy", "Container trainer for pod ns/p failed with exit code 64 matching FailJob rule at index 0", False),
        ("BackoffLimitExceeded", "Job has reached the specified backoff limit", False),
    ],
)
def test_job_disruption(reason, message, disrupted):
    assert (job_disruption(observe_job(kjob(failed_reason=reason, failed_message=message))) is not None) == disrupted
