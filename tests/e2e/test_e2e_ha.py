"""Two replicas with kopf peering: only the higher-priority one acts; when it dies, the other takes
over and finishes the transition without duplicates."""

from __future__ import annotations

import time
from pathlib import Path

from sft_e2e_helpers import OperatorProcess, sftjob_manifest

PEERING = Path(__file__).resolve().parents[2] / "operator" / "sft_operator" / "assets" / "operator" / "kopf-peering.yaml"


def test_two_replicas_one_leader_and_failover(operator, sft, kubectl, dev_cluster, kwok_pods, tmp_path):
    # Remove what this test installs afterwards (a Helm install of the chart must own these CRDs).
    preinstalled = kubectl("get", "crd", "clusterkopfpeerings.kopf.dev", check=False).returncode == 0
    kubectl("apply", "-f", str(PEERING), check=False)  # the object needs its CRD established first
    kubectl("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=30s")
    deadline = time.monotonic() + 30
    while kubectl("apply", "-f", str(PEERING), check=False).returncode != 0:
        assert time.monotonic() < deadline, "the ClusterKopfPeering object cannot be created"
        time.sleep(0.5)
    operator.stop()  # the session's standalone operator would act regardless of peering
    env = {"SFT_PEERING_LIFETIME_SECONDS": "4"}
    leader = OperatorProcess(Path(dev_cluster.kubeconfig), tmp_path, env, args=("--priority", "200"))
    standby = OperatorProcess(Path(dev_cluster.kubeconfig), tmp_path, env, args=("--priority", "100"))
    standby.log_dir = tmp_path / "standby"
    standby.log_dir.mkdir()
    try:
        leader.start()
        standby.start()
        time.sleep(3)
        name = "ha"
        sft.apply(sftjob_manifest(name, nodes=2, gpus=1, failurePolicy={"maxRestarts": 5}))
        pods = sft.running_pods(name, 1, 2)
        sft.wait_phase(name, "Running")
        assert len(sft.jobs(name)) == 1
        assert "reconciled" in leader.log_file.read_text()
        assert "reconciled" not in standby.log_file.read_text()  # paused: it never acted
        peering = sft.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "sft-operator")
        assert sorted(p["priority"] for p in peering["status"].values() if p) == [100, 200]

        leader.kill()
        kwok_pods.fail(sft.ns, pods[0].metadata.name, exit_code=1, wait=False)
        sft.running_pods(name, 2, 2, timeout=60)
        st = sft.wait_phase(name, "Running", 30)
        assert st["restarts"] == 1 and st["attempt"] == 2
        assert [j.metadata.labels["sft.dev/attempt"] for j in sft.jobs(name)] == ["2"]
        assert "reconciled" in standby.log_file.read_text()
    finally:
        leader.stop()
        standby.stop()
        if not preinstalled:
            kubectl("delete", "-f", str(PEERING), "--ignore-not-found", "--wait=false", check=False)
        operator.start()
