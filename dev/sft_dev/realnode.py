"""A real kubelet node beside the kwok GPU nodes: `sftctl dev-cluster up --real-node`.

Parts (built by sft_dev.realnode_build, cached by version): kubelet from the control plane's
Kubernetes release, containerd 2.4 and runc 1.5 from the Go module proxy, Debian's CNI plugins.
Pods on it really run. The facts this design follows were measured on this kind of machine
(../shared/TOOLING.md, "A real node beside the kwok nodes"):
- cgroups are v1 (hybrid): kubelet >= 1.35 needs `failCgroupV1: false`.
- root lacks CAP_SYS_RESOURCE, so the sandbox's oom_score_adj of -998 is refused:
  containerd's `restrict_oom_score_adj = true`.
- nothing can be pulled: a local pause image is imported as registry.k8s.io/pause:3.10 and pinned.
- the node IP may not be loopback, and `kubectl logs` needs one: the bridge's own address.

Cluster DNS: CoreDNS (built by realnode_build) runs as a host process on NODE_IP:53, the address
pods already use for every host-side server, on their own subnet (no route, no Service IP, no
kube-proxy needed). Its `kubernetes` plugin watches Services and EndpointSlices through the apiserver
on 127.0.0.1 (a token of its own, a least-privilege ClusterRole) and answers `cluster.local`; every
other name gets NXDOMAIN (no `forward`: pods resolve nothing outside the cluster). Kubelet gives pods
clusterDNS NODE_IP and an empty host resolv.conf, so the machine's resolvers and search domains never
reach a pod.

Network: one bridge (BRIDGE) with the node's address (NODE_IP) and the `kubernetes` Service IP,
pods on SUBNET with a route to the Service CIDR only, no NAT, no route anywhere else
(ip_forward stays as it is). Instead of kube-proxy, the Service IP of `kubernetes` lives on the
bridge and a forwarder (sft_dev.forward) passes it to the apiserver on 127.0.0.1, so in-cluster
clients (the operator, the trainer's progress channel) work with the apiserver's existing
certificate. Servers that pods use (SeaweedFS) are exposed on NODE_IP the same way (`expose`).

Network policies (opt-in, `up --real-node --network-policy`): kube-router's network-policy
controller (built by realnode_build) runs as a host process with its router and service proxy off.
It enforces NetworkPolicies with iptables rules in the filter table and ipsets; pod-to-pod traffic on
the bridge reaches iptables' FORWARD chain only with net.bridge.bridge-nf-call-iptables=1, which `up`
sets and `down` puts back. `down` deletes kube-router's chains, the rules that jump to them and its
ipsets itself: v2.1.0's `--cleanup-config` removes none of the firewall's (it builds the controller
without its iptables and ipset handlers), then tries to flush every IPVS service on the machine and
panics.

One real node per machine (it owns the bridge, port 10250 on NODE_IP and /run/sft-realnode);
`down` removes the bridge, every mount under its directories, its cgroups and its processes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sft_dev import cluster as _cluster, realnode_build

NODE_NAME = "real-node-0"
NODE_LABEL = "sft.dev/real-node"  # "true" on the real node; select it with nodeSelector
BRIDGE = "sftdev0"
SUBNET = "10.77.0.0/24"
NODE_IP = "10.77.0.1"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
KUBELET_PORT = 10250
RUN_DIR = Path("/run/sft-realnode")  # short paths: containerd's sockets must fit in sun_path
SANDBOX_IMAGE = f"registry.k8s.io/pause:{realnode_build.PAUSE_VERSION}"
NAMESPACE = "k8s.io"  # containerd's namespace for CRI images and containers
DNS_PORT = 53
CLUSTER_DOMAIN = "cluster.local"
# CoreDNS's user in the apiserver's token file, and the node's processes (pidfiles), as cluster.py has them
COREDNS_USER, COMPONENTS = _cluster.COREDNS_USER, _cluster.REAL_NODE_COMPONENTS
KUBE_ROUTER, KUBE_ROUTER_USER = _cluster.NETWORK_POLICY_COMPONENT, _cluster.KUBE_ROUTER_USER
BRIDGE_NF_SYSCTL = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
# What kube-router's network-policy controller creates (pkg/controllers/netpol): chains in the filter
# table, and ipsets of the pods each policy selects or admits.
KUBE_ROUTER_CHAINS = ("KUBE-ROUTER-INPUT", "KUBE-ROUTER-FORWARD", "KUBE-ROUTER-OUTPUT")
KUBE_ROUTER_CHAIN_PREFIXES = ("KUBE-NWPLCY-", "KUBE-POD-FW-")
KUBE_ROUTER_IPSET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-")
# The last rule of the controller's first sync: its chains are complete from then on.
KUBE_ROUTER_SYNCED = "rule to explicitly ACCEPT traffic that comply to network policies"


class RealNodeError(RuntimeError):
    """The real node could not start or stop; the message names the cause."""


def _sh(cmd: list[str], what: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise RealNodeError(f"{what} failed (exit {p.returncode}): `{' '.join(cmd)}`: "
                            f"{(p.stderr or p.stdout).strip()[-800:]}")
    return p


def containerd_root() -> Path:
    """containerd's content and snapshots, kept across clusters so imported images survive `down`."""
    return realnode_build.cache_root() / "realnode-containerd-root"


