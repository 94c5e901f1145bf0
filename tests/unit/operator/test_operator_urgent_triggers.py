"""Which watch events are urgent (the urgent lane of the work queue): the ones a pass must act on."""

from __future__ import annotations

import pytest

from sft_operator.handlers import job_event_is_urgent, pod_event_is_urgent, sftjob_event_is_urgent


def _pod(phase="Running", deleting=False, terminated=False):
    meta = {"name": "p", **({"deletionTimestamp": "2026-12-01T00:00:00Z"} if deleting else {})}
    state = {"terminated": {"exitCode": 1}} if terminated else {"running": {}}
    return {"metadata": meta, "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]}}


@pytest.mark.parametrize("event, body, urgent", [
    pytest.param("MODIFIED", _pod("Pending"), False, id="scheduled"),
    pytest.param("MODIFIED", _pod("Running"), False, id="running"),
    pytest.param("MODIFIED", _pod("Running", terminated=True), True, id="container-exited-phase-not-yet"),
    pytest.param("MODIFIED", _pod("Failed"), True, id="failed"),
    pytest.param("MODIFIED", _pod("Succeeded"), True, id="succeeded"),
    pytest.param("MODIFIED", _pod("Running", deleting=True), False, id="being-deleted-still-blocks"),
    pytest.param("DELETED", _pod("Running"), True, id="gone"),
])
def test_pod_events(event, body, urgent):
    assert pod_event_is_urgent(event, body) is urgent


def test_job_events():
    running = {"metadata": {}, "status": {"active": 2, "conditions": [{"type": "Suspended", "status": "False"}]}}
    failed = {"metadata": {}, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    complete = {"metadata": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert not job_event_is_urgent("MODIFIED", running)
    assert job_event_is_urgent("MODIFIED", failed) and job_event_is_urgent("MODIFIED", complete)
    assert job_event_is_urgent("DELETED", running)
    assert not job_event_is_urgent("MODIFIED", {**running, "metadata": {"deletionTimestamp": "2026-12-01T00:00:00Z"}})


def test_sftjob_events():
    v1 = {"metadata": {"generation": 1, "resourceVersion": "10"}}
    progress = {"metadata": {"generation": 1, "resourceVersion": "11"}, "status": {"progress": {"step": 5}}}
    edited = {"metadata": {"generation": 2, "resourceVersion": "12"}}
    deleting = {"metadata": {"generation": 1, "deletionTimestamp": "2026-12-01T00:00:00Z"}}
    assert sftjob_event_is_urgent(None, v1)  # new
    assert not sftjob_event_is_urgent(v1, progress)  # a status patch (ours or the trainer's)
    assert sftjob_event_is_urgent(progress, edited) and sftjob_event_is_urgent(v1, deleting)
