"""Table-driven tests of the pure reconcile function: (SFTJob, observation, now) -> Result."""

from __future__ import annotations

import json

import pytest
from sftop_factories import at, kjob, obs, pod, sftjob

from sft_operator.conditions import get_condition
from sft_operator.reconcile import ChildRef, reconcile
from sft_operator.settings import OperatorSettings

S = OperatorSettings(trainer_image="trainer:default", max_preemptions=2)


def run(body, observation, t=0.0, validate=None):
    return reconcile(body, observation, at(t), S, validate=validate)


def applied(body, result):
    """The SFTJob after the handler wrote the result (status + annotations)."""
    new = json.loads(json.dumps(body))
    status = dict(new.get("status") or {})
    status.update(result.status)
    new["status"] = status
    ann = new["metadata"].setdefault("annotations", {})
    for k, v in result.annotations.items():
        if v is None:
            ann.pop(k, None)
        else:
            ann[k] = v
    return new


def cond(result, ctype):
    return get_condition(result.status.get("conditions"), ctype)


def running_status(attempt=1, restarts=0, preemptions=0, **kw):
    st = {"phase": "Running", "attempt": attempt, "restarts": restarts, "preemptions": preemptions,
          "startTime": "2026-01-01T12:00:00Z", "observedGeneration": 1,
          "conditions": [{"type": "Running", "status": "True", "reason": "PodsRunning",
                          "message": f"attempt {attempt}: 2/2 pod(s) running", "lastTransitionTime": "2026-01-01T12:00:00Z"}]}
    st.update(kw)
    return st


def both_running(attempt=1):
    return obs([kjob(attempt=attempt, active=2)], [pod(attempt=attempt, index=0), pod(attempt=attempt, index=1, node="gpu-1")])


# --- creation -----------------------------------------------------------------------------------

def test_first_pass_creates_every_child_and_is_pending():
    r = run(sftjob(), obs())
    assert [o["kind"] for o in r.apply] == ["ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "ConfigMap", "Service", "Job"]
    assert r.status["phase"] == "Pending"
    assert r.status["attempt"] == 1 and r.status["restarts"] == 0 and r.status["preemptions"] == 0
    assert r.status["observedGeneration"] == 1
    assert [e.reason for e in r.events] == ["AttemptCreated"]
    assert r.delete == []


def test_second_pass_of_unchanged_world_changes_nothing():
    body = sftjob()
    first = run(body, obs())
    body = applied(body, first)
    # The Job now exists, its pods are pending.
    world = obs([kjob(active=2)], [pod(phase="Pending", index=0, node=None), pod(phase="Pending", index=1, node=None)])
    second = run(body, world, 1)
    body = applied(body, second)
    third = run(body, world, 2)
    assert third.noop, third


def test_existing_job_is_never_reapplied():
    """Kueue unsuspends the Job with its own field manager; re-applying would undo the admission."""
    body = sftjob(status=running_status())
    r = run(body, both_running())
    assert r.apply == []


# --- progress through phases ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "pods, phase, reason",
    [
        pytest.param([pod(phase="Pending", node=None), pod(index=1, phase="Pending", node=None)], "Pending", "PodsPending",
                     id="no pod running is Pending"),
        pytest.param([pod(index=0), pod(index=1, phase="Pending", node=None)], "Pending", "PodsPending",
                     id="half the gang running is still Pending"),
        pytest.param([pod(phase="Pending", node=None, unschedulable="0/4 nodes are available: 4 Insufficient nvidia.com/gpu."),
                      pod(index=1, phase="Pending", node=None)], "Pending", "Unschedulable",
                     id="an unschedulable pod is Pending with the scheduler's reason"),
        pytest.param([pod(index=0), pod(index=1)], "Running", "PodsRunning", id="the whole gang running is Running"),
    ],
)
def test_phase_follows_pods(pods, phase, reason):
    body = sftjob(status={"phase": "Pending", "attempt": 1, "restarts": 0, "preemptions": 0})
    r = run(body, obs([kjob(active=2)], pods))
    assert r.status["phase"] == phase
    assert cond(r, "Running")["reason"] == reason
    if reason == "Unschedulable":
        assert "Insufficient nvidia.com/gpu" in cond(r, "Running")["message"]
        assert r.events[0].type == "Warning"
    assert r.status["startTime"] == "2026-01-01T12:00:00Z"


