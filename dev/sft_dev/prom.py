"""A real Prometheus for tests (Debian's 2.42 package) scraping given 127.0.0.1 targets every second."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from sft_dev.tools import prometheus

HOST = "127.0.0.1"


class PromError(RuntimeError):
    """Prometheus could not start or reload; the message names the cause."""


@dataclasses.dataclass
class PromInfo:
    url: str
    state_dir: Path
    config_file: Path
    pid: int
    _proc: subprocess.Popen = dataclasses.field(repr=False)
    _jobs: dict[str, dict] = dataclasses.field(default_factory=dict, repr=False)
    rule_files: list[str] = dataclasses.field(default_factory=list)

    # -- config ------------------------------------------------------------------------------
    def add_targets(self, targets: list[str], job: str = "targets", labels: dict[str, str] | None = None,
                    metrics_path: str = "/metrics") -> None:
        """Scrape more `host:port` targets (under `job`), then reload and wait until they are seen."""
        j = self._jobs.setdefault(job, {"job_name": job, "metrics_path": metrics_path, "static_configs": []})
        j["static_configs"].append({"targets": list(targets), "labels": dict(labels or {})})
        self._write_config()
        self.reload()
        self.wait_for_targets(targets)

    def set_rule_files(self, paths: list[str | Path]) -> None:
        self.rule_files = [str(p) for p in paths]
        self._write_config()
        self.reload()

    def _write_config(self) -> None:
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
               "scrape_configs": list(self._jobs.values())}
        if self.rule_files:
            cfg["rule_files"] = self.rule_files
        self.config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def reload(self) -> None:
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        try:
            urllib.request.urlopen(req, timeout=10).read()
        except Exception as e:
            raise PromError(f"reloading Prometheus failed ({e}); config {self.config_file}, "
                            f"log {self.state_dir / 'prometheus.log'}:\n{_tail(self.state_dir / 'prometheus.log')}")

    # -- queries -----------------------------------------------------------------------------
    def _api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            out = json.loads(r.read())
        if out.get("status") != "success":
            raise PromError(f"Prometheus {path} failed: {out}")
        return out["data"]

    def query(self, promql: str) -> list[dict]:
        """Instant query; returns the `result` list."""
        return self._api("query", query=promql)["result"]

    def targets(self) -> list[dict]:
        return self._api("targets")["activeTargets"]

    def wait_for_targets(self, targets: list[str], timeout: float = 30.0) -> None:
        """Until every target has been scraped successfully at least once."""
        want = set(targets)
        deadline = time.monotonic() + timeout
        while True:
            up = {t["labels"].get("instance") for t in self.targets() if t.get("health") == "up"}
            if want <= up:
                return
            if time.monotonic() > deadline:
                states = {t["labels"].get("instance"): (t.get("health"), t.get("lastError")) for t in self.targets()}
                raise PromError(f"targets {sorted(want - up)} were not scraped within {timeout:.0f}s: {states}")
            time.sleep(0.3)

    def wait_for(self, promql: str, timeout: float = 30.0) -> list[dict]:
        """Until `promql` returns a non-empty result; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            res = self.query(promql)
            if res:
                return res
            if time.monotonic() > deadline:
                raise PromError(f"query {promql!r} returned nothing within {timeout:.0f}s")
            time.sleep(0.5)

    def stop(self) -> None:
        stop_prometheus(self)


def _free_port() -> int:
    s = socket.socket()
    s.bind((HOST, 0))
    try:
        return s.getsockname()[1]
    finally:
        s.close()


def start_prometheus(targets: list[str] = (), state_dir: Path | str | None = None, port: int | None = None,
                     job: str = "targets", timeout: float = 30.0) -> PromInfo:
    """Start Prometheus on 127.0.0.1 scraping `targets` (host:port) every second."""
    import tempfile

    state_dir = Path(state_dir or tempfile.mkdtemp(prefix="sft-prom-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    cfg_file = state_dir / "prometheus.yml"
    info = PromInfo(url=f"http://{HOST}:{port}", state_dir=state_dir, config_file=cfg_file, pid=0, _proc=None)
    if targets:
        info._jobs[job] = {"job_name": job, "metrics_path": "/metrics",
                           "static_configs": [{"targets": list(targets), "labels": {}}]}
    info._write_config()
    argv = [str(prometheus()), f"--config.file={cfg_file}", f"--storage.tsdb.path={state_dir / 'data'}",
            f"--web.listen-address={HOST}:{port}", "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d", "--log.level=warn"]
    log = open(state_dir / "prometheus.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    info._proc, info.pid = proc, proc.pid
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise PromError(f"prometheus exited with code {proc.returncode} while starting; "
                            f"log {state_dir / 'prometheus.log'}:\n{_tail(state_dir / 'prometheus.log')}")
        try:
            if urllib.request.urlopen(f"{info.url}/-/ready", timeout=2).status == 200:
                break
        except Exception:
            pass
        if time.monotonic() > deadline:
            stop_prometheus(info)
            raise PromError(f"prometheus on {info.url} not ready within {timeout:.0f}s; "
                            f"log {state_dir / 'prometheus.log'}:\n{_tail(state_dir / 'prometheus.log')}")
        time.sleep(0.2)
    if targets:
        info.wait_for_targets(list(targets))
    return info


def stop_prometheus(info: PromInfo) -> None:
    if info._proc is None or info._proc.poll() is not None:
        return
    info._proc.terminate()
    try:
        info._proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        info._proc.kill()
        info._proc.wait(timeout=5)


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
