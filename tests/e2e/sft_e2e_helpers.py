"""Helpers of the e2e tests: the operator as a real process, and typed access to SFTJobs and their children."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable


REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """`python -m sft_operator.run_operator` with fast clocks; can be killed (-9) and restarted."""

    def __init__(self, kubeconfig: Path, log_dir: Path, extra_env: dict | None = None, args: tuple[str, ...] = ("--standalone",)):
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.args = args
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self, wait: bool = True) -> None:
        self.starts += 1
        env = dict(os.environ)
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            SFT_RESYNC_SECONDS="1",
            SFT_OPERATOR_METRICS_PORT=str(self.metrics_port),
            SFT_OPERATOR_HEALTH_PORT=str(self.health_port),
            SFT_TRAINER_IMAGE="sft-trainer:e2e",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        self._log = open(self.log_file, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sft_operator.run_operator", "--log-format", "text", *self.args],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"operator not healthy within {timeout}s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when the node or the container dies."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text().splitlines()[-n:])
        except OSError:
            return ""


# -- helpers -------------------------------------------------------------------------------------------


class Sft:
    """Small typed helpers over the apiserver for the e2e tests."""

    def __init__(self, api_client, namespace: str):
        from kubernetes import client

        self.ns = namespace
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)

    def apply(self, body: dict) -> dict:
        body = json.loads(json.dumps(body))
        body["metadata"]["namespace"] = self.ns
        return self.custom.create_namespaced_custom_object("sft.dev", "v1alpha1", self.ns, "sftjobs", body)

    def get(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object("sft.dev", "v1alpha1", self.ns, "sftjobs", name)

    def patch_spec(self, name: str, spec: dict) -> dict:
        return self.custom.patch_namespaced_custom_object("sft.dev", "v1alpha1", self.ns, "sftjobs", name, {"spec": spec})

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object("sft.dev", "v1alpha1", self.ns, "sftjobs", name)

    def status(self, name: str) -> dict:
        return self.get(name).get("status") or {}

    def wait(self, name: str, pred: Callable[[dict], bool], timeout: float = 60, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        st: dict = {}
        while time.monotonic() < deadline:
            st = self.status(name)
            if pred(st):
                return st
            time.sleep(0.25)
        raise AssertionError(f"SFTJob {self.ns}/{name}: {what or 'condition'} not reached in {timeout}s; status={json.dumps(st, indent=1)}")

    def wait_phase(self, name: str, phase: str, timeout: float = 60) -> dict:
        return self.wait(name, lambda s: s.get("phase") == phase, timeout, f"phase {phase}")

    @staticmethod
    def _selector(name: str, attempt: int | None, preflight: bool) -> str:
        sel = f"sft.dev/job-name={name}" + (f",sft.dev/attempt={attempt}" if attempt is not None else "")
        return sel + (",sft.dev/component=preflight" if preflight else ",sft.dev/component!=preflight")

    def jobs(self, name: str, attempt: int | None = None) -> list:
        """The gang's Jobs (the preflight's are `preflight_jobs`)."""
        return self.batch.list_namespaced_job(self.ns, label_selector=self._selector(name, attempt, False)).items

    def pods(self, name: str, attempt: int | None = None) -> list:
        """The gang's pods (the preflight's are `preflight_pods`)."""
        return self.core.list_namespaced_pod(self.ns, label_selector=self._selector(name, attempt, False)).items

    def preflight_jobs(self, name: str, attempt: int | None = None) -> list:
        return self.batch.list_namespaced_job(self.ns, label_selector=self._selector(name, attempt, True)).items

    def preflight_pods(self, name: str, attempt: int | None = None) -> list:
        return self.core.list_namespaced_pod(self.ns, label_selector=self._selector(name, attempt, True)).items

    def running_preflight_pod(self, name: str, attempt: int = 1, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = [p for p in self.preflight_pods(name, attempt) if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
            if pods:
                return pods[0]
            time.sleep(0.2)
        raise AssertionError(f"no running preflight pod of {name} attempt {attempt} in {timeout}s: "
                             f"{[(p.metadata.name, p.status.phase) for p in self.preflight_pods(name)]}")

    def running_pods(self, name: str, attempt: int, count: int, timeout: float = 60) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = [p for p in self.pods(name, attempt) if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
            if len(pods) >= count:
                return sorted(pods, key=lambda p: p.metadata.annotations.get("batch.kubernetes.io/job-completion-index", ""))
            time.sleep(0.25)
        raise AssertionError(f"{count} running pod(s) of {name} attempt {attempt} not seen in {timeout}s; "
                             f"have {[(p.metadata.name, p.status.phase) for p in self.pods(name)]}")

    def events(self, name: str) -> list:
        evs = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name},involvedObject.kind=SFTJob").items
        return sorted(evs, key=lambda e: (e.last_timestamp or e.event_time or e.metadata.creation_timestamp))

    def wait_events(self, name: str, reasons: set[str], timeout: float = 10) -> list:
        """Until Events with all `reasons` exist (they follow the status write they describe)."""
        deadline = time.monotonic() + timeout
        while True:
            evs = self.events(name)
            if reasons <= {e.reason for e in evs}:
                return evs
            if time.monotonic() > deadline:
                raise AssertionError(f"events {sorted(reasons)} of {name} not all seen in {timeout}s: {[e.reason for e in evs]}")
            time.sleep(0.2)

    def report_progress(self, name: str, status: dict) -> None:
        """Patch status the way the trainer's rank 0 does: with the job's own trainer ServiceAccount token."""
        from kubernetes import client

        token = self.core.create_namespaced_service_account_token(
            f"{name}-trainer", self.ns, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
        ).status.token
        cfg = client.Configuration()
        base = self.api_client.configuration
        cfg.host, cfg.ssl_ca_cert = base.host, base.ssl_ca_cert
        cfg.api_key = {"authorization": f"Bearer {token}"}  # kubernetes>=36 ignores api_key_prefix here
        with client.ApiClient(cfg) as trainer_api:
            client.CustomObjectsApi(trainer_api).api_client.call_api(
                f"/apis/sft.dev/v1alpha1/namespaces/{self.ns}/sftjobs/{name}/status", "PATCH",
                header_params={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
                body={"status": status}, auth_settings=["BearerToken"], _preload_content=False,
            )


def sftjob_manifest(name: str, *, nodes: int = 2, gpus: int = 8, **spec_overrides) -> dict:
    """A small SFTJob. It skips the preflight pod (`preflight: {enabled: false}`) so that the gang comes
    first; the tests of the preflight, and the happy path, turn it on with `preflight={"enabled": True}`."""
    spec = {
        "model": {"uri": "builtin://tiny-llama"},
        "datasets": [{"uri": "data/quickstart/train.jsonl", "format": "messages"}],
        "method": {"type": "full"},
        "training": {"maxSteps": 20, "precision": "fp32", "gradientCheckpointing": False},
        "checkpoints": {"uri": f"s3://ckpt/{name}/", "everySteps": 5},
        "storage": {"secretRef": "s3-credentials", "endpoint": "http://127.0.0.1:8333"},
        "workers": {"nodes": nodes, "gpusPerNode": gpus, "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
        "failurePolicy": {"maxRestarts": 3, "stallTimeoutSeconds": 3600},
        "preflight": {"enabled": False},
    }
    for key, value in spec_overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return {"apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name}, "spec": spec}


def cond(status: dict, ctype: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == ctype), {})
