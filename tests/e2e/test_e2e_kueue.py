"""The operator with a real Kueue (v0.17.0, built from the Go module proxy; the `kueue` fixture) on kwok
GPU nodes: GPU quota, where the pods land (the flavor's node labels and tolerations), suspend, and
priority preemption.

Each test gets its own pool of tainted kwok nodes, a ResourceFlavor that selects them, a ClusterQueue
with an nvidia.com/gpu quota of 16 for its namespace, and a LocalQueue. The SFTJobs carry no node
selector or toleration of their own: only Kueue's flavor puts their pods on the pool.
"""

from __future__ import annotations

import time

import pytest
from kubernetes.client.rest import ApiException
from sft_e2e_helpers import cond, sftjob_manifest

GROUP, V = "kueue.x-k8s.io", "v1beta2"
QUEUE, PRIORITY = f"{GROUP}/queue-name", f"{GROUP}/priority-class"


def wait_until(pred, timeout=60, what=""):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
        time.sleep(0.5)


class Queues:
    """A ResourceFlavor on the test's pool, a ClusterQueue (GPU quota 16) and a LocalQueue `lq`."""

    def __init__(self, sft, pool, gpus: int = 16, preemption: dict | None = None):
        self.sft, self.ns = sft, sft.ns
        self.flavor, self.cq = f"{pool.name}", f"cq-{sft.ns}"[:63]
        c = sft.custom
        c.create_cluster_custom_object(GROUP, V, "resourceflavors", {
            "apiVersion": f"{GROUP}/{V}", "kind": "ResourceFlavor", "metadata": {"name": self.flavor},
            "spec": {"nodeLabels": pool.node_selector, "tolerations": pool.tolerations}})
        c.create_cluster_custom_object(GROUP, V, "clusterqueues", {
            "apiVersion": f"{GROUP}/{V}", "kind": "ClusterQueue", "metadata": {"name": self.cq},
            "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.ns}},
                     "preemption": preemption or {"withinClusterQueue": "Never"},
                     "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"], "flavors": [
                         {"name": self.flavor, "resources": [
                             {"name": "cpu", "nominalQuota": 64}, {"name": "memory", "nominalQuota": "256Gi"},
                             {"name": "nvidia.com/gpu", "nominalQuota": gpus}]}]}]}})
        c.create_namespaced_custom_object(GROUP, V, self.ns, "localqueues", {
            "apiVersion": f"{GROUP}/{V}", "kind": "LocalQueue", "metadata": {"name": "lq"},
            "spec": {"clusterQueue": self.cq}})
        self.priorities: list[str] = []

    def priority_class(self, name: str, value: int) -> str:
        full = f"{name}-{self.ns}"[:63]
        self.sft.custom.create_cluster_custom_object(GROUP, V, "workloadpriorityclasses", {
            "apiVersion": f"{GROUP}/{V}", "kind": "WorkloadPriorityClass", "metadata": {"name": full}, "value": value})
        self.priorities.append(full)
        return full

    def workloads(self) -> list[dict]:
        return self.sft.custom.list_namespaced_custom_object(GROUP, V, self.ns, "workloads")["items"]

    def workload_of(self, job_name: str) -> dict | None:
        return next((w for w in self.workloads()
                     if any(o.get("name") == job_name for o in w["metadata"].get("ownerReferences") or [])), None)

    def local_queue(self) -> dict:
        return self.sft.custom.get_namespaced_custom_object(GROUP, V, self.ns, "localqueues", "lq")

    def delete(self) -> None:
        c = self.sft.custom
        for fn, args in ((c.delete_namespaced_custom_object, (GROUP, V, self.ns, "localqueues", "lq")),
                         (c.delete_cluster_custom_object, (GROUP, V, "clusterqueues", self.cq)),
                         (c.delete_cluster_custom_object, (GROUP, V, "resourceflavors", self.flavor)),
                         *((c.delete_cluster_custom_object, (GROUP, V, "workloadpriorityclasses", p))
                           for p in self.priorities)):
            try:
                fn(*args)
            except ApiException as e:
                if e.status != 404:
                    raise


@pytest.fixture
def queues(sftjob_crd, operator, kueue, sft, gpu_pool):
    made = []

    def make(**kw) -> Queues:
        q = Queues(sft, gpu_pool(nodes=2, gpus=8), **kw)
        made.append(q)
        return q

    yield make
    for q in made:
        q.delete()


def queued_job(name: str, labels: dict) -> dict:
    body = sftjob_manifest(name, nodes=2, gpus=8)  # 16 GPUs: the whole quota
    body["metadata"]["labels"] = labels
    return body


def _quota_message(q: Queues, job: str) -> str:
    wl = q.workload_of(job)
    c = next((c for c in (wl or {}).get("status", {}).get("conditions", []) if c["type"] == "QuotaReserved"), {})
    return c.get("message", "") if c.get("status") == "False" else ""


