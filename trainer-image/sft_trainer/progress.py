"""The progress channel from rank 0 to the operator, behind one small interface.

``ProgressReporter.report(patch)`` takes a partial SFTJob status in camelCase, limited to the
fields the trainer owns (docs/api.md): ``progress``, ``metrics``, ``checkpoint``,
``worldSize``, ``evaluation``, ``lineage`` and ``tracking``. The operator owns ``phase`` and ``conditions``.

- ``LogReporter``: local runs (``sftctl run``) log one compact line.
- ``KubeStatusReporter``: in a pod, JSON-merge-patches ``sftjobs/<name>/status`` with the pod's
  per-job ServiceAccount token (its Role allows only get/patch on that one object's status).
  Reports go through a background thread: training never waits on, or crashes because of, the
  API server. A failed patch is kept, merged with newer reports and retried.
- ``make_reporter(env)`` picks one.
"""

from __future__ import annotations

import atexit
import copy
import logging
import os
import threading
import time
from typing import Any, Mapping, Protocol, runtime_checkable

from sft_api.contract import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

STATUS_FIELDS = frozenset({"progress", "metrics", "checkpoint", "worldSize", "evaluation", "lineage", "tracking"})
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@runtime_checkable
class ProgressReporter(Protocol):
    def report(self, patch: dict[str, Any]) -> None: ...

    def close(self, timeout: float = 5.0) -> None: ...


