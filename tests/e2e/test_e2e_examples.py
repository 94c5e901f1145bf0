"""Every file in examples/ is applied and reconciled to running pods on the dev cluster, through the
preflight pod that each of them runs first by default (kwok plays a passing preflight)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_reaches_running_pods(operator, sft, kwok_pods, path):
    body = yaml.safe_load(path.read_text())
    name = body["metadata"]["name"]
    workers = body["spec"].get("workers", {})
    nodes = workers.get("nodes", 1)
    if workers.get("priorityClassName"):  # a cluster prerequisite of that example
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        try:
            client.SchedulingV1Api(sft.api_client).create_priority_class(
                {"metadata": {"name": workers["priorityClassName"]}, "value": 1000})
        except ApiException as e:
            if e.status != 409:
                raise
    sft.apply(body)
    try:
        if (body["spec"].get("preflight") or {}).get("enabled", True):
            # The default: one CPU-only preflight pod first, and no gang until it passes.
            check = sft.running_preflight_pod(name)
            assert "nvidia.com/gpu" not in (check.spec.containers[0].resources.requests or {})
            assert sft.jobs(name) == []
            kwok_pods.succeed(sft.ns, check.metadata.name, message="preflight ok")
            st = sft.wait(name, lambda s: (s.get("preflight") or {}).get("passed") is True, 30, "preflight passed")
            assert st["preflight"]["message"] == "preflight passed: preflight ok"
        queue = (body["metadata"].get("labels") or {}).get("kueue.x-k8s.io/queue-name")
        if queue:  # admit it, as Kueue would
            sft.wait(name, lambda s: s.get("phase") == "Pending" and any(c.get("reason") == "Queued" for c in s.get("conditions", [])), 30, "Queued")
            [job] = sft.jobs(name, 1)
            sft.batch.patch_namespaced_job(job.metadata.name, sft.ns, {"spec": {"suspend": False}})
        pods = sft.running_pods(name, 1, nodes, timeout=60)
        assert len(pods) == nodes
        st = sft.wait_phase(name, "Running", 30)
        assert st["attempt"] == 1
    finally:
        sft.delete(name)
        deadline = time.monotonic() + 60
        while sft.pods(name) and time.monotonic() < deadline:  # free the GPUs for the next example
            time.sleep(0.3)