def test_became_running_is_reported_once():
    body = sftjob(status={"phase": "Pending", "attempt": 1, "restarts": 0, "preemptions": 0})
    r = run(body, both_running())
    assert r.became_running and r.status["phase"] == "Running"
    assert [e.reason for e in r.events] == ["PodsRunning"]
    r2 = run(applied(body, r), both_running(), 1)
    assert not r2.became_running and r2.events == []


def test_success_sets_completion_time():
    body = sftjob(status=running_status())
    pods = [pod(index=0, phase="Succeeded", exit_code=0), pod(index=1, phase="Succeeded", exit_code=0)]
    r = run(body, obs([kjob(succeeded=2, complete=True)], pods), 30)
    assert r.status["phase"] == "Succeeded"
    assert r.status["completionTime"] == "2026-01-01T12:00:30Z"
    assert cond(r, "Succeeded")["status"] == "True"
    assert cond(r, "Running")["status"] == "False"
    assert [e.reason for e in r.events] == ["Completed"]


# --- failures -----------------------------------------------------------------------------------

FAILURES = [
    # (failed pod, expected phase, counter, reason, message fragment)
    pytest.param(pod(index=1, phase="Failed", exit_code=1, node="gpu-1"), "Restarting", "restarts", "PodFailed",
                 "rank 1) on node gpu-1 exited with code 1", id="a crashed rank restarts the gang, naming rank and node"),
    pytest.param(pod(index=1, phase="Failed", exit_code=137, term_reason="OOMKilled"), "Restarting", "restarts", "OOMKilled",
                 "OOMKilled", id="an OOM-killed rank restarts the gang as OOMKilled"),
    pytest.param(pod(index=0, phase="Failed", disruption="EvictionByEvictionAPI"), "Restarting", "preemptions", "Evicted",
                 "EvictionByEvictionAPI", id="an API eviction counts as a preemption"),
    pytest.param(pod(index=0, phase="Running", disruption="PreemptionByScheduler"), "Restarting", "preemptions", "Preempted",
                 "PreemptionByScheduler", id="a scheduler preemption counts before the pod stops"),
    pytest.param(pod(index=0, phase="Failed", status_reason="Evicted"), "Restarting", "preemptions", "Evicted",
                 "evicted by the kubelet", id="a kubelet eviction counts as a preemption"),
    pytest.param(pod(index=1, phase="Failed", exit_code=64), "Failed", None, "DataError", "exited with code 64",
                 id="exit 64 fails the job with DataError"),
    pytest.param(pod(index=1, phase="Failed", exit_code=65), "Failed", None, "GoldenSetRegression", "code 65",
                 id="exit 65 fails the job with GoldenSetRegression"),
    pytest.param(pod(index=1, phase="Failed", exit_code=66), "Failed", None, "TopologyMismatch", "code 66",
                 id="exit 66 fails the job with TopologyMismatch"),
    pytest.param(pod(index=1, phase="Failed", exit_code=67), "Failed", None, "SanityCheckFailed", "code 67",
                 id="exit 67 fails the job with SanityCheckFailed, without a restart"),
]


@pytest.mark.parametrize("failed, phase, counter, reason, fragment", FAILURES)
def test_failure_classification(failed, phase, counter, reason, fragment):
    body = sftjob(status=running_status())
    other = pod(index=0 if "-1-" in failed["metadata"]["name"] else 1)
    r = run(body, obs([kjob(active=1, failed=1)], [failed, other]), 5)
    assert r.status["phase"] == phase
    if counter:
        assert r.status[counter] == 1
        assert r.status["attempt"] == 2
        assert r.counted == [reason]
        c = cond(r, "Restarting")
        # The whole attempt goes: Job, Service, ConfigMap and its pods.
        kinds = {(d.kind, d.name) for d in r.delete}
        assert ("Job", "demo-a1") in kinds and ("Service", "demo-a1") in kinds and ("ConfigMap", "demo-a1-config") in kinds
        assert sum(1 for d in r.delete if d.kind == "Pod") == 2
    else:
        assert r.status["attempt"] == 1 and r.status["restarts"] == 0
        assert r.status["completionTime"]
        c = cond(r, "Failed")
    assert c["status"] == "True" and c["reason"] == reason and fragment in c["message"]
    other_counter = {"restarts": "preemptions", "preemptions": "restarts"}.get(counter)
    if other_counter:
        assert r.status[other_counter] == 0
    assert r.events[-1].type == "Warning" and r.events[-1].reason == reason


