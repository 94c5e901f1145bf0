"""The preflight step of reconcile: one CPU-only pod before the gang, once per spec."""

from __future__ import annotations

import pytest
from sftop_factories import kjob, obs, pod, preflight_job, preflight_pod, sftjob
from test_operator_reconcile import applied, both_running, cond, run, running_status

from sft_operator.policies.preflight import spec_hash

BAD_ROW = "DataError: data/train.jsonl:17: row 17 has an empty assistant turn"


def fresh():
    return sftjob(preflight=True)


def digest(body):
    return spec_hash(body["spec"])


def kinds(result):
    return [(o["kind"], o["metadata"]["name"]) for o in result.apply]


def test_first_pass_creates_only_the_cpu_preflight():
    body = fresh()
    r = run(body, obs())
    assert kinds(r) == [("ConfigMap", "demo-a1-config"), ("Job", "demo-a1-preflight")]
    job = r.apply[1]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "sft_trainer.preflight", "/etc/sft/job.yaml", "--base-dir", ".",
                                    "--examples", "0"]
    assert not any("nvidia.com/gpu" in section for section in container["resources"].values())
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert job["metadata"]["labels"]["sft.dev/spec-hash"] == digest(body)
    assert r.status["phase"] == "Pending" and cond(r, "Preflight")["reason"] == "PreflightRunning"
    assert r.status["startTime"] == "2026-01-01T12:00:00Z"  # the deadline counts from the first child
    assert [e.reason for e in r.events] == ["PreflightRunning"]


def test_running_preflight_holds_the_gang_back():
    body = applied(fresh(), run(fresh(), obs()))
    world = obs([preflight_job(digest(body), active=1)], [preflight_pod(digest(body))])
    r = run(body, world, 5)
    assert r.apply == [] and r.status["phase"] == "Pending"
    assert "is checking the data" in cond(r, "Preflight")["message"]


def test_data_error_fails_the_job_naming_the_row_and_no_gpu_is_requested():
    body = applied(fresh(), run(fresh(), obs()))
    failed = preflight_pod(digest(body), phase="Failed", exit_code=64, message=BAD_ROW)
    r = run(body, obs([preflight_job(digest(body), active=1)], [failed]), 7)
    assert r.status["phase"] == "Failed" and r.apply == []
    c = cond(r, "Failed")
    assert c["reason"] == "DataError" and "data/train.jsonl:17" in c["message"] and "exited with code 64" in c["message"]
    assert cond(r, "Preflight")["status"] == "False" and cond(r, "Preflight")["reason"] == "DataError"
    assert r.status["preflight"]["passed"] is False and "data/train.jsonl:17" in r.status["preflight"]["message"]
    assert r.status["restarts"] == 0 and r.status["attempt"] == 1
    assert r.events[-1].type == "Warning" and r.events[-1].reason == "DataError" and "data/train.jsonl:17" in r.events[-1].message
    # The failed pod stays for `kubectl logs`; nothing else is ever created.
    again = run(applied(body, r), obs([preflight_job(digest(body), failed=1, failed_reason="BackoffLimitExceeded")],
                                      [failed]), 8)
    assert again.apply == [] and again.delete == []


def test_pass_records_the_spec_and_creates_the_gang_in_the_same_pass():
    body = applied(fresh(), run(fresh(), obs()))
    ok = preflight_pod(digest(body), phase="Succeeded", exit_code=0, message="1200 rows checked, 0 bad")
    r = run(body, obs([preflight_job(digest(body), succeeded=1, complete=True)], [ok]), 9)
    assert r.status["preflight"] == {"specHash": digest(body), "generation": 1, "passed": True,
                                     "message": "preflight passed: 1200 rows checked, 0 bad",
                                     "finishedAt": "2026-01-01T12:00:09Z"}
    assert cond(r, "Preflight")["status"] == "True" and cond(r, "Preflight")["reason"] == "PreflightPassed"
    assert [e.reason for e in r.events] == ["PreflightPassed", "AttemptCreated"]
    assert "1200 rows checked" in r.events[0].message
    gang = [o for o in r.apply if o["kind"] == "Job"]
    assert [j["metadata"]["name"] for j in gang] == ["demo-a1"]
    assert gang[0]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_a_restart_of_the_same_spec_skips_the_preflight():
    body = fresh()
    body["status"] = running_status(restarts=1, attempt=2, phase="Restarting",
                                    preflight={"specHash": digest(body), "passed": True, "generation": 1})
    r = run(body, obs(), 20)
    assert [o["metadata"]["name"] for o in r.apply if o["kind"] == "Job"] == ["demo-a2"]