def test_quota_queues_the_second_job_until_the_first_finishes(queues, sft, kwok_pods):
    q = queues()
    sft.apply(queued_job("first", {QUEUE: "lq"}))
    pods = sft.running_pods("first", 1, 2, timeout=90)
    # the flavor's node labels and tolerations reach the pods: only they put them on the tainted pool
    pool_nodes = {n for n in (p.spec.node_name for p in pods)}
    assert all(n.startswith(q.flavor) for n in pool_nodes), pool_nodes
    for p in pods:
        assert p.spec.node_selector == {"sft.dev/pool": q.flavor}
        assert any(t.key == "sft.dev/pool" and t.value == q.flavor for t in p.spec.tolerations)
    sft.wait_phase("first", "Running", 60)

    sft.apply(queued_job("second", {QUEUE: "lq"}))
    st = sft.wait("second", lambda s: cond(s, "Running").get("reason") == "Queued", 60, "second Queued")
    assert st["phase"] == "Pending" and "lq" in cond(st, "Running")["message"]
    [job2] = sft.jobs("second", 1)
    # Kueue's own verdict, on the second job's Workload
    msg = wait_until(lambda: _quota_message(q, job2.metadata.name), 60, "Kueue's quota message")
    print("Kueue:", msg)
    assert "nvidia.com/gpu" in msg and "quota" in msg
    # ... and it reaches the SFTJob's own condition, so `kubectl describe sft second` says why it waits
    st = sft.wait("second", lambda s: "insufficient unused quota" in cond(s, "Running").get("message", ""), 60,
                  "Kueue's message in the Queued condition")
    assert "nvidia.com/gpu" in cond(st, "Running")["message"] and cond(st, "Running")["reason"] == "Queued"
    time.sleep(3)
    assert sft.pods("second") == [] and sft.status("second")["phase"] == "Pending"

    for p in pods:  # the first job finishes
        kwok_pods.succeed(sft.ns, p.metadata.name)
    sft.wait_phase("first", "Succeeded", 90)
    sft.running_pods("second", 1, 2, timeout=120)  # Kueue admits the second job once the quota is free
    sft.wait_phase("second", "Running", 60)


def test_suspend_releases_the_place_in_the_queue(queues, sft):
    q = queues()
    sft.apply(queued_job("holder", {QUEUE: "lq"}))
    sft.running_pods("holder", 1, 2, timeout=90)
    sft.apply(queued_job("waiter", {QUEUE: "lq"}))
    sft.wait("waiter", lambda s: cond(s, "Running").get("reason") == "Queued", 60, "waiter Queued")
    wait_until(lambda: (q.local_queue().get("status") or {}).get("pendingWorkloads") == 1, 60, "1 pending workload")
    sft.patch_spec("waiter", {"suspend": True})
    sft.wait_phase("waiter", "Suspended", 60)
    # its Job and Workload are gone: nothing of it waits in the queue any more
    wait_until(lambda: (q.local_queue().get("status") or {}).get("pendingWorkloads") == 0, 60, "0 pending workloads")
    wait_until(lambda: not sft.jobs("waiter"), 60, "the waiter's Job deleted")
    wl = q.workload_of("waiter-a1")
    assert wl is None or wl["metadata"].get("deletionTimestamp")


def test_a_higher_priority_job_preempts_a_lower_one(queues, sft, kwok_pods):
    q = queues(preemption={"withinClusterQueue": "LowerPriority"})
    low, high = q.priority_class("low", 10), q.priority_class("high", 1000)
    sft.apply(queued_job("lowjob", {QUEUE: "lq", PRIORITY: low}))
    sft.running_pods("lowjob", 1, 2, timeout=90)
    sft.wait_phase("lowjob", "Running", 60)
    [job] = sft.jobs("lowjob", 1)
    assert job.metadata.labels[PRIORITY] == low  # the label reached the Job, where Kueue reads it
    sft.apply(queued_job("highjob", {QUEUE: "lq", PRIORITY: high}))
    # Kueue evicts the low job (suspends its Job): a preemption, not a restart; attempt 2 queues again
    st = sft.wait("lowjob", lambda s: s.get("preemptions", 0) >= 1, 90, "lowjob preempted")
    assert st.get("restarts", 0) == 0 and st["lastFailure"]["reason"] == "Preempted", st
    high_pods = sft.running_pods("highjob", 1, 2, timeout=120)
    st = sft.wait("lowjob", lambda s: s.get("attempt") == 2 and cond(s, "Running").get("reason") == "Queued",
                  90, "lowjob attempt 2 queued")
    assert st["phase"] == "Pending" and st["preemptions"] == 1 and st["restarts"] == 0
    [job2] = sft.jobs("lowjob", 2)
    assert job2.spec.suspend is True
    for p in high_pods:  # the high job finishes: the low job is readmitted and runs again
        kwok_pods.succeed(sft.ns, p.metadata.name)
    sft.wait_phase("highjob", "Succeeded", 90)
    pods = sft.running_pods("lowjob", 2, 2, timeout=120)
    env = {e.name: e.value for e in pods[0].spec.containers[0].env}
    assert env["SFT_ATTEMPT"] == "2" and env["SFT_RESUME"] == "latest"  # it resumes from its checkpoint
    st = sft.wait_phase("lowjob", "Running", 60)
    assert st["preemptions"] == 1 and st["restarts"] == 0
