"""kueue: the queue label and the queued state."""

import pytest
from sftop_factories import kjob

from sft_operator.observe import observe_job
from sft_operator.policies import kueue
from sft_operator.policies.kueue import is_queued, queue_name


@pytest.mark.parametrize(
    "meta, queue",
    [
        pytest.param({"labels": {"kueue.x-k8s.io/queue-name": "gpu"}}, "gpu", id="the queue label names the queue"),
        pytest.param({"labels": {}}, None, id="no queue label means no queue"),
        pytest.param({}, None, id="no labels at all means no queue"),
        pytest.param({"labels": {"kueue.x-k8s.io/queue-name": ""}}, None, id="an empty queue label means no queue"),
    ],
)
def test_queue_name(meta, queue):
    assert queue_name(meta) == queue


@pytest.mark.parametrize(
    "job, queued",
    [
        pytest.param(kjob(suspended=True), True, id="a suspended Job waits for admission"),
        pytest.param(kjob(suspended=False), False, id="an admitted Job is not queued"),
        pytest.param(None, False, id="no Job is not queued"),
        pytest.param(kjob(suspended=True, failed_reason="DeadlineExceeded"), False, id="a suspended Job that failed is not queued"),
    ],
)
def test_is_queued(job, queued):
    assert is_queued(observe_job(job) if job else None) is queued


def _workload(job_name, conditions):
    return {"metadata": {"name": f"job-{job_name}-1a2b3", "ownerReferences": [{"kind": "Job", "name": job_name}]},
            "status": {"conditions": conditions}}


QUOTA = "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor gpu, 16 more needed"


@pytest.mark.parametrize("workloads,expected", [
    pytest.param([_workload("demo-a1", [{"type": "QuotaReserved", "status": "False", "message": QUOTA}])], QUOTA,
                 id="quota-not-reserved-gives-kueues-message"),
    pytest.param([_workload("demo-a1", [{"type": "QuotaReserved", "status": "True", "message": "reserved"},
                                        {"type": "Admitted", "status": "False", "message": "waiting for checks"}])],
                 "waiting for checks", id="reserved-but-not-admitted"),
    pytest.param([_workload("other-a1", [{"type": "QuotaReserved", "status": "False", "message": QUOTA}])], None,
                 id="another-jobs-workload-is-ignored"),
    pytest.param([_workload("demo-a1", [{"type": "QuotaReserved", "status": "True", "message": "ok"},
                                        {"type": "Admitted", "status": "True", "message": "ok"}])], None,
                 id="admitted-has-no-waiting-message"),
    pytest.param([], None, id="no-workload-yet"),
])
def test_admission_message(workloads, expected):
    assert kueue.admission_message(workloads, "demo-a1") == expected
