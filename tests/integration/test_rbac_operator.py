"""The operator's ClusterRole (rbac.OPERATOR_RULES) on the real apiserver: impersonating the operator's
ServiceAccount, a real reconcile does its work; Secrets and unrelated resources stay out of reach."""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone

import pytest
from kubernetes import client
from sft_integration_helpers import create_sftjob, impersonating, status_code

from sft_operator.apply import KubeApi, write_result
from sft_operator.observe import observe
from sft_operator.rbac import OPERATOR_RULES
from sft_operator.reconcile import reconcile, validate_body
from sft_operator.settings import OperatorSettings


@pytest.fixture
def operator_identity(kube_api, namespace):
    """ServiceAccount `sft-operator` bound to a ClusterRole made of OPERATOR_RULES."""
    rbac = client.RbacAuthorizationV1Api(kube_api)
    core = client.CoreV1Api(kube_api)
    role = f"sft-operator-{secrets.token_hex(3)}"
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "sft-operator"}})
    rbac.create_cluster_role({"metadata": {"name": role}, "rules": OPERATOR_RULES})
    rbac.create_cluster_role_binding({
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "sft-operator", "namespace": namespace}],
    })
    user = f"system:serviceaccount:{namespace}:sft-operator"
    api = impersonating(kube_api, user)
    # RBAC caches refresh quickly but not instantly.
    deadline = time.monotonic() + 10
    while status_code(lambda: client.BatchV1Api(api).list_namespaced_job(namespace)) != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    yield api, user
    api.close()
    rbac.delete_cluster_role_binding(role)
    rbac.delete_cluster_role(role)


def _one_pass(kapi: KubeApi, namespace: str, name: str, events: list | None = None):
    """One reconcile pass written with the operator's rights; the events it meant to post go to `events`."""
    body = kapi.get("SFTJob", namespace, name)
    sel = f"sft.dev/job-name={name}"
    nodes = [n["metadata"]["name"] for n in kapi.request("GET", "/api/v1/nodes")["items"]]
    obs = observe(name, kapi.list("Job", namespace, sel), kapi.list("Pod", namespace, sel), nodes)
    result = reconcile(body, obs, datetime.now(timezone.utc), OperatorSettings(trainer_image="t:1"), validate=validate_body)
    write_result(kapi, body, result)
    if events is not None:
        events += [e.reason for e in result.events]
    return result


