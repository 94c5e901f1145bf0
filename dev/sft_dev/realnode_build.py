"""Build the real node's binaries: containerd, runc, kubelet and a pause binary, from the Go module
proxy, into a cache directory keyed by their versions (like sft_dev.build for the control plane).

- containerd v2.4.2 has no replace directives: `go install pkg@version`, CGO off, without the
  btrfs/devmapper/zfs snapshotters (their C headers are not needed for overlayfs).
- runc v1.5.3 needs cgo and libseccomp (Debian's libseccomp-dev and pkg-config) for the
  RuntimeDefault seccomp profile that restricted pods ask for. Debian's runc 1.1.5 and crun 1.8.1
  are too old for containerd 2.4 (see ../shared/TOOLING.md).
- kubelet is `k8s.io/kubernetes/cmd/kubelet` in the same wrapper module that builds the control
  plane (sft_dev.build), so it is the same Kubernetes release.
- CoreDNS v1.13.1 (cluster DNS) has no replace directives: `go install pkg@version`, CGO off, into
  its own version-keyed directory (coredns_dir()) with the same Go caches, so adding it (or changing
  its version) rebuilds nothing else.
- kube-router v2.1.0 (only its network-policy controller runs: `up --real-node --network-policy`) has
  no replace directives: `go install .../cmd/kube-router@v2.1.0`, CGO off (its own Makefile builds it
  so), into its own version-keyed directory (kube_router_dir()) like CoreDNS. v2.1.0 is the only v2
  release the Go module proxy serves here; why that is acceptable is in docs/dev-cluster.md.
- pause: the pod sandbox's process. Nothing can be pulled here, so it is a 20-line Go program that
  sleeps until SIGTERM, imported as registry.k8s.io/pause:3.10.

Run as `python -m sft_dev.realnode_build` (prints the bin dir and timings).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sft_dev import build as cp_build
from sft_dev.build import BuildError, K8S_VERSION, _lock, _run_go, cache_root

CONTAINERD_VERSION = "v2.4.2"
RUNC_VERSION = "v1.5.3"
COREDNS_VERSION = "v1.13.1"
KUBE_ROUTER_VERSION = "v2.1.0"
KUBE_ROUTER_MODULE = "github.com/cloudnativelabs/kube-router/v2"
PAUSE_VERSION = "3.10"  # the name kubelet 1.36 expects for its sandbox image
BINARIES = ("containerd", "ctr", "containerd-shim-runc-v2", "runc", "kubelet", "pause")
# Debian packages the build and the node need, with what each is for (installed by apt_install).
APT_PACKAGES = {
    "libseccomp-dev": "runc's seccomp support (cgo)",
    "pkg-config": "runc's build finds libseccomp through it",
    "containernetworking-plugins": "the bridge, host-local and loopback CNI plugins in /usr/lib/cni",
    "iptables": "kube-router's network-policy controller enforces policies with iptables rules",
    "ipset": "kube-router's network-policy controller keeps each policy's pod addresses in ipsets",
}
CNI_DIR = Path("/usr/lib/cni")

_PAUSE_GO = """package main

import (
\t"os"
\t"os/signal"
\t"syscall"
)