def test_nonretryable_wins_over_peer_crash():
    body = sftjob(status=running_status())
    pods = [pod(index=0, phase="Failed", exit_code=1), pod(index=1, phase="Failed", exit_code=66)]
    r = run(body, obs([kjob(failed=2)], pods))
    assert r.status["phase"] == "Failed" and cond(r, "Failed")["reason"] == "TopologyMismatch"


def test_preemption_wins_over_peer_crash():
    body = sftjob(status=running_status())
    pods = [pod(index=0, phase="Failed", exit_code=1), pod(index=1, phase="Failed", disruption="PreemptionByScheduler")]
    r = run(body, obs([kjob(failed=2)], pods))
    assert r.status["preemptions"] == 1 and r.status["restarts"] == 0


def test_node_loss_counts_as_preemption_and_force_deletes():
    body = sftjob(status=running_status())
    pods = [pod(index=0, node="gpu-0"), pod(index=1, node="gpu-gone")]
    r = run(body, obs([kjob(active=2)], pods, nodes=["gpu-0", "gpu-1"]))
    assert r.status["preemptions"] == 1 and cond(r, "Restarting")["reason"] == "NodeLost"
    assert ChildRef("Pod", pods[1]["metadata"]["name"], force=True) in r.delete


def test_job_failure_without_visible_pod_is_classified_from_the_job():
    body = sftjob(status=running_status())
    msg = "Pod ns/demo-a1-0-x has condition DisruptionTarget matching FailJob rule at index 1"
    r = run(body, obs([kjob(failed=1, failed_reason="PodFailurePolicy", failed_message=msg)], []))
    assert r.status["preemptions"] == 1
    msg = "Container trainer for pod ns/demo-a1-0-x failed with exit code 64 matching FailJob rule at index 0"
    r = run(body, obs([kjob(failed=1, failed_reason="PodFailurePolicy", failed_message=msg)], []))
    assert r.status["phase"] == "Failed" and cond(r, "Failed")["reason"] == "DataError"
    # A deleted pod that stopped on SIGTERM after a checkpoint (exit 75) is gone once the Job counted it:
    # the Job's rule-2 message still makes it a preemption, with the pod and the code.
    msg = "Container trainer for pod ns/demo-a1-0-x failed with exit code 75 matching FailJob rule at index 2"
    r = run(body, obs([kjob(failed=1, failed_reason="PodFailurePolicy", failed_message=msg)], []))
    assert r.status["preemptions"] == 1 and r.status.get("restarts", 0) == 0, r.status
    assert r.status["lastFailure"] == {**r.status["lastFailure"], "reason": "Interrupted", "pod": "demo-a1-0-x", "exitCode": 75}
    r = run(body, obs([kjob(failed=1, failed_reason="BackoffLimitExceeded", failed_message="Job has reached the specified backoff limit")], []))
    assert r.status["restarts"] == 1 and r.status["lastFailure"]["reason"] == "PodFailed"


def test_restart_is_counted_once_across_repeated_passes():
    """The same failure seen again (status write landed, deletes not yet) must not count twice."""
    body = sftjob(status=running_status())
    failed = [kjob(failed=1), pod(index=0, phase="Failed", exit_code=1), pod(index=1)]
    r1 = run(body, obs([failed[0]], failed[1:]))
    body = applied(body, r1)
    r2 = run(body, obs([failed[0]], failed[1:]), 1)
    assert r2.status["restarts"] == 1 and r2.status["attempt"] == 2
    # It keeps tearing down attempt 1 and creates nothing until its pods are gone.
    assert r2.apply == [] and any(d.kind == "Job" and d.name == "demo-a1" for d in r2.delete)
    assert r2.status["phase"] == "Restarting"
    # Old Job deleting in the foreground, one pod still terminating: still wait.
    r3 = run(applied(body, r2), obs([kjob(failed=1, deleting=True)], [pod(index=1, deleting=True)]), 2)
    assert r3.apply == [] and not any(d.kind == "Pod" for d in r3.delete)
    # All gone: attempt 2 is created, and its env tells the trainer to resume.
    r4 = run(applied(body, r3), obs(), 3)
    job = [o for o in r4.apply if o["kind"] == "Job"][0]
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert job["metadata"]["name"] == "demo-a2" and env["SFT_ATTEMPT"] == "2" and env["SFT_RESUME"] == "latest"
    assert r4.status["phase"] == "Restarting"
    # Attempt 2 runs: Running again, Restarting cleared.
    r5 = run(applied(body, r4), both_running(2), 4)
    assert r5.status["phase"] == "Running" and cond(r5, "Restarting")["status"] == "False"
    assert r5.status["restarts"] == 1


