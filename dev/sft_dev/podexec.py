"""Pod-spec execution for the dev cluster: a small stand-in for the kubelet on kwok nodes.

kwok simulates pods; it runs nothing. ``PodExecutor`` runs the gang pods of SFTJobs for real: for
every attempt whose pods are all Running it starts each pod's trainer command as a local process
with the pod's env (from the objects on the apiserver: the Job's template, the attempt's ConfigMap,
the user's Secret, the per-job trainer ServiceAccount token at its in-cluster path), in a private
mount namespace (the SA token, the config at /run/sft, an /etc/hosts that maps the rank-0 name to
127.0.0.1) and with a private scratch directory as TMPDIR and HOME (the pod's emptyDir).

It then plays the kubelet's part in both directions:
- a process that exits sets its pod's outcome through kwok (exit 0 -> Succeeded, else Failed
  with the exit code; a signal N reads as 128+N, as a container's would);
- a pod that is deleted, turns terminal or loses its node has its processes SIGKILLed at once
  (kwok marks a deleted pod terminal without a grace period, so its processes must not outlive it).

All pods share 127.0.0.1 instead of one network namespace each: MASTER_PORT (one per attempt) and
SFT_METRICS_PORT (one per process) are replaced by free ports; nothing else of the env changes.
See tests/e2e/test_e2e_podspec_exec.py for the same mapping on one attempt.
"""

from __future__ import annotations

import base64
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kubernetes import client

from sft_dev.pods import PodDriver

SA_PATH = "/run/secrets/kubernetes.io/serviceaccount"  # /var/run is a link to /run
LIVE_PHASES = ("Pending", "Running")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    """One pod's trainer process."""

    pod: str
    rank: int
    node: str
    popen: subprocess.Popen
    log: Path
    scratch: Path
    started: float
    rc: int | None = None  # the container's exit code once it exited
    reported: bool = False  # the outcome was written to the pod
    killed_by_teardown: bool = False
    ended_at: float | None = None  # when this executor first saw it exited

    def alive(self) -> bool:
        return self.popen.poll() is None

    def exit_code(self) -> int | None:
        rc = self.popen.poll()
        if rc is None:
            return None
        return 128 - rc if rc < 0 else rc


@dataclass
class Attempt:
    job: str
    attempt: int
    launched_at: float
    procs: list[Proc] = field(default_factory=list)

    def alive(self) -> bool:
        return any(p.alive() for p in self.procs)

    def ended_at(self) -> float | None:
        """When the first of its processes was seen to exit (the end of the gang)."""
        ends = [p.ended_at for p in self.procs if p.ended_at is not None]
        return min(ends) if ends else None


def resolve_env(container, pod_name: str, rank: int, node: str, secret: dict[str, str]) -> dict[str, str]:
    """The container's env as the kubelet would inject it (value, Secret envFrom, fieldRefs)."""
    env: dict[str, str] = {}
    for src in container.env_from or []:
        if src.secret_ref:
            env.update(secret)
    for e in container.env or []:
        if e.value is not None:
            env[e.name] = e.value
        elif e.value_from and e.value_from.field_ref:
            path = e.value_from.field_ref.field_path
            if "job-completion-index" in path:
                env[e.name] = str(rank)
            elif path == "metadata.name":
                env[e.name] = pod_name
            elif path == "spec.nodeName":
                env[e.name] = node
            else:
                raise ValueError(f"env {e.name}: fieldRef {path} is not modelled")
        else:
            raise ValueError(f"env {e.name} has a source that pod-spec execution does not model")
    return env


