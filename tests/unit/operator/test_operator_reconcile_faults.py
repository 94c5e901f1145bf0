"""Faults visible in status, and the clocks' requeue_after: a refused child, its backoff, the deadline
counted from the first creation."""

from __future__ import annotations

import json

import pytest
from sftop_factories import at, kjob, obs, sftjob
from test_operator_reconcile import S, applied, both_running, cond, run, running_status

from sft_operator.reconcile import child_create_failed

QUOTA = ('jobs.batch "demo-a1" is forbidden: exceeded quota: no-jobs, requested: count/jobs.batch=1, '
         'used: count/jobs.batch=0, limited: count/jobs.batch=0')


def refuse(body, t, message=QUOTA, code=403):
    return child_create_failed(body, obs(), at(t), S, kind="Job", name="demo-a1", code=code, message=message)


def test_refused_job_sets_a_condition_with_the_apiservers_message_and_one_event():
    body = applied(sftjob(), run(sftjob(), obs()))
    r = refuse(body, 0)
    c = cond(r, "ChildCreateFailed")
    assert c["status"] == "True" and c["reason"] == "FailedCreate"
    assert "exceeded quota: no-jobs" in c["message"] and "Job demo-a1" in c["message"] and "HTTP 403" in c["message"]
    assert [(e.type, e.reason) for e in r.events] == [("Warning", "FailedCreate")]
    assert "exceeded quota" in r.events[0].message
    assert r.status["phase"] == "Pending"  # nothing failed for good: quota may be raised
    assert r.requeue_after == 2.0
    # The same refusal again: the condition is unchanged (no write, no second event), the backoff doubles.
    body = applied(body, r)
    r2 = refuse(body, 2)
    assert r2.status_patch == {} and r2.events == [] and r2.requeue_after == 4.0
    assert json.loads(r2.annotations["sft.dev/create-failures"])["failures"] == 2


def test_every_trigger_during_the_backoff_waits_instead_of_creating():
    body = applied(sftjob(), run(sftjob(), obs()))
    for failures, t in enumerate([0, 2, 6, 14], start=1):  # each retry comes when its backoff ends
        body = applied(body, refuse(body, t))
        early = run(body, obs(), t + 0.5)
        assert early.apply == [] and early.requeue_after == pytest.approx(2.0 * 2 ** (failures - 1) - 0.5)
        due = run(body, obs(), t + 2.0 * 2 ** (failures - 1))
        assert [o["kind"] for o in due.apply][-1] == "Job"


def test_created_children_clear_the_refusal():
    body = applied(sftjob(), run(sftjob(), obs()))
    body = applied(body, refuse(body, 0))
    r = run(body, obs([kjob(active=2)]), 3)
    assert cond(r, "ChildCreateFailed")["status"] == "False" and cond(r, "ChildCreateFailed")["reason"] == "ChildrenCreated"
    assert r.annotations["sft.dev/create-failures"] is None


def test_deadline_counts_from_the_first_creation_even_when_it_keeps_failing():
    body = sftjob(deadline=30)
    first = run(body, obs())
    assert first.status["startTime"] == "2026-01-01T12:00:00Z" and first.requeue_after == 30
    body = applied(body, first)
    body = applied(body, refuse(body, 0))
    assert run(body, obs(), 29).status["phase"] == "Pending"
    r = run(body, obs(), 30)
    assert r.status["phase"] == "Failed" and cond(r, "Failed")["reason"] == "DeadlineExceeded"
    assert "exceeded quota" in cond(r, "ChildCreateFailed")["message"]  # why it never started stays visible


