"""`helm lint` and `helm template` of charts/sft-operator: defaults, every toggle, the API checks of
the monitoring objects, the CRD choices, and that the rendered objects match their sources."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "sft-operator"
MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PodMonitor",
                   "monitoring.coreos.com/v1/PrometheusRule")
ALL_ON = ["--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.podMonitor.enabled=true",
          "--set", "monitoring.prometheusRule.enabled=true", "--set", "monitoring.dashboard.enabled=true",
          "--set", "crds.install=true", "--set", "crds.keep=true", "--set", "rbac.create=true",
          "--set", "serviceAccount.create=true", "--set", "operator.peering.enabled=true",
          "--set", "trainer.storageEndpoint=http://minio.storage:9000",
          "--set-json", 'trainer.resources={"requests":{"cpu":"8","memory":"64Gi"}}']


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(docs):
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


# -- lint ---------------------------------------------------------------------------------------------


def test_lint_defaults(run_helm):
    out = run_helm("lint", "--strict", str(CHART)).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("extra", [[], ["--set", "monitoring.skipApiCheck=true"]], ids=["api-check", "skip-api-check"])
def test_lint_every_toggle_on(run_helm, extra):
    # helm lint turns `fail` into an INFO line (it cannot know the cluster's APIs); the API check
    # itself is covered by the template tests below.
    out = run_helm("lint", "--strict", str(CHART), *ALL_ON, *extra).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out


# -- defaults -----------------------------------------------------------------------------------------


def test_defaults_render_operator_objects_and_no_monitoring(render):
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment",
                            "CustomResourceDefinition", "CustomResourceDefinition", "ClusterKopfPeering",
                            "NetworkPolicy"])
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    c = container(docs)
    assert c["image"] == "ghcr.io/sft-operator/operator:0.1.0"
    assert c["command"] == ["python", "-m", "sft_operator.run_operator"]
    assert c["args"] == ["--all-namespaces", "--log-format=json"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 8080, "health": 8081}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    svc = one(docs, "Service")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    peering = one(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "sft-operator"
    assert "post-install" in peering["metadata"]["annotations"]["helm.sh/hook"]


def test_security_context_is_restricted(render):
    docs = render()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_replicas_above_one_are_hot_standbys(render):
    dep = one(render("--set", "operator.replicas=2", "--set", "operator.peering.lifetimeSeconds=20"), "Deployment")
    assert dep["spec"]["replicas"] == 2
    assert "strategy" not in dep["spec"]  # rolling update: peering keeps the extra replica paused
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SFT_PEERING_LIFETIME_SECONDS"] == "20"
    assert "--standalone" not in dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_operator_cli_accepts_the_rendered_args(render):
    """The Deployment's args parse with the operator's own CLI, and peering uses the object the chart creates."""
    import sft_operator.handlers as handlers
    from sft_operator.run_operator import parse_args

    for docs, standalone in ((render(), False), (render("--set", "operator.peering.enabled=false"), True)):
        c = container(docs)
        assert c["command"][-1] == "sft_operator.run_operator"
        args = parse_args(c["args"])
        assert args.all_namespaces and args.standalone is standalone and args.log_format == "json"
    peering = one(render(), "ClusterKopfPeering")["metadata"]["name"]
    assert f'settings.peering.name = "{peering}"' in Path(handlers.__file__).read_text()
    env = {e["name"]: e.get("value") for e in container(render())["env"]}
    assert env["POD_ID"] is None  # from the downward API: kopf's peer identity


def test_cluster_role_is_exactly_operator_rules(render):
    from sft_operator.rbac import OPERATOR_RULES

    docs = render()
    role = one(docs, "ClusterRole")
    assert role["rules"] == OPERATOR_RULES
    binding = one(docs, "ClusterRoleBinding")
    sa = one(docs, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "sft-system"}]
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_rbac_and_service_account_can_be_left_out(render):
    docs = render("--set", "rbac.create=false", "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=ops")
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ServiceAccount")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


# -- trainer defaults reach the operator ---------------------------------------------------------------


def operator_settings(docs, monkeypatch):
    """The OperatorSettings the operator would read from the rendered container's env (and nothing else)."""
    from sft_operator.settings import OperatorSettings

    for name in [n for n in os.environ if n.startswith("SFT_")]:
        monkeypatch.delenv(name)
    env = {e["name"]: e["value"] for e in container(docs)["env"] if "value" in e}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return OperatorSettings.from_env(), env


