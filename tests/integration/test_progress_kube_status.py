"""KubeStatusReporter against a real kube-apiserver, with the token of a ServiceAccount whose Role
allows only get/patch on one SFTJob's status (what the operator grants a trainer pod)."""

from __future__ import annotations

from kubernetes import client
from sft_integration_helpers import create_sftjob

from sft_trainer.progress import KubeStatusReporter

G, V, P = "sft.dev", "v1alpha1", "sftjobs"


def trainer_token(api: client.ApiClient, namespace: str, job: str) -> str:
    """SA + Role(get/patch sftjobs/status, resourceNames=[job]) + RoleBinding; a TokenRequest."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    sa = f"{job}-progress"
    core.create_namespaced_service_account(namespace, {"metadata": {"name": sa}})
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": sa},
        "rules": [{"apiGroups": [G], "resources": ["sftjobs/status"], "resourceNames": [job],
                   "verbs": ["get", "patch"]}],
    })
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": sa},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
    })
    req = core.create_namespaced_service_account_token(
        sa, namespace, {"spec": {"audiences": [], "expirationSeconds": 600}})
    return req.status.token


def test_reporter_patches_only_trainer_fields_of_its_job(kube_api, dev_cluster, namespace, sftjob_crd):
    admin = client.CustomObjectsApi(kube_api)
    create_sftjob(kube_api, "bot", namespace)
    create_sftjob(kube_api, "other", namespace)
    # the operator's fields, which the trainer must leave alone
    admin.patch_namespaced_custom_object_status(
        G, V, namespace, P, "bot", {"status": {"phase": "Running", "attempt": 2}})
    token = trainer_token(kube_api, namespace, "bot")

    rep = KubeStatusReporter.from_token("bot", namespace, host=dev_cluster.server, token=token,
                                        ca_file=str(dev_cluster.ca_file), retry_seconds=0.2)
    try:
        rep.report({"worldSize": 2, "progress": {"step": 5, "totalSteps": 50, "percent": 10.0}})
        rep.report({"progress": {"step": 10, "percent": 20.0, "etaSeconds": 90},
                    "metrics": {"trainLoss": 1.5, "tokensPerSecond": 1234.5}})
        rep.report({"checkpoint": {"step": 10, "uri": "s3://b/bot/checkpoint-10/",
                                   "savedAt": "2026-01-01T00:00:00Z"},
                    "evaluation": {"goldenSetPassRate": 0.75}})
        # RBAC can take a moment to reach the authorizer cache: the reporter retries on its own
        assert rep.flush(timeout=30), rep.last_error
    finally:
        rep.close(timeout=1)
    status = admin.get_namespaced_custom_object(G, V, namespace, P, "bot")["status"]
    assert status["phase"] == "Running" and status["attempt"] == 2
    assert status["worldSize"] == 2
    assert status["progress"] == {"step": 10, "totalSteps": 50, "percent": 20.0, "etaSeconds": 90}
    assert status["metrics"] == {"trainLoss": 1.5, "tokensPerSecond": 1234.5}
    assert status["checkpoint"]["uri"] == "s3://b/bot/checkpoint-10/"
    assert status["evaluation"]["goldenSetPassRate"] == 0.75

    # the same token cannot touch another job: the report fails, is kept, and never raises
    other = KubeStatusReporter.from_token("other", namespace, host=dev_cluster.server, token=token,
                                          ca_file=str(dev_cluster.ca_file), retry_seconds=0.2)
    try:
        other.report({"progress": {"step": 1}})
        assert other.flush(timeout=2) is False
        assert other.failures >= 1 and other.sent == 0 and "403" in other.last_error
        assert other.pending() == {"progress": {"step": 1}}
    finally:
        other.close(timeout=0.1)
    assert "status" not in admin.get_namespaced_custom_object(G, V, namespace, P, "other") or \
        "progress" not in admin.get_namespaced_custom_object(G, V, namespace, P, "other")["status"]


def test_make_reporter_in_a_pod_uses_the_service_account(kube_api, dev_cluster, namespace,
                                                         sftjob_crd, tmp_path):
    """The pod path: make_reporter() finds the projected token and CA and the service env."""
    from sft_trainer.progress import make_reporter

    create_sftjob(kube_api, "podjob", namespace)
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(trainer_token(kube_api, namespace, "podjob"))
    (sa_dir / "ca.crt").write_bytes(dev_cluster.ca_file.read_bytes())
    host, port = dev_cluster.server.removeprefix("https://").rsplit(":", 1)
    env = {"SFT_JOB_NAME": "podjob", "SFT_JOB_NAMESPACE": namespace,
           "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    rep = make_reporter(env, sa_dir=str(sa_dir))
    assert isinstance(rep, KubeStatusReporter)
    try:
        rep.report({"progress": {"step": 7, "totalSteps": 70}, "worldSize": 1})
        assert rep.flush(timeout=30), rep.last_error
    finally:
        rep.close(timeout=1)
    got = client.CustomObjectsApi(kube_api).get_namespaced_custom_object(G, V, namespace, P, "podjob")
    assert got["status"]["progress"]["step"] == 7 and got["status"]["worldSize"] == 1