@pytest.mark.parametrize("restarts, phase", [pytest.param(2, "Restarting", id="below maxRestarts it restarts"),
                                             pytest.param(3, "Failed", id="at maxRestarts it fails")])
def test_max_restarts(restarts, phase):
    body = sftjob(status=running_status(restarts=restarts), max_restarts=3)
    r = run(body, obs([kjob(failed=1)], [pod(index=0, phase="Failed", exit_code=2), pod(index=1)]))
    assert r.status["phase"] == phase
    if phase == "Failed":
        c = cond(r, "Failed")
        assert c["reason"] == "MaxRestartsExceeded" and "exited with code 2" in c["message"] and "3/3" in c["message"]
        assert r.status["restarts"] == 3


def test_max_preemptions_is_separate_from_restarts():
    body = sftjob(status=running_status(restarts=3, preemptions=1), max_restarts=3)
    r = run(body, obs([kjob(failed=1)], [pod(index=0, phase="Failed", disruption="PreemptionByScheduler")]))
    assert r.status["phase"] == "Restarting" and r.status["preemptions"] == 2
    body = sftjob(status=running_status(preemptions=2))
    r = run(body, obs([kjob(failed=1)], [pod(index=0, phase="Failed", disruption="PreemptionByScheduler")]))
    assert r.status["phase"] == "Failed" and cond(r, "Failed")["reason"] == "MaxPreemptionsExceeded"


# --- stall --------------------------------------------------------------------------------------

def test_stall_then_restart_then_recovery():
    body = sftjob(status=running_status(progress=None), stall=10)
    body["status"]["progress"] = {"step": 5}
    r1 = run(body, both_running(), 0)
    assert "sft.dev/progress-seen" in r1.annotations
    body = applied(body, r1)
    r2 = run(body, both_running(), 8)
    assert r2.noop
    body["status"]["progress"] = {"step": 6}
    r3 = run(body, both_running(), 9)
    body = applied(body, r3)
    assert json.loads(body["metadata"]["annotations"]["sft.dev/progress-seen"])["step"] == 6
    r4 = run(body, both_running(), 18)
    assert r4.status["phase"] == "Running"
    r5 = run(body, both_running(), 19)
    assert r5.status["phase"] == "Restarting" and r5.status["restarts"] == 1 and r5.status["attempt"] == 2
    assert cond(r5, "Stalled")["status"] == "True" and cond(r5, "Restarting")["reason"] == "Stalled"
    assert r5.counted == ["Stalled"]
    body = applied(body, r5)
    # Attempt 2 runs and reports progress: Stalled clears only when progress moves in attempt 2.
    r6 = run(body, both_running(2), 25)
    body = applied(body, r6)
    assert cond(r6, "Stalled")["status"] == "True"
    body["status"]["progress"] = {"step": 7}
    r7 = run(body, both_running(2), 26)
    assert cond(r7, "Stalled")["status"] == "False"


def test_no_stall_timeout_means_no_stall():
    body = sftjob(status=running_status(), stall=None,
                  annotations={"sft.dev/progress-seen": json.dumps({"attempt": 1, "step": None, "time": "2026-01-01T00:00:00Z"})})
    assert run(body, both_running(), 100000).status["phase"] == "Running"


# --- deadline, TTL ------------------------------------------------------------------------------

