"""apply.py on the real apiserver: server-side apply under `sft-operator` is idempotent, Jobs are
create-only, and the status write is a compare-and-swap on resourceVersion."""

from __future__ import annotations

import pytest
from kubernetes import client
from sft_integration_helpers import create_sftjob

from sft_operator.apply import Conflict, KubeApi
from sft_operator.children import render
from sft_operator.settings import OperatorSettings


def rvs(kapi: KubeApi, objs) -> dict:
    """resourceVersions of the children the operator alone writes (the Job controller updates Jobs)."""
    return {(o["kind"], o["metadata"]["name"]): kapi.get(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"])["metadata"]["resourceVersion"]
            for o in objs if o["kind"] != "Job"}


def test_apply_twice_changes_nothing(kube_api, namespace, sftjob_crd):
    body = create_sftjob(kube_api, "idem", namespace)
    kapi = KubeApi(kube_api)
    objs = render(body, settings=OperatorSettings())
    for o in objs:
        kapi.create(o) if o["kind"] == "Job" else kapi.apply(o)
    first = rvs(kapi, objs)
    for o in objs:
        if o["kind"] == "Job":
            assert kapi.create(o) is False  # exists: never re-applied
        else:
            kapi.apply(o)
    assert rvs(kapi, objs) == first
    svc = client.CoreV1Api(kube_api).read_namespaced_service("idem-a1", namespace)
    assert [m.manager for m in svc.metadata.managed_fields] == ["sft-operator"]
    assert svc.metadata.owner_references[0].uid == body["metadata"]["uid"]


def test_status_write_is_compare_and_swap(kube_api, namespace, sftjob_crd):
    body = create_sftjob(kube_api, "cas", namespace)
    kapi = KubeApi(kube_api)
    rv = body["metadata"]["resourceVersion"]
    kapi.merge_patch("SFTJob", namespace, "cas", {"metadata": {"resourceVersion": rv}, "status": {"restarts": 1, "attempt": 2}}, subresource="status")
    with pytest.raises(Conflict):  # a second writer with the same stale read loses
        kapi.merge_patch("SFTJob", namespace, "cas", {"metadata": {"resourceVersion": rv}, "status": {"restarts": 1, "attempt": 2}}, subresource="status")
    got = kapi.get("SFTJob", namespace, "cas")
    assert got["status"]["restarts"] == 1 and got["status"]["attempt"] == 2


def test_delete_is_idempotent(kube_api, namespace):
    kapi = KubeApi(kube_api)
    assert kapi.delete("ConfigMap", namespace, "absent") is False