def test_trainer_defaults_become_operator_settings(render, monkeypatch):
    docs = render("--set", "trainer.image.repository=registry.example/trainer", "--set", "trainer.image.tag=1.2.3",
                  "--set", "trainer.storageEndpoint=http://minio.storage:9000",
                  "--set-json", 'trainer.resources={"requests":{"cpu":"8","memory":"64Gi"},"limits":{"memory":"80Gi"}}',
                  "--set", "trainer.metricsPort=9500", "--set", "trainer.shmSize=32Gi",
                  "--set", "operator.resyncSeconds=5")
    settings, _ = operator_settings(docs, monkeypatch)
    assert settings.trainer_image == "registry.example/trainer:1.2.3"
    assert settings.storage_endpoint == "http://minio.storage:9000"
    assert settings.default_resources == {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "80Gi"}}
    assert settings.trainer_metrics_port == 9500
    assert settings.shm_size == "32Gi"
    assert settings.resync_seconds == 5.0
    assert settings.metrics_port == 8080 and settings.health_port == 8081
    assert settings.peering_lifetime_seconds == 60


def test_trainer_defaults_left_empty_keep_operator_defaults(render, monkeypatch):
    settings, env = operator_settings(render(), monkeypatch)
    assert "SFT_STORAGE_ENDPOINT" not in env and "SFT_DEFAULT_RESOURCES" not in env
    assert settings.trainer_image == "ghcr.io/sft-operator/trainer:0.1.0"
    assert settings.storage_endpoint is None and settings.default_resources == {}


def test_settings_change_rolls_the_pods(render):
    a = one(render(), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]
    b = one(render("--set", "trainer.shmSize=1Gi"), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]
    assert a != b


# -- CRDs ---------------------------------------------------------------------------------------------


def test_crds_are_kept_on_uninstall_by_default(render):
    crds = by_kind(render(), "CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crds) == ["clusterkopfpeerings.kopf.dev", "sftjobs.sft.dev"]
    for crd in crds:
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_crds_keep_false_drops_the_policy(render):
    for crd in by_kind(render("--set", "crds.keep=false"), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})


def test_chart_crd_is_the_generated_crd(render):
    generated = yaml.safe_load((ROOT / "crds" / "sftjob.yaml").read_text())
    chart = next(c for c in by_kind(render(), "CustomResourceDefinition") if c["metadata"]["name"] == "sftjobs.sft.dev")
    assert chart["spec"] == generated["spec"]


def test_crds_install_false_renders_no_crd_and_needs_peering_crd(render, run_helm):
    p = run_helm("template", "rel", str(CHART), "--set", "crds.install=false", check=False)
    assert p.returncode != 0
    assert "operator.peering.enabled=true needs kopf's ClusterKopfPeering CRD" in p.stderr
    docs = render("--set", "crds.install=false", apis=("kopf.dev/v1/ClusterKopfPeering",))
    assert not by_kind(docs, "CustomResourceDefinition")
    assert one(docs, "ClusterKopfPeering")
    docs = render("--set", "crds.install=false", "--set", "operator.peering.enabled=false")
    assert not by_kind(docs, "CustomResourceDefinition") and not by_kind(docs, "ClusterKopfPeering")
    assert "--standalone" in container(docs)["args"]


# -- monitoring objects -------------------------------------------------------------------------------


@pytest.mark.parametrize("value,kind", [("monitoring.serviceMonitor.enabled", "ServiceMonitor"),
                                        ("monitoring.podMonitor.enabled", "PodMonitor"),
                                        ("monitoring.prometheusRule.enabled", "PrometheusRule")])
def test_monitoring_object_fails_clearly_without_its_api(run_helm, render, value, kind):
    p = run_helm("template", "rel", str(CHART), "--set", f"{value}=true", check=False)
    assert p.returncode != 0
    assert f"{value}=true, but the cluster does not serve monitoring.coreos.com/v1/{kind}" in p.stderr
    assert f"set {value}=false" in p.stderr
    # Another monitoring kind being served is not enough.
    others = tuple(a for a in MONITORING_APIS if not a.endswith("/" + kind))
    p = run_helm("template", "rel", str(CHART), "--set", f"{value}=true",
                 *[x for a in others for x in ("--api-versions", a)], check=False)
    assert p.returncode != 0 and f"monitoring.coreos.com/v1/{kind}" in p.stderr
    # With the API present it renders, and so it does with the check skipped.
    assert one(render("--set", f"{value}=true", apis=(f"monitoring.coreos.com/v1/{kind}",)), kind)
    assert one(render("--set", f"{value}=true", "--set", "monitoring.skipApiCheck=true"), kind)


