"""Faults the apiserver reports are visible in status, on the real control plane: a ResourceQuota
that forbids Jobs makes the apiserver refuse the gang's Job; the refusal is a condition carrying the
apiserver's own message and a Warning event, retries back off exponentially, the job recovers when
the quota goes, and activeDeadlineSeconds still fires while nothing can be created."""

from __future__ import annotations

import json
import time

from sft_e2e_helpers import cond, sftjob_manifest

BACKOFF = "sft.dev/create-failures"


def forbid_jobs(sft) -> None:
    """count/jobs.batch: 0, and wait until the quota controller has computed its status (until then
    admission refuses with "status unknown" instead of the quota's clear message)."""
    sft.core.create_namespaced_resource_quota(sft.ns, {"metadata": {"name": "no-jobs"}, "spec": {"hard": {"count/jobs.batch": "0"}}})
    deadline = time.monotonic() + 30
    while not (sft.core.read_namespaced_resource_quota("no-jobs", sft.ns).status.hard or {}):
        assert time.monotonic() < deadline, "quota status never computed"
        time.sleep(0.2)


def refusals(sft, name) -> int:
    raw = (sft.get(name)["metadata"].get("annotations") or {}).get(BACKOFF)
    return json.loads(raw)["failures"] if raw else 0


def test_refused_job_is_in_status_backs_off_and_recovers(operator, sft):
    name = "quota"
    forbid_jobs(sft)
    sft.apply(sftjob_manifest(name, nodes=1, gpus=1))

    st = sft.wait(name, lambda s: cond(s, "ChildCreateFailed").get("status") == "True", 20, "ChildCreateFailed")
    c = cond(st, "ChildCreateFailed")
    assert c["reason"] == "FailedCreate" and "Job quota-a1" in c["message"] and "HTTP 403" in c["message"]
    assert "exceeded quota: no-jobs" in c["message"] and "count/jobs.batch" in c["message"], c["message"]
    assert st["phase"] == "Pending" and st["startTime"]
    [ev] = [e for e in sft.wait_events(name, {"FailedCreate"}) if e.reason == "FailedCreate"]
    assert ev.type == "Warning" and "exceeded quota: no-jobs" in ev.message

    # Exponential backoff per job (base 2 s): refusal n+1 comes 2**n s after refusal n (0, 2, 6, 14, 30 s),
    # whatever else triggers the job (the 1 s resync, its own status writes). The first count seen may
    # have started before this loop, so only the gaps after it are measured.
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 45
    while len([k for k in seen if k]) < 4 and time.monotonic() < deadline:
        seen.setdefault(refusals(sft, name), time.monotonic())
        time.sleep(0.1)
    counts = sorted(k for k in seen if k)
    assert counts == [counts[0] + i for i in range(4)], seen
    first, second = seen[counts[2]] - seen[counts[1]], seen[counts[3]] - seen[counts[2]]
    assert first >= 0.9 * 2 ** counts[1] and second >= 1.6 * first, (counts, first, second)
    print(f"\nrefusals {counts}: gaps {first:.1f}s then {second:.1f}s")
    assert sft.jobs(name) == []
    # One event for the whole episode: the condition did not change, so nothing new to say.
    assert [e.reason for e in sft.events(name)].count("FailedCreate") == 1

    sft.core.delete_namespaced_resource_quota("no-jobs", sft.ns)
    sft.running_pods(name, 1, 1, timeout=60)  # within the next backoff (at most 16 s here)
    st = sft.wait_phase(name, "Running", 30)
    c = cond(st, "ChildCreateFailed")
    assert c["status"] == "False" and c["reason"] == "ChildrenCreated"
    assert BACKOFF not in (sft.get(name)["metadata"].get("annotations") or {})


def test_deadline_fires_while_the_job_cannot_be_created(operator, sft):
    name = "quota-deadline"
    forbid_jobs(sft)
    started = time.monotonic()
    sft.apply(sftjob_manifest(name, nodes=1, gpus=1, activeDeadlineSeconds=6))
    st = sft.wait_phase(name, "Failed", 30)
    took = time.monotonic() - started
    assert cond(st, "Failed")["reason"] == "DeadlineExceeded"
    assert "exceeded quota" in cond(st, "ChildCreateFailed")["message"]  # why it never ran stays visible
    assert 4.5 <= took < 15, took  # counted from the first creation attempt, not from a Job that never came
    assert sft.jobs(name) == []
    print(f"\napply -> Failed/DeadlineExceeded (activeDeadlineSeconds=6, Job refused throughout): {took:.1f}s")


def test_gpu_quota_refusing_the_pods_is_in_status(operator, sft, kwok_pods):
    """The Job passes admission, its pods do not (requests.nvidia.com/gpu: 0): the Job controller says
    so only in an Event on the Job; the SFTJob's status says it too. The preflight needs no GPU, so it
    runs and passes under the same quota."""
    name = "gpuquota"
    sft.core.create_namespaced_resource_quota(sft.ns, {"metadata": {"name": "no-gpus"},
                                                       "spec": {"hard": {"requests.nvidia.com/gpu": "0"}}})
    deadline = time.monotonic() + 30
    while not (sft.core.read_namespaced_resource_quota("no-gpus", sft.ns).status.hard or {}):
        assert time.monotonic() < deadline, "quota status never computed"
        time.sleep(0.2)
    sft.apply(sftjob_manifest(name, nodes=1, gpus=8, preflight={"enabled": True}))
    check = sft.running_preflight_pod(name)  # no GPU request: the quota lets it through
    kwok_pods.succeed(sft.ns, check.metadata.name)
    st = sft.wait(name, lambda s: cond(s, "ChildCreateFailed").get("status") == "True", 60, "ChildCreateFailed")
    c = cond(st, "ChildCreateFailed")
    assert "Job gpuquota-a1 cannot create its pods" in c["message"], c["message"]
    assert "exceeded quota: no-gpus" in c["message"] and "requests.nvidia.com/gpu" in c["message"], c["message"]
    assert st["phase"] == "Pending" and cond(st, "Preflight")["status"] == "True"
    ev = [e for e in sft.wait_events(name, {"FailedCreate"}) if e.reason == "FailedCreate"]
    assert ev[0].type == "Warning" and "exceeded quota: no-gpus" in ev[0].message
    sft.core.delete_namespaced_resource_quota("no-gpus", sft.ns)
    sft.running_pods(name, 1, 1, timeout=90)  # the Job controller's own retry
    st = sft.wait(name, lambda s: cond(s, "ChildCreateFailed").get("status") == "False", 30, "refusal cleared")
    assert st["phase"] in ("Pending", "Running")