def _check_fields(patch: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(patch) - STATUS_FIELDS
    if unknown:
        raise ValueError(
            f"status fields {sorted(unknown)} are not the trainer's to write; "
            f"allowed: {sorted(STATUS_FIELDS)}"
        )
    return dict(patch)


def deep_merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``patch`` into a copy of ``base`` (JSON merge-patch semantics, without deletes)."""
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def format_line(patch: Mapping[str, Any]) -> str:
    """One compact human line: 'step 40/120 (33.3%) eta 12s | loss 1.234 lr 2.0e-03 ...'."""
    parts = []
    p = patch.get("progress") or {}
    if "step" in p:
        total = p.get("totalSteps")
        s = f"step {p['step']}/{total}" if total else f"step {p['step']}"
        if p.get("percent") is not None:
            s += f" ({p['percent']:.1f}%)"
        if p.get("etaSeconds") is not None:
            s += f" eta {int(p['etaSeconds'])}s"
        parts.append(s)
    m = patch.get("metrics") or {}
    fmt = {"trainLoss": ("loss", "{:.4f}"), "evalLoss": ("eval_loss", "{:.4f}"),
           "learningRate": ("lr", "{:.2e}"), "tokensPerSecond": ("tok/s", "{:.0f}")}
    ms = [f"{fmt[k][0]} {fmt[k][1].format(m[k])}" for k in fmt if m.get(k) is not None]
    if ms:
        parts.append(" ".join(ms))
    c = patch.get("checkpoint") or {}
    if c:
        parts.append(f"checkpoint {c.get('step')} -> {c.get('uri')}")
    if "worldSize" in patch:
        parts.append(f"world size {patch['worldSize']}")
    e = patch.get("evaluation") or {}
    if e:
        parts.append("evaluation " + " ".join(f"{k}={v}" for k, v in e.items()))
    return " | ".join(parts)


class LogReporter:
    """Local runs: the progress channel is the log."""

    def __init__(self, logger: logging.Logger | None = None):
        self.log = logger or logging.getLogger("sft_trainer.progress")
        self.last: dict[str, Any] = {}

    def report(self, patch: dict[str, Any]) -> None:
        patch = _check_fields(patch)
        self.last = deep_merge(self.last, patch)
        # the console already gets a line per logging step; log routine progress quietly
        level = logging.DEBUG if set(patch) <= {"progress", "metrics"} else logging.INFO
        self.log.log(level, "%s", format_line(patch))

    def close(self, timeout: float = 5.0) -> None:
        pass


class KubeStatusReporter:
    """Merge-patches ``status`` of one SFTJob from a background thread, retrying failures."""

    def __init__(
        self,
        name: str,
        namespace: str,
        api_client: Any = None,
        *,
        retry_seconds: float = 5.0,
        request_timeout: float = 10.0,
    ):
        from kubernetes import client

        if api_client is None:
            from kubernetes import config

            config.load_incluster_config()
            api_client = client.ApiClient()
        self.name, self.namespace = name, namespace
        self.api = client.CustomObjectsApi(api_client)
        self.retry_seconds = retry_seconds
        self.request_timeout = request_timeout
        self._pending: dict[str, Any] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._inflight: dict[str, Any] | None = None
        self.sent = 0
        self.failures = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="sft-status-reporter", daemon=True)
        self._thread.start()
        # the last reports (final progress, evaluation) must not die with the daemon thread
        atexit.register(self.close, 5.0)

    @classmethod
    def in_cluster(
        cls, name: str, namespace: str, *, sa_dir: str = SA_DIR,
        env: Mapping[str, str] | None = None, **kw: Any,
    ) -> "KubeStatusReporter":
        """The pod's identity: its ServiceAccount token (re-read as it rotates) and CA, and the
        API server from KUBERNETES_SERVICE_HOST/PORT."""
        from kubernetes import client
        from kubernetes.config.incluster_config import InClusterConfigLoader

        cfg = client.Configuration()
        InClusterConfigLoader(
            token_filename=f"{sa_dir}/token", cert_filename=f"{sa_dir}/ca.crt",
            try_refresh_token=True, environ=os.environ if env is None else env,
        ).load_and_set(cfg)
        return cls(name, namespace, client.ApiClient(cfg), **kw)

    @classmethod
    def from_token(
        cls, name: str, namespace: str, *, host: str, token: str, ca_file: str | None = None,
        verify_ssl: bool = True, **kw: Any,
    ) -> "KubeStatusReporter":
        """Build a reporter from an explicit API server and bearer token (tests, out-of-cluster)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = host
        # the full header value: kubernetes>=36 no longer applies api_key_prefix to "authorization"
        cfg.api_key = {"authorization": f"Bearer {token}"}
        cfg.ssl_ca_cert = ca_file
        cfg.verify_ssl = verify_ssl
        cfg.retries = 0  # the reporter retries on its own schedule
        return cls(name, namespace, client.ApiClient(cfg), **kw)

    def report(self, patch: dict[str, Any]) -> None:
        patch = _check_fields(patch)
        with self._cond:
            self._pending = deep_merge(self._pending, patch)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                body, self._pending = self._pending, {}
                self._inflight = body
            ok = self._send(body)
            with self._cond:
                self._inflight = None
                if not ok:
                    # newer reports win over the failed one
                    self._pending = deep_merge(body, self._pending)
                self._cond.notify_all()
                if not ok:
                    if self._closed:
                        return
                    # back off; new reports wait for the retry instead of hammering the server
                    deadline = time.monotonic() + self.retry_seconds
                    while not self._closed and (left := deadline - time.monotonic()) > 0:
                        self._cond.wait(left)

    def pending(self) -> dict[str, Any]:
        """What has been reported but not yet accepted by the API server."""
        with self._cond:
            return deep_merge(self._inflight or {}, self._pending)

    def _send(self, body: dict[str, Any]) -> bool:
        try:
            self.api.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, self.name, {"status": body},
                _content_type="application/merge-patch+json",
                _request_timeout=self.request_timeout,
            )
            self.sent += 1
            return True
        except Exception as e:  # noqa: BLE001 - a status report must never stop training
            self.failures += 1
            self.last_error = f"{type(e).__name__}: {getattr(e, 'status', '')} {getattr(e, 'reason', e)}"
            log.warning(
                "progress report to sftjobs/%s/status failed (%s); will retry",
                self.name, self.last_error,
            )
            return False

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything reported so far was sent; False if it is still pending."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._inflight is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Try to send what is pending, then stop the thread (never raises)."""
        if self._closed:
            return
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=1.0)
        atexit.unregister(self.close)


def make_reporter(env: Mapping[str, str] | None = None, sa_dir: str = SA_DIR) -> ProgressReporter:
    """KubeStatusReporter inside a pod of an SFTJob, LogReporter everywhere else."""
    env = os.environ if env is None else env
    name, ns = env.get("SFT_JOB_NAME"), env.get("SFT_JOB_NAMESPACE")
    in_cluster = bool(env.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(f"{sa_dir}/token")
    if name and ns and in_cluster:
        try:
            return KubeStatusReporter.in_cluster(name, ns, sa_dir=sa_dir, env=env)
        except Exception as e:  # noqa: BLE001 - fall back to the log rather than fail the run
            log.warning("cannot report progress to the API server (%s); logging it instead", e)
    return LogReporter()