def test_deadline_exceeded_fails_and_stops_pods():
    body = sftjob(status=running_status(), deadline=60)
    assert run(body, both_running(), 59).status["phase"] == "Running"
    r = run(body, both_running(), 60)
    assert r.status["phase"] == "Failed" and cond(r, "Failed")["reason"] == "DeadlineExceeded"
    assert ChildRef("Job", "demo-a1") in r.delete


def test_ttl_removes_children_once_and_keeps_status():
    st = running_status(phase="Succeeded", completionTime="2026-01-01T12:00:00Z", attempt=2)
    body = sftjob(status=st, ttl=30)
    world = obs([kjob(attempt=2, succeeded=2, complete=True)], [])
    assert run(body, world, 29).delete == []
    r = run(body, world, 30)
    kinds = {(d.kind, d.name) for d in r.delete}
    assert {("Job", "demo-a1"), ("Job", "demo-a2"), ("ConfigMap", "demo-a2-config"), ("Service", "demo-a2"),
            ("ServiceAccount", "demo-trainer"), ("Role", "demo-trainer"), ("RoleBinding", "demo-trainer"),
            ("NetworkPolicy", "demo-trainer")} <= kinds
    assert r.status_patch == {} and r.events[0].reason == "TTLExpired"
    again = run(applied(body, r), obs(), 40)
    assert again.noop


def test_finished_job_is_left_alone():
    st = running_status(phase="Succeeded", completionTime="2026-01-01T12:00:00Z")
    body = sftjob(status=st, ttl=None)
    assert run(body, obs([kjob(succeeded=2, complete=True)]), 999).noop


# --- suspend ------------------------------------------------------------------------------------

def test_suspend_then_resume():
    body = sftjob(status=running_status(), suspend=True)
    r = run(body, both_running(), 1)
    assert r.status["phase"] == "Suspended" and cond(r, "Suspended")["status"] == "True"
    assert ChildRef("Job", "demo-a1") in r.delete
    body = applied(body, r)
    # Pods gone; still suspended: nothing to do.
    assert run(body, obs(), 2).noop
    body["spec"]["suspend"] = False
    body["metadata"]["generation"] = 2
    r2 = run(body, obs(), 3)
    assert r2.status["phase"] == "Pending" and r2.status["attempt"] == 2 and r2.status["restarts"] == 0
    assert cond(r2, "Suspended")["status"] == "False" and cond(r2, "Suspended")["reason"] == "Resumed"
    assert r2.status["observedGeneration"] == 2
    job = [o for o in r2.apply if o["kind"] == "Job"][0]
    assert job["metadata"]["name"] == "demo-a2"


# --- kueue --------------------------------------------------------------------------------------

def test_kueue_queued_until_admitted():
    body = sftjob(labels={"kueue.x-k8s.io/queue-name": "gpu-queue"})
    r = run(body, obs())
    job = [o for o in r.apply if o["kind"] == "Job"][0]
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    body = applied(body, r)
    r2 = run(body, obs([kjob(suspended=True)]), 1)
    assert r2.status["phase"] == "Pending" and cond(r2, "Running")["reason"] == "Queued"
    assert "startTime" not in r2.status or not r2.status["startTime"]
    body = applied(body, r2)
    r3 = run(body, both_running(), 2)
    assert r3.status["phase"] == "Running" and r3.status["startTime"] == "2026-01-01T12:00:02Z"


def test_kueue_message_reaches_the_queued_condition():
    from dataclasses import replace

    body = sftjob(labels={"kueue.x-k8s.io/queue-name": "gpu-queue"})
    body = applied(body, run(body, obs()))
    quota = "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor gpu"
    r = run(body, replace(obs([kjob(suspended=True)]), queue_message=quota), 1)
    c = cond(r, "Running")
    assert c["reason"] == "Queued" and c["message"] == f"waiting for admission by Kueue (queue gpu-queue): {quota}"


# --- guards -------------------------------------------------------------------------------------

def test_invalid_spec_fails_with_field():
    r = run(sftjob(), obs(), validate=lambda body: "spec.workers.nodes: must be >= 1")
    assert r.status["phase"] == "Failed" and r.apply == []
    assert cond(r, "Failed")["reason"] == "InvalidSpec" and "spec.workers.nodes" in cond(r, "Failed")["message"]


def test_deleting_job_does_nothing():
    assert run(sftjob(deleting=True, status=running_status()), both_running()).noop


