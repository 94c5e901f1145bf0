"""The operator process itself, logged in with a token of a ServiceAccount bound only to
rbac.OPERATOR_RULES, runs an SFTJob through a restart: the ClusterRole is enough for kopf's watches,
peering-free standalone mode, the children, the status and the events."""

from __future__ import annotations

import secrets
from pathlib import Path

import yaml
from kubernetes import client
from sft_e2e_helpers import OperatorProcess, sftjob_manifest

from sft_operator.rbac import OPERATOR_RULES


def test_operator_runs_under_its_cluster_role(operator, sft, dev_cluster, kube_api, kwok_pods, tmp_path):
    rbac, core = client.RbacAuthorizationV1Api(kube_api), client.CoreV1Api(kube_api)
    role = f"sft-operator-e2e-{secrets.token_hex(3)}"
    core.create_namespaced_service_account(sft.ns, {"metadata": {"name": "sft-operator"}})
    rbac.create_cluster_role({"metadata": {"name": role}, "rules": OPERATOR_RULES})
    rbac.create_cluster_role_binding({
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "sft-operator", "namespace": sft.ns}],
    })
    token = core.create_namespaced_service_account_token(
        "sft-operator", sft.ns, {"spec": {"audiences": [], "expirationSeconds": 3600}}).status.token
    kubeconfig = tmp_path / "operator.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "op",
        "clusters": [{"name": "dev", "cluster": {"server": dev_cluster.server, "certificate-authority": str(dev_cluster.ca_file)}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "op", "context": {"cluster": "dev", "user": "sa"}}],
    }))
    operator.stop()  # the admin operator must not do the work for it
    restricted = OperatorProcess(kubeconfig, tmp_path)
    try:
        restricted.start()
        name = "least-priv"
        sft.apply(sftjob_manifest(name, nodes=2, gpus=1))
        pods = sft.running_pods(name, 1, 2)
        sft.wait_phase(name, "Running")
        kwok_pods.fail(sft.ns, pods[0].metadata.name, exit_code=1, wait=False)
        sft.running_pods(name, 2, 2)
        st = sft.wait_phase(name, "Running")
        assert st["restarts"] == 1 and st["attempt"] == 2
        sft.wait_events(name, {"AttemptCreated", "PodFailed", "PodsRunning"})
        denied = [ln for ln in restricted.log_file.read_text().splitlines() if 'User \\"system:serviceaccount' in ln or "cannot " in ln]
        assert denied == [], denied[:5]  # no RBAC denial at all (kopf's watches included)
    finally:
        restricted.stop()
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)
        operator.start()
