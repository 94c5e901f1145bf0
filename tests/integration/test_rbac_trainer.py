"""A trainer pod's token (the per-job ServiceAccount the operator creates) can patch its own SFTJob's
status, and nothing else: not another job, not the spec, not Secrets, pods or events."""

from __future__ import annotations

import time

from kubernetes import client
from sft_integration_helpers import create_sftjob, status_code, with_token

from sft_operator.apply import KubeApi
from sft_operator.children import render
from sft_operator.settings import OperatorSettings


def test_trainer_token_is_least_privilege(kube_api, namespace, sftjob_crd):
    own = create_sftjob(kube_api, "own", namespace)
    create_sftjob(kube_api, "other", namespace)
    admin = KubeApi(kube_api)
    for obj in render(own, settings=OperatorSettings()):
        if obj["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            admin.apply(obj)
    token = client.CoreV1Api(kube_api).create_namespaced_service_account_token(
        "own-trainer", namespace, {"spec": {"audiences": [], "expirationSeconds": 600}}).status.token
    api = with_token(kube_api, token)
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    patch = {"status": {"progress": {"step": 3, "totalSteps": 10, "percent": 30.0}, "worldSize": 2}}
    deadline = time.monotonic() + 10
    while status_code(lambda: custom.patch_namespaced_custom_object_status("sft.dev", "v1alpha1", namespace, "sftjobs", "own", patch)) != 200:
        assert time.monotonic() < deadline, "the trainer cannot patch its own status"
        time.sleep(0.2)
    got = client.CustomObjectsApi(kube_api).get_namespaced_custom_object("sft.dev", "v1alpha1", namespace, "sftjobs", "own")
    assert got["status"]["progress"]["step"] == 3 and got["status"]["worldSize"] == 2
    assert status_code(lambda: custom.get_namespaced_custom_object_status("sft.dev", "v1alpha1", namespace, "sftjobs", "own")) == 200

    forbidden = {
        "other job's status": lambda: custom.patch_namespaced_custom_object_status("sft.dev", "v1alpha1", namespace, "sftjobs", "other", patch),
        "own spec": lambda: custom.patch_namespaced_custom_object("sft.dev", "v1alpha1", namespace, "sftjobs", "own", {"spec": {"suspend": True}}),
        "list sftjobs": lambda: custom.list_namespaced_custom_object("sft.dev", "v1alpha1", namespace, "sftjobs"),
        "delete own": lambda: custom.delete_namespaced_custom_object("sft.dev", "v1alpha1", namespace, "sftjobs", "own"),
        "secrets": lambda: core.list_namespaced_secret(namespace),
        "pods": lambda: core.list_namespaced_pod(namespace),
        "configmaps": lambda: core.list_namespaced_config_map(namespace),
        "events": lambda: core.create_namespaced_event(namespace, {"metadata": {"name": "e"}, "involvedObject": {"name": "own"}}),
        "own role": lambda: client.RbacAuthorizationV1Api(api).patch_namespaced_role("own-trainer", namespace, {"rules": []}),
    }
    codes = {what: status_code(fn) for what, fn in forbidden.items()}
    assert all(c == 403 for c in codes.values()), codes

    review = client.AuthorizationV1Api(api).create_self_subject_rules_review({"spec": {"namespace": namespace}})
    granted = [r for r in review.status.resource_rules if "sft.dev" in (r.api_groups or [])]
    assert [(r.resources, sorted(r.verbs), r.resource_names) for r in granted] == [(["sftjobs/status"], ["get", "patch"], ["own"])]