def test_every_toggle_on_renders_every_object(render):
    docs = render(*ALL_ON, apis=MONITORING_APIS)
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "Deployment", "ClusterRole", "ClusterKopfPeering"):
        assert one(docs, kind)
    assert len(by_kind(docs, "CustomResourceDefinition")) == 2
    assert [c["metadata"]["name"] for c in by_kind(docs, "ConfigMap")] == ["rel-sft-operator-dashboard"]


def test_service_monitor_targets_the_metrics_service(render):
    docs = render("--set", "monitoring.serviceMonitor.enabled=true", "--set-json", 'monitoring.serviceMonitor.labels={"release":"kps"}',
                  apis=MONITORING_APIS)
    sm, svc = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["sft-system"]}
    assert sm["spec"]["endpoints"][0]["port"] == "metrics" == svc["spec"]["ports"][0]["name"]


def test_pod_monitor_scrapes_trainer_pods_with_job_labels(render):
    pm = one(render("--set", "monitoring.podMonitor.enabled=true", apis=MONITORING_APIS), "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert pm["spec"]["selector"]["matchExpressions"] == [{"key": "sft.dev/job-name", "operator": "Exists"}]
    ep = pm["spec"]["podMetricsEndpoints"][0]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics" and ep["honorLabels"] is True
    targets = {r["targetLabel"]: r["sourceLabels"] for r in ep["relabelings"] if "targetLabel" in r}
    assert targets["namespace"] == ["__meta_kubernetes_namespace"]
    assert targets["sftjob"] == ["__meta_kubernetes_pod_label_sft_dev_job_name"]
    # Only rank 0 serves /metrics.
    keep = [r for r in ep["relabelings"] if r.get("action") == "keep"]
    assert keep == [{"sourceLabels": ["__meta_kubernetes_pod_label_batch_kubernetes_io_job_completion_index"],
                     "regex": "0", "action": "keep"}]


def test_pod_monitor_selects_the_operators_trainer_pods(render):
    """The pods the operator renders carry the label and the named port the PodMonitor relies on."""
    from sft_api import load_sftjob
    from sft_operator.children import render as render_children
    from sft_operator.settings import OperatorSettings

    pm = one(render("--set", "monitoring.podMonitor.enabled=true", "--set", "trainer.metricsPort=9500",
                    apis=MONITORING_APIS), "PodMonitor")
    job = load_sftjob((ROOT / "examples" / "quickstart.yaml").read_text())
    children = render_children(job, attempt=2, settings=OperatorSettings(trainer_metrics_port=9500))
    template = next(c for c in children if c["kind"] == "Job")["spec"]["template"]
    for expr in pm["spec"]["selector"]["matchExpressions"]:
        assert expr["operator"] == "Exists" and expr["key"] in template["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    assert ports[pm["spec"]["podMetricsEndpoints"][0]["port"]] == 9500
    relabel = {r["targetLabel"]: r["sourceLabels"][0] for r in pm["spec"]["podMetricsEndpoints"][0]["relabelings"] if "targetLabel" in r}
    meta_label = lambda key: "__meta_kubernetes_pod_label_" + key.replace(".", "_").replace("/", "_").replace("-", "_")
    assert relabel["sftjob"] == meta_label("sft.dev/job-name")
    assert relabel["attempt"] == meta_label("sft.dev/attempt")
    assert template["metadata"]["labels"]["sft.dev/attempt"] == "2"


def test_prometheus_rule_carries_the_alert_rule_file(render):
    rule = one(render("--set", "monitoring.prometheusRule.enabled=true", "--set-json", 'monitoring.prometheusRule.labels={"release":"kps"}',
                      apis=MONITORING_APIS), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    source = yaml.safe_load((ROOT / "monitoring" / "alerts" / "sft-operator.rules.yaml").read_text())
    assert rule["spec"] == source


def test_dashboard_config_map_carries_the_dashboard(render):
    docs = render("--set", "monitoring.dashboard.enabled=true", "--set", "monitoring.dashboard.namespace=monitoring",
                  "--set-json", 'monitoring.dashboard.annotations={"grafana_folder":"Training"}')
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Training"}
    source = json.loads((ROOT / "monitoring" / "dashboards" / "sft-operator.json").read_text())
    assert json.loads(cm["data"]["sft-operator.json"]) == source


# -- NOTES, README, values docs -----------------------------------------------------------------------


NOTES_PROBE = """apiVersion: v1
kind: ConfigMap
metadata: {name: notes-probe}
data:
  notes: {{ tpl (.Files.Get "files/NOTES.probe.txt") . | toJson }}
"""


def rendered_notes(run_helm, helm_major, tmp_path, *args: str) -> str:
    """The NOTES a `helm install` of the chart prints, rendered without a cluster.

    helm 4 renders them with `install --dry-run=client`. helm 3's `install --dry-run=client` still
    checks that a cluster is reachable (helm/helm#13144, fixed in helm 4) and `helm template` drops
    NOTES, so under helm 3 the same NOTES.txt goes through helm 3's own engine with `tpl` in a copy of
    the chart. (tests/integration/test_chart_install.py sees the real helm 3 install NOTES.)
    """
    if helm_major >= 4:
        out = run_helm("install", "rel", str(CHART), "--namespace", "sft-system", "--dry-run=client", *args).stdout
        return out[out.index("NOTES:"):]
    chart = tmp_path / "chart"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        shutil.copy(CHART / "templates" / "NOTES.txt", chart / "files" / "NOTES.probe.txt")
        (chart / "templates" / "notes-probe.yaml").write_text(NOTES_PROBE)
    out = run_helm("template", "rel", str(chart), "--namespace", "sft-system",
                   "--show-only", "templates/notes-probe.yaml", *args).stdout
    return yaml.safe_load(out)["data"]["notes"]


def test_notes_tell_the_user_what_to_do_next(run_helm, helm_major, tmp_path):
    notes = rendered_notes(run_helm, helm_major, tmp_path)
    assert "sft-operator 0.1.0 is installed in namespace sft-system." in notes
    assert "kubectl -n sft-system rollout status deployment/rel-sft-operator" in notes
    assert "kubectl apply -f examples/" in notes
    assert "--set monitoring.serviceMonitor.enabled=true" in notes
    assert "helm uninstall` keeps the CRDs" in notes
    notes = rendered_notes(run_helm, helm_major, tmp_path, "--set", "monitoring.podMonitor.enabled=true",
                           "--set", "monitoring.skipApiCheck=true")
    assert 'sftjob_train_loss{namespace="<namespace>", sftjob="<job>"}' in notes


def test_derived_chart_files_are_in_sync():
    """README values table, the copied alert rules and dashboard, and the RBAC rules file."""
    p = subprocess.run([sys.executable, str(CHART / "hack" / "sync.py"), "--check"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_every_value_is_documented():
    sys.path.insert(0, str(CHART / "hack"))
    try:
        from sync import values_table
    finally:
        sys.path.pop(0)
    documented = {row[0] for row in values_table(CHART / "values.yaml")}
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(node, prefix=""):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and path not in documented:
                yield from leaves(value, path + ".")
            else:
                yield path

    undocumented = [k for k in leaves(values) if k not in documented]
    assert not undocumented, f"values without a `# --` comment: {undocumented}"
    readme = (CHART / "README.md").read_text()
    for key in documented:
        assert f"| `{key}` |" in readme


def test_chart_peering_crd_matches_the_operators(render):
    """The operator's own peering manifest (used by its e2e tests) and the chart define the same CRD and object."""
    asset = ROOT / "operator" / "sft_operator" / "assets" / "operator" / "kopf-peering.yaml"
    docs = [d for d in yaml.safe_load_all(asset.read_text()) if d]
    theirs = next(d for d in docs if d["kind"] == "CustomResourceDefinition" and d["metadata"]["name"] == "clusterkopfpeerings.kopf.dev")
    rendered = render()
    ours = next(c for c in by_kind(rendered, "CustomResourceDefinition") if c["metadata"]["name"] == "clusterkopfpeerings.kopf.dev")
    assert ours["spec"] == theirs["spec"]
    peering_names = [d["metadata"]["name"] for d in docs if d["kind"] == "ClusterKopfPeering"]
    assert peering_names == [one(rendered, "ClusterKopfPeering")["metadata"]["name"]]
