"""Shared parts of the real-node e2e modules: the private cluster with only the real node, its S3,
the chart-installed operator, and the check that a module leaves the host as it found it.

Each module that imports `real_cluster` brings up its own cluster (module scope): the real node is
one per machine, so modules take turns. Like test_e2e_realnode.py, it needs root, the real node's
binaries and both images (scripts/test.sh builds them first).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sft-operator"


def require_built(network_policy: bool = False) -> None:
    """The node's binaries and both images must be built; an image from older sources only warns."""
    import warnings

    from sft_dev import images, realnode_build

    if os.environ.get("SFT_TEST_BUILD"):
        realnode_build.ensure_binaries(kube_router=network_policy)
        images.build()
    missing = []
    if not realnode_build.binaries_ready():
        missing.append(f"the real node's binaries ({realnode_build.bin_dir()}): "
                       "`sftctl dev-cluster build --real-node`")
    if network_policy and not realnode_build.kube_router_ready():
        missing.append(f"kube-router ({realnode_build.kube_router_bin()}): `sftctl dev-cluster build --real-node`")
    for name, spec in images.IMAGES.items():
        if not list(images.images_dir().glob(f"{name}-*.json")):
            missing.append(f"the {spec.ref} image: `sftctl images build`")
        elif not images.is_current(name):
            warnings.warn(f"{spec.ref} was built from older sources; `sftctl images build` rebuilds it")
    if missing:
        pytest.fail("not built: " + "; ".join(missing) + " (or set SFT_TEST_BUILD=1)", pytrace=False)


