"""Kueue suspends the Job of a running gang (priority preemption): the attempt is torn down and counted
as a preemption, not a restart, and the next attempt is queued again (created suspended)."""

from __future__ import annotations

import json

from sftop_factories import at, kjob, obs, pod, sftjob

from sft_operator.conditions import get_condition
from sft_operator.reconcile import reconcile
from sft_operator.settings import OperatorSettings

S = OperatorSettings(trainer_image="trainer:test")
QUEUED = {"kueue.x-k8s.io/queue-name": "gpu-queue"}


def _running(attempt=1):
    return {"phase": "Running", "attempt": attempt, "restarts": 0, "preemptions": 0,
            "startTime": "2026-01-01T12:00:00Z", "observedGeneration": 1, "conditions": []}


def test_kueue_eviction_of_a_running_gang_counts_as_a_preemption():
    body = sftjob(labels=QUEUED, status=_running())
    r = reconcile(body, obs([kjob(suspended=True)], [pod(index=0), pod(index=1, node="gpu-1")]), at(5), S)
    assert r.status["phase"] == "Restarting"
    assert r.status["preemptions"] == 1 and r.status["restarts"] == 0 and r.status["attempt"] == 2
    assert r.status["lastFailure"]["reason"] == "Preempted" and "evicted by Kueue" in r.status["lastFailure"]["message"]
    # the next pass creates attempt 2, suspended again: it waits in the queue, then resumes from its checkpoint
    body2 = json.loads(json.dumps(body))
    body2["status"] = {**body2["status"], **r.status}
    r2 = reconcile(body2, obs(), at(10), S)
    job = next(o for o in r2.apply if o["kind"] == "Job")
    assert job["metadata"]["name"] == "demo-a2" and job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"


def test_pods_killed_by_the_eviction_do_not_make_it_a_restart():
    """The Job controller deletes a suspended Job's pods; a pass that sees the suspension only after
    their SIGTERM exits (143) still counts a preemption."""
    body = sftjob(labels=QUEUED, status=_running())
    pods = [pod(index=0, phase="Failed", exit_code=143), pod(index=1, node="gpu-1", phase="Failed", exit_code=143)]
    r = reconcile(body, obs([kjob(suspended=True)], pods), at(5), S)
    assert r.status["preemptions"] == 1 and r.status["restarts"] == 0, r.status
    assert r.status["lastFailure"]["reason"] == "Preempted", r.status["lastFailure"]


def test_a_job_still_waiting_for_admission_is_only_queued():
    body = sftjob(labels=QUEUED, status={"phase": "Pending", "attempt": 1, "restarts": 0, "preemptions": 0,
                                         "observedGeneration": 1, "conditions": []})
    r = reconcile(body, obs([kjob(suspended=True)]), at(5), S)
    assert r.status["phase"] == "Pending" and r.status.get("preemptions", 0) == 0
    assert get_condition(r.status["conditions"], "Running")["reason"] == "Queued"
