"""Experiment-tracking servers and readers for tests: a real MLflow tracking server on 127.0.0.1, and
TensorBoard's own event-file reader.

Both come from PyPI into one tool venv of their own, cached under ``~/.cache/sft-operator/`` and keyed by
the pinned versions, so that MLflow's many dependencies never touch the project's pinned venv (the
trainer itself logs through MLflow's REST API and writes event files without either package).

The server starts child processes (uvicorn workers, a job runner, huey consumers): it runs in its own
session, and ``stop_mlflow`` ends the whole process group, then any child that left it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from sft_dev.build import cache_root

MLFLOW_VERSION = "3.17.2"
TENSORBOARD_VERSION = "2.21.0"
HOST = "127.0.0.1"


class TrackingToolError(RuntimeError):
    """The tool venv could not be built or the server did not start; the message names the cause."""


def tool_venv_dir() -> Path:
    return cache_root() / f"venv-tracking-mlflow-{MLFLOW_VERSION}-tensorboard-{TENSORBOARD_VERSION}"


def tool_venv(log=sys.stderr) -> Path:
    """The tool venv's python (MLflow and TensorBoard, pinned), built once."""
    from sft_dev.tools import pinned_venv

    return pinned_venv(tool_venv_dir(), {"mlflow": MLFLOW_VERSION, "tensorboard": TENSORBOARD_VERSION},
                       "tracking tool", TrackingToolError, log)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class MlflowInfo:
    url: str
    state_dir: Path
    pid: int
    log: Path
    _proc: subprocess.Popen | None = dataclasses.field(default=None, repr=False)

    def api(self, method: str, path: str, body: dict | None = None, query: str = "") -> dict:
        """One call of MLflow's REST API (``/api/2.0/mlflow/<path>``), for tests to read back."""
        url = f"{self.url}/api/2.0/mlflow/{path}" + (f"?{query}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")

    def stop(self) -> None:
        stop_mlflow(self)


def start_mlflow(state_dir: Path | str, port: int | None = None, timeout: float = 180.0) -> MlflowInfo:
    """``mlflow server`` with a SQLite backend and a local artifact root, ready when /health answers."""
    py = tool_venv()
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    log = state_dir / "mlflow.log"
    cmd = [str(py.parent / "mlflow"), "server", "--host", HOST, "--port", str(port),
           "--backend-store-uri", f"sqlite:///{state_dir / 'mlflow.db'}",
           "--default-artifact-root", str(state_dir / "artifacts"), "--workers", "1"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=state_dir)
    info = MlflowInfo(url=f"http://{HOST}:{port}", state_dir=state_dir, pid=proc.pid, log=log, _proc=proc)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise TrackingToolError(f"mlflow server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{info.url}/health", timeout=2) as r:
                if r.status == 200:
                    return info
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_mlflow(info)
            raise TrackingToolError(f"mlflow server on {info.url} not ready after {timeout:.0f}s: "
                                    f"{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _descendants(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - psutil missing or the process is gone
        return []


def stop_mlflow(info: MlflowInfo, grace: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL what is left (children that left the group too)."""
    kids = _descendants(info.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(info.pid, sig)
        except ProcessLookupError:
            pass
        for pid in kids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if info._proc is not None:
                info._proc.poll()
            alive = [p for p in [info.pid, *kids] if _alive(p)]
            if not alive:
                return
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


_READ_EVENTS = """
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
"""


def read_tensorboard_scalars(logdir: Path | str) -> dict[str, list[list[float]]]:
    """``{tag: [[step, value], ...]}`` as TensorBoard's own EventAccumulator reads ``logdir``."""
    p = subprocess.run([str(tool_venv()), "-c", _READ_EVENTS, str(logdir)], capture_output=True, text=True,
                       timeout=300)
    if p.returncode != 0:
        raise TrackingToolError(f"reading TensorBoard events in {logdir} failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])