def test_nonzero_exit_counts_before_the_pod_phase_turns_failed():
    body = sftjob(status=running_status())
    early = pod(index=1, phase="Running")
    early["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 3, "reason": "Error"}}
    r = run(body, obs([kjob(active=2)], [pod(index=0), early]))
    assert r.status["phase"] == "Restarting" and r.status["restarts"] == 1


def test_a_rank_that_finished_first_keeps_the_job_running():
    body = sftjob(status=running_status())
    r = run(body, obs([kjob(active=1, succeeded=1)], [pod(index=0, phase="Succeeded", exit_code=0), pod(index=1)]))
    assert r.status["phase"] == "Running" and r.status_patch == {} and r.events == []


@pytest.mark.parametrize(
    "old_pod, waits",
    [
        pytest.param(pod(attempt=1, phase="Running", deleting=True), True, id="an old pod that may still run is waited for"),
        pytest.param(pod(attempt=1, phase="Failed", exit_code=143, deleting=True), False,
                     id="a terminal old pod behind a finalizer is not"),
        pytest.param(pod(attempt=1, phase="Running", node="gone", deleting=True), False, id="an old pod on a vanished node is not"),
    ],
)
def test_next_attempt_waits_only_for_old_pods_that_may_run(old_pod, waits):
    body = sftjob(status=running_status(attempt=2, restarts=1, phase="Restarting"))
    r = run(body, obs([], [old_pod], nodes=["gpu-0", "gpu-1"]))
    assert (r.apply == []) is waits


def test_running_gang_does_not_flap_to_pending():
    body = sftjob(status=running_status())
    r = run(body, obs([kjob(active=2)], [pod(index=0), pod(index=1, phase="Running", deleting=True)]))
    assert r.status["phase"] == "Running" and r.status_patch == {} and r.events == []


# --- the trainer's sanity pre-run -----------------------------------------------------------------

@pytest.mark.parametrize("passed,reason,event_type", [
    pytest.param(True, "SanityCheckPassed", "Normal", id="passed-is-a-normal-event"),
    pytest.param(False, "SanityCheckFailed", "Warning", id="failed-is-a-warning-event"),
])
def test_sanity_check_verdict_becomes_a_condition_and_one_event(passed, reason, event_type):
    message = "sanity check passed: the loss went from 4.69 (step 1) to 1.86" if passed else \
        "SanityCheckFailed: the loss rose: the loss went from 4.59 (step 1) to 26.8"
    status = running_status(evaluation={"sanityCheck": {"passed": passed, "firstLoss": 4.6, "message": message}})
    body = sftjob(status=status)
    r = run(body, both_running())
    c = cond(r, "SanityCheck")
    assert c["status"] == ("True" if passed else "False") and c["reason"] == reason and c["message"] == message
    assert [(e.type, e.reason) for e in r.events if e.reason.startswith("SanityCheck")] == [(event_type, reason)]
    r2 = run(applied(body, r), both_running(), 1)
    assert [e for e in r2.events if e.reason.startswith("SanityCheck")] == []


def test_no_sanity_condition_before_the_trainer_reports_one():
    r = run(sftjob(status=running_status()), both_running())
    assert cond(r, "SanityCheck") is None


def test_an_unreachable_tracker_is_a_warning_condition_until_it_recovers():
    down = "mlflow http://10.0.0.1:5000: connection refused (12 logs wait for a retry)"
    body = sftjob(status=running_status(tracking={"healthy": False, "message": down}))
    r = run(body, both_running())
    c = cond(r, "Tracking")
    assert (c["status"], c["reason"], c["message"]) == ("False", "TrackerUnavailable", down)
    assert [(e.type, e.reason) for e in r.events if e.reason.startswith("Tracker")] == [("Warning", "TrackerUnavailable")]
    assert r.status["phase"] == "Running"  # training goes on
    body = applied(body, r)
    body["status"]["tracking"] = {"healthy": True}
    r2 = run(body, both_running(), 1)
    assert cond(r2, "Tracking")["status"] == "True" and cond(r2, "Tracking")["reason"] == "TrackerHealthy"


def test_a_tracker_healthy_all_along_adds_no_condition():
    r = run(sftjob(status=running_status(tracking={"healthy": True})), both_running())
    assert cond(r, "Tracking") is None