def socket_path() -> Path:
    return RUN_DIR / "containerd.sock"


def ctr(*args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    return _sh([str(realnode_build.bin_dir() / "ctr"), "--address", str(socket_path()), "--namespace", NAMESPACE,
                *args], f"ctr {' '.join(args[:2])}", check=check, timeout=timeout)


def preflight(network_policy: bool = False) -> None:
    """Say what this machine lacks for a real node, before anything is started."""
    if os.geteuid() != 0:
        raise RealNodeError("the real node needs root (kubelet, containerd, the bridge)")
    if shutil.which("ip") is None:
        raise RealNodeError("`ip` (Debian's iproute2) is needed to create the bridge")
    if network_policy:
        for tool, pkg in (("iptables", "iptables"), ("iptables-save", "iptables"), ("ipset", "ipset")):
            if shutil.which(tool) is None:
                raise RealNodeError(f"`{tool}` is needed to enforce network policies: apt-get install {pkg}")
    if not realnode_build.CNI_DIR.joinpath("bridge").exists():
        raise RealNodeError(f"no CNI bridge plugin in {realnode_build.CNI_DIR}: "
                            "apt-get install containernetworking-plugins")
    if not Path("/sys/fs/cgroup/memory").is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        raise RealNodeError("no memory cgroup controller under /sys/fs/cgroup: kubelet cannot run pods")
    if not Path("/proc/filesystems").read_text().count("overlay"):
        _sh(["modprobe", "overlay"], "modprobe overlay (containerd's overlayfs snapshotter)", check=False)


# ------------------------------------------------------------------------------------------ files


def containerd_config(state: Path) -> str:
    runc = realnode_build.bin_dir() / "runc"
    return f"""version = 3
root = "{containerd_root()}"
state = "{RUN_DIR / 'containerd'}"
[grpc]
  address = "{socket_path()}"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{SANDBOX_IMAGE}"
[plugins."io.containerd.cri.v1.runtime"]
  # root here lacks CAP_SYS_RESOURCE: the sandbox's oom_score_adj of -998 would be refused
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{realnode_build.CNI_DIR}"]
    conf_dir = "{state / 'cni' / 'net.d'}"
"""


def corefile(kubeconfig: Path, ready_port: int) -> str:
    """cluster.local from the apiserver; NXDOMAIN for every other name (nothing is forwarded)."""
    return f"""{CLUSTER_DOMAIN}:{DNS_PORT} {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} {{
        kubeconfig {kubeconfig} sft-dev
        ttl 5
    }}
}}
.:{DNS_PORT} {{
    bind {NODE_IP}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def coredns_rbac() -> list[dict]:
    """What CoreDNS's kubernetes plugin reads (without `pods verified`): Services, EndpointSlices and
    Namespaces, list and watch only."""
    name = "sft-dev:coredns"
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": [{"apiGroups": [""], "resources": ["services", "namespaces"], "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}]},
    ]


def kube_router_rbac() -> list[dict]:
    """What kube-router reads with only its firewall on: the pods, namespaces and policies it
    enforces, its own Node, and the Services and endpoints its shared informers also start."""
    name = "sft-dev:kube-router"
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": [{"apiGroups": [""], "resources": ["pods", "namespaces", "nodes", "services", "endpoints"],
                    "verbs": ["get", "list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
                   {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
                    "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBE_ROUTER_USER}]},
    ]


def kube_router_argv(kubeconfig: Path) -> list[str]:
    """Only the network-policy controller: no routes, no service proxy, no CNI config, and no
    health or metrics listener (its health server would listen on every address)."""
    return [str(realnode_build.kube_router_bin()), "--run-firewall=true", "--run-router=false",
            "--run-service-proxy=false", "--run-loadbalancer=false", "--enable-cni=false",
            f"--kubeconfig={kubeconfig}", f"--hostname-override={NODE_NAME}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--enable-ipv4=true", "--enable-ipv6=false",
            "--health-port=0", "--metrics-port=0", "--v=1"]


def cni_conflist(state: Path) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "sft-dev",
        "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
            "ipam": {"type": "host-local", "dataDir": str(state / "cni" / "ipam"),
                     "ranges": [[{"subnet": SUBNET, "gateway": NODE_IP}]],
                     # the Service CIDR only (served on the bridge itself): no route to the outside
                     "routes": [{"dst": SERVICE_CIDR}]},
        }],
    }


def kubelet_config(state: Path, ca_file: Path, healthz_port: int) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # cgroups are v1 (hybrid) here; kubelet >= 1.35 refuses them otherwise
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{socket_path()}",
        "address": NODE_IP, "port": KUBELET_PORT, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        # Only the apiserver (its kubelet client certificate, signed by the cluster CA) may talk to it.
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(ca_file)}},
        "authorization": {"mode": "AlwaysAllow"},
        "failSwapOn": False,
        # No KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY and KUBE-FIREWALL chains: kubelet never removes
        # them, and the node has no kube-proxy whose route_localnet they guard. iptables stays as found.
        "makeIPTablesUtilChains": False,
        "podLogsDir": str(state / "pod-logs"),
        "volumePluginDir": str(state / "volume-plugins"),
        # CoreDNS on the bridge; the empty host resolv.conf keeps the machine's resolvers and search
        # domains out of pods (they resolve cluster.local and nothing else)
        "clusterDNS": [NODE_IP], "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(state / "host-resolv.conf"),
        "serializeImagePulls": False,
        # The images are imported, never pulled: keep them however full the disk gets.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%", "imagefs.available": "2%",
                         "nodefs.inodesFree": "2%"},
        "maxPods": 30,
        "registerNode": True,
        "runtimeRequestTimeout": "10m",
        "shutdownGracePeriod": "0s",
    }


# ------------------------------------------------------------------------------------------ network


def _link_exists(name: str) -> bool:
    return _sh(["ip", "link", "show", name], "ip link show", check=False).returncode == 0


def setup_bridge() -> None:
    if not _link_exists(BRIDGE):
        _sh(["ip", "link", "add", BRIDGE, "type", "bridge"], f"creating the bridge {BRIDGE}")
    have = _sh(["ip", "-o", "addr", "show", "dev", BRIDGE], "ip addr show").stdout
    prefix = SUBNET.split("/")[1]
    for addr in (f"{NODE_IP}/{prefix}", f"{KUBERNETES_SERVICE_IP}/32"):
        if f" {addr} " not in have:
            _sh(["ip", "addr", "add", addr, "dev", BRIDGE], f"adding {addr} to {BRIDGE}")
    _sh(["ip", "link", "set", BRIDGE, "up"], f"bringing {BRIDGE} up")


def delete_bridge() -> None:
    if _link_exists(BRIDGE):
        _sh(["ip", "link", "delete", BRIDGE], f"deleting the bridge {BRIDGE}")


def delete_pod_netns() -> list[str]:
    """Delete the network namespaces of this node's pods (their veth pairs go with them).

    containerd makes one per pod sandbox under /run/netns and removes it only on the CRI's
    StopPodSandbox; `down` kills the containers directly, which left them (and their veths) behind.
    Only the namespaces whose veth peer is on BRIDGE are ours.
    """
    if not _link_exists(BRIDGE):
        return []
    links = _sh(["ip", "-o", "link", "show", "master", BRIDGE], "ip link show master", check=False).stdout
    refs = set(re.findall(r"link-netns(?:id)? (\S+)", links))
    names = {}
    for line in _sh(["ip", "netns", "list"], "ip netns list", check=False).stdout.splitlines():
        m = re.match(r"(\S+)(?: \(id: (\d+)\))?", line)
        if m:
            names[m.group(1)] = m.group(1)
            if m.group(2):
                names[m.group(2)] = m.group(1)
    gone = sorted({names[r] for r in refs if r in names})
    for ns in gone:
        _sh(["ip", "netns", "delete", ns], f"deleting the pod network namespace {ns}", check=False)
    # libcni's cached results of those sandboxes (files named after our network)
    for f in Path("/var/lib/cni/results").glob("sft-dev-*"):
        f.unlink(missing_ok=True)
    return gone


# ------------------------------------------------------------------------------------------ firewall


def _is_kube_router_chain(name: str) -> bool:
    return name in KUBE_ROUTER_CHAINS or name.startswith(KUBE_ROUTER_CHAIN_PREFIXES)


def kube_router_firewall() -> tuple[list[str], list[str]]:
    """kube-router's chains in the filter table and its ipsets, as they are now."""
    chains, sets = [], []
    if shutil.which("iptables"):
        out = _sh(["iptables", "-t", "filter", "-S"], "iptables -S", check=False).stdout
        chains = [ln.split()[1] for ln in out.splitlines() if ln.startswith("-N ") and _is_kube_router_chain(ln.split()[1])]
    if shutil.which("ipset"):
        out = _sh(["ipset", "list", "-n"], "ipset list -n", check=False).stdout
        sets = [n for n in out.split() if n.startswith(KUBE_ROUTER_IPSET_PREFIXES)]
    return chains, sets


def chain_rules(chain: str) -> str:
    return _sh(["iptables", "-t", "filter", "-S", chain], f"iptables -S {chain}", check=False).stdout


def remove_kube_router_firewall() -> list[str]:
    """Delete the rules that jump to kube-router's chains, the chains, then its ipsets (once no rule
    references them). Only kube-router's names are touched: other rules on the machine stay."""
    chains, sets = kube_router_firewall()
    if chains:
        for line in _sh(["iptables", "-t", "filter", "-S"], "iptables -S").stdout.splitlines():
            args = shlex.split(line)
            if args[:1] == ["-A"] and not _is_kube_router_chain(args[1]) and "-j" in args \
                    and args[args.index("-j") + 1] in chains:
                _sh(["iptables", "-t", "filter", "-D", *args[1:]], f"deleting the rule `{line}`")
        for c in chains:
            _sh(["iptables", "-t", "filter", "-F", c], f"flushing the chain {c}")
        for c in chains:
            _sh(["iptables", "-t", "filter", "-X", c], f"deleting the chain {c}")
    for name in sets:
        _sh(["ipset", "destroy", name], f"destroying the ipset {name}")
    left = kube_router_firewall()
    if left[0] or left[1]:
        raise RealNodeError(f"kube-router's chains {left[0][:5]} or ipsets {left[1][:5]} are still there")
    return [f"{len(chains)} iptables chain(s)"] * bool(chains) + [f"{len(sets)} ipset(s)"] * bool(sets)


# ------------------------------------------------------------------------------------------ cleanup


def mounts_under(*dirs: Path) -> list[str]:
    """Mount points below any of `dirs`, deepest first."""
    roots = [str(d.resolve()) if d.exists() else str(d) for d in dirs]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if any(mp == r or mp.startswith(r.rstrip("/") + "/") for r in roots):
            found.append(mp)
    return sorted(set(found), key=lambda m: m.count("/"), reverse=True)


def unmount_all(*dirs: Path) -> list[str]:
    left = []
    for _ in range(3):
        for mp in mounts_under(*dirs):
            subprocess.run(["umount", mp], capture_output=True)
        left = mounts_under(*dirs)
        if not left:
            return []
        for mp in left:
            subprocess.run(["umount", "-l", mp], capture_output=True)
    return mounts_under(*dirs)


def remove_cgroups() -> None:
    """kubelet's `kubepods` cgroups in every v1 hierarchy (empty once the containers are gone)."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, top]:
            try:
                d.rmdir()
            except OSError:
                pass


def kill_containers() -> int:
    """Kill and delete every CRI container and sandbox (containerd must be running)."""
    out = ctr("containers", "list", "--quiet", check=False)
    ids = out.stdout.split() if out.returncode == 0 else []
    for cid in ids:
        ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False)
    for cid in ids:
        for _ in range(20):
            if ctr("tasks", "delete", "--force", cid, check=False).returncode == 0 or \
                    "not found" in ctr("tasks", "list", check=False).stdout + "not found":
                break
            time.sleep(0.2)
        ctr("containers", "delete", cid, check=False)
    return len(ids)


def shim_pids() -> list[int]:
    """containerd-shim-runc-v2 processes started for our containerd (they outlive it)."""
    needle = str(socket_path()).encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim-runc-v2" in cmd and needle in cmd:
            out.append(int(d.name))
    return out


def _log(msg: str, log) -> None:
    print(msg, file=log, flush=True)


def wait_for(check, timeout: float, what: str, tail=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as e:  # not ready yet
            last = str(e)
        time.sleep(0.3)
    raise RealNodeError(f"{what} within {timeout:.0f}s ({last})\n{tail()}")


# ------------------------------------------------------------------------------------------ images


def pause_image_tar(out: Path) -> Path:
    """An OCI image archive of the pause binary, named SANDBOX_IMAGE (what containerd pins)."""
    import hashlib
    import io
    import tarfile

    def blob(data: bytes) -> tuple[str, bytes]:
        return "sha256:" + hashlib.sha256(data).hexdigest(), data

    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w") as t:
        data = (realnode_build.bin_dir() / "pause").read_bytes()
        info = tarfile.TarInfo("pause")
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        t.addfile(info, io.BytesIO(data))
    layer_digest, layer = blob(layer_buf.getvalue())
    cfg_digest, cfg = blob(json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }).encode())
    man_digest, manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                    "size": len(layer)}],
    }).encode())
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man_digest, "size": len(manifest),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": SANDBOX_IMAGE,
                        "org.opencontainers.image.ref.name": realnode_build.PAUSE_VERSION}}]}).encode()
    with tarfile.open(out, "w") as t:
        for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
                           *[(f"blobs/sha256/{d.split(':')[1]}", b) for d, b in
                             ((layer_digest, layer), (cfg_digest, cfg), (man_digest, manifest))]]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            t.addfile(info, io.BytesIO(data))
    return out


def has_image(ref: str) -> bool:
    out = ctr("images", "list", "--quiet", f"name=={ref}", check=False)
    return out.returncode == 0 and ref in out.stdout.split()


def _imported_file() -> Path:
    return containerd_root() / "sft-imported.json"


def import_archive(archive: Path, ref: str, digest: str, log) -> bool:
    """Import an image archive into containerd's k8s.io namespace, unless this digest already is."""
    marks_file = _imported_file()
    try:
        marks = json.loads(marks_file.read_text())
    except (OSError, ValueError):
        marks = {}
    if marks.get(ref) == digest and has_image(ref):
        return False
    t = time.monotonic()
    size = archive.stat().st_size  # before the import: a rebuild meanwhile replaces the archive
    ctr("images", "import", str(archive), timeout=1800)
    if not has_image(ref):
        raise RealNodeError(f"importing {archive} did not create the image {ref} in containerd")
    marks[ref] = digest
    marks_file.write_text(json.dumps(marks, indent=1))
    _log(f"imported {ref} into containerd ({size / 2**20:.0f} MiB, {time.monotonic() - t:.0f}s)", log)
    return True


def load_built_images(log) -> list[str]:
    """Import the images that `sftctl images build` has already built (no build here)."""
    from sft_dev import images

    loaded = []
    for spec in images.IMAGES.values():
        archives = sorted(images.images_dir().glob(f"{spec.name}-*.tar"))
        for archive in archives:
            meta = archive.with_suffix(".json")
            if meta.exists():
                m = json.loads(meta.read_text())
                import_archive(archive, f"docker.io/{spec.ref}", m["digest"], log)
                loaded.append(spec.ref)
    return loaded


def running() -> bool:
    return socket_path().exists() and ctr("version", check=False).returncode == 0


# ------------------------------------------------------------------------------------------ the node


class RealNode:
    """The real node of one dev cluster (`cluster` is a sft_dev.cluster.DevCluster)."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.state = cluster.state_dir / "realnode"

    def _pidfile(self, name: str) -> Path:
        return self.cluster.pidsdir / f"{name}.json"

    def alive(self, name: str) -> bool:
        from sft_dev.cluster import _alive, _read_pidfile

        return _alive(_read_pidfile(self._pidfile(name)))

    def owner(self) -> Path | None:
        try:
            return Path((RUN_DIR / "owner").read_text().strip())
        except OSError:
            return None

    def up(self, cfg: dict, log=sys.stderr, timeout: float = 120.0, network_policy: bool = False) -> None:
        preflight(network_policy)
        realnode_build.ensure_binaries(log=log, kube_router=network_policy)
        owner = self.owner()
        if owner and owner != self.cluster.state_dir and (owner / "pids" / "kubelet.json").exists():
            raise RealNodeError(f"the dev cluster in {owner} already has the real node (one per machine); "
                                f"`sftctl dev-cluster down --state-dir {owner}` first")
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        (RUN_DIR / "owner").write_text(str(self.cluster.state_dir))
        for d in ("cni/net.d", "cni/ipam", "kubelet", "pod-logs", "volume-plugins"):
            (self.state / d).mkdir(parents=True, exist_ok=True)
        setup_bridge()
        self._start_containerd(log)
        if not has_image(SANDBOX_IMAGE):
            ctr("images", "import", str(pause_image_tar(self.state / "pause.tar")))
        self._start_proxy(cfg)
        self._start_coredns(cfg, log)
        self._start_kubelet(cfg, log, timeout)
        if network_policy:
            self._start_kube_router(cfg, log)
        else:  # an earlier `up --network-policy` of this cluster
            self._stop_kube_router(cfg)
        load_built_images(log)

    def _start_containerd(self, log) -> None:
        if self.alive("containerd") and running():
            return
        conf = self.state / "containerd.toml"
        conf.write_text(containerd_config(self.state))
        (self.state / "cni" / "net.d" / "10-sft-dev.conflist").write_text(json.dumps(cni_conflist(self.state), indent=1))
        bindir = realnode_build.bin_dir()
        env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        proc = self.cluster._spawn("containerd", [str(bindir / "containerd"), "--config", str(conf)], env=env)
        self.cluster._wait("containerd", proc, running, 60)

    def _start_proxy(self, cfg: dict) -> None:
        if self.alive("apiserver-proxy"):
            return
        dev_dir = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=dev_dir)
        api = cfg["ports"]["apiserver"]
        proc = self.cluster._spawn("apiserver-proxy", [
            sys.executable, "-m", "sft_dev.forward", f"{KUBERNETES_SERVICE_IP}:443=127.0.0.1:{api}"], env=env)
        import socket as _socket

        self.cluster._wait("apiserver-proxy", proc,
                           lambda: _socket.create_connection((KUBERNETES_SERVICE_IP, 443), timeout=1).close() is None,
                           20)

    def _component_kubeconfig(self, cfg: dict, name: str, user: str, token: str) -> Path:
        """<pki>/<name>.kubeconfig (mode 0600): `user` with `token` at the apiserver on 127.0.0.1."""
        kubeconfig = self.cluster.pki / f"{name}.kubeconfig"
        kubeconfig.write_text(self.cluster._kubeconfig_text(f"https://127.0.0.1:{cfg['ports']['apiserver']}", user, token))
        os.chmod(kubeconfig, 0o600)
        return kubeconfig

    def _start_coredns(self, cfg: dict, log) -> None:
        c = self.cluster
        ready = cfg.setdefault("real_node", {}).setdefault("coredns_ready_port", _free_port())
        c.config_file.write_text(json.dumps(cfg, indent=1))

        def is_ready() -> bool:
            return c._get(f"http://127.0.0.1:{ready}/ready") == b"OK"

        if self.alive("coredns"):
            return
        info = c.info()
        for obj in coredns_rbac():
            _apply(info, obj)
        kubeconfig = self._component_kubeconfig(cfg, "coredns", COREDNS_USER, cfg["component_tokens"]["coredns"])
        conf = self.state / "Corefile"
        conf.write_text(corefile(kubeconfig, ready))
        proc = c._spawn("coredns", [str(realnode_build.coredns_bin()), "-conf", str(conf)])
        c._wait("coredns", proc, is_ready, 60)
        _log(f"CoreDNS {realnode_build.COREDNS_VERSION} on {NODE_IP}:{DNS_PORT} ({CLUSTER_DOMAIN}; nothing else)", log)

    def _start_kube_router(self, cfg: dict, log) -> None:
        c = self.cluster
        if self.alive(KUBE_ROUTER):
            return
        self._bridge_nf_on(cfg)
        info = c.info()
        for obj in kube_router_rbac():
            _apply(info, obj)
        kubeconfig = self._component_kubeconfig(cfg, "kube-router", KUBE_ROUTER_USER,
                                                cfg["component_tokens"]["kube-router"])
        t = time.monotonic()
        proc = c._spawn(KUBE_ROUTER, kube_router_argv(kubeconfig))
        c._wait(KUBE_ROUTER, proc, lambda: KUBE_ROUTER_SYNCED in chain_rules("KUBE-ROUTER-FORWARD"), 90)
        _log(f"kube-router {realnode_build.KUBE_ROUTER_VERSION} enforces NetworkPolicies on {NODE_NAME} "
             f"(first sync {time.monotonic() - t:.1f}s)", log)

    def _bridge_nf_on(self, cfg: dict) -> None:
        """Bridged pod-to-pod packets through iptables; the old value is kept in the cluster's config."""
        if not BRIDGE_NF_SYSCTL.exists():
            _sh(["modprobe", "br_netfilter"], "modprobe br_netfilter", check=False)
        if not BRIDGE_NF_SYSCTL.exists():
            raise RealNodeError(f"no {BRIDGE_NF_SYSCTL} (br_netfilter): bridged pod traffic would bypass the policies")
        rn = cfg.setdefault("real_node", {})
        rn.setdefault("bridge_nf_call_iptables_was", BRIDGE_NF_SYSCTL.read_text().strip())
        self.cluster.config_file.write_text(json.dumps(cfg, indent=1))
        BRIDGE_NF_SYSCTL.write_text("1")

    def _stop_kube_router(self, cfg: dict | None = None) -> list[str]:
        """Stop kube-router, remove its rules and ipsets, put the sysctl back (each only if it is ours).
        `cfg`: the cluster's config as `up` holds it (else read from its file)."""
        from sft_dev.cluster import _read_pidfile, _terminate

        stopped = []
        pidfile = self._pidfile(KUBE_ROUTER)
        rec = _read_pidfile(pidfile)
        if rec and self.alive(KUBE_ROUTER):
            _terminate(rec["pid"], rec.get("start"))
            stopped.append(f"{KUBE_ROUTER} (pid {rec['pid']})")
        cfg = cfg if cfg is not None else (self.cluster.load_config() or {})
        rn = cfg.get("real_node") or {}
        try:
            if rec or "bridge_nf_call_iptables_was" in rn:
                stopped += remove_kube_router_firewall()
        finally:
            was = rn.pop("bridge_nf_call_iptables_was", None)
            if was is not None:
                if BRIDGE_NF_SYSCTL.exists():
                    BRIDGE_NF_SYSCTL.write_text(was)
                self.cluster.config_file.write_text(json.dumps(cfg, indent=1))
            pidfile.unlink(missing_ok=True)
        return stopped

    def _start_kubelet(self, cfg: dict, log, timeout: float) -> None:
        c = self.cluster
        kubeconfig = self._component_kubeconfig(cfg, "kubelet", f"system:node:{NODE_NAME}",
                                                cfg["component_tokens"]["kubelet"])
        healthz = cfg.setdefault("real_node", {}).setdefault("healthz_port", _free_port())
        c.config_file.write_text(json.dumps(cfg, indent=1))
        (self.state / "host-resolv.conf").write_text("")
        conf = self.state / "kubelet.json"
        conf.write_text(json.dumps(kubelet_config(self.state, c.pki / "ca.crt", healthz), indent=1))
        if not self.alive("kubelet"):
            proc = c._spawn("kubelet", [
                str(realnode_build.bin_dir() / "kubelet"), f"--config={conf}", f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.state / 'kubelet'}", f"--cert-dir={self.state / 'kubelet' / 'pki'}",
                f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}",
                f"--node-labels={NODE_LABEL}=true", "--v=1",
            ])
            c._wait("kubelet", proc, lambda: c._get(f"http://127.0.0.1:{healthz}/healthz") == b"ok", timeout)
        info = c.info()

        def ready() -> bool:
            node = json.loads(c._get(f"{info.server}/api/v1/nodes/{NODE_NAME}", info.token))
            return any(x["type"] == "Ready" and x["status"] == "True" for x in node["status"].get("conditions", []))

        wait_for(ready, timeout, f"node {NODE_NAME} did not become Ready",
                 lambda: f"log {c.logs / 'kubelet.log'}:\n{c._log_tail('kubelet', 20)}")
        _log(f"real node {NODE_NAME} Ready ({NODE_IP} on bridge {BRIDGE})", log)

    def down(self) -> list[str]:
        """Stop kubelet, kill every container, stop containerd, unmount, delete the bridge."""
        from sft_dev.cluster import _proc_start_time, _read_pidfile, _terminate

        firewall_error = None
        try:
            stopped = self._stop_kube_router()
        except RealNodeError as e:  # said after the rest of the node is down
            firewall_error, stopped = e, []
        rec = _read_pidfile(self._pidfile("kubelet"))
        if rec and self.alive("kubelet"):
            _terminate(rec["pid"], rec.get("start"))
            stopped.append(f"kubelet (pid {rec['pid']})")
        if socket_path().exists() and running():
            n = kill_containers()
            if n:
                stopped.append(f"{n} container(s)")
        for name in ("coredns", "apiserver-proxy", "containerd"):
            rec = _read_pidfile(self._pidfile(name))
            if rec and self.alive(name):
                _terminate(rec["pid"], rec.get("start"))
                stopped.append(f"{name} (pid {rec['pid']})")
        for pid in shim_pids():
            _terminate(pid, _proc_start_time(pid), kill_first=True)
            stopped.append(f"shim pid {pid}")
        netns = delete_pod_netns()
        if netns:
            stopped.append(f"{len(netns)} pod network namespace(s)")
        for name in COMPONENTS:
            self._pidfile(name).unlink(missing_ok=True)
        left = unmount_all(self.state, RUN_DIR, containerd_root())
        if left:
            raise RealNodeError(f"could not unmount {left[:5]} (still busy)")
        remove_cgroups()
        delete_bridge()
        # libcni's result cache; empty once the sandboxes are gone (created by the first pod here)
        for d in (Path("/var/lib/cni/results"), Path("/var/lib/cni")):
            try:
                d.rmdir()
            except OSError:
                pass
        if self.owner() == self.cluster.state_dir:
            shutil.rmtree(RUN_DIR, ignore_errors=True)
        # kubelet's pod dirs (emptyDirs with the trainers' scratch) are not worth keeping
        shutil.rmtree(self.state / "kubelet" / "pods", ignore_errors=True)
        if firewall_error is not None:
            raise firewall_error
        return stopped


