"""values.schema.json rejects bad values with a message naming the value, and accepts good ones."""

from __future__ import annotations

from pathlib import Path

import pytest

CHART = Path(__file__).resolve().parents[3] / "charts" / "sft-operator"

BAD = [
    (["--set", "operator.replicas=0"], "at '/operator/replicas': minimum: got 0, want 1"),
    (["--set", "operator.replicas=9"], "at '/operator/replicas': maximum: got 9, want 5"),
    (["--set", "operator.image.pullPolicy=Sometimes"], "at '/operator/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"),
    (["--set", "operator.metricsPort=70000"], "at '/operator/metricsPort': maximum: got 70,000, want 65,535"),
    (["--set", "operator.bogus=1"], "at '/operator': additional properties 'bogus' not allowed"),
    (["--set", "crds.install=yes"], "at '/crds/install': got string, want boolean"),
    (["--set", "trainer.storageEndpoint=minio:9000"], "at '/trainer/storageEndpoint': 'minio:9000' does not match pattern"),
    (["--set", "trainer.resources.requests.cpu=lots"], "at '/trainer/resources/requests/cpu'"),
    (["--set-json", 'trainer.resources={"request":{"cpu":"1"}}'], "at '/trainer/resources': additional properties 'request' not allowed"),
    (["--set", "monitoring.serviceMonitor.interval=30"], "at '/monitoring/serviceMonitor/interval': got number, want string"),
    (["--set", "monitoring.podMonitor.interval=fast"], "at '/monitoring/podMonitor/interval': 'fast' does not match pattern"),
    (["--set", "metrics.service.type=Ingress"], "at '/metrics/service/type': value must be one of 'ClusterIP', 'NodePort', 'LoadBalancer'"),
    (["--set", "fullnameOverride=Not_A_DNS_Name"], "at '/fullnameOverride': 'Not_A_DNS_Name' does not match pattern"),
    (["--set-json", 'monitoring.dashboard.labels={"grafana_dashboard":1}'], "at '/monitoring/dashboard/labels/grafana_dashboard': got number, want string"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[b[0][1].split("=")[0] for b in BAD])
def test_schema_rejects_bad_values_with_a_clear_message(run_helm, args, message):
    p = run_helm("template", "rel", str(CHART), *args, check=False)
    assert p.returncode != 0, f"{args} was accepted"
    assert "values don't meet the specifications of the schema" in p.stderr
    assert message in p.stderr, p.stderr


def test_schema_rejects_a_bad_values_file(run_helm, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  image:\n    repository: ''\n  maxPreemptions: -1\n")
    p = run_helm("template", "rel", str(CHART), "-f", str(bad), check=False)
    assert p.returncode != 0
    assert "at '/trainer/image/repository': minLength: got 0, want 1" in p.stderr
    assert "at '/trainer/maxPreemptions': minimum: got -1, want 0" in p.stderr


def test_schema_accepts_realistic_values(run_helm, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(
        "operator:\n  replicas: 2\n  image: {repository: registry.example/sft-operator, tag: '0.2.0', pullPolicy: Always}\n"
        "  imagePullSecrets: [{name: regcred}]\n  extraEnv: [{name: LOG_LEVEL, value: debug}]\n"
        "  tolerations: [{key: dedicated, operator: Equal, value: ops, effect: NoSchedule}]\n"
        "trainer:\n  resources: {requests: {cpu: 32, memory: 512Gi, nvidia.com/gpu: 8}, limits: {memory: 600Gi}}\n"
        "  storageEndpoint: https://s3.internal.example:9000\n  shmSize: 64Gi\n"
        "monitoring:\n  serviceMonitor: {enabled: true, interval: 15s, scrapeTimeout: 10s, labels: {release: kps}}\n"
        "  skipApiCheck: true\n"
    )
    p = run_helm("template", "rel", str(CHART), "-f", str(good), check=False)
    assert p.returncode == 0, p.stderr
