"""Suspend/resume, TTL, deletion with garbage collection, Kueue-style admission, a job too large to fit."""

from __future__ import annotations

import time

from kubernetes.client.rest import ApiException
from sft_e2e_helpers import cond, sftjob_manifest


def gone(fn) -> bool:
    try:
        fn()
        return False
    except ApiException as e:
        return e.status == 404


def wait_until(pred, timeout=30, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError(f"not reached in {timeout}s: {what}")


def test_suspend_then_resume(operator, sft):
    name = "pause"
    sft.apply(sftjob_manifest(name, nodes=2, gpus=1))
    sft.running_pods(name, 1, 2)
    sft.wait_phase(name, "Running")
    sft.report_progress(name, {"checkpoint": {"step": 5, "uri": "s3://ckpt/pause/checkpoint-5/"}})
    sft.patch_spec(name, {"suspend": True})
    st = sft.wait_phase(name, "Suspended", 20)
    assert cond(st, "Suspended")["status"] == "True"
    wait_until(lambda: not sft.pods(name) and not sft.jobs(name), 30, "pods stopped")
    st = sft.status(name)
    assert st["checkpoint"]["step"] == 5 and st["restarts"] == 0  # status kept

    sft.patch_spec(name, {"suspend": False})
    st = sft.wait(name, lambda s: s.get("attempt") == 2, 20, "attempt 2 after resume")
    assert cond(st, "Suspended")["status"] == "False" and cond(st, "Suspended")["reason"] == "Resumed"
    wait_until(lambda: sft.jobs(name, 2), 20, "attempt 2 Job")
    env = {e.name: e.value for e in sft.jobs(name, 2)[0].spec.template.spec.containers[0].env}
    assert env["SFT_ATTEMPT"] == "2" and env["SFT_RESUME"] == "latest"
    sft.running_pods(name, 2, 2)
    st = sft.wait_phase(name, "Running")
    assert st["restarts"] == 0 and st["preemptions"] == 0


def test_ttl_removes_children_and_keeps_the_sftjob(operator, sft, kwok_pods):
    name = "ttl"
    sft.apply(sftjob_manifest(name, nodes=1, gpus=1, ttlSecondsAfterFinished=2))
    [pod] = sft.running_pods(name, 1, 1)
    kwok_pods.succeed(sft.ns, pod.metadata.name)
    sft.wait_phase(name, "Succeeded", 20)
    wait_until(lambda: not sft.jobs(name) and not sft.pods(name), 30, "children removed")
    assert gone(lambda: sft.core.read_namespaced_service("ttl-a1", sft.ns))
    assert gone(lambda: sft.core.read_namespaced_config_map("ttl-a1-config", sft.ns))
    assert gone(lambda: sft.core.read_namespaced_service_account("ttl-trainer", sft.ns))
    st = sft.status(name)
    assert st["phase"] == "Succeeded" and st["completionTime"]
    sft.wait_events(name, {"TTLExpired"})


def test_deletion_garbage_collects_children(operator, sft):
    name = "doomed"
    sft.apply(sftjob_manifest(name, nodes=2, gpus=1))
    sft.running_pods(name, 1, 2)
    sft.delete(name)
    wait_until(lambda: gone(lambda: sft.get(name)), 30, "SFTJob deleted")
    wait_until(lambda: not sft.jobs(name) and not sft.pods(name), 60, "Job and pods collected")
    wait_until(lambda: gone(lambda: sft.core.read_namespaced_service("doomed-a1", sft.ns)), 30, "Service collected")
    wait_until(lambda: gone(lambda: sft.core.read_namespaced_config_map("doomed-a1-config", sft.ns)), 30, "ConfigMap collected")
    wait_until(lambda: gone(lambda: sft.core.read_namespaced_service_account("doomed-trainer", sft.ns)), 30, "SA collected")


def test_kueue_admission(operator, sft):
    name = "queued"
    body = sftjob_manifest(name, nodes=2, gpus=1)
    body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "gpu-queue"}
    sft.apply(body)
    st = sft.wait(name, lambda s: cond(s, "Running").get("reason") == "Queued", 20, "Queued")
    assert st["phase"] == "Pending" and "gpu-queue" in cond(st, "Running")["message"]
    [job] = sft.jobs(name, 1)
    assert job.spec.suspend is True and job.metadata.labels["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    time.sleep(2)
    assert sft.pods(name) == []
    # Admission, as Kueue does it: unsuspend the Job (with its own field manager).
    sft.batch.patch_namespaced_job(job.metadata.name, sft.ns, {"spec": {"suspend": False}})
    sft.running_pods(name, 1, 2)
    st = sft.wait_phase(name, "Running")
    assert st["startTime"]
    time.sleep(2)
    assert sft.jobs(name, 1)[0].spec.suspend is False  # the operator did not undo the admission


def test_job_too_large_stays_pending_with_reason(operator, sft, gpu_pool):
    pool = gpu_pool(nodes=2, gpus=8)
    name = "toolarge"
    sft.apply(sftjob_manifest(name, nodes=3, gpus=8, workers={"nodeSelector": pool.node_selector, "tolerations": pool.tolerations}))
    st = sft.wait(name, lambda s: cond(s, "Running").get("reason") == "Unschedulable", 40, "Unschedulable")
    assert st["phase"] == "Pending"
    assert "Insufficient nvidia.com/gpu" in cond(st, "Running")["message"]
    sft.wait_events(name, {"Unschedulable"})
