"""values.schema.json rejects bad values with a message naming the value, and accepts good ones."""

from __future__ import annotations

from pathlib import Path

import pytest

CHART = Path(__file__).resolve().parents[3] / "charts" / "sft-operator"

# (args, {helm major: what its error names}). Both majors validate the same draft-07 schema, but
# word it differently: helm 4 reports with santhosh-tekuri/jsonschema ("at '/a/b': minimum: got 0,
# want 1"), helm 3 with xeipuuv/gojsonschema ("a.b: Must be greater than or equal to 1"). Each row
# checks that both name the value and the rule; together the rows cover every keyword the schema uses.
BAD = [
    (["--set", "operator.replicas=0"], {4: "at '/operator/replicas': minimum: got 0, want 1",
                                        3: "operator.replicas: Must be greater than or equal to 1"}),
    (["--set", "operator.replicas=9"], {4: "at '/operator/replicas': maximum: got 9, want 5",
                                        3: "operator.replicas: Must be less than or equal to 5"}),
    (["--set", "operator.image.pullPolicy=Sometimes"],
     {4: "at '/operator/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
      3: 'operator.image.pullPolicy: operator.image.pullPolicy must be one of the following: "Always", "IfNotPresent", "Never"'}),
    (["--set", "operator.metricsPort=70000"], {4: "at '/operator/metricsPort': maximum: got 70,000, want 65,535",
                                               3: "operator.metricsPort: Must be less than or equal to 65535"}),
    (["--set", "operator.resyncSeconds=0"], {4: "at '/operator/resyncSeconds': exclusiveMinimum: got 0, want 0",
                                             3: "operator.resyncSeconds: Must be greater than 0"}),
    (["--set", "operator.bogus=1"], {4: "at '/operator': additional properties 'bogus' not allowed",
                                     3: "operator: Additional property bogus is not allowed"}),
    (["--set-json", 'operator.extraEnv=[{"value":"x"}]'], {4: "at '/operator/extraEnv/0': missing property 'name'",
                                                            3: "operator.extraEnv.0: name is required"}),
    (["--set", "crds.install=yes"], {4: "at '/crds/install': got string, want boolean",
                                     3: "crds.install: Invalid type. Expected: boolean, given: string"}),
    (["--set", "trainer.storageEndpoint=minio:9000"], {4: "at '/trainer/storageEndpoint': 'minio:9000' does not match pattern",
                                                       3: "trainer.storageEndpoint: Does not match pattern"}),
    (["--set", "trainer.resources.requests.cpu=lots"], {4: "at '/trainer/resources/requests/cpu'",
                                                        3: "trainer.resources.requests.cpu: Must validate at least one schema (anyOf)"}),
    (["--set-json", 'trainer.resources={"request":{"cpu":"1"}}'],
     {4: "at '/trainer/resources': additional properties 'request' not allowed",
      3: "trainer.resources: Additional property request is not allowed"}),
    (["--set", "monitoring.serviceMonitor.interval=30"],
     {4: "at '/monitoring/serviceMonitor/interval': got number, want string",
      3: "monitoring.serviceMonitor.interval: Invalid type. Expected: string, given: integer"}),
    (["--set", "monitoring.serviceMonitor.scrapeTimeout=soon"],
     {4: "at '/monitoring/serviceMonitor/scrapeTimeout': value must be ''",
      3: "monitoring.serviceMonitor.scrapeTimeout: Must validate at least one schema (anyOf)"}),
    (["--set", "monitoring.podMonitor.interval=fast"], {4: "at '/monitoring/podMonitor/interval': 'fast' does not match pattern",
                                                        3: "monitoring.podMonitor.interval: Does not match pattern"}),
    (["--set", "metrics.service.type=Ingress"],
     {4: "at '/metrics/service/type': value must be one of 'ClusterIP', 'NodePort', 'LoadBalancer'",
      3: 'metrics.service.type: metrics.service.type must be one of the following: "ClusterIP", "NodePort", "LoadBalancer"'}),
    (["--set", "fullnameOverride=Not_A_DNS_Name"], {4: "at '/fullnameOverride': 'Not_A_DNS_Name' does not match pattern",
                                                    3: "fullnameOverride: Does not match pattern"}),
    (["--set", "nameOverride=" + "a" * 64], {4: "at '/nameOverride': maxLength: got 64, want 63",
                                             3: "nameOverride: String length must be less than or equal to 63"}),
    (["--set-json", 'monitoring.dashboard.labels={"grafana_dashboard":1}'],
     {4: "at '/monitoring/dashboard/labels/grafana_dashboard': got number, want string",
      3: "monitoring.dashboard.labels.grafana_dashboard: Invalid type. Expected: string, given: integer"}),
]


@pytest.mark.parametrize("args,messages", BAD, ids=[b[0][1].split("=")[0] for b in BAD])
def test_schema_rejects_bad_values_with_a_clear_message(run_helm, helm_major, args, messages):
    p = run_helm("template", "rel", str(CHART), *args, check=False)
    assert p.returncode != 0, f"{args} was accepted"
    assert "values don't meet the specifications of the schema" in p.stderr
    assert messages[helm_major] in p.stderr, p.stderr


def test_schema_rejects_a_bad_values_file(run_helm, helm_major, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  image:\n    repository: ''\n  maxPreemptions: -1\n")
    p = run_helm("template", "rel", str(CHART), "-f", str(bad), check=False)
    assert p.returncode != 0
    messages = {  # wording per major: see BAD
        4: ["at '/trainer/image/repository': minLength: got 0, want 1", "at '/trainer/maxPreemptions': minimum: got -1, want 0"],
        3: ["trainer.image.repository: String length must be greater than or equal to 1",
            "trainer.maxPreemptions: Must be greater than or equal to 0"],
    }[helm_major]
    for message in messages:
        assert message in p.stderr, p.stderr


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
