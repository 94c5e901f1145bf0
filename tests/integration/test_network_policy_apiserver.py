"""The per-job NetworkPolicy on the real apiserver: server-side apply accepts it as rendered, its
podSelector matches exactly the pods the Job controller creates for the job (every attempt, nothing
else in the namespace), and the garbage collector removes it with its SFTJob.

Enforcement is shown on the real node, not here: tests/e2e/test_e2e_realnode_netpol.py applies the
policy as rendered under kube-router's network-policy controller and probes the ports from pods."""

from __future__ import annotations

import time

from kubernetes import client
from sft_integration_helpers import create_sftjob, status_code

from sft_operator.apply import KubeApi
from sft_operator.children import network_policy_name, render
from sft_operator.settings import OperatorSettings

PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
HOST = {"ipBlock": {"cidr": "10.88.0.1/32"}}  # a scraper outside the pod network, e.g. the node's Prometheus
SETTINGS = OperatorSettings(trainer_image="t:1", metrics_from=[PROMETHEUS, HOST])


def apply_all(kapi: KubeApi, objs: list[dict]) -> None:
    for o in objs:
        kapi.create(o) if o["kind"] == "Job" else kapi.apply(o)


def pod_names(core, namespace, selector: str) -> set[str]:
    return {p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector=selector).items}


def test_policy_is_accepted_as_rendered_and_selects_the_jobs_pods(kube_api, namespace, sftjob_crd, kwok_pods):
    body = create_sftjob(kube_api, "np", namespace)
    kapi = KubeApi(kube_api)
    core = client.CoreV1Api(kube_api)
    objs = render(body, attempt=1, settings=SETTINGS)
    [rendered] = [o for o in objs if o["kind"] == "NetworkPolicy"]
    apply_all(kapi, objs)
    live = kapi.get("NetworkPolicy", namespace, network_policy_name("np"))
    assert live["spec"] == rendered["spec"]  # the apiserver took every field as the operator wrote it
    assert [m["manager"] for m in live["metadata"]["managedFields"]] == ["sft-operator"]
    assert live["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    kapi.apply(rendered)  # re-applied by every attempt: unchanged
    assert kapi.get("NetworkPolicy", namespace, "np-trainer")["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"]

    # A second attempt's Job, and a pod that is not the job's, alongside the first attempt.
    apply_all(kapi, [o for o in render(body, attempt=2, settings=SETTINGS) if o["kind"] in ("ConfigMap", "Service", "Job")])
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": "intruder", "labels": {"sft.dev/job-name": "np"}},  # no managed-by label
        "spec": {"nodeSelector": {"sft.dev/no-such-node": "x"}, "containers": [{"name": "c", "image": "busybox"}]}})
    gang = {p.metadata.name for p in kwok_pods.wait_for_pods(namespace, "sft.dev/job-name=np,sft.dev/attempt=1", 1)}
    gang |= {p.metadata.name for p in kwok_pods.wait_for_pods(namespace, "sft.dev/job-name=np,sft.dev/attempt=2", 1)}
    selector = ",".join(f"{k}={v}" for k, v in live["spec"]["podSelector"]["matchLabels"].items())
    assert pod_names(core, namespace, selector) == gang and len(gang) == 2
    # The peer of the first rule is the policy's own selector: the job's pods reach each other only.
    assert live["spec"]["ingress"][0]["from"] == [{"podSelector": live["spec"]["podSelector"]}]


def test_policy_goes_with_its_sftjob(kube_api, namespace, sftjob_crd):
    body = create_sftjob(kube_api, "gone", namespace)
    kapi = KubeApi(kube_api)
    apply_all(kapi, [o for o in render(body, settings=SETTINGS) if o["kind"] != "Job"])
    net = client.NetworkingV1Api(kube_api)
    assert net.read_namespaced_network_policy("gone-trainer", namespace).metadata.name == "gone-trainer"
    client.CustomObjectsApi(kube_api).delete_namespaced_custom_object("sft.dev", "v1alpha1", namespace, "sftjobs", "gone")
    deadline = time.monotonic() + 60
    while status_code(lambda: net.read_namespaced_network_policy("gone-trainer", namespace)) != 404:
        assert time.monotonic() < deadline, "the garbage collector left the NetworkPolicy of a deleted SFTJob"
        time.sleep(0.5)


def test_a_bad_metrics_peer_is_refused_naming_the_field(kube_api, namespace, sftjob_crd):
    """The apiserver validates what the chart passes through: a bad peer fails the apply naming the field,
    so the operator reports it (ChildRefused) instead of running the job unprotected."""
    from sft_operator.apply import ApiError

    body = create_sftjob(kube_api, "bad", namespace)
    bad = OperatorSettings(trainer_image="t:1", metrics_from=[{"ipBlock": {"cidr": "not-a-cidr"}}])
    [policy] = [o for o in render(body, settings=bad) if o["kind"] == "NetworkPolicy"]
    try:
        KubeApi(kube_api).apply(policy)
    except ApiError as exc:
        assert exc.status == 422 and "ipBlock.cidr" in exc.message
    else:
        raise AssertionError("the apiserver accepted an ipBlock with cidr 'not-a-cidr'")
