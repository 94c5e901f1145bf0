"""Kueue in the dev cluster: the manager built from the Go module proxy (kueue_build.py), its CRDs
from the module cache, and its webhooks served on 127.0.0.1.

- The webhook server's certificate is signed by the dev cluster's CA (SAN IP:127.0.0.1), so the
  apiserver trusts it; Kueue's internal cert management is off.
- The webhook configurations are Kueue's own (config/components/webhook/manifests.yaml), limited to
  Kueue's objects and batch/v1 Jobs (the one integration enabled), with ``clientConfig.url`` pointing
  at 127.0.0.1 instead of an in-cluster Service.
- Leader election is off; the visibility API server (an aggregated API) is off.
- ``down`` deletes the webhook configurations before it stops the manager: with failurePolicy Fail
  a stopped Kueue would otherwise block every Job creation in the cluster.

``sftctl dev-cluster up --kueue`` starts it with the cluster; ``Kueue(DevCluster(dir)).up()`` adds it
to a running one (the tests' session cluster).
"""

from __future__ import annotations

import base64
import copy
import json
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from sft_dev.kueue_build import KUEUE_VERSION, crd_dir, ensure_kueue, module_dir
from sft_dev.s3 import free_ports

HOST = "127.0.0.1"
COMPONENT = "kueue"
NAMESPACE = "kueue-system"
WEBHOOK_PREFIX = "sft-dev-kueue-"
# Kueue's own objects and the batch/v1 Job integration; the other integrations are not enabled.
WEBHOOKS = {f"{p}{k}.kb.io" for p in "mv" for k in ("clusterqueue", "cohort", "resourceflavor", "workload", "job")}
# Without internal cert management Kueue v0.17 reads its metrics server's certificate from this fixed
# path (cmd/kueue/main.go); the dev cluster puts a self-signed pair there if none is there yet.
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")


class KueueError(RuntimeError):
    """Kueue could not start; the message names the cause."""