def test_a_changed_spec_checks_again_on_the_next_attempt():
    body = fresh()
    body["status"] = running_status(restarts=1, attempt=2, phase="Restarting",
                                    preflight={"specHash": "0123456789abcdef", "passed": True, "generation": 1})
    r = run(body, obs(), 20)
    assert [o["metadata"]["name"] for o in r.apply if o["kind"] == "Job"] == ["demo-a2-preflight"]


def test_a_crashed_preflight_counts_as_a_restart_and_runs_again():
    body = applied(fresh(), run(fresh(), obs()))
    crashed = preflight_pod(digest(body), phase="Failed", exit_code=1)
    r = run(body, obs([preflight_job(digest(body), active=1)], [crashed]), 5)
    assert r.status["restarts"] == 1 and r.status["attempt"] == 2 and r.status["phase"] == "Restarting"
    body = applied(body, r)
    # Next pass: attempt 1's preflight is stale and goes; attempt 2's is created at once (no GPU waits on it).
    r2 = run(body, obs([preflight_job(digest(body), active=0, failed=1)], [crashed]), 6)
    assert ("Job", "demo-a1-preflight") in {(d.kind, d.name) for d in r2.delete}
    assert ("Job", "demo-a2-preflight") in kinds(r2)
    assert r2.status["restarts"] == 1


def test_a_spec_change_during_the_preflight_replaces_it():
    body = applied(fresh(), run(fresh(), obs()))
    old = digest(body)
    body["spec"]["datasets"] = [{"uri": "file:///data/fixed.jsonl", "format": "messages"}]
    r = run(body, obs([preflight_job(old, active=1)], [preflight_pod(old)]), 5)
    assert ("Job", "demo-a1-preflight") in {(d.kind, d.name) for d in r.delete} and r.apply == []
    r2 = run(applied(body, r), obs(), 6)  # the old one is gone: check the new spec
    assert ("Job", "demo-a1-preflight") in kinds(r2)
    assert r2.apply[1]["metadata"]["labels"]["sft.dev/spec-hash"] == digest(body)


def test_skipped_preflight_says_so_and_creates_the_gang():
    r = run(sftjob(preflight=False), obs())
    assert cond(r, "Preflight")["reason"] == "PreflightSkipped" and cond(r, "Preflight")["status"] == "False"
    assert [o["metadata"]["name"] for o in r.apply if o["kind"] == "Job"] == ["demo-a1"]


def test_a_gang_that_already_exists_is_not_held_back():
    """Jobs created before the preflight existed (an operator upgrade) keep running."""
    body = fresh()
    body["status"] = running_status()
    r = run(body, both_running(), 3)
    assert r.apply == [] and r.status["phase"] == "Running" and r.status_patch == {}


@pytest.mark.parametrize(
    "body_status, world, deleted",
    [
        pytest.param({"phase": "Pending", "attempt": 1, "restarts": 0, "preemptions": 0, "startTime": "2026-01-01T12:00:00Z"},
                     lambda d: obs([preflight_job(d, active=1)], [preflight_pod(d)]), True,
                     id="a deadline during the preflight stops its pod"),
    ],
)
def test_deadline_stops_the_preflight(body_status, world, deleted):
    body = sftjob(preflight=True, deadline=30, status=body_status)
    r = run(body, world(digest(body)), 30)
    assert r.status["phase"] == "Failed" and cond(r, "Failed")["reason"] == "DeadlineExceeded"
    assert (("Job", "demo-a1-preflight") in {(d.kind, d.name) for d in r.delete}) is deleted


def test_preflight_pods_never_count_as_the_gang():
    body = fresh()
    body["status"] = running_status()
    world = obs([kjob(active=2), preflight_job(digest(body), succeeded=1, complete=True)],
                [pod(index=0), pod(index=1, node="gpu-1"), preflight_pod(digest(body), phase="Succeeded", exit_code=0)])
    r = run(body, world, 3)
    assert r.status["phase"] == "Running" and r.status_patch == {} and r.delete == []
