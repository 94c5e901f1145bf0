"""children.render: the per-job NetworkPolicy (torch's c10d store has no authentication)."""

import pytest
from sftop_factories import sftjob

from sft_operator.children import render, render_preflight
from sft_operator.settings import OperatorSettings

MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
S = OperatorSettings(trainer_image="trainer:default", master_port=29500, trainer_metrics_port=9400,
                     metrics_from=[MONITORING])


def policy(objs):
    [np] = [o for o in objs if o["kind"] == "NetworkPolicy"]
    return np


def test_policy_selects_the_jobs_pods_by_labels_only_the_operator_sets():
    objs = render(sftjob(), attempt=2, settings=S)
    np = policy(objs)
    assert np["apiVersion"] == "networking.k8s.io/v1"
    assert np["metadata"]["name"] == "demo-trainer" and np["metadata"]["namespace"] == "ns"
    assert np["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    selector = {"sft.dev/job-name": "demo", "app.kubernetes.io/managed-by": "sft-operator"}
    assert np["spec"]["podSelector"] == {"matchLabels": selector}
    # The selector matches the gang's pods of every attempt (it carries no attempt label).
    [job] = [o for o in objs if o["kind"] == "Job"]
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items() and "sft.dev/attempt" not in selector


def test_every_port_is_open_to_the_jobs_own_pods_and_only_metrics_to_the_configured_peers():
    spec = policy(render(sftjob(), settings=S))["spec"]
    assert spec["policyTypes"] == ["Ingress"]  # egress stays open: S3, the apiserver, DNS
    own, metrics = spec["ingress"]
    # No `ports`: the rendezvous port and gloo/NCCL's ephemeral ports alike, from the job's pods only.
    assert own == {"from": [{"podSelector": spec["podSelector"]}]}
    assert metrics == {"from": [MONITORING], "ports": [{"protocol": "TCP", "port": 9400}]}


def test_no_metrics_peers_leaves_the_metrics_port_to_the_jobs_pods():
    spec = policy(render(sftjob(), settings=OperatorSettings(trainer_image="t:1")))["spec"]
    assert len(spec["ingress"]) == 1 and "ports" not in spec["ingress"][0]


def test_every_ingress_rule_names_its_sources():
    # An ingress rule without `from` admits every source: the policy must never render one.
    for rule in policy(render(sftjob(), settings=S))["spec"]["ingress"]:
        assert rule["from"], rule


def test_policy_can_be_turned_off():
    objs = render(sftjob(), settings=OperatorSettings(trainer_image="t:1", network_policy=False))
    assert "NetworkPolicy" not in [o["kind"] for o in objs]


def test_policy_comes_before_the_job():
    kinds = [o["kind"] for o in render(sftjob(), settings=S)]
    assert kinds.index("NetworkPolicy") < kinds.index("Job")


def test_preflight_pods_carry_the_selected_labels():
    objs = render_preflight(sftjob(preflight=True), attempt=1, spec_hash="h", settings=S)
    [job] = [o for o in objs if o["kind"] == "Job"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["sft.dev/job-name"] == "demo" and labels["app.kubernetes.io/managed-by"] == "sft-operator"


@pytest.mark.parametrize("raw, expected", [
    pytest.param("false", False, id="false turns it off"),
    pytest.param("true", True, id="true keeps it"),
    pytest.param("", True, id="empty keeps the default"),
])
def test_setting_from_env(monkeypatch, raw, expected):
    monkeypatch.setenv("SFT_NETWORK_POLICY", raw)
    assert OperatorSettings.from_env().network_policy is expected


def test_bad_settings_name_the_variable(monkeypatch):
    monkeypatch.setenv("SFT_NETWORK_POLICY", "maybe")
    with pytest.raises(ValueError, match="SFT_NETWORK_POLICY"):
        OperatorSettings.from_env()
    monkeypatch.delenv("SFT_NETWORK_POLICY")
    monkeypatch.setenv("SFT_METRICS_FROM", '{"namespaceSelector": {}}')
    with pytest.raises(ValueError, match="SFT_METRICS_FROM.*JSON array"):
        OperatorSettings.from_env()
    monkeypatch.setenv("SFT_METRICS_FROM", f'[{{"namespaceSelector": {{}}}}]')
    assert OperatorSettings.from_env().metrics_from == [{"namespaceSelector": {}}]