def _apply(info, obj: dict) -> None:
    """Create or replace one cluster-scoped object through the apiserver (server-side apply)."""
    import ssl
    import urllib.error
    import urllib.request

    group, _, version = obj["apiVersion"].rpartition("/")
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    plural = {"ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings"}[obj["kind"]]
    url = f"{info.server}{base}/{plural}/{obj['metadata']['name']}?fieldManager=sft-dev&force=true"
    req = urllib.request.Request(url, data=json.dumps(obj).encode(), method="PATCH", headers={
        "Authorization": f"Bearer {info.token}", "Content-Type": "application/apply-patch+yaml"})
    ctx = ssl.create_default_context(cafile=str(info.ca_file))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            r.read()
    except urllib.error.HTTPError as e:
        raise RealNodeError(f"applying {obj['kind']} {obj['metadata']['name']}: HTTP {e.code} "
                            f"{e.read().decode(errors='replace')[:300]}") from e


def _free_port() -> int:
    import socket as _socket

    s = _socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        return s.getsockname()[1]
    finally:
        s.close()


def expose(state_dir: Path, name: str, port: int) -> subprocess.Popen:
    """Make a server on 127.0.0.1:port reachable from pods at NODE_IP:port (a forwarder process;
    the caller stops it)."""
    dev_dir = str(Path(__file__).resolve().parents[1])
    log = open(Path(state_dir) / f"forward-{name}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "sft_dev.forward", f"{NODE_IP}:{port}=127.0.0.1:{port}"],
                            env=dict(os.environ, PYTHONPATH=dev_dir), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    import socket as _socket

    wait_for(lambda: proc.poll() is None and _socket.create_connection((NODE_IP, port), timeout=1).close() is None,
             10, f"forwarding {NODE_IP}:{port} to 127.0.0.1:{port} did not start")
    return proc
