"""apply -> preflight pod passes -> Job, Service, ConfigMap with the right env and resources -> pods on GPU nodes -> progress
in status -> success -> Succeeded with completionTime; events, printer columns and metrics along the way."""

from __future__ import annotations

import time

import yaml
from sft_e2e_helpers import cond, sftjob_manifest


def test_happy_path(operator, sft, kwok_pods, kubectl):
    name = "happy"
    sft.apply(sftjob_manifest(name, nodes=2, gpus=8, preflight={"enabled": True}))

    # The preflight first: one CPU-only pod; it passes (as the trainer's would on this data).
    check = sft.running_preflight_pod(name)
    assert "nvidia.com/gpu" not in (check.spec.containers[0].resources.limits or {}) and sft.jobs(name) == []
    kwok_pods.succeed(sft.ns, check.metadata.name, message="preflight ok")

    # Children of attempt 1.
    deadline = time.monotonic() + 30
    while not sft.jobs(name, 1) and time.monotonic() < deadline:
        time.sleep(0.2)
    [job] = sft.jobs(name, 1)
    assert job.spec.completion_mode == "Indexed" and job.spec.parallelism == job.spec.completions == 2
    assert job.spec.backoff_limit == 0 and job.spec.template.spec.restart_policy == "Never"
    assert job.metadata.owner_references[0].kind == "SFTJob" and job.metadata.owner_references[0].controller
    c = job.spec.template.spec.containers[0]
    env = {e.name: e for e in c.env}
    assert env["MASTER_ADDR"].value == "happy-a1-0.happy-a1" and env["WORLD_SIZE"].value == "16"
    assert env["NNODES"].value == "2" and env["NPROC_PER_NODE"].value == "8" and env["PET_NNODES"].value == "2"
    assert "job-completion-index" in env["NODE_RANK"].value_from.field_ref.field_path
    assert env["SFT_ATTEMPT"].value == "1" and env["SFT_JOB_NAMESPACE"].value == sft.ns
    assert c.resources.limits["nvidia.com/gpu"] == "8"
    assert c.env_from[0].secret_ref.name == "s3-credentials"
    svc = sft.core.read_namespaced_service("happy-a1", sft.ns)
    assert svc.spec.cluster_ip == "None" and svc.spec.publish_not_ready_addresses
    cm = sft.core.read_namespaced_config_map("happy-a1-config", sft.ns)
    assert yaml.safe_load(cm.data["job.yaml"])["metadata"]["name"] == name

    # Pods scheduled onto the kwok GPU nodes, one per node.
    pods = sft.running_pods(name, 1, 2)
    nodes = {p.spec.node_name for p in pods}
    assert len(nodes) == 2
    for n in nodes:
        assert sft.core.read_node(n).status.allocatable["nvidia.com/gpu"] == "8"
    assert [p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods] == ["0", "1"]
    assert all(p.spec.hostname == f"happy-a1-{i}" and p.spec.subdomain == "happy-a1" for i, p in enumerate(pods))

    st = sft.wait_phase(name, "Running", 30)
    assert st["attempt"] == 1 and st["restarts"] == 0 and st["startTime"]
    assert cond(st, "Running")["status"] == "True"

    # Progress through the trainer's own channel (its per-job ServiceAccount token).
    sft.report_progress(name, {"progress": {"step": 10, "totalSteps": 20, "percent": 50.0, "epoch": 0.5, "etaSeconds": 12},
                               "metrics": {"trainLoss": 1.25, "tokensPerSecond": 1000.0}, "worldSize": 16})
    st = sft.wait(name, lambda s: (s.get("progress") or {}).get("step") == 10, 10, "progress")
    assert st["worldSize"] == 16 and st["metrics"]["trainLoss"] == 1.25
    row = kubectl("get", "sftjob", name, "-n", sft.ns, "--no-headers").stdout.split()
    assert row[:6] == [name, "Running", "10", "50", "1.25", "1000"], row

    for p in pods:
        kwok_pods.succeed(sft.ns, p.metadata.name)
    st = sft.wait_phase(name, "Succeeded", 30)
    assert st["completionTime"] and cond(st, "Succeeded")["status"] == "True"
    assert st["progress"]["step"] == 10  # the operator never overwrote the trainer's fields

    sft.wait_events(name, {"PreflightRunning", "PreflightPassed", "AttemptCreated", "PodsRunning", "Completed"})
    text = operator.metrics()
    assert 'sftoperator_build_info{version=' in text
    assert 'sftoperator_jobs{phase="Succeeded"}' in text
    assert "sftoperator_time_to_running_seconds_count" in text
    assert "sftoperator_reconcile_duration_seconds_count" in text


def test_second_reconcile_changes_nothing(operator, sft):
    """Level-triggered passes keep running (1s resync), yet an unchanged world sees no writes."""
    name = "steady"
    sft.apply(sftjob_manifest(name, nodes=1, gpus=1))
    sft.running_pods(name, 1, 1)
    sft.wait_phase(name, "Running", 30)
    time.sleep(1.5)
    before = sft.get(name)["metadata"]["resourceVersion"]
    job_rv = sft.jobs(name, 1)[0].metadata.resource_version
    svc_rv = sft.core.read_namespaced_service("steady-a1", sft.ns).metadata.resource_version
    time.sleep(4)  # several resync passes
    assert sft.get(name)["metadata"]["resourceVersion"] == before
    assert sft.jobs(name, 1)[0].metadata.resource_version == job_rv
    assert sft.core.read_namespaced_service("steady-a1", sft.ns).metadata.resource_version == svc_rv