// The pod sandbox: hold the pod's namespaces until the runtime stops it.
func main() {
\tc := make(chan os.Signal, 1)
\tsignal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
\t<-c
\tos.Exit(0)
}
"""


def version_dir() -> Path:
    return cache_root() / f"realnode-containerd-{CONTAINERD_VERSION}-runc-{RUNC_VERSION}-kubelet-{K8S_VERSION}"


def bin_dir() -> Path:
    return version_dir() / "bin"


def _tool_dir(name: str, version: str) -> Path:
    return cache_root() / f"realnode-{name}-{version}"


def _tool_ready(name: str, version: str) -> bool:
    """A `go install`ed tool of its own version-keyed directory: its stamp names `version`."""
    bin_ = _tool_dir(name, version) / "bin"
    try:
        stamp = json.loads((bin_ / "stamp.json").read_text())
    except (OSError, ValueError):
        return False
    return stamp.get(name) == version and os.access(bin_ / name, os.X_OK)


def _install_tool(name: str, version: str, package: str, log, ldflags: str = "-s -w") -> float:
    """`go install package@version` (CGO off) into _tool_dir()/bin through bin.tmp, with the shared Go
    caches; returns the seconds it took."""
    go = cp_build.find_go()
    home = _tool_dir(name, version)
    out, tmp = home / "bin", home / "bin.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t = time.monotonic()
    print(f"building {name} {version}", file=log, flush=True)
    genv = dict(cp_build._go_env(), GOBIN=str(tmp), GOFLAGS="-buildvcs=false", CGO_ENABLED="0")
    _run_go([str(go), "install", "-trimpath", f"-ldflags={ldflags}", f"{package}@{version}"],
            home, genv, f"building {name} {version}", log)
    seconds = round(time.monotonic() - t, 1)
    (tmp / "stamp.json").write_text(json.dumps({name: version, "seconds": seconds}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return seconds


def coredns_dir() -> Path:
    return _tool_dir("coredns", COREDNS_VERSION)


def coredns_bin() -> Path:
    return coredns_dir() / "bin" / "coredns"


def coredns_ready() -> bool:
    return _tool_ready("coredns", COREDNS_VERSION)


def build_coredns(log=sys.stderr) -> float:
    """Build CoreDNS into coredns_dir()/bin; returns the seconds it took."""
    return _install_tool("coredns", COREDNS_VERSION, "github.com/coredns/coredns", log)


def kube_router_dir() -> Path:
    return _tool_dir("kube-router", KUBE_ROUTER_VERSION)


def kube_router_bin() -> Path:
    return kube_router_dir() / "bin" / "kube-router"


def kube_router_ready() -> bool:
    return _tool_ready("kube-router", KUBE_ROUTER_VERSION)


def build_kube_router(log=sys.stderr) -> float:
    """Build kube-router into kube_router_dir()/bin; returns the seconds it took."""
    version = f"-X {KUBE_ROUTER_MODULE}/pkg/version.Version={KUBE_ROUTER_VERSION}"
    return _install_tool("kube-router", KUBE_ROUTER_VERSION, f"{KUBE_ROUTER_MODULE}/cmd/kube-router", log,
                         ldflags=f"-s -w {version}")


def _stamp() -> dict:
    return {"containerd": CONTAINERD_VERSION, "runc": RUNC_VERSION, "kubelet": K8S_VERSION,
            "pause": PAUSE_VERSION, "binaries": list(BINARIES)}


def binaries_ready() -> bool:
    b = bin_dir()
    try:
        stamp = json.loads((b / "stamp.json").read_text())
    except (OSError, ValueError):
        return False
    return ({k: stamp.get(k) for k in _stamp()} == _stamp()
            and all(os.access(b / n, os.X_OK) for n in BINARIES))


def missing_apt_packages() -> list[str]:
    out = []
    for pkg in APT_PACKAGES:
        p = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "install ok installed" not in p.stdout:
            out.append(pkg)
    return out


def apt_install(packages: list[str], log=sys.stderr) -> None:
    """Install Debian packages (root, as on CI); a BuildError names the package that failed."""
    if not packages:
        return
    print(f"installing Debian packages: {' '.join(packages)}", file=log, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq", "--no-install-recommends", *packages]
    if subprocess.run(cmd, env=env, capture_output=True).returncode == 0:
        return
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        why = "; ".join(f"{k}: {APT_PACKAGES.get(k, '')}" for k in packages)
        raise BuildError(f"apt-get install {' '.join(packages)} failed (exit {p.returncode}; needed for {why}):\n"
                         + "\n".join(p.stderr.strip().splitlines()[-10:]))


def _build_containerd(go: Path, out: Path, env: dict, log) -> None:
    genv = dict(env, GOBIN=str(out), GOFLAGS="-buildvcs=false")  # -mod is refused with pkg@version
    pkgs = [f"github.com/containerd/containerd/v2/cmd/{c}@{CONTAINERD_VERSION}"
            for c in ("containerd", "ctr", "containerd-shim-runc-v2")]
    ver = f"-X github.com/containerd/containerd/v2/version.Version={CONTAINERD_VERSION}"
    _run_go([str(go), "install", "-trimpath", "-tags", "no_btrfs no_devmapper no_zfs",
             f"-ldflags=-s -w {ver}", *pkgs], version_dir(), genv, f"building containerd {CONTAINERD_VERSION}", log)


def _build_runc(go: Path, out: Path, env: dict, log) -> None:
    genv = dict(env, GOBIN=str(out), GOFLAGS="-buildvcs=false", CGO_ENABLED="1")
    _run_go([str(go), "install", "-trimpath", "-tags", "seccomp", "-ldflags=-s -w",
             f"github.com/opencontainers/runc@{RUNC_VERSION}"], version_dir(), genv,
            f"building runc {RUNC_VERSION} (cgo, seccomp; needs libseccomp-dev and pkg-config)", log)


def _build_kubelet(go: Path, out: Path, env: dict, log) -> None:
    wrapper = cp_build.version_dir() / "wrapper"
    # The wrapper module is the control plane's: hold its build lock while we add kubelet to it.
    with _lock(cp_build.version_dir().parent / f".build-{cp_build.version_dir().name}.lock"):
        cp_build._prepare_wrapper(go, wrapper, env, log)
        _run_go([str(go), "build", "-trimpath", f"-ldflags={cp_build._ldflags_k8s()}", "-o", str(out / "kubelet"),
                 "k8s.io/kubernetes/cmd/kubelet"], wrapper, env, f"building kubelet {K8S_VERSION}", log)


def _build_pause(go: Path, out: Path, env: dict, log) -> None:
    src = version_dir() / "pause-src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text("module sft-dev-pause\n\ngo 1.22\n")
    (src / "main.go").write_text(_PAUSE_GO)
    _run_go([str(go), "build", "-trimpath", "-ldflags=-s -w", "-o", str(out / "pause"), "."], src, env,
            "building the pause binary", log)


def build(log=sys.stderr) -> dict[str, float]:
    """Build every binary into bin_dir(); returns seconds per step."""
    apt_install(missing_apt_packages(), log)
    go = cp_build.find_go()
    env = cp_build._go_env()
    out = bin_dir()
    tmp = version_dir() / "bin.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    times: dict[str, float] = {}
    for name, step in (("containerd", _build_containerd), ("runc", _build_runc), ("pause", _build_pause),
                       ("kubelet", _build_kubelet)):
        t = time.monotonic()
        print(f"building {name}", file=log, flush=True)
        step(go, tmp, env, log)
        times[name] = round(time.monotonic() - t, 1)
    (tmp / "stamp.json").write_text(json.dumps({**_stamp(), "seconds": times}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return times


def ensure_binaries(force: bool = False, log=sys.stderr, kube_router: bool = True) -> Path:
    """The bin dir holding the real node's binaries; builds them (minutes, once) when missing.
    `kube_router`: also kube-router (`up --network-policy`; scripts/test.sh builds everything)."""
    if not force and binaries_ready() and coredns_ready() and not missing_apt_packages() \
            and (kube_router_ready() or not kube_router):
        return bin_dir()
    with _lock(version_dir().parent / f".build-{version_dir().name}.lock"):
        if force or not binaries_ready():
            print(f"building the real node's binaries into {bin_dir()} (cold: ~5 min on 2 cores; cached "
                  "afterwards)", file=log, flush=True)
            build(log=log)
        else:
            apt_install(missing_apt_packages(), log)
        if force or not coredns_ready():
            build_coredns(log=log)
        if kube_router and (force or not kube_router_ready()):
            build_kube_router(log=log)
    return bin_dir()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    t = time.monotonic()
    try:
        path = ensure_binaries(force="--force" in argv)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        seconds = json.loads((path / "stamp.json").read_text()).get("seconds", {})
    except (OSError, ValueError):
        seconds = {}
    try:
        seconds["coredns"] = json.loads((coredns_bin().parent / "stamp.json").read_text())["seconds"]
    except (OSError, ValueError, KeyError):
        pass
    try:
        seconds["kube-router"] = json.loads((kube_router_bin().parent / "stamp.json").read_text())["seconds"]
    except (OSError, ValueError, KeyError):
        pass
    print(f"real node binaries: containerd {CONTAINERD_VERSION}, runc {RUNC_VERSION}, kubelet {K8S_VERSION}, "
          f"coredns {COREDNS_VERSION}, kube-router {KUBE_ROUTER_VERSION}",
          file=sys.stderr)
    if seconds:
        print("last build: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()), file=sys.stderr)
    print(f"this run: {time.monotonic() - t:.1f}s", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
