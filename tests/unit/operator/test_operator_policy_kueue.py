"""kueue: the queue label and the queued state."""

import pytest
from sftop_factories import kjob

from sft_operator.observe import observe_job
from sft_operator.policies.kueue import is_queued, queue_name


@pytest.mark.parametrize(
    "meta, queue",
    [({"labels": {"kueue.x-k8s.io/queue-name": "gpu"}}, "gpu"), ({"labels": {}}, None), ({}, None),
     ({"labels": {"kueue.x-k8s.io/queue-name": ""}}, None)],
)
def test_queue_name(meta, queue):
    assert queue_name(meta) == queue


@pytest.mark.parametrize(
    "job, queued",
    [(kjob(suspended=True), True), (kjob(suspended=False), False), (None, False),
     (kjob(suspended=True, failed_reason="DeadlineExceeded"), False)],
)
def test_is_queued(job, queued):
    assert is_queued(observe_job(job) if job else None) is queued
