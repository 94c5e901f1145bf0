"""The chart's trainer.networkPolicy and trainer.imagePullSecrets values reach the operator's settings;
the operator's own pod honours operator.imagePullSecrets and gets its own NetworkPolicy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sft_operator.children import render as render_children

CHART = Path(__file__).resolve().parents[3] / "charts" / "sft-operator"


def deployment(docs):
    [d] = [d for d in docs if d.get("kind") == "Deployment"]
    return d


def settings_of(docs, monkeypatch):
    from sft_operator.settings import OperatorSettings

    for name in [n for n in os.environ if n.startswith("SFT_")]:
        monkeypatch.delenv(name)
    env = {e["name"]: e["value"] for e in deployment(docs)["spec"]["template"]["spec"]["containers"][0]["env"]
           if "value" in e}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return OperatorSettings.from_env(), env


def release_ns(namespace="sft-system"):
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}


MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def test_defaults_open_metrics_to_the_release_and_monitoring_namespaces(render, monkeypatch):
    settings, _ = settings_of(render(), monkeypatch)
    assert settings.network_policy is True
    assert settings.metrics_from == [release_ns(), MONITORING]
    assert settings.image_pull_secrets == []


def test_metrics_from_replaces_the_default_peers_but_keeps_the_release_namespace(render, monkeypatch):
    peer = {"namespaceSelector": {"matchLabels": {"team": "obs"}}, "podSelector": {"matchLabels": {"app": "prometheus"}}}
    settings, _ = settings_of(render("--set-json", f"trainer.networkPolicy.metricsFrom=[{json.dumps(peer)}]"),
                              monkeypatch)
    assert settings.metrics_from == [release_ns(), peer]
    settings, _ = settings_of(render("--set-json", "trainer.networkPolicy.metricsFrom=[]"), monkeypatch)
    assert settings.metrics_from == [release_ns()]


def test_network_policy_can_be_turned_off(render, monkeypatch):
    settings, env = settings_of(render("--set", "trainer.networkPolicy.enabled=false"), monkeypatch)
    assert settings.network_policy is False and "SFT_METRICS_FROM" not in env
    body = {"metadata": {"name": "j", "namespace": "ns"}, "spec": {}}
    assert "NetworkPolicy" not in [o["kind"] for o in render_children(body, settings=settings)]


def test_rendered_policy_uses_the_chart_peers(render, monkeypatch):
    settings, _ = settings_of(render(), monkeypatch)
    body = {"metadata": {"name": "j", "namespace": "ns"}, "spec": {}}
    [np] = [o for o in render_children(body, settings=settings) if o["kind"] == "NetworkPolicy"]
    assert np["spec"]["ingress"][1] == {"from": [release_ns(), MONITORING], "ports": [{"protocol": "TCP", "port": 9400}]}


def test_trainer_pull_secrets_reach_the_operator(render, monkeypatch):
    settings, env = settings_of(render("--set-json", 'trainer.imagePullSecrets=[{"name":"regcred"},{"name":"mirror"}]'),
                                monkeypatch)
    assert settings.image_pull_secrets == [{"name": "regcred"}, {"name": "mirror"}]
    _, env = settings_of(render(), monkeypatch)
    assert "SFT_IMAGE_PULL_SECRETS" not in env


def test_operator_pod_honours_its_pull_secrets(render):
    spec = deployment(render("--set-json", 'operator.imagePullSecrets=[{"name":"regcred"}]'))["spec"]["template"]["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert "imagePullSecrets" not in deployment(render())["spec"]["template"]["spec"]


@pytest.mark.parametrize("args, names", [
    pytest.param(["--set-json", 'trainer.imagePullSecrets=[{"name":"Reg_Cred"}]'], "trainer/imagePullSecrets/0/name",
                 id="a pull secret that is no Secret name"),
    pytest.param(["--set", "trainer.networkPolicy.enabled=yes"], "trainer/networkPolicy/enabled",
                 id="enabled must be a boolean"),
    pytest.param(["--set-json", 'trainer.networkPolicy.metricsFrom=[{"namespace":"monitoring"}]'],
                 "trainer/networkPolicy/metricsFrom/0", id="a peer with an unknown field"),
])
def test_schema_rejects_bad_values_naming_them(run_helm, helm_major, args, names):
    p = run_helm("template", "rel", str(CHART), *args, check=False)
    assert p.returncode != 0, f"{args} was accepted"
    assert "values don't meet the specifications of the schema" in p.stderr
    # helm 4 names the value as a JSON pointer, helm 3 with dots (see test_chart_schema.py)
    assert (f"at '/{names}'" if helm_major == 4 else names.replace("/", ".")) in p.stderr, p.stderr


def operator_policy(docs):
    found = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    assert len(found) <= 1
    return found[0] if found else None


def test_operator_policy_selects_the_operator_and_opens_health_and_metrics_only(render):
    docs = render()
    np = operator_policy(docs)
    pod_labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert np["spec"]["policyTypes"] == ["Ingress"]
    health, metrics = np["spec"]["ingress"]
    assert health == {"ports": [{"port": 8081, "protocol": "TCP"}]}  # the kubelet's probes, from the node
    assert metrics == {"from": [release_ns(), MONITORING], "ports": [{"port": 8080, "protocol": "TCP"}]}
    ports = {p["name"]: p["containerPort"] for p in deployment(docs)["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}  # every port the operator serves is in the policy


def test_operator_policy_follows_its_values(render):
    peer = {"podSelector": {"matchLabels": {"app": "prometheus"}}}
    docs = render("--set", "operator.metricsPort=9090", "--set", "operator.healthPort=9091",
                  "--set-json", f"operator.networkPolicy.metricsFrom=[{json.dumps(peer)}]")
    health, metrics = operator_policy(docs)["spec"]["ingress"]
    assert health["ports"] == [{"port": 9091, "protocol": "TCP"}]
    assert metrics == {"from": [release_ns(), peer], "ports": [{"port": 9090, "protocol": "TCP"}]}
    assert operator_policy(render("--set", "operator.networkPolicy.enabled=false")) is None