class PodExecutor(threading.Thread):
    """Runs the gang pods of every SFTJob in ``namespace`` as local processes (see the module doc)."""

    def __init__(self, api: client.ApiClient, namespace: str, ca_file: Path, api_port: str, work_dir: Path,
                 repo: Path, extra_env: dict[str, str] | None = None, poll: float = 0.3,
                 on_poll: Callable[[list | None, set[str] | None], None] | None = None):
        super().__init__(daemon=True, name="pod-executor")
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.driver = PodDriver(api)
        self.ns, self.ca_file, self.api_port = namespace, Path(ca_file), api_port
        self.work_dir, self.repo = Path(work_dir), Path(repo)
        self.extra_env = dict(extra_env or {})
        self.poll, self.on_poll = poll, on_poll
        self.attempts: dict[tuple[str, int], Attempt] = {}
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self._tokens: dict[str, tuple[float, str]] = {}

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stop_event.is_set():
            pods = nodes = None
            try:
                pods, nodes = self.step()
            except Exception as e:  # the apiserver may be down for a moment: try again next poll
                self.errors.append(f"{time.strftime('%H:%M:%S')} {type(e).__name__}: {str(e)[:200]}")
            if self.on_poll:  # also when the apiserver is down: the caller reads the logs
                try:
                    self.on_poll(pods, nodes)
                except Exception as e:
                    self.errors.append(f"{time.strftime('%H:%M:%S')} on_poll: {type(e).__name__}: {str(e)[:200]}")
            self.stop_event.wait(self.poll)

    def step(self) -> tuple[list, set[str]]:
        with self.lock:  # before any API call: the apiserver may be down, the clock must not be
            for a in self.attempts.values():
                for pr in a.procs:
                    if pr.ended_at is None and pr.popen.poll() is not None:
                        pr.ended_at = time.time()
        pods = self.core.list_namespaced_pod(self.ns, label_selector="sft.dev/component!=preflight",
                                             _request_timeout=5).items
        nodes = {n.metadata.name for n in self.core.list_node(_request_timeout=5).items}
        with self.lock:
            self._tear_down(pods, nodes)
            self._report_exits(pods)
            self._launch(pods)
        return pods, nodes

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)
        with self.lock:
            for a in self.attempts.values():
                for p in a.procs:
                    if p.alive():
                        _kill_container(p.popen.pid)
                        p.popen.wait(10)

    # -- kubelet duties ------------------------------------------------------------------------
    def _tear_down(self, pods: list, nodes: set[str]) -> None:
        by_name = {p.metadata.name: p for p in pods}
        for a in self.attempts.values():
            for pr in a.procs:
                pod = by_name.get(pr.pod)
                gone = (pod is None or pod.metadata.deletion_timestamp is not None
                        or pod.status.phase not in LIVE_PHASES or pr.node not in nodes)
                if gone and pr.alive():
                    pr.killed_by_teardown = True
                    self.kill(pr, signal.SIGKILL)

    def _report_exits(self, pods: list) -> None:
        by_name = {p.metadata.name: p for p in pods}
        for a in self.attempts.values():
            for pr in a.procs:
                code = pr.exit_code()
                if code is None or pr.reported:
                    continue
                pr.rc = code
                pod = by_name.get(pr.pod)
                if pod is None or pod.status.phase != "Running" or pod.metadata.deletion_timestamp:
                    pr.reported = True  # nothing left to report to
                    continue
                msg = _tail(pr.log, 3)[-900:] or None
                if code == 0:
                    self.driver.succeed(self.ns, pr.pod, wait=False, message=msg)
                else:
                    self.driver.fail(self.ns, pr.pod, exit_code=code, wait=False, message=msg)
                pr.reported = True

    def _launch(self, pods: list) -> None:
        groups: dict[tuple[str, int], list] = {}
        for p in pods:
            if p.status.phase == "Running" and not p.metadata.deletion_timestamp:
                key = (p.metadata.labels["sft.dev/job-name"], int(p.metadata.labels["sft.dev/attempt"]))
                groups.setdefault(key, []).append(p)
        for key, members in groups.items():
            if key in self.attempts:
                continue
            job = self._gang_job(key)
            if job is None or len(members) < int(job.spec.completions or 1):
                continue  # the whole gang first, as the trainers would block in rendezvous anyway
            self.attempts[key] = self._start_attempt(key, job, members)

    def _gang_job(self, key: tuple[str, int]):
        jobs = self.batch.list_namespaced_job(
            self.ns, label_selector=f"sft.dev/job-name={key[0]},sft.dev/attempt={key[1]},sft.dev/component!=preflight",
            _request_timeout=5).items
        return jobs[0] if jobs else None

    # -- starting processes ----------------------------------------------------------------------
    def _start_attempt(self, key: tuple[str, int], job, pods: list) -> Attempt:
        tmpl = job.spec.template.spec
        container = tmpl.containers[0]
        base = self.work_dir / f"{key[0]}-a{key[1]}"
        config_dir = base / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        cm_name = next(v.config_map.name for v in tmpl.volumes if v.name == "config")
        for k, text in self.core.read_namespaced_config_map(cm_name, self.ns).data.items():
            (config_dir / k).write_text(text)
        secret = self._secret(container)
        sa_dir = base / "sa"
        sa_dir.mkdir(exist_ok=True)
        (sa_dir / "token").write_text(self._token(tmpl.service_account_name))
        (sa_dir / "ca.crt").write_text(self.ca_file.read_text())
        (sa_dir / "namespace").write_text(self.ns)
        mount = next(m.mount_path for m in container.volume_mounts if m.name == "config")
        master_port = str(free_port())
        att = Attempt(key[0], key[1], time.time())
        order = sorted(pods, key=lambda p: int(p.metadata.annotations.get("batch.kubernetes.io/job-completion-index", "0")))
        for rank, pod in enumerate(order):
            env = resolve_env(container, pod.metadata.name, rank, pod.spec.node_name, secret)
            env.update(MASTER_PORT=master_port, SFT_METRICS_PORT=str(free_port()))
            att.procs.append(self._spawn(base, rank, pod, container, env, mount, config_dir, sa_dir))
        return att

    def _spawn(self, base: Path, rank: int, pod, container, env: dict, mount: str, config_dir: Path,
               sa_dir: Path) -> Proc:
        hosts = base / f"hosts-{rank}"
        hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 {env.get('MASTER_ADDR', 'localhost')}\n")
        scratch = base / f"scratch-{rank}"  # the pod's own /tmp (an emptyDir)
        scratch.mkdir(exist_ok=True)

        def remap(v: str) -> str:  # the ConfigMap volume lives at /run/sft inside the namespace
            return f"/run/sft/{Path(v).name}" if isinstance(v, str) and v.startswith(mount + "/") else v

        argv = [sys.executable if a == "python" else remap(a) for a in container.command]
        env = {k: remap(v) for k, v in env.items()}
        full_env = {"PATH": os.environ["PATH"], "HOME": str(scratch), "TMPDIR": str(scratch),
                    "PYTHONUNBUFFERED": "1", "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                    "KUBERNETES_SERVICE_PORT": self.api_port, **self.extra_env, **env}
        script = (f"mount -t tmpfs none /run && mkdir -p {SA_PATH} /run/sft && cp {sa_dir}/* {SA_PATH}/ && "
                  f"cp {config_dir}/* /run/sft/ && mount --bind {hosts} /etc/hosts && exec {shlex.join(argv)}")
        log = base / f"rank{rank}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(["unshare", "-m", "sh", "-c", script], cwd=self.repo / "examples", env=full_env,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return Proc(pod.metadata.name, rank, pod.spec.node_name, popen, log, scratch, time.time())

    def _secret(self, container) -> dict[str, str]:
        out: dict[str, str] = {}
        for src in container.env_from or []:
            if src.secret_ref:
                data = self.core.read_namespaced_secret(src.secret_ref.name, self.ns).data or {}
                out.update({k: base64.b64decode(v).decode() for k, v in data.items()})
        return out

    def _token(self, service_account: str) -> str:
        cached = self._tokens.get(service_account)
        if cached and cached[0] > time.time() + 600:
            return cached[1]
        tok = self.core.create_namespaced_service_account_token(
            service_account, self.ns, {"spec": {"audiences": [], "expirationSeconds": 3600}}).status.token
        self._tokens[service_account] = (time.time() + 3600, tok)
        return tok

    # -- helpers for fault injection -------------------------------------------------------------
    def kill(self, proc: Proc, sig: int) -> None:
        """Signal the container's main process (the kubelet's view: the pod's PID 1)."""
        try:
            if sig == signal.SIGKILL:
                _kill_container(proc.popen.pid)  # the whole container: torchrun and its workers
            else:
                os.kill(proc.popen.pid, sig)
        except ProcessLookupError:
            pass

    def live_attempts(self) -> list[Attempt]:
        with self.lock:
            return [a for a in self.attempts.values() if a.alive()]


def _kill_container(pid: int) -> None:
    """SIGKILL a pod's main process, its process group and every descendant, as a kubelet's container
    kill takes its whole cgroup: torch's elastic agent starts its workers in their own sessions, so
    the group alone would leave them training on beside the next attempt."""
    import psutil

    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for child in procs:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def _tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