class Real:
    """The private cluster with the real node, its S3 and clients (kubectl, helm)."""

    def __init__(self, info, s3, s3_port: int, tmp: Path, namespace: str):
        from sft_dev.tools import helm, kubectl

        self.info, self.s3, self.s3_port, self.tmp, self.ns = info, s3, s3_port, tmp, namespace
        self.env = dict(os.environ, KUBECONFIG=str(info.kubeconfig), HELM_CACHE_HOME=str(tmp / "helm" / "cache"),
                        HELM_CONFIG_HOME=str(tmp / "helm" / "config"), HELM_DATA_HOME=str(tmp / "helm" / "data"))
        self.kubectl_exe, self.helm_exe = str(kubectl()), str(helm(4))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120):
        p = subprocess.run([self.kubectl_exe, *args], input=input, capture_output=True, text=True, env=self.env,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def helm(self, *args: str):
        p = subprocess.run([self.helm_exe, *args], capture_output=True, text=True, env=self.env, timeout=300)
        if p.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def wait(self, what: str, check, timeout: float, diag=None, every: float = 2.0):
        """Poll `check` until it returns something truthy (returned); else fail with `what` and diag."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            time.sleep(every)
        raise AssertionError(f"{what} within {timeout:.0f}s\n{(diag or self.diag)()}")

    def diag(self) -> str:
        """What a failing wait shows: pods, events, the operator's and the kubelet's last lines."""
        ns = self.ns
        out = [self.kubectl("get", "pods,jobs,sftjobs", "-n", ns, "-o", "wide", check=False).stdout,
               self.kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False).stdout[-3000:],
               self.kubectl("logs", "-n", ns, "-l", "app.kubernetes.io/name=sft-operator", "--tail=30",
                            check=False).stdout]
        log = self.info.state_dir / "logs" / "kubelet.log"
        if log.exists():
            out.append("kubelet: " + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)

    def install_operator(self, release: str = "sft", *extra: str) -> dict:
        """helm install the chart with the built images (never pulled); wait for the operator pod."""
        self.helm("install", release, str(CHART), "-n", self.ns, "--wait=false",
                  "--set", "operator.image.repository=sft-operator/operator", "--set", "operator.image.tag=dev",
                  "--set", "operator.image.pullPolicy=Never",
                  "--set", "trainer.image.repository=sft-operator/trainer", "--set", "trainer.image.tag=dev",
                  "--set", "trainer.image.pullPolicy=Never", "--set", "operator.resyncSeconds=5", *extra)

        def ready():
            pods = self.get("pods", "-n", self.ns, "-l", "app.kubernetes.io/name=sft-operator")["items"]
            return pods[0] if len(pods) == 1 and any(
                c["type"] == "Ready" and c["status"] == "True" for c in pods[0]["status"].get("conditions", [])) else None

        return self.wait("the operator pod did not become Ready", ready, 300)

    def s3_secret(self, name: str = "s3-creds") -> str:
        self.kubectl("create", "secret", "generic", name, "-n", self.ns,
                     f"--from-literal=AWS_ACCESS_KEY_ID={self.s3.access_key}",
                     f"--from-literal=AWS_SECRET_ACCESS_KEY={self.s3.secret_key}")
        return name


# ------------------------------------------------------------------------------------------ host state


@dataclass(frozen=True)
class HostState:
    """What a real-node module may change on the host, and must put back. Only the kinds of things
    the real node makes (veths and the bridge, CNI network namespaces, mounts of its directories,
    kubelet's cgroups, processes started from here or naming its paths): others share this machine.
    iptables and ipsets are compared whole (without counters): nothing else on the machine changes
    them, and kube-router's firewall (`network_policy`) must leave none of its own."""

    links: frozenset[str]
    mounts: frozenset[str]
    netns: frozenset[str]
    kubepods_cgroups: frozenset[str]
    processes: frozenset[int]
    iptables: tuple[str, ...] = ()
    ipsets: tuple[str, ...] = ()
    bridge_nf_call_iptables: str = ""

    @classmethod
    def now(cls, *paths: Path) -> "HostState":
        from sft_dev import realnode

        out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.count(":") >= 2}
        links = frozenset(n for n in names if n == realnode.BRIDGE or n.startswith("veth"))
        roots = [str(p) for p in (*paths, realnode.RUN_DIR, realnode.containerd_root(), Path("/run/netns"),
                                  Path("/var/run/netns"))]
        mounts = frozenset(m for m in (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())
                           if any(m == r or m.startswith(r + "/") for r in roots))
        netns_dir = Path("/run/netns")
        netns = frozenset(p.name for p in netns_dir.iterdir()) if netns_dir.is_dir() else frozenset()
        cgroups = frozenset(str(h / "kubepods") for h in Path("/sys/fs/cgroup").iterdir() if (h / "kubepods").exists())
        needles = [str(p) for p in (*paths, realnode.RUN_DIR)]
        procs = _descendants(os.getpid()) | {pid for pid, cmd in _cmdlines().items() if any(n in cmd for n in needles)}
        procs.discard(os.getpid())
        return cls(links, mounts, netns, cgroups, frozenset(procs), iptables_rules(), ipset_lines(),
                   _read(realnode.BRIDGE_NF_SYSCTL))

    def left_behind(self, before: "HostState") -> list[str]:
        out = []
        for what in ("links", "mounts", "netns", "kubepods_cgroups"):
            extra = sorted(getattr(self, what) - getattr(before, what))
            if extra:
                out.append(f"{what}: {extra[:8]}")
        for what in ("iptables", "ipsets"):
            now, was = getattr(self, what), getattr(before, what)
            if now != was:
                out.append(f"{what} changed: added {sorted(set(now) - set(was))[:8]}, "
                           f"removed {sorted(set(was) - set(now))[:8]}")
        if self.bridge_nf_call_iptables != before.bridge_nf_call_iptables:
            out.append(f"net.bridge.bridge-nf-call-iptables {before.bridge_nf_call_iptables!r} -> "
                       f"{self.bridge_nf_call_iptables!r}")
        procs = sorted(self.processes - before.processes)
        if procs:
            out.append("processes: " + ", ".join(f"{p} {_cmdline(p)[:100]}" for p in procs[:8]))
        return out


def iptables_rules() -> tuple[str, ...]:
    """`iptables-save` of every table, in order, without its comment lines and packet counters."""
    p = subprocess.run(["iptables-save"], capture_output=True, text=True) if shutil.which("iptables-save") else None
    if p is None or p.returncode != 0:
        return ()
    return tuple(re.sub(r"\[\d+:\d+\]", "[0:0]", ln) for ln in p.stdout.splitlines() if not ln.startswith("#"))


def ipset_lines() -> tuple[str, ...]:
    """`ipset save`: every set and its members (no counters)."""
    p = subprocess.run(["ipset", "save"], capture_output=True, text=True) if shutil.which("ipset") else None
    return tuple(p.stdout.splitlines()) if p is not None and p.returncode == 0 else ()


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _cmdlines() -> dict[int, str]:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            out[int(d.name)] = _cmdline(int(d.name))
    return out


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "(gone)"


def assert_host_clean(before: HostState, *paths: Path) -> None:
    from sft_dev import realnode

    assert subprocess.run(["ip", "link", "show", realnode.BRIDGE], capture_output=True).returncode != 0, \
        f"bridge {realnode.BRIDGE} left behind"
    assert not realnode.shim_pids(), "containerd shims left running"
    assert not realnode.mounts_under(realnode.RUN_DIR), "mounts left under /run/sft-realnode"
    # Processes may take a moment to be reaped after their parent's SIGKILL.
    deadline = time.monotonic() + 10
    while (left := HostState.now(*paths).left_behind(before)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, "the host is not as it was: " + "; ".join(left)


@contextlib.contextmanager
def real_cluster(tmp: Path, namespace: str, buckets: list[str], network_policy: bool = False):
    """A dev cluster with only the real node, SeaweedFS reachable from pods at NODE_IP, and a
    restricted-PSS namespace; on exit everything is stopped and the host checked.
    `network_policy`: kube-router enforces NetworkPolicies on the node (`up --network-policy`)."""
    from sft_dev.cluster import ClusterError, DevCluster, Ports
    from sft_dev.realnode import RealNodeError, expose
    from sft_dev.s3 import start_s3

    require_built(network_policy)
    before = HostState.now(tmp)
    cluster = DevCluster(tmp / "cluster")
    t = time.monotonic()
    try:
        info = cluster.up(nodes=0, ports=Ports.free(), real_node=True, network_policy=network_policy)
    except (ClusterError, RealNodeError) as e:
        cluster.down()
        pytest.fail(f"the dev cluster with a real node did not start: {e}", pytrace=False)
    except BaseException:  # anything else (an image archive replaced meanwhile): never leave the node running
        cluster.down()
        raise
    print(f"dev cluster with the real node up in {time.monotonic() - t:.0f}s")
    s3 = fwd = None
    try:
        s3 = start_s3(tmp / "s3", buckets=buckets)
        port = int(s3.endpoint.rsplit(":", 1)[1])
        fwd = expose(tmp, "s3", port)
        r = Real(info, s3, port, tmp, namespace)
        r.kubectl("create", "namespace", namespace)
        r.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                  "pod-security.kubernetes.io/enforce-version=latest")
        yield r
    finally:
        if fwd is not None:
            fwd.kill()
            fwd.wait(10)
        if s3 is not None:
            s3.stop()
        cluster.down()
        assert_host_clean(before, tmp)


def tiny_data(n: int = 120, seed: int = 0) -> bytes:
    """Uppercase-task chat rows in the `messages` format (small: a test trains a few steps)."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        w = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
        rows.append(json.dumps({"messages": [{"role": "user", "content": f"upper: {w}"},
                                             {"role": "assistant", "content": w.upper()}]}))
    return ("\n".join(rows) + "\n").encode()