def test_operator_can_do_its_work(kube_api, namespace, sftjob_crd, operator_identity, kwok_pods):
    api, _ = operator_identity
    create_sftjob(kube_api, "work", namespace, ttlSecondsAfterFinished=0)
    kapi = KubeApi(api)
    meant: list[str] = []  # every event the passes produced: each one must be posted

    def one_pass(kapi, namespace, name):
        return _one_pass(kapi, namespace, name, meant)

    r = one_pass(kapi, namespace, "work")  # the preflight first: the attempt's ConfigMap and a CPU-only Job
    assert [(o["kind"], o["metadata"]["name"]) for o in r.apply] == [("ConfigMap", "work-a1-config"), ("Job", "work-a1-preflight")]
    [check] = kwok_pods.wait_for_pods(namespace, "sft.dev/job-name=work,sft.dev/component=preflight", 1)
    kwok_pods.succeed(namespace, check.metadata.name)
    r = one_pass(kapi, namespace, "work")  # passed: SA, Role (granting sftjobs/status), RoleBinding, NetworkPolicy, CM, Service, Job
    assert [o["kind"] for o in r.apply] == ["ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "ConfigMap", "Service", "Job"]
    job = client.BatchV1Api(kube_api).read_namespaced_job("work-a1", namespace)
    assert "sft-operator" in {m.manager for m in job.metadata.managed_fields}
    pods = kwok_pods.wait_for_pods(namespace, "sft.dev/job-name=work,sft.dev/component!=preflight", 1)
    one_pass(kapi, namespace, "work")
    # A failure: the operator tears the attempt down (deletes Job, Service, ConfigMap, pods) under its role.
    kwok_pods.fail(namespace, pods[0].metadata.name, exit_code=1)
    r = one_pass(kapi, namespace, "work")
    assert r.status["restarts"] == 1 and {d.kind for d in r.delete} >= {"Job", "Service", "ConfigMap", "Pod"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = one_pass(kapi, namespace, "work")
        if any(o["kind"] == "Job" for o in r.apply):
            break
        time.sleep(0.3)
    else:
        raise AssertionError("attempt 2 never created")
    # Success, then TTL 0: the operator removes every child, including the per-job Role.
    pods = kwok_pods.wait_for_pods(namespace, "sft.dev/attempt=2", 1)
    kwok_pods.succeed(namespace, pods[0].metadata.name)
    deadline = time.monotonic() + 30
    while one_pass(kapi, namespace, "work").status.get("phase") != "Succeeded" and time.monotonic() < deadline:
        time.sleep(0.3)
    r = one_pass(kapi, namespace, "work")
    assert {d.kind for d in r.delete} >= {"Role", "RoleBinding", "ServiceAccount", "NetworkPolicy", "Job"}
    assert status_code(lambda: client.RbacAuthorizationV1Api(kube_api).read_namespaced_role("work-trainer", namespace)) == 404
    assert status_code(lambda: client.NetworkingV1Api(kube_api).read_namespaced_network_policy("work-trainer", namespace)) == 404
    events = client.CoreV1Api(kube_api).list_namespaced_event(namespace, field_selector="involvedObject.name=work").items
    assert {"PreflightPassed", "AttemptCreated", "PodFailed", "Completed", "TTLExpired"} <= {e.reason for e in events}
    # all of them, whatever else the pass wrote (a pass with no annotation patch once posted none)
    assert sorted(e.reason for e in events) == sorted(meant), (sorted(e.reason for e in events), sorted(meant))


def test_operator_cannot_read_secrets_or_touch_unrelated_resources(kube_api, namespace, operator_identity):
    api, _ = operator_identity
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    client.CoreV1Api(kube_api).create_namespaced_secret(namespace, {"metadata": {"name": "s3-credentials"}, "stringData": {"AWS_ACCESS_KEY_ID": "x"}})
    assert status_code(lambda: core.read_namespaced_secret("s3-credentials", namespace)) == 403
    assert status_code(lambda: core.list_namespaced_secret(namespace)) == 403
    assert status_code(lambda: core.list_secret_for_all_namespaces()) == 403
    assert status_code(lambda: apps.list_namespaced_deployment(namespace)) == 403
    assert status_code(lambda: core.delete_node("gpu-node-0")) == 403
    assert status_code(lambda: core.delete_namespace(namespace)) == 403
    assert status_code(lambda: core.create_namespaced_pod(namespace, {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})) == 403
    assert status_code(lambda: client.CoreV1Api(api).list_namespaced_persistent_volume_claim(namespace)) == 403
    assert status_code(lambda: client.RbacAuthorizationV1Api(api).create_cluster_role({"metadata": {"name": "x"}, "rules": []})) == 403
    # No escalation: it cannot grant a Role with rights it lacks (Secrets).
    rbac = client.RbacAuthorizationV1Api(api)
    evil = {"metadata": {"name": "evil"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}
    assert status_code(lambda: rbac.create_namespaced_role(namespace, evil)) == 403


@pytest.mark.parametrize(
    "group, resource, verb",
    [("sft.dev", "sftjobs", "watch"), ("", "pods", "watch"), ("batch", "jobs", "watch"), ("", "nodes", "list"),
     ("kopf.dev", "clusterkopfpeerings", "patch"), ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
     ("", "namespaces", "watch"), ("", "events", "create")],
)
def test_kopf_needs_are_granted(kube_api, operator_identity, group, resource, verb):
    _, user = operator_identity
    review = client.AuthorizationV1Api(kube_api).create_subject_access_review({
        "spec": {"user": user, "groups": ["system:serviceaccounts", "system:authenticated"],
                 "resourceAttributes": {"group": group, "resource": resource, "verb": verb}}})
    assert review.status.allowed, f"{verb} {group}/{resource}"


@pytest.mark.parametrize("group, resource, verb", [("", "nodes", "watch"), ("", "nodes", "get"), ("", "nodes", "patch")])
def test_nodes_are_listed_not_watched(kube_api, operator_identity, group, resource, verb):
    """Node loss needs node names only: a metadata list every few seconds, so no watch of heartbeats."""
    _, user = operator_identity
    review = client.AuthorizationV1Api(kube_api).create_subject_access_review({
        "spec": {"user": user, "groups": ["system:serviceaccounts", "system:authenticated"],
                 "resourceAttributes": {"group": group, "resource": resource, "verb": verb}}})
    assert not review.status.allowed, f"{verb} {group}/{resource} is granted"


def test_node_names_poll_lists_metadata_only_and_reports_a_vanished_node(kube_api, operator_identity):
    """nodes.NodeNames with the operator's own rights: the names of the nodes (PartialObjectMetadata, no
    status), and a node deleted between two polls is reported once, to the callback."""
    from sft_operator.nodes import METADATA_LIST, NodeNames

    api, _ = operator_identity
    core = client.CoreV1Api(kube_api)
    name = f"vanishing-{secrets.token_hex(3)}"
    core.create_node({"metadata": {"name": name, "labels": {"sft.dev/test": "nodes"}}})
    gone_calls: list[frozenset[str]] = []
    nodes = NodeNames(lambda: KubeApi(api), interval=0.2, on_gone=gone_calls.append)
    try:
        assert nodes.names() is None  # nothing known before the first poll: no pod counts as lost
        assert nodes.poll() == frozenset()
        assert name in nodes.names()
        raw = KubeApi(api).request("GET", "/api/v1/nodes", query=[("resourceVersion", "0")], accept=METADATA_LIST)
        assert raw["kind"] == "PartialObjectMetadataList"
        assert all("status" not in item and "spec" not in item for item in raw["items"]), raw["items"][:1]
        core.delete_node(name)
        deadline = time.monotonic() + 10
        while name in (nodes.names() or ()) and time.monotonic() < deadline:
            nodes.poll()
            time.sleep(0.1)
        assert name not in nodes.names()
        assert gone_calls == [frozenset({name})]
        assert nodes.poll() == frozenset() and len(gone_calls) == 1
        # A pass asks about its pods' nodes: a node created just after the last list (well under a
        # poll interval) is not lost, since a consistent list started after the question finds it; one
        # deleted since is.
        late = f"late-{secrets.token_hex(3)}"
        nodes.poll()
        core.create_node({"metadata": {"name": late, "labels": {"sft.dev/test": "nodes"}}})
        assert late not in nodes.names() and nodes.missing([late, None]) == frozenset()
        assert late in nodes.names()
        assert nodes.missing([late, name]) == frozenset({name})
        core.delete_node(late)
        # a known node that goes is the poll's to find (on_gone), and then it is missing
        deadline = time.monotonic() + 10
        while late in nodes.names() and time.monotonic() < deadline:
            nodes.poll(consistent=True)
        assert gone_calls[-1] == frozenset({late}) and nodes.missing([late]) == frozenset({late})
    finally:
        for node in core.list_node(label_selector="sft.dev/test=nodes").items:
            core.delete_node(node.metadata.name)


def test_failed_creates_watch_sees_a_refused_pod_with_the_operators_rights(kube_api, namespace, operator_identity):
    """failed_creates.FailedCreates under the operator's ClusterRole: the Job controller's FailedCreate
    event for a Job whose pods a ResourceQuota refuses arrives through the watch (no list per pass),
    with the quota's message, and names the Job to the callback."""
    from sft_operator.failed_creates import FailedCreates

    api, _ = operator_identity
    core, batch = client.CoreV1Api(kube_api), client.BatchV1Api(kube_api)
    core.create_namespaced_resource_quota(namespace, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})
    seen: list[tuple[str, str]] = []
    watch = FailedCreates(lambda: api, on_event=lambda ns, job: seen.append((ns, job)), timeout_seconds=20)
    watch.start()
    try:
        deadline = time.monotonic() + 10
        while not watch.synced and time.monotonic() < deadline:
            time.sleep(0.1)
        assert watch.synced, "the first list of FailedCreate events did not succeed with the operator's rights"
        assert watch.message(namespace, "refused-a1") is None
        batch.create_namespaced_job(namespace, {
            "metadata": {"name": "refused-a1"},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "c", "image": "busybox:1", "resources": {"limits": {"cpu": "10m", "memory": "8Mi"}}}]}}},
        })
        deadline = time.monotonic() + 60
        while (namespace, "refused-a1") not in seen and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (namespace, "refused-a1") in seen, seen
        msg = watch.message(namespace, "refused-a1")
        assert msg and "exceeded quota: no-pods" in msg and not msg.startswith("Error creating"), msg
        watch.forget(namespace, "refused-")
        assert watch.message(namespace, "refused-a1") is None
    finally:
        watch.stop()
