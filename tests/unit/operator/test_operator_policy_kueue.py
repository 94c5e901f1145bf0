"""kueue: the queue label and the queued state."""

import pytest
from sftop_factories import kjob

from sft_operator.observe import observe_job
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
