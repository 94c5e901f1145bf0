"""Failure policies on the real control plane: restart the gang, preemption, limits, non-retryable
exit codes, stalls, deadline, node loss."""

from __future__ import annotations

import time

import pytest
from sft_e2e_helpers import cond, sftjob_manifest


def _env(job) -> dict:
    return {e.name: e.value for e in job.spec.template.spec.containers[0].env}


def wait_job(sft, name, attempt, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = sft.jobs(name, attempt)
        if jobs:
            return jobs[0]
        time.sleep(0.1)
    raise AssertionError(f"Job of {name} attempt {attempt} not created in {timeout}s")


def test_pod_failure_restarts_the_whole_gang(operator, sft, kwok_pods):
    name = "restart"
    sft.apply(sftjob_manifest(name, nodes=2, gpus=1))
    pods = sft.running_pods(name, 1, 2)
    sft.wait_phase(name, "Running")
    kwok_pods.fail(sft.ns, pods[1].metadata.name, exit_code=3, wait=False)

    job2 = wait_job(sft, name, 2)
    # Attempt 2 exists only once no pod of attempt 1 can still run (a terminal one may linger
    # behind the Job controller's tracking finalizer for a moment).
    assert all(p.status.phase in ("Failed", "Succeeded") for p in sft.pods(name, 1)), [(p.metadata.name, p.status.phase) for p in sft.pods(name, 1)]
    assert sft.jobs(name, 1) == []
    env = _env(job2)
    assert env["SFT_ATTEMPT"] == "2" and env["SFT_RESUME"] == "latest"
    st = sft.status(name)
    assert st["attempt"] == 2 and st["restarts"] == 1 and st["preemptions"] == 0
    [ev] = [e for e in sft.wait_events(name, {"PodFailed"}) if e.reason == "PodFailed"]
    assert ev.type == "Warning" and pods[1].metadata.name in ev.message and "exited with code 3" in ev.message
    assert st["lastFailure"]["pod"] == pods[1].metadata.name and st["lastFailure"]["exitCode"] == 3
    assert st["lastFailure"]["node"] == pods[1].spec.node_name

    sft.running_pods(name, 2, 2)
    st = sft.wait_phase(name, "Running")
    assert st["restarts"] == 1 and cond(st, "Restarting")["status"] == "False"
    assert f'sftoperator_restarts_total{{namespace="{sft.ns}",reason="PodFailed",sftjob="{name}"}} 1.0' in operator.metrics()


def test_oom_killed_pod_is_named_in_the_failure(operator, sft, kwok_pods):
    name = "oom"
    sft.apply(sftjob_manifest(name, nodes=2, gpus=1))
    pods = sft.running_pods(name, 1, 2)
    sft.wait_phase(name, "Running")
    victim = pods[0]
    # what the kubelet writes for a container the kernel OOM-killed; the peer crashes with it
    kwok_pods.fail(sft.ns, victim.metadata.name, exit_code=137, reason="OOMKilled", wait=False)
    kwok_pods.fail(sft.ns, pods[1].metadata.name, exit_code=1, wait=False)

    st = sft.wait(name, lambda s: s.get("attempt") == 2, 30, "attempt 2")
    assert st["restarts"] == 1 and st["preemptions"] == 0
    lf = st["lastFailure"]
    assert lf["reason"] == "OOMKilled" and lf["pod"] == victim.metadata.name and lf["exitCode"] == 137
    assert lf["node"] == victim.spec.node_name and "OOMKilled" in lf["message"]
    ev = [e for e in sft.wait_events(name, {"OOMKilled"}) if e.reason == "OOMKilled"]
    assert ev and ev[0].type == "Warning" and victim.metadata.name in ev[0].message
    sft.running_pods(name, 2, 2)
    assert f'sftoperator_restarts_total{{namespace="{sft.ns}",reason="OOMKilled",sftjob="{name}"}} 1.0' in operator.metrics()


def test_sigterm_exit_after_checkpoint_counts_as_preemption(operator, sft, kwok_pods):
    """Exit 75: the trainer got SIGTERM (a drain, a manual delete) and committed a checkpoint first."""
    name = "sigterm"
    sft.apply(sftjob_manifest(name, nodes=1, gpus=1, failurePolicy={"maxRestarts": 0}))
    [p1] = sft.running_pods(name, 1, 1)
    sft.wait_phase(name, "Running")
    kwok_pods.fail(sft.ns, p1.metadata.name, exit_code=75, wait=False)
    st = sft.wait(name, lambda s: s.get("attempt") == 2, 30, "attempt 2")
    # not a restart: maxRestarts 0 would have failed the job
    assert st["preemptions"] == 1 and st["restarts"] == 0 and st["phase"] != "Failed"
    assert st["lastFailure"]["reason"] == "Interrupted" and st["lastFailure"]["exitCode"] == 75
    sft.running_pods(name, 2, 1)
    assert sft.wait_phase(name, "Running")["attempt"] == 2


def test_eviction_counts_as_preemption(operator, sft, kwok_pods):
    name = "evicted"
    sft.apply(sftjob_manifest(name, nodes=2, gpus=1))
    pods = sft.running_pods(name, 1, 2)
    sft.wait_phase(name, "Running")
    kwok_pods.evict(sft.ns, pods[0].metadata.name, wait=False)
    st = sft.wait(name, lambda s: s.get("attempt") == 2, 30, "attempt 2")
    assert st["preemptions"] == 1 and st["restarts"] == 0
    assert st["lastFailure"]["reason"] == "Evicted" and "EvictionByEvictionAPI" in st["lastFailure"]["message"]
    sft.running_pods(name, 2, 2)
    st = sft.wait_phase(name, "Running")
    assert st["preemptions"] == 1 and st["restarts"] == 0


def test_max_restarts_exhausted(operator, sft, kwok_pods):
    name = "exhaust"
    sft.apply(sftjob_manifest(name, nodes=1, gpus=1, failurePolicy={"maxRestarts": 1}))
    [p1] = sft.running_pods(name, 1, 1)
    kwok_pods.fail(sft.ns, p1.metadata.name, exit_code=7, wait=False)
    [p2] = sft.running_pods(name, 2, 1)
    kwok_pods.fail(sft.ns, p2.metadata.name, exit_code=7, wait=False)
    st = sft.wait_phase(name, "Failed", 30)
    c = cond(st, "Failed")
    assert c["reason"] == "MaxRestartsExceeded" and p2.metadata.name in c["message"] and "code 7" in c["message"]
    assert st["restarts"] == 1 and st["attempt"] == 2 and st["completionTime"]
    time.sleep(2)
    assert sft.jobs(name, 3) == []  # no further attempt


@pytest.mark.parametrize("code,reason", [
    pytest.param(66, "TopologyMismatch", id="topology-mismatch"),
    pytest.param(65, "GoldenSetRegression", id="golden-set-regression"),
    pytest.param(67, "SanityCheckFailed", id="sanity-check-failed"),
])
def test_non_retryable_exit_code_fails_at_once(operator, sft, kwok_pods, code, reason):
    name = f"nonretry-{code}"
    sft.apply(sftjob_manifest(name, nodes=2, gpus=1))
    pods = sft.running_pods(name, 1, 2)
    kwok_pods.fail(sft.ns, pods[0].metadata.name, exit_code=code, wait=False)
    st = sft.wait_phase(name, "Failed", 30)
    assert cond(st, "Failed")["reason"] == reason
    assert st["restarts"] == 0 and st["attempt"] == 1
    time.sleep(2)
    assert sft.jobs(name, 2) == []


def test_stall_sets_stalled_and_restarts(operator, sft):
    name = "stall"
    sft.apply(sftjob_manifest(name, nodes=1, gpus=1, failurePolicy={"stallTimeoutSeconds": 3, "maxRestarts": 5}))
    sft.running_pods(name, 1, 1)
    sft.wait_phase(name, "Running")
    sft.report_progress(name, {"progress": {"step": 1, "totalSteps": 100}})
    st = sft.wait(name, lambda s: cond(s, "Stalled").get("status") == "True", 20, "Stalled")
    assert cond(st, "Stalled")["reason"] == "Stalled" and "no progress" in cond(st, "Stalled")["message"]
    st = sft.wait(name, lambda s: s.get("attempt", 0) >= 2 and s.get("restarts", 0) >= 1, 10, "restart")
    assert st["preemptions"] == 0
    sft.running_pods(name, 2, 1)
    sft.wait_phase(name, "Running")
    sft.report_progress(name, {"progress": {"step": 2, "totalSteps": 100}})
    sft.wait(name, lambda s: cond(s, "Stalled").get("status") == "False", 10, "Stalled cleared by progress")


def test_active_deadline(operator, sft):
    name = "deadline"
    sft.apply(sftjob_manifest(name, nodes=1, gpus=1, activeDeadlineSeconds=3))
    sft.running_pods(name, 1, 1)
    st = sft.wait_phase(name, "Failed", 20)
    assert cond(st, "Failed")["reason"] == "DeadlineExceeded"
    deadline = time.monotonic() + 20
    while sft.pods(name) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert sft.pods(name) == []


def test_node_loss_counts_as_preemption(operator, sft, kwok_pods, gpu_pool):
    pool = gpu_pool(nodes=3, gpus=8)  # dedicated nodes: losing one never hurts another test
    name = "nodeloss"
    sft.apply(sftjob_manifest(name, nodes=2, gpus=8, workers={"nodeSelector": pool.node_selector, "tolerations": pool.tolerations}))
    pods = sft.running_pods(name, 1, 2)
    sft.wait_phase(name, "Running")
    lost = pods[1].spec.node_name
    assert lost in pool.nodes
    kwok_pods.lose_node(lost, fast=False)  # the Node object goes away; pod GC would act only after 40s
    st = sft.wait(name, lambda s: s.get("attempt") == 2, 30, "attempt 2 after node loss")
    assert st["preemptions"] == 1 and st["restarts"] == 0
    assert st["lastFailure"]["reason"] == "NodeLost" and st["lastFailure"]["node"] == lost
    assert lost in st["lastFailure"]["message"]
    new_pods = sft.running_pods(name, 2, 2, timeout=60)
    assert lost not in {p.spec.node_name for p in new_pods}