class Kueue:
    def __init__(self, cluster):
        self.cluster = cluster
        self.dir = cluster.state_dir / "kueue"
        self.certs = self.dir / "certs"
        self.config_file = self.dir / "config.yaml"

    # ------------------------------------------------------------------ state
    def _cfg(self) -> dict:
        return (self.cluster.load_config() or {}).get("kueue") or {}

    def _save_cfg(self, kcfg: dict) -> None:
        cfg = self.cluster.load_config() or {}
        cfg["kueue"] = kcfg
        self.cluster.config_file.write_text(json.dumps(cfg, indent=1))

    def _kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        from sft_dev.tools import kubectl

        p = subprocess.run([str(kubectl()), "--kubeconfig", str(self.cluster.kubeconfig), *args], input=input,
                           capture_output=True, text=True, timeout=180)
        if check and p.returncode != 0:
            raise KueueError(f"kubectl {' '.join(args[:3])} failed: {(p.stderr or p.stdout).strip()[-1500:]}")
        return p

    # ------------------------------------------------------------------ files
    def _write_cert(self) -> None:
        if (self.certs / "tls.crt").exists():
            return
        self.certs.mkdir(parents=True, exist_ok=True)
        pki = self.cluster.pki
        (self.certs / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                            "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n")
        for args in (["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr",
                      "-subj", "/CN=kueue-webhook"],
                     ["x509", "-req", "-in", "tls.csr", "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
                      "-CAcreateserial", "-out", "tls.crt", "-days", "3650", "-extfile", "san.ext"]):
            p = subprocess.run(["openssl", *args], cwd=self.certs, capture_output=True, text=True)
            if p.returncode != 0:
                raise KueueError(f"openssl {args[0]} for Kueue's webhook certificate failed: {p.stderr[-500:]}")

    def _write_metrics_cert(self) -> None:
        if (METRICS_CERT_DIR / "tls.crt").exists() and (METRICS_CERT_DIR / "tls.key").exists():
            return
        try:
            METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise KueueError(f"Kueue reads its metrics certificate from {METRICS_CERT_DIR} (fixed in v0.17 "
                             f"without internal cert management), which cannot be created: {e}") from e
        p = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                            "-keyout", "tls.key", "-out", "tls.crt", "-subj", "/CN=kueue-metrics",
                            "-addext", "subjectAltName=IP:127.0.0.1"], cwd=METRICS_CERT_DIR, capture_output=True, text=True)
        if p.returncode != 0:
            raise KueueError(f"openssl for Kueue's metrics certificate failed: {p.stderr[-500:]}")

    def _write_config(self, ports: dict) -> None:
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"{HOST}:{ports['health']}"},
            "metrics": {"bindAddress": f"{HOST}:{ports['metrics']}"},
            "webhook": {"host": HOST, "port": ports["webhook"], "certDir": str(self.certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "manageJobsWithoutQueueName": False,
            "integrations": {"frameworks": ["batch/job"]},
        }
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    def webhook_manifests(self, port: int) -> str:
        """Kueue's webhook configurations, pointed at 127.0.0.1:port and trusting the cluster CA."""
        docs = [d for d in yaml.safe_load_all((module_dir() / "config/components/webhook/manifests.yaml").read_text()) if d]
        ca = base64.b64encode((self.cluster.pki / "ca.crt").read_bytes()).decode()
        out = []
        for d in docs:
            d = copy.deepcopy(d)
            d["metadata"] = {"name": WEBHOOK_PREFIX + d["metadata"]["name"], "labels": {"app.kubernetes.io/part-of": "sft-dev-kueue"}}
            hooks = []
            for w in d["webhooks"]:
                if w["name"] not in WEBHOOKS:
                    continue
                path = w["clientConfig"]["service"]["path"]
                w["clientConfig"] = {"url": f"https://{HOST}:{port}{path}", "caBundle": ca}
                hooks.append(w)
            d["webhooks"] = hooks
            out.append(d)
        return yaml.safe_dump_all(out, sort_keys=False)

    # ------------------------------------------------------------------ up / down
    def running(self) -> bool:
        from sft_dev.cluster import _alive, _read_pidfile

        return _alive(_read_pidfile(self.cluster.pidsdir / f"{COMPONENT}.json"))

    def up(self, log=sys.stderr, wait: float = 120.0) -> dict:
        """Start Kueue (idempotent); returns its ports."""
        binary = ensure_kueue(log=log)
        kcfg = self._cfg()
        if self.running() and kcfg.get("ports"):
            return kcfg["ports"]
        t0 = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        ports = dict(zip(("webhook", "health", "metrics"), free_ports(3)))
        self._write_cert()
        self._write_metrics_cert()
        self._write_config(ports)
        self._kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_dir()))
        self._kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crd_dir()))
        self._kubectl("create", "namespace", NAMESPACE, check=False)
        env = {"KUBECONFIG": str(self.cluster.kubeconfig), "PATH": "/usr/bin:/bin"}
        proc = self.cluster._spawn(COMPONENT, [str(binary), f"--config={self.config_file}",
                                               "--feature-gates=VisibilityOnDemand=false", "--zap-log-level=2"], env=env)
        self.cluster._wait(COMPONENT, proc, lambda: self._get(f"http://{HOST}:{ports['health']}/readyz") == b"ok", wait)
        self._kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=self.webhook_manifests(ports["webhook"]))
        # the apiserver reaches the webhooks: a server-side dry-run of a ResourceFlavor goes through them
        probe = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "sft-dev-probe"}}
        deadline = time.monotonic() + 30
        while True:
            p = self._kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False)
            if p.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise KueueError(f"Kueue's webhooks on {HOST}:{ports['webhook']} do not answer the apiserver: "
                                 f"{p.stderr.strip()[-800:]}")
            time.sleep(0.5)
        self._save_cfg({"enabled": True, "version": KUEUE_VERSION, "ports": ports})
        print(f"kueue {KUEUE_VERSION} up in {time.monotonic() - t0:.1f}s (webhooks on {HOST}:{ports['webhook']})", file=log)
        return ports

    def down(self) -> list[str]:
        """Delete the webhook configurations (while the apiserver runs), then stop the manager."""
        from sft_dev.cluster import _alive, _read_pidfile, _terminate

        stopped = []
        try:
            self._kubectl("delete", "mutatingwebhookconfiguration,validatingwebhookconfiguration",
                          "-l", "app.kubernetes.io/part-of=sft-dev-kueue", "--ignore-not-found", "--timeout=20s",
                          check=False)
        except (OSError, subprocess.SubprocessError):
            pass  # the apiserver is gone: the configurations went with it
        pf = self.cluster.pidsdir / f"{COMPONENT}.json"
        rec = _read_pidfile(pf)
        if _alive(rec):
            _terminate(rec["pid"], rec.get("start"))
            stopped.append(f"{COMPONENT} (pid {rec['pid']})")
        pf.unlink(missing_ok=True)
        kcfg = self._cfg()
        if kcfg:
            self._save_cfg({**kcfg, "enabled": False})
        return stopped

    @staticmethod
    def _get(url: str) -> bytes:
        ctx = ssl._create_unverified_context() if url.startswith("https") else None
        with urllib.request.urlopen(url, timeout=3, context=ctx) as r:
            return r.read()
