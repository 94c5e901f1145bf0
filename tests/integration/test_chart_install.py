"""`helm install`, `upgrade` and `uninstall` of charts/sft-operator against the dev cluster's real
kube-apiserver: the Deployment, RBAC and CRDs are accepted, the operator's ServiceAccount can do
exactly what OPERATOR_RULES grants, and the CRDs follow the documented lifecycle (README "CRD
lifecycle"): installed with the release, upgraded with the chart, kept on uninstall by default.

Both tests run under helm 3 and helm 4 (README "Helm versions"), one major after the other in the
same session. Each install starts over the SFTJob CRD as the session's `sftjob_crd` fixture applies
it (kubectl, server-side); the test adopts it the way the README documents, and re-applies
crds/sftjob.yaml at the end, so the next major and later tests find it Established.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sft-operator"
CRDS = ("sftjobs.sft.dev", "clusterkopfpeerings.kopf.dev")
RELEASE = "sft-operator"


@pytest.fixture(params=[3, 4], ids=["helm3", "helm4"])
def helm_major(request) -> int:
    return request.param


@pytest.fixture
def helm(dev_cluster, helm_major, tmp_path):
    from sft_dev.tools import helm as helm_path

    exe = str(helm_path(helm_major))
    home = tmp_path / "helm-home"
    env = dict(os.environ, HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
               HELM_DATA_HOME=str(home / "data"), KUBECONFIG=str(dev_cluster.kubeconfig))

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=180)
        if check and p.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    return run


def _get(kubectl, *args: str) -> dict | None:
    p = kubectl("get", *args, "-o", "json", check=False)
    return json.loads(p.stdout) if p.returncode == 0 else None


def _adopt_crds(kubectl, release: str, namespace: str) -> None:
    """README: let a release adopt CRDs that exist already (kept by an uninstall, or applied by hand)."""
    existing = [c for c in CRDS if _get(kubectl, "crd", c)]
    if existing:
        kubectl("annotate", "crd", *existing, f"meta.helm.sh/release-name={release}",
                f"meta.helm.sh/release-namespace={namespace}", "--overwrite")
        kubectl("label", "crd", *existing, "app.kubernetes.io/managed-by=Helm", "--overwrite")


def _release_sftjobs(kubectl) -> None:
    """Drop the operator's finalizer from every SFTJob (no operator runs in this test).

    Earlier tests in the session can leave SFTJobs in terminating namespaces; deleting the CRD waits
    for every instance, and an instance with a finalizer waits for an operator that is not there.
    """
    listing = _get(kubectl, "sftjobs", "-A") or {"items": []}
    for item in listing["items"]:
        meta = item["metadata"]
        if meta.get("finalizers"):
            kubectl("patch", "sftjob", meta["name"], "-n", meta["namespace"], "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}', check=False)


def _wait_gone(kubectl, *args: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _get(kubectl, *args) is not None:
        assert time.monotonic() < deadline, f"{args} still exists after {timeout}s"
        time.sleep(0.5)


def _can(kubectl, sa: str, verb: str, resource: str, namespace: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={sa}"]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    p = kubectl(*args, check=False)
    assert p.stdout.strip() in ("yes", "no"), p.stderr
    return p.stdout.strip() == "yes"


def _old_chart(tmp_path: Path) -> Path:
    """A copy of the chart as an older release: its SFTJob CRD lacks the Loss printer column."""
    old = tmp_path / "sft-operator-old"
    shutil.copytree(CHART, old)
    crd_file = old / "templates" / "crds" / "sftjob.yaml"
    lines = crd_file.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == "- name: Loss")
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while len(lines[end]) - len(lines[end].lstrip()) > indent:  # the column's own keys
        end += 1
    crd_file.write_text("".join(lines[:start] + lines[end:]))
    chart = yaml.safe_load((old / "Chart.yaml").read_text())
    chart["version"] = "0.0.9"
    (old / "Chart.yaml").write_text(yaml.safe_dump(chart))
    return old


def _printer_columns(kubectl) -> list[str]:
    crd = _get(kubectl, "crd", "sftjobs.sft.dev")
    return [c["name"] for c in crd["spec"]["versions"][0].get("additionalPrinterColumns", [])]


def _quickstart(namespace: str) -> str:
    job = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    job["metadata"]["namespace"] = namespace
    return yaml.safe_dump(job)


def test_install_upgrade_uninstall(helm, helm_major, kubectl, sftjob_crd, namespace, tmp_path):
    ns = namespace
    sa = f"system:serviceaccount:{ns}:{RELEASE}"
    try:
        _adopt_crds(kubectl, RELEASE, ns)
        # -- install (an older chart version) -------------------------------------------------------
        old = _old_chart(tmp_path)
        # The CRD is there already, applied by kubectl server-side. helm 4 applies server-side too, so the
        # chart README says to pass --force-conflicts to take over the fields kubectl owned. helm 3 has no
        # such flag (nor the conflict): it patches with a client-side 3-way merge.
        force = ["--force-conflicts"] if helm_major >= 4 else []
        out = helm("install", RELEASE, str(old), "-n", ns, "--wait=false", *force).stdout
        assert "STATUS: deployed" in out
        assert "kubectl apply -f examples/" in out  # NOTES
        for crd in CRDS:
            kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
        assert "Loss" not in _printer_columns(kubectl)
        dep = _get(kubectl, "deployment", RELEASE, "-n", ns)
        assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == RELEASE
        assert _get(kubectl, "service", f"{RELEASE}-metrics", "-n", ns)["spec"]["ports"][0]["port"] == 8080
        assert _get(kubectl, "clusterkopfpeering", "sft-operator") is not None  # the post-install hook

        # -- RBAC, as the real apiserver evaluates it ----------------------------------------------
        from sft_operator.rbac import OPERATOR_RULES

        role = _get(kubectl, "clusterrole", RELEASE)
        assert role["rules"] == OPERATOR_RULES
        assert _can(kubectl, sa, "patch", "sftjobs.sft.dev/status")
        assert _can(kubectl, sa, "create", "jobs.batch", "other-ns")
        assert _can(kubectl, sa, "create", "roles.rbac.authorization.k8s.io", "other-ns")
        assert _can(kubectl, sa, "patch", "clusterkopfpeerings.kopf.dev")
        assert not _can(kubectl, sa, "get", "secrets", ns)
        assert not _can(kubectl, sa, "delete", "sftjobs.sft.dev", ns)
        assert not _can(kubectl, sa, "create", "clusterroles.rbac.authorization.k8s.io")

        # A job created now must survive the upgrade and the uninstall.
        kubectl("apply", "-f", "-", input=_quickstart(ns))
        assert _get(kubectl, "sftjob", "quickstart", "-n", ns) is not None

        # -- upgrade to this chart: the CRD is upgraded too ----------------------------------------
        out = helm("upgrade", RELEASE, str(CHART), "-n", ns, "--wait=false").stdout
        assert "STATUS: deployed" in out
        assert "Loss" in _printer_columns(kubectl)
        live = _get(kubectl, "crd", "sftjobs.sft.dev")
        generated = yaml.safe_load((ROOT / "crds" / "sftjob.yaml").read_text())
        assert [v["name"] for v in live["spec"]["versions"]] == [v["name"] for v in generated["spec"]["versions"]]
        assert live["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert _get(kubectl, "sftjob", "quickstart", "-n", ns) is not None

        # -- uninstall keeps the CRDs and the SFTJobs ----------------------------------------------
        helm("uninstall", RELEASE, "-n", ns, "--wait")
        _wait_gone(kubectl, "deployment", RELEASE, "-n", ns)
        assert _get(kubectl, "clusterrole", RELEASE) is None
        for crd in CRDS:
            assert _get(kubectl, "crd", crd) is not None, f"{crd} was deleted by uninstall"
        assert _get(kubectl, "sftjob", "quickstart", "-n", ns) is not None

        # -- reinstall over the kept CRDs -----------------------------------------------------------
        kubectl("delete", "sftjob", "quickstart", "-n", ns, "--wait=false")
        kubectl("patch", "sftjob", "quickstart", "-n", ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
        # Another release cannot take over CRDs that still name the first one ...
        p = helm("install", "sft2", str(CHART), "-n", ns, "--set", "crds.keep=false", check=False)
        assert p.returncode != 0 and "invalid ownership metadata" in p.stderr, p.stderr
        # ... until they are adopted as the README says.
        _adopt_crds(kubectl, "sft2", ns)
        helm("install", "sft2", str(CHART), "-n", ns, "--set", "crds.keep=false", "--wait=false")
        manifest = [d for d in yaml.safe_load_all(helm("get", "manifest", "sft2", "-n", ns).stdout) if d]
        release_crds = [d for d in manifest if d["kind"] == "CustomResourceDefinition"]
        assert sorted(d["metadata"]["name"] for d in release_crds) == sorted(CRDS)
        assert all("helm.sh/resource-policy" not in (d["metadata"].get("annotations") or {}) for d in release_crds)
        live = _get(kubectl, "crd", "sftjobs.sft.dev")["metadata"].get("annotations") or {}
        if helm_major >= 4:
            # helm 4 applies server-side as the field manager that set the annotation, so the annotation
            # the new release no longer renders goes.
            assert "helm.sh/resource-policy" not in live
        else:
            # helm 3 adopts with a client-side 3-way merge whose "previous manifest" is the new one, so
            # it removes nothing: the first release's annotation stays on the live CRD (README "Helm
            # versions"). Uninstall reads the policy from the release manifest, so it still deletes.
            assert live.get("helm.sh/resource-policy") == "keep"
        # With crds.keep=false, uninstall deletes the CRDs, and with them every SFTJob in the cluster.
        _release_sftjobs(kubectl)
        helm("uninstall", "sft2", "-n", ns, "--wait")
        for crd in CRDS:
            _wait_gone(kubectl, "crd", crd)
    finally:
        helm("uninstall", RELEASE, "-n", ns, check=False)
        helm("uninstall", "sft2", "-n", ns, check=False)
        # Restore what the session's other tests expect: the generated SFTJob CRD, Established. A CRD
        # still terminating would refuse the apply, so let its deletion finish first.
        crd = _get(kubectl, "crd", "sftjobs.sft.dev")
        if crd and crd["metadata"].get("deletionTimestamp"):
            _release_sftjobs(kubectl)
            _wait_gone(kubectl, "crd", "sftjobs.sft.dev")
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "sftjob.yaml"))
        kubectl("wait", "--for=condition=Established", "crd/sftjobs.sft.dev", "--timeout=60s")


def test_monitoring_objects_fail_clearly_without_the_prometheus_operator(helm, namespace):
    """Against a real cluster that lacks the monitoring.coreos.com CRDs, helm refuses, naming the value."""
    for value, kind in (("monitoring.serviceMonitor.enabled", "ServiceMonitor"), ("monitoring.podMonitor.enabled", "PodMonitor"),
                        ("monitoring.prometheusRule.enabled", "PrometheusRule")):
        p = helm("install", "mon-check", str(CHART), "-n", namespace, "--set", f"{value}=true", "--set", "crds.install=false",
                 "--set", "operator.peering.enabled=false", "--dry-run=server", check=False)
        assert p.returncode != 0
        assert f"{value}=true, but the cluster does not serve monitoring.coreos.com/v1/{kind}" in p.stderr
    # The dashboard ConfigMap needs no CRD.
    p = helm("install", "mon-check", str(CHART), "-n", namespace, "--set", "monitoring.dashboard.enabled=true",
             "--set", "crds.install=false", "--set", "operator.peering.enabled=false", "--dry-run=server")
    assert "grafana_dashboard" in p.stdout
