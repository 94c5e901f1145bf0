"""The dev cluster is a real Kubernetes control plane: version-stamped binaries, GPU nodes the
scheduler fits requests onto, the Job controller, real RBAC, optimistic concurrency, and kwok
driving pod outcomes (exit codes, DisruptionTarget, node loss)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from sft_dev import build
from sft_dev.cluster import GPU_PRODUCT


def _pod(name: str, gpus: int = 8, labels: dict | None = None, pool=None) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}),
        spec=client.V1PodSpec(
            restart_policy="Never",
            node_selector=pool.node_selector if pool else None,
            tolerations=pool.tolerations if pool else None,
            containers=[client.V1Container(
                name="trainer", image="sft-trainer:test",
                resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus)}))],
        ),
    )


def _indexed_job(name: str, nodes: int, pod_failure_policy: dict | None = None) -> dict:
    spec = {
        "completionMode": "Indexed", "completions": nodes, "parallelism": nodes, "backoffLimit": 0,
        "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "trainer", "image": "sft-trainer:test",
                            "resources": {"limits": {"nvidia.com/gpu": "8"}}}],
        }},
    }
    if pod_failure_policy:
        spec["podFailurePolicy"] = pod_failure_policy
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def _wait(pred, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _job_condition(batch: client.BatchV1Api, ns: str, name: str, ctype: str):
    job = batch.read_namespaced_job(name, ns)
    for c in job.status.conditions or []:
        if c.type == ctype and c.status == "True":
            return c
    return None


@pytest.mark.parametrize("binary,expect", [
    ("kube-apiserver", f"Kubernetes {build.K8S_VERSION}"),
    ("kube-controller-manager", f"Kubernetes {build.K8S_VERSION}"),
    ("kube-scheduler", f"Kubernetes {build.K8S_VERSION}"),
    ("etcd", f"etcd Version: {build.ETCD_VERSION.lstrip('v')}"),
    ("kwok", build.KWOK_VERSION.lstrip("v")),
])
def test_binaries_report_their_pinned_version(binary, expect, devcluster_bin):
    out = subprocess.run([str(devcluster_bin / binary), "--version"], capture_output=True, text=True)
    assert expect in out.stdout + out.stderr


def test_server_version_is_stamped(kube_api):
    v = client.VersionApi(kube_api).get_code()
    assert v.git_version == build.K8S_VERSION
    assert (v.major, v.minor) == ("1", build.K8S_VERSION.split(".")[1])


def test_gpu_nodes_are_ready_with_gpu_capacity_and_labels(kube_api, dev_cluster):
    nodes = client.CoreV1Api(kube_api).list_node().items
    nodes = [n for n in nodes if n.metadata.name in dev_cluster.nodes]  # others may add pools
    assert sorted(n.metadata.name for n in nodes) == sorted(dev_cluster.nodes)
    assert len(nodes) == int(os.environ.get("SFT_TEST_NODES", "4"))
    for n in nodes:
        assert n.status.allocatable["nvidia.com/gpu"] == "8"
        assert n.status.capacity["nvidia.com/gpu"] == "8"
        assert n.metadata.labels["nvidia.com/gpu.product"] == GPU_PRODUCT
        assert n.metadata.labels["nvidia.com/gpu.count"] == "8"
        assert "node.kubernetes.io/instance-type" in n.metadata.labels
        ready = {c.type: c.status for c in n.status.conditions}
        assert ready["Ready"] == "True"


def test_scheduler_fits_gpu_requests_onto_nodes(kube_api, namespace, kwok_pods, gpu_pool):
    pool = gpu_pool(nodes=2, gpus=8)
    core = client.CoreV1Api(kube_api)
    for i in range(2):
        core.create_namespaced_pod(namespace, _pod(f"full-{i}", gpus=8, labels={"set": "full"}, pool=pool))
    running = kwok_pods.wait_for_pods(namespace, "set=full", count=2, phase="Running", timeout=60)
    # 8 GPUs per node, 8 per pod: exactly one pod per node.
    assert sorted(p.spec.node_name for p in running) == sorted(pool.nodes)
    core.create_namespaced_pod(namespace, _pod("one-too-many", gpus=1, pool=pool))

    def unschedulable():
        p = core.read_namespaced_pod("one-too-many", namespace)
        return next((c for c in p.status.conditions or [] if c.type == "PodScheduled" and c.status == "False"), None)

    cond = _wait(unschedulable, 30, "the scheduler to report one-too-many unschedulable")
    assert cond.reason == "Unschedulable"
    assert "2 Insufficient nvidia.com/gpu" in cond.message
    assert core.read_namespaced_pod("one-too-many", namespace).status.phase == "Pending"
    # Freeing one node's GPUs lets the scheduler place it there.
    kwok_pods.succeed(namespace, running[0].metadata.name)
    core.delete_namespaced_pod(running[0].metadata.name, namespace)
    placed = kwok_pods.wait_for_phase(namespace, "one-too-many", "Running", timeout=60)
    assert placed.spec.node_name == running[0].spec.node_name


def test_indexed_job_pods_stay_running_until_told_then_succeed(kube_api, namespace, kwok_pods):
    batch = client.BatchV1Api(kube_api)
    batch.create_namespaced_job(namespace, _indexed_job("gang", 2))
    pods = kwok_pods.wait_for_pods(namespace, "job-name=gang", count=2, phase="Running", timeout=60)
    assert sorted(p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods) == ["0", "1"]
    time.sleep(2)  # nothing completes on its own
    assert batch.read_namespaced_job("gang", namespace).status.succeeded in (None, 0)
    names = kwok_pods.set_outcome_for(namespace, "job-name=gang", "succeed", count=2)
    assert sorted(names) == sorted(p.metadata.name for p in pods)
    for n in names:
        done = kwok_pods.wait_for_phase(namespace, n, "Succeeded")
        term = done.status.container_statuses[0].state.terminated
        assert term.exit_code == 0 and term.reason == "Completed"
    _wait(lambda: _job_condition(batch, namespace, "gang", "Complete"), 60, "Job gang to complete")


def test_failed_pod_carries_exit_code_and_job_pod_failure_policy_sees_it(kube_api, namespace, kwok_pods):
    batch = client.BatchV1Api(kube_api)
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}]}
    batch.create_namespaced_job(namespace, _indexed_job("cfgerr", 2, policy))
    pods = kwok_pods.wait_for_pods(namespace, "job-name=cfgerr", count=2, timeout=60)
    failed = kwok_pods.fail(namespace, pods[0].metadata.name, exit_code=42)
    assert failed.status.phase == "Failed"
    assert failed.status.container_statuses[0].state.terminated.exit_code == 42
    assert failed.status.container_statuses[0].state.terminated.reason == "Error"
    cond = _wait(lambda: _job_condition(batch, namespace, "cfgerr", "Failed"), 60, "Job cfgerr to fail")
    assert cond.reason == "PodFailurePolicy"
    assert "42" in cond.message


def test_failed_pod_can_be_oom_killed(kube_api, namespace, kwok_pods):
    batch = client.BatchV1Api(kube_api)
    batch.create_namespaced_job(namespace, _indexed_job("oom", 1, None))
    (pod,) = kwok_pods.wait_for_pods(namespace, "job-name=oom", count=1, timeout=60)
    failed = kwok_pods.fail(namespace, pod.metadata.name, exit_code=137, reason="OOMKilled")
    term = failed.status.container_statuses[0].state.terminated
    assert failed.status.phase == "Failed" and term.exit_code == 137 and term.reason == "OOMKilled"


@pytest.mark.parametrize("outcome,reason", [("preempt", "PreemptionByScheduler"), ("evict", "EvictionByEvictionAPI")])
def test_disruption_sets_disruption_target_and_job_ignores_it(kube_api, namespace, kwok_pods, outcome, reason):
    batch = client.BatchV1Api(kube_api)
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    batch.create_namespaced_job(namespace, _indexed_job("disrupted", 1, policy))
    (pod,) = kwok_pods.wait_for_pods(namespace, "job-name=disrupted", count=1, timeout=60)
    gone = getattr(kwok_pods, outcome)(namespace, pod.metadata.name)
    conds = {c.type: c for c in gone.status.conditions}
    assert conds["DisruptionTarget"].status == "True"
    assert conds["DisruptionTarget"].reason == reason
    assert gone.status.container_statuses[0].state.terminated.exit_code == 137
    # The Job controller honours the Ignore rule: a replacement pod, and no failure counted.
    def replacement():
        ps = client.CoreV1Api(kube_api).list_namespaced_pod(namespace, label_selector="job-name=disrupted").items
        return [p for p in ps if p.metadata.name != pod.metadata.name and p.status.phase == "Running"]

    _wait(replacement, 60, "a replacement pod")
    assert not batch.read_namespaced_job("disrupted", namespace).status.failed


def test_lost_node_fast_marks_pods_like_pod_gc(kube_api, namespace, kwok_pods, gpu_pool):
    pool = gpu_pool(nodes=1)
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(namespace, _pod("on-lost-node", gpus=8, pool=pool))
    (pod,) = kwok_pods.wait_for_pods(namespace, "", count=1, timeout=60)
    assert pod.spec.node_name == pool.nodes[0]
    lost = kwok_pods.lose_node(pool.nodes[0])
    assert [p.metadata.name for p in lost] == ["on-lost-node"]
    got = core.read_namespaced_pod("on-lost-node", namespace)
    assert got.status.phase == "Failed"
    cond = next(c for c in got.status.conditions if c.type == "DisruptionTarget")
    assert (cond.status, cond.reason) == ("True", "DeletionByPodGC")
    assert pool.nodes[0] not in [n.metadata.name for n in core.list_node().items]


def test_lost_node_real_pod_gc_fails_and_deletes_pods(kube_api, namespace, kwok_pods, gpu_pool):
    pool = gpu_pool(nodes=1)
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(namespace, _pod("orphan", gpus=8, pool=pool))
    (pod,) = kwok_pods.wait_for_pods(namespace, "", count=1, timeout=60)
    kwok_pods.lose_node(pod.spec.node_name, fast=False)
    # Nothing but the controller-manager acts now: pod GC deletes the pod of the vanished node
    # (after its fixed 40s quarantine).
    kwok_pods.wait_for_deleted(namespace, "orphan", timeout=150)


def test_rbac_is_enforced_for_service_account_tokens(kube_api, namespace, dev_cluster):
    core = client.CoreV1Api(kube_api)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="probe")))
    tr = core.create_namespaced_service_account_token(
        "probe", namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])))
    cfg = client.Configuration()
    cfg.host, cfg.ssl_ca_cert = dev_cluster.server, str(dev_cluster.ca_file)
    cfg.api_key = {"authorization": f"Bearer {tr.status.token}"}
    with client.ApiClient(cfg) as sa_api:
        sa_core = client.CoreV1Api(sa_api)
        with pytest.raises(ApiException) as e:
            sa_core.list_namespaced_config_map(namespace)
        assert e.value.status == 403
        rbac.create_namespaced_role(namespace, client.V1Role(
            metadata=client.V1ObjectMeta(name="read-cm"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["list"])]))
        rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="read-cm"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="read-cm"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="probe", namespace=namespace)]))
        _wait(lambda: _can_list(sa_core, namespace), 10, "the RoleBinding to take effect")
        with pytest.raises(ApiException) as e:
            sa_core.list_namespaced_secret(namespace)
        assert e.value.status == 403


def _can_list(core: client.CoreV1Api, ns: str) -> bool:
    try:
        core.list_namespaced_config_map(ns)
        return True
    except ApiException:
        return False


def test_stale_resource_version_conflicts(kube_api, namespace):
    core = client.CoreV1Api(kube_api)
    cm = core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="cm"), data={"a": "1"}))
    cm.data = {"a": "2"}
    core.replace_namespaced_config_map("cm", namespace, cm)
    cm.data = {"a": "3"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_config_map("cm", namespace, cm)
    assert e.value.status == 409


def test_garbage_collector_deletes_owned_objects(kube_api, namespace):
    core = client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="child", owner_references=[ref])))
    core.delete_namespaced_config_map("owner", namespace)

    def child_gone():
        try:
            core.read_namespaced_config_map("child", namespace)
            return False
        except ApiException as e:
            return e.status == 404

    _wait(child_gone, 60, "the garbage collector to delete the child")


def test_headless_service_gets_endpoints_for_kwok_pods(kube_api, namespace, kwok_pods):
    # The trainer's rendezvous goes through a headless Service: its EndpointSlice must list pod IPs.
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service(namespace, client.V1Service(
        metadata=client.V1ObjectMeta(name="gang"),
        spec=client.V1ServiceSpec(cluster_ip="None", selector={"app": "gang"},
                                  ports=[client.V1ServicePort(name="c10d", port=29500)])))
    core.create_namespaced_pod(namespace, _pod("gang-0", gpus=0, labels={"app": "gang"}))
    (pod,) = kwok_pods.wait_for_pods(namespace, "app=gang", count=1)
    assert pod.status.pod_ip

    def addresses():
        slices = client.DiscoveryV1Api(kube_api).list_namespaced_endpoint_slice(
            namespace, label_selector="kubernetes.io/service-name=gang").items
        return [a for s in slices for e in (s.endpoints or []) for a in e.addresses]

    assert _wait(addresses, 30, "the EndpointSlice of gang") == [pod.status.pod_ip]
