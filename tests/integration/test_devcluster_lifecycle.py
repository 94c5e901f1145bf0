"""`up` is idempotent, `status` tells the truth, `down` cleans up after a crash and frees the
ports, and the faults a user meets (port in use, stale state, no Go, a failing build) are named."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sft_dev import build
from sft_dev.cluster import ClusterError, DevCluster, Ports, _port_in_use, _proc_start_time
from sft_dev.tools import kubectl

REPO = Path(__file__).resolve().parents[2]


def _wait_dead(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _proc_start_time(pid) is not None:
        assert time.monotonic() < deadline, f"pid {pid} did not exit"
        time.sleep(0.05)


def _consecutive_free_ports(n: int = 6) -> int:
    for _ in range(200):
        base = random.randrange(20000, 60000)
        if not any(_port_in_use(base + i) for i in range(n)):
            return base
    raise AssertionError("no run of free ports found")


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sft_dev.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.cluster
def test_user_flow_idempotent_up_crash_and_down(tmp_path, devcluster_bin):
    state = tmp_path / "state"
    base = _consecutive_free_ports()
    ports = Ports(*(base + i for i in range(6)))
    c = DevCluster(state)
    log = io.StringIO()
    try:
        # What the README shows a new user: up, env, apply the quickstart, get sft.
        up = _cli("up", "--nodes", "1", "--gpus-per-node", "4", "--port-base", str(base), "--state-dir", str(state))
        assert up.returncode == 0, up.stderr
        assert f"https://127.0.0.1:{base}" in up.stdout and "export KUBECONFIG=" in up.stdout
        # The PATH it prints puts the pinned kubectl and helm first.
        path_line = next(ln for ln in up.stdout.splitlines() if "export PATH=" in ln)
        path = shlex.split(path_line.split("export PATH=", 1)[1].split("#")[0])[0].removesuffix(":$PATH")
        for tool, want in (("kubectl", "Client Version: v1.37"), ("helm", "v4.")):
            exe = shutil.which(tool, path=path)
            assert exe, f"{tool} not on the printed PATH {path}"
            out = subprocess.run([exe, "version", "--client"] if tool == "kubectl" else [exe, "version", "--short"],
                                 capture_output=True, text=True, timeout=30).stdout
            assert want in out, out
        env = _cli("env", "--state-dir", str(state))
        assert f"export KUBECONFIG={state.resolve() / 'kubeconfig'}" in env.stdout
        shell = (f'eval "$({sys.executable} -m sft_dev.cli env --state-dir {state})" && '
                 "helm version --short && "
                 f"kubectl apply --server-side -f {REPO / 'crds' / 'sftjob.yaml'} >/dev/null && "
                 "kubectl wait --for=condition=Established crd/sftjobs.sft.dev >/dev/null && "
                 f"kubectl apply -f {REPO / 'examples' / 'quickstart.yaml'} && kubectl get sft")
        flow = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
        assert flow.returncode == 0, flow.stderr
        assert "sftjob.sft.dev/quickstart created" in flow.stdout
        assert flow.stdout.startswith("v4."), flow.stdout  # helm, from the PATH that `env` printed
        assert flow.stdout.splitlines()[-2].split()[:3] == ["NAME", "PHASE", "STEP"]
        assert flow.stdout.splitlines()[-1].split()[0] == "quickstart"
        st = _cli("status", "--json", "--state-dir", str(state))
        assert st.returncode == 0 and all(x["running"] for x in json.loads(st.stdout)["components"])

        info = c.info()
        pids = dict(info.pids)
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
        # A second `up` keeps the same processes and does not trip over its own ports.
        again = c.up(nodes=1, gpus_per_node=4, log=log)
        assert again.pids == pids

        # A crash: etcd dies. status says so; `up` notices the stale state and restarts the set,
        # keeping etcd's data.
        os.kill(pids["etcd"], signal.SIGKILL)
        _wait_dead(pids["etcd"])
        st = {s.name: s.running for s in c.status()}
        assert st["etcd"] is False and st["kube-apiserver"] is True
        assert _cli("status", "--state-dir", str(state)).returncode == 1
        restarted = c.up(nodes=1, gpus_per_node=4, log=log)
        assert "stale state" in log.getvalue()
        assert restarted.pids["etcd"] != pids["etcd"]
        assert c.running()
        kc = subprocess.run([str(kubectl()), "--kubeconfig", str(info.kubeconfig), "get", "sft", "quickstart",
                             "-o", "name"], capture_output=True, text=True)
        assert kc.stdout.strip() == "sftjob.sft.dev/quickstart", kc.stderr

        # Another crash, and a pidfile lost (as when `up` is killed right after spawning kwok):
        # `down` alone must still stop everything and free every port.
        os.kill(restarted.pids["kube-scheduler"], signal.SIGKILL)
        _wait_dead(restarted.pids["kube-scheduler"])
        (c.pidsdir / "kwok.json").unlink()
        down = _cli("down", "--state-dir", str(state))
        assert down.returncode == 0, down.stderr
        for pid in restarted.pids.values():
            assert _proc_start_time(pid) is None
        for p in dataclasses.astuple(ports):
            assert not _port_in_use(p), f"port {p} still in use after down"
        assert not any(s.running for s in c.status())
    finally:
        c.down()


def test_port_in_use_is_named(tmp_path, devcluster_bin):
    ports = Ports.free()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", ports.apiserver))
    blocker.listen()
    try:
        with pytest.raises(ClusterError, match=rf"port {ports.apiserver} on 127.0.0.1 \(for kube-apiserver\) is already in use"):
            DevCluster(tmp_path / "state").up(nodes=0, ports=ports, log=io.StringIO())
    finally:
        blocker.close()
        DevCluster(tmp_path / "state").down()


def test_corrupt_etcd_data_is_named(tmp_path, devcluster_bin):
    state = tmp_path / "state"
    (state / "etcd" / "member" / "wal").mkdir(parents=True)
    (state / "etcd" / "member" / "snap").mkdir()
    (state / "etcd" / "member" / "snap" / "db").write_bytes(os.urandom(4096))
    c = DevCluster(state)
    try:
        with pytest.raises(ClusterError) as e:
            c.up(nodes=0, ports=Ports.free(), log=io.StringIO())
        msg = str(e.value)
        assert "etcd exited" in msg and "looks stale or corrupt" in msg and "down --purge" in msg
        assert "failed to open database" in msg
    finally:
        c.down()
    c.down(purge=True)
    assert not state.exists()


def test_cli_status_reports_a_missing_cluster(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sft_dev.cli", "status", "--state-dir",
                        str(tmp_path / "none")], capture_output=True, text=True)
    assert p.returncode == 1
    assert "no dev cluster in" in p.stdout


def test_missing_go_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("SFT_GO", raising=False)
    monkeypatch.setattr(build, "GO_FALLBACKS", ())
    with pytest.raises(build.BuildError, match="Go toolchain not found.*Put `go` on PATH"):
        build.find_go()
    monkeypatch.setenv("SFT_GO", str(tmp_path / "no-go-here"))
    with pytest.raises(build.BuildError, match="SFT_GO=.*no-go-here is not an executable"):
        build.find_go()


def test_old_go_is_named(monkeypatch, tmp_path):
    fake = tmp_path / "go"
    fake.write_text("#!/bin/sh\necho go1.20.1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("SFT_GO", str(fake))
    with pytest.raises(build.BuildError, match=r"is go1\.20\.1, but Kubernetes .* need Go >= 1\.26\.0"):
        build.find_go()


def test_build_failure_names_the_step_and_shows_the_error(monkeypatch, tmp_path):
    fake = tmp_path / "go"
    fake.write_text('#!/bin/sh\nif [ "$1" = env ]; then echo go1.26.8; exit 0; fi\n'
                    'echo "go: module lookup disabled by GOPROXY=off" >&2; exit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("SFT_GO", str(fake))
    monkeypatch.setenv("SFT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(build.BuildError) as e:
        build.ensure_binaries(log=io.StringIO())
    msg = str(e.value)
    assert "go mod init failed" in msg and "module lookup disabled" in msg
    assert not (tmp_path / "cache" / build.version_dir().name / "bin").exists()


def test_build_module_reuses_the_cache_in_seconds(devcluster_bin):
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "sft_dev.build"], capture_output=True, text=True)
    took = time.monotonic() - t
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(build.bin_dir())
    assert took < 10
    stamp = json.loads((build.bin_dir() / "stamp.json").read_text())
    assert stamp["k8s"] == build.K8S_VERSION and stamp["etcd"] == build.ETCD_VERSION


def test_unreachable_checksum_database_falls_back_to_gosumdb_off(tmp_path):
    script = 'if [ "$GOSUMDB" = off ]; then echo resolved; else echo "verifying module: Get https://sum.golang.org/lookup: dial tcp: i/o timeout" >&2; exit 1; fi'
    log = io.StringIO()
    out = build._run_go(["sh", "-c", script], tmp_path, dict(os.environ, GOSUMDB="sum.golang.org"), "go get", log)
    assert out.strip() == "resolved"
    assert "checksum database is unreachable" in log.getvalue()
    # Any other failure is reported, not retried.
    with pytest.raises(build.BuildError, match=r"go get failed \(exit 3\)"):
        build._run_go(["sh", "-c", "echo boom >&2; exit 3"], tmp_path, dict(os.environ), "go get", io.StringIO())