@pytest.mark.parametrize(
    "body, world, t, expected",
    [
        pytest.param(sftjob(status=running_status(), stall=60,
                            annotations={"sft.dev/progress-seen": json.dumps({"attempt": 1, "phase": "training", "step": None,
                                                                               "time": "2026-01-01T12:00:00Z"})}),
                     both_running(), 20, 40.0, id="a running gang wakes when its stall clock is due"),
        pytest.param(sftjob(status=running_status(), stall=60, deadline=30), both_running(), 20, 10.0,
                     id="the nearer of stall and deadline wins"),
        pytest.param(sftjob(status=running_status(phase="Succeeded", completionTime="2026-01-01T12:00:00Z"), ttl=100),
                     obs([kjob(succeeded=2, complete=True)]), 40, 60.0, id="a finished job wakes for its TTL"),
        pytest.param(sftjob(status=running_status()), both_running(), 5, None,
                     id="no clock at all means no requeue"),
    ],
)
def test_requeue_after_is_the_next_clock(body, world, t, expected):
    assert run(body, world, t).requeue_after == expected


def test_a_slow_download_is_not_a_stall_but_a_silent_one_is():
    """The trainer reports its phase and a heartbeat: only training counts steps."""
    body = sftjob(status=running_status(), stall=120)
    body["status"]["progress"] = {"phase": "downloading", "heartbeatTime": "2026-01-01T12:00:00Z"}
    r1 = run(body, both_running(), 0)
    body = applied(body, r1)
    assert json.loads(body["metadata"]["annotations"]["sft.dev/progress-seen"])["phase"] == "downloading"
    body["status"]["progress"]["heartbeatTime"] = "2026-01-01T12:09:50Z"
    r2 = run(body, both_running(), 600)  # ten minutes, no step, heartbeat fresh: a live slow download
    assert r2.status["phase"] == "Running" and r2.requeue_after == pytest.approx(110)
    r3 = run(body, both_running(), 710)  # the heartbeat stopped for stallTimeoutSeconds: hung
    assert r3.status["phase"] == "Restarting" and cond(r3, "Stalled")["status"] == "True"
    assert "no heartbeat for 120s in phase downloading" in cond(r3, "Stalled")["message"]
    assert r3.counted == ["Stalled"]


def test_training_after_a_download_counts_steps_from_then():
    body = sftjob(status=running_status(), stall=60)
    body["status"]["progress"] = {"phase": "downloading"}
    body = applied(body, run(body, both_running(), 0))
    body["status"]["progress"] = {"phase": "training", "step": 0}
    r = run(body, both_running(), 3000)  # fifty minutes of download, then training begins
    assert r.status["phase"] == "Running" and r.requeue_after == 60
    body = applied(body, r)
    stalled = run(body, both_running(), 3060)
    assert stalled.status["phase"] == "Restarting"
    assert "no progress for 60s in phase training" in cond(stalled, "Stalled")["message"]


GPU_QUOTA = ('pods "demo-a1-0-x" is forbidden: exceeded quota: no-gpus, requested: requests.nvidia.com/gpu=8, '
             'used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=0')


def test_pods_the_apiserver_refuses_are_in_status_until_they_exist():
    from dataclasses import replace

    body = sftjob(status={"phase": "Pending", "attempt": 1, "restarts": 0, "preemptions": 0, "startTime": "2026-01-01T12:00:00Z"})
    refused = replace(obs([kjob(active=0)]), pod_create_errors={"demo-a1": GPU_QUOTA})
    r = run(body, refused, 5)
    c = cond(r, "ChildCreateFailed")
    assert c["status"] == "True" and c["reason"] == "FailedCreate"
    assert "Job demo-a1 cannot create its pods" in c["message"] and "exceeded quota: no-gpus" in c["message"]
    assert ("Warning", "FailedCreate") in [(e.type, e.reason) for e in r.events]
    assert r.status["phase"] == "Pending"
    body = applied(body, r)
    again = run(body, refused, 20)  # the same refusal: no new write, no new event
    assert cond(again, "ChildCreateFailed") == c and not any(e.reason == "FailedCreate" for e in again.events)
    healed = run(body, both_running(), 30)  # the quota was raised: pods exist
    assert cond(healed, "ChildCreateFailed")["status"] == "False" and healed.status["phase"] == "Running"
