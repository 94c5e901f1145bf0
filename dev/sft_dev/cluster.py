"""A real Kubernetes control plane on 127.0.0.1, without Docker: etcd, kube-apiserver (TLS, token
auth, RBAC), kube-controller-manager, kube-scheduler, and kwok simulating GPU nodes and pods.

Everything lives in one state directory:
  config.json           ports, node shape, the admin token
  pki/                  CA, serving cert, service-account key pair (openssl)
  kubeconfig            admin kubeconfig (token auth) for users and tests
  etcd/                 etcd's data
  logs/<component>.log  each process's output
  pids/<component>.json pid + start time, so `down` never signals a recycled pid
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sft_dev import kwok_stages
from sft_dev.build import bin_dir, ensure_binaries
from sft_dev.tools import kubectl

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
HOST = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"

REAL_NODE_NAME = "real-node-0"  # sft_dev.realnode.NODE_NAME (kept here so cluster.py imports stay light)
REAL_NODE_COMPONENTS = ("containerd", "apiserver-proxy", "coredns", "kubelet")  # the real node's (sft_dev.realnode)
COREDNS_USER = "system:sft-dev:coredns"  # CoreDNS on the real node authenticates as this user
# kube-router's network-policy controller (`up --real-node --network-policy`): its component and user
NETWORK_POLICY_COMPONENT = "kube-router"
KUBE_ROUTER_USER = "system:sft-dev:kube-router"

GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
INSTANCE_TYPE = "p5.48xlarge"


class ClusterError(RuntimeError):
    """The dev cluster could not start or stop; the message names the cause."""


def default_state_dir() -> Path:
    return Path(os.environ.get("SFT_STATE") or Path.home() / ".local" / "state" / "sft-operator" / "dev-cluster")


@dataclasses.dataclass(frozen=True)
class Ports:
    # Below Linux's ephemeral range (32768+), so an outgoing connection never holds one of them.
    apiserver: int = 16443
    etcd: int = 12379
    etcd_peer: int = 12380
    controller_manager: int = 12257
    scheduler: int = 12259
    kwok: int = 12247

    @classmethod
    def free(cls) -> Ports:
        """Ports the kernel says are free now: for test clusters that must not collide with a user's."""
        socks = []
        try:
            for _ in dataclasses.fields(cls):
                s = socket.socket()
                s.bind((HOST, 0))
                socks.append(s)
            return cls(*(s.getsockname()[1] for s in socks))
        finally:
            for s in socks:
                s.close()

    def by_component(self) -> dict[str, list[int]]:
        return {
            "etcd": [self.etcd, self.etcd_peer],
            "kube-apiserver": [self.apiserver],
            "kube-controller-manager": [self.controller_manager],
            "kube-scheduler": [self.scheduler],
            "kwok": [self.kwok],
        }


@dataclasses.dataclass
class ClusterInfo:
    state_dir: Path
    kubeconfig: Path
    server: str
    token: str
    ca_file: Path
    ports: Ports
    nodes: list[str]
    pids: dict[str, int]
    startup_seconds: float = 0.0

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}


@dataclasses.dataclass
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    ports: list[int]
    log: Path


# ---------------------------------------------------------------------------------------------
# processes


def _proc_start_time(pid: int) -> int | None:
    """Clock ticks since boot at which `pid` started (field 22 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie is as good as gone
        return None
    return int(fields[19])


def _read_pidfile(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(rec: dict | None) -> bool:
    return bool(rec) and _proc_start_time(rec["pid"]) == rec.get("start")


def _pids_referencing(state_dir: Path) -> list[int]:
    """Our component processes (one of the built binaries) whose command line names this state
    dir: found even if `up` was killed before it wrote their pidfile."""
    needle = str(state_dir.resolve()).encode()
    binaries = {str((bin_dir() / c).resolve()) for c in COMPONENTS}  # exe links are resolved paths
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            exe = os.readlink(d / "exe")
        except OSError:
            continue
        if exe.removesuffix(" (deleted)") not in binaries:
            continue
        if needle in cmd and _proc_start_time(int(d.name)) is not None:
            found.append(int(d.name))
    return found


def _terminate(pid: int, start: int | None, timeout: float = 5.0, kill_first: bool = False) -> None:
    def same() -> bool:
        st = _proc_start_time(pid)
        return st is not None and (start is None or st == start)

    if not same():
        return
    try:
        os.kill(pid, signal.SIGKILL if kill_first else signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not same():
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while same() and time.monotonic() < deadline:
        time.sleep(0.05)


def _port_in_use(port: int) -> bool:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((HOST, port))
        return False
    except OSError:
        return True
    finally:
        s.close()


def _port_owner(port: int) -> str:
    try:
        import psutil

        for c in psutil.net_connections(kind="tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                p = psutil.Process(c.pid)
                return f" by pid {c.pid} ({' '.join(p.cmdline())[:120]})"
    except Exception:  # psutil missing or not permitted: the port number alone must do
        pass
    return ""


# ---------------------------------------------------------------------------------------------
# the cluster


class DevCluster:
    def __init__(self, state_dir: Path | str | None = None):
        self.state_dir = Path(state_dir or default_state_dir()).expanduser().resolve()
        self.pki = self.state_dir / "pki"
        self.logs = self.state_dir / "logs"
        self.pidsdir = self.state_dir / "pids"
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.config_file = self.state_dir / "config.json"

    # -- config ------------------------------------------------------------------------------
    def load_config(self) -> dict | None:
        try:
            return json.loads(self.config_file.read_text())
        except (OSError, ValueError):
            return None

    def _ports(self, cfg: dict) -> Ports:
        return Ports(**cfg["ports"])

    def info(self) -> ClusterInfo:
        cfg = self.load_config()
        if cfg is None:
            raise ClusterError(f"no dev cluster in {self.state_dir} (run `sftctl dev-cluster up`)")
        ports = self._ports(cfg)
        return ClusterInfo(
            state_dir=self.state_dir,
            kubeconfig=self.kubeconfig,
            server=f"https://{HOST}:{ports.apiserver}",
            token=cfg["token"],
            ca_file=self.pki / "ca.crt",
            ports=ports,
            nodes=[n for n in cfg.get("node_names", [])],
            pids={c: rec["pid"] for c in COMPONENTS if _alive(rec := _read_pidfile(self.pidsdir / f"{c}.json"))},
        )

    # -- status ------------------------------------------------------------------------------
    def status(self) -> list[ComponentStatus]:
        cfg = self.load_config()
        ports = self._ports(cfg).by_component() if cfg else {}
        out = []
        real_cfg = (cfg or {}).get("real_node", {})
        real = REAL_NODE_COMPONENTS if real_cfg.get("enabled") else ()
        real += (NETWORK_POLICY_COMPONENT,) if real and real_cfg.get("network_policy") else ()
        real += ("kueue",) if (cfg or {}).get("kueue", {}).get("enabled") else ()
        for c in (*COMPONENTS, *real):
            rec = _read_pidfile(self.pidsdir / f"{c}.json")
            out.append(ComponentStatus(c, rec["pid"] if rec else None, _alive(rec), ports.get(c, []),
                                       self.logs / f"{c}.log"))
        return out

    def running(self) -> bool:
        return all(s.running for s in self.status())

    # -- down --------------------------------------------------------------------------------
    def down(self, purge: bool = False, check_ports: bool = True) -> list[str]:
        """Stop every process this state dir started (even after a crash); returns what was stopped."""
        stopped = []
        from sft_dev.kueue import COMPONENT as KUEUE, Kueue
        from sft_dev.realnode import RealNode

        if (self.pidsdir / f"{KUEUE}.json").exists():  # its webhooks go first, while the apiserver answers
            stopped += Kueue(self).down()

        rn = RealNode(self)
        if any((self.pidsdir / f"{c}.json").exists() for c in (*REAL_NODE_COMPONENTS, NETWORK_POLICY_COMPONENT)) \
                or rn.owner() == self.state_dir:
            stopped += rn.down()
        cfg = self.load_config()
        if cfg and cfg.get("real_node", {}).get("enabled"):
            cfg["real_node"]["enabled"] = False
            self.config_file.write_text(json.dumps(cfg, indent=1))
        for c in reversed(COMPONENTS):
            pf = self.pidsdir / f"{c}.json"
            rec = _read_pidfile(pf)
            if _alive(rec):
                _terminate(rec["pid"], rec.get("start"))
                stopped.append(f"{c} (pid {rec['pid']})")
            pf.unlink(missing_ok=True)
        # A pidfile can be lost when `up` is killed between spawning and writing it.
        if self.state_dir.exists():
            for pid in _pids_referencing(self.state_dir):
                _terminate(pid, _proc_start_time(pid))
                stopped.append(f"stray pid {pid}")
        cfg = self.load_config()
        if cfg and check_ports:
            busy = [p for ps in self._ports(cfg).by_component().values() for p in ps if _port_in_use(p)]
            deadline = time.monotonic() + 5
            while busy and time.monotonic() < deadline:
                time.sleep(0.2)
                busy = [p for p in busy if _port_in_use(p)]
            if busy:
                raise ClusterError(f"after stopping the dev cluster, ports {busy} on {HOST} are still in use"
                                   + "".join(_port_owner(p) for p in busy[:1]))
        if purge and self.state_dir.exists():
            import shutil

            shutil.rmtree(self.state_dir)
        return stopped

    # -- up ----------------------------------------------------------------------------------
    def up(self, nodes: int = 4, gpus_per_node: int = 8, ports: Ports | None = None, wait: float = 120.0,
           log=sys.stderr, real_node: bool = False, kueue: bool = False, network_policy: bool = False) -> ClusterInfo:
        """Start (or keep) the cluster. Idempotent: a healthy cluster is left as it is, and nodes are
        added up to `nodes`; a partly dead one is restarted from its state dir. `real_node` adds one
        real kubelet node (sft_dev.realnode) beside the kwok nodes; `network_policy` also enforces
        NetworkPolicies on it (kube-router's firewall)."""
        if nodes < 0 or gpus_per_node < 0:
            raise ClusterError("nodes and gpus_per_node must be >= 0")
        if network_policy and not real_node:
            raise ClusterError("network_policy needs real_node: only the real node's pods are on a network")
        bindir = ensure_binaries(log=log)
        cfg = self.load_config()
        if cfg and ports is not None and self._ports(cfg) != ports:
            if any(s.running for s in self.status()):
                raise ClusterError(f"a dev cluster in {self.state_dir} runs with ports {self._ports(cfg)}; "
                                   "`down` it first to change ports")
            cfg["ports"] = dataclasses.asdict(ports)
        if cfg is None:
            cfg = {"ports": dataclasses.asdict(ports or Ports()), "token": secrets.token_hex(16),
                   "component_tokens": {c: secrets.token_hex(16) for c in
                                        ("kube-controller-manager", "kube-scheduler", "kwok")}}
        cfg.update(nodes=nodes, gpus_per_node=gpus_per_node)
        # The real node's kubelet authenticates as system:node:<name> (the Node authorizer's identity).
        cfg["component_tokens"].setdefault("kubelet", secrets.token_hex(16))
        # CoreDNS on the real node reads Services and EndpointSlices as a user of its own.
        cfg["component_tokens"].setdefault("coredns", secrets.token_hex(16))
        # kube-router (network policies on the real node) watches pods, namespaces and policies as its own user.
        cfg["component_tokens"].setdefault("kube-router", secrets.token_hex(16))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for d in (self.pki, self.logs, self.pidsdir):
            d.mkdir(exist_ok=True)
        self.config_file.write_text(json.dumps(cfg, indent=1))
        p = self._ports(cfg)

        status = {s.name: s for s in self.status() if s.name in COMPONENTS}
        if not all(s.running for s in status.values()) or not self._auth_current(cfg):
            dead = [c for c, s in status.items() if s.pid and not s.running]
            if dead:
                print(f"found stale state from a stopped or killed run ({', '.join(dead)} not running); "
                      "restarting the control plane", file=log)
            # Restart the whole chain: a half-running set (e.g. apiserver alive, etcd dead) is not
            # worth reasoning about, and etcd's data survives the restart.
            stopped = self.down(check_ports=False)  # _check_ports names whatever still holds a port
            self._check_ports(p, grace=10.0 if stopped else 0.0)
            self._write_pki()
            self._write_auth(cfg, p)
            self._start_all(bindir, cfg, p, wait, log)
        info = self.info()
        self._ensure_nodes(cfg, info, log)
        if real_node:
            from sft_dev.realnode import RealNode

            cfg["real_node"] = dict(cfg.get("real_node") or {}, enabled=True, network_policy=network_policy)
            self.config_file.write_text(json.dumps(cfg, indent=1))
            RealNode(self).up(cfg, log=log, network_policy=network_policy)
        if kueue:  # Kueue (sft_dev.kueue): its CRDs, the manager, its webhooks on 127.0.0.1
            from sft_dev.kueue import Kueue

            Kueue(self).up(log=log)
        return self.info()

    def _auth_current(self, cfg: dict) -> bool:
        """Whether the running apiserver was started with today's tokens and kubelet client cert
        (a cluster from before the real node existed lacks them, and is restarted)."""
        try:
            tokens = (self.pki / "tokens.csv").read_text()
        except OSError:
            return False
        rec = _read_pidfile(self.pidsdir / "kube-apiserver.json") or {}
        return (all(cfg["component_tokens"][c] in tokens for c in ("kubelet", "coredns", "kube-router"))
                and any(a.startswith("--kubelet-client-certificate=") for a in rec.get("argv", [])))

    def _check_ports(self, p: Ports, grace: float = 0.0) -> None:
        # `grace`: a component we just stopped can hold its port for a moment after it exits.
        deadline = time.monotonic() + grace
        for comp, ports in p.by_component().items():
            for port in ports:
                while _port_in_use(port) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if _port_in_use(port):
                    raise ClusterError(
                        f"port {port} on {HOST} (for {comp}) is already in use{_port_owner(port)}. "
                        "Stop what holds it, or start the dev cluster on other ports "
                        "(`sftctl dev-cluster up --port-base N`, or a separate --state-dir)."
                    )

    # -- files -------------------------------------------------------------------------------
    def _openssl(self, *args: str) -> None:
        p = subprocess.run(["openssl", *args], cwd=self.pki, capture_output=True, text=True)
        if p.returncode != 0:
            raise ClusterError(f"openssl {' '.join(args[:2])} failed: {p.stderr.strip()[-500:]}")

    def _write_pki(self) -> None:
        self._write_ca_signed_pki()
        self._write_kubelet_client_cert()

    def _write_kubelet_client_cert(self) -> None:
        """The apiserver's client certificate for kubelets (logs, exec), signed by the cluster CA."""
        if (self.pki / "apiserver-kubelet-client.crt").exists():
            return
        (self.pki / "kubelet-client.ext").write_text("extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n")
        self._openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver-kubelet-client.key",
                      "-out", "apiserver-kubelet-client.csr", "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client")
        self._openssl("x509", "-req", "-in", "apiserver-kubelet-client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                      "-CAcreateserial", "-out", "apiserver-kubelet-client.crt", "-days", "3650",
                      "-extfile", "kubelet-client.ext")

    def _write_ca_signed_pki(self) -> None:
        if (self.pki / "apiserver.crt").exists() and (self.pki / "sa.pub").exists():
            return
        self._openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                      "-days", "3650", "-subj", "/CN=sft-dev-cluster-ca")
        (self.pki / "apiserver.ext").write_text(
            "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
            "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
        )
        self._openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key",
                      "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver")
        self._openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                      "-CAcreateserial", "-out", "apiserver.crt", "-days", "3650", "-extfile", "apiserver.ext")
        self._openssl("genrsa", "-out", "sa.key", "2048")
        self._openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")

    def _kubeconfig_text(self, server: str, user: str, token: str) -> str:
        return json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "sft-dev", "cluster": {"server": server,
                                                         "certificate-authority": str(self.pki / "ca.crt")}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "sft-dev", "context": {"cluster": "sft-dev", "user": user}}],
            "current-context": "sft-dev",
        }, indent=1)

    def _write_auth(self, cfg: dict, p: Ports) -> None:
        server = f"https://{HOST}:{p.apiserver}"
        ct = cfg["component_tokens"]
        # token,user,uid,"groups": control-plane users get their bootstrap RBAC roles; kwok writes
        # node and pod status for every fake node, so it runs as a cluster admin.
        (self.pki / "tokens.csv").write_text(
            f'{cfg["token"]},sft-dev-admin,uid-admin,"system:masters"\n'
            f'{ct["kube-controller-manager"]},system:kube-controller-manager,uid-kcm\n'
            f'{ct["kube-scheduler"]},system:kube-scheduler,uid-scheduler\n'
            f'{ct["kwok"]},kwok-controller,uid-kwok,"system:masters"\n'
            f'{ct["kubelet"]},system:node:{REAL_NODE_NAME},uid-node-{REAL_NODE_NAME},"system:nodes"\n'
            f'{ct["coredns"]},{COREDNS_USER},uid-coredns\n'
            f'{ct["kube-router"]},{KUBE_ROUTER_USER},uid-kube-router\n'
        )
        os.chmod(self.pki / "tokens.csv", 0o600)
        self.kubeconfig.write_text(self._kubeconfig_text(server, "sft-dev-admin", cfg["token"]))
        os.chmod(self.kubeconfig, 0o600)
        for c in ("kube-controller-manager", "kube-scheduler", "kwok"):
            f = self.pki / f"{c}.kubeconfig"
            f.write_text(self._kubeconfig_text(server, c, ct[c]))
            os.chmod(f, 0o600)
        (self.state_dir / "kwok.yaml").write_text(kwok_stages.all_stages())

    # -- processes ---------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        logf = open(self.logs / f"{name}.log", "ab")
        logf.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        logf.flush()
        # A new session: the servers outlive `sftctl dev-cluster up` and a Ctrl-C in its terminal.
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=self.state_dir, env=env)
        logf.close()
        (self.pidsdir / f"{name}.json").write_text(
            json.dumps({"pid": proc.pid, "start": _proc_start_time(proc.pid), "argv": argv}))
        return proc

    def _log_tail(self, name: str, n: int = 12) -> str:
        """The end of a component's log, with etcd's JSON lines and Go stack traces condensed."""
        try:
            lines = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        out = []
        for line in lines:
            if line.startswith("{"):
                try:
                    rec = json.loads(line)
                    line = " ".join(str(rec[k]) for k in ("level", "msg", "error") if rec.get(k))
                except ValueError:
                    pass
            elif line.startswith(("\t", "goroutine ", "go.etcd.io/", "k8s.io/", "created by ", "main.")):
                continue
            out.append(line)
        return "\n".join(out[-n:])

    def _wait(self, name: str, proc: subprocess.Popen, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                hint = self._failure_hint(name)
                raise ClusterError(f"{name} exited with code {proc.returncode} while starting{hint}; "
                                   f"log {self.logs / (name + '.log')}:\n{self._log_tail(name)}")
            try:
                if check():
                    return
            except Exception as e:  # not up yet
                last = str(e)
            time.sleep(0.2)
        raise ClusterError(f"{name} did not become healthy within {timeout:.0f}s ({last}); "
                           f"log {self.logs / (name + '.log')}:\n{self._log_tail(name)}")

    def _failure_hint(self, name: str) -> str:
        tail = self._log_tail(name, 60)
        if "address already in use" in tail:
            return " (a port it needs is already in use)"
        if name == "etcd" and ("member" in tail and "mismatch" in tail or "data-dir" in tail
                               or "database file" in tail or "wal" in tail.lower() and "error" in tail.lower()):
            return (f" (its data dir {self.state_dir / 'etcd'} looks stale or corrupt; "
                    "`sftctl dev-cluster down --purge` removes it)")
        return ""

    def _get(self, url: str, token: str | None = None, verify: bool = True) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt")) if verify else ssl._create_unverified_context()
        req = urllib.request.Request(url)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=3, context=ctx if url.startswith("https") else None) as r:
            return r.read()

    def _start_all(self, bindir: Path, cfg: dict, p: Ports, wait: float, log) -> None:
        b = lambda n: str(bindir / n)  # noqa: E731
        t0 = time.monotonic()
        etcd = self._spawn("etcd", [
            b("etcd"), "--name=sft-dev", f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls=http://{HOST}:{p.etcd}", f"--advertise-client-urls=http://{HOST}:{p.etcd}",
            f"--listen-peer-urls=http://{HOST}:{p.etcd_peer}",
            f"--initial-advertise-peer-urls=http://{HOST}:{p.etcd_peer}",
            f"--initial-cluster=sft-dev=http://{HOST}:{p.etcd_peer}",
            "--log-level=warn",
            # A throwaway dev/test store: durability is not worth the fsync latency.
            "--unsafe-no-fsync",
        ])
        self._wait("etcd", etcd, lambda: b'"health":"true"' in self._get(f"http://{HOST}:{p.etcd}/health"), wait)

        api = self._spawn("kube-apiserver", [
            b("kube-apiserver"), f"--etcd-servers=http://{HOST}:{p.etcd}",
            f"--bind-address={HOST}", f"--secure-port={p.apiserver}",
            f"--tls-cert-file={self.pki / 'apiserver.crt'}", f"--tls-private-key-file={self.pki / 'apiserver.key'}",
            f"--client-ca-file={self.pki / 'ca.crt'}",
            # Front-proxy settings, so the controller-manager and scheduler find a CA bundle for
            # request-header auth instead of logging its absence every few seconds.
            f"--requestheader-client-ca-file={self.pki / 'ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--token-auth-file={self.pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            # For `kubectl logs` and exec on the real node: kubelet trusts this CA-signed client.
            f"--kubelet-client-certificate={self.pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={self.pki / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.pki / 'sa.pub'}",
            f"--service-account-signing-key-file={self.pki / 'sa.key'}",
            # No advertise address on loopback: the kubernetes Service's endpoints reject it.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            f"--cert-dir={self.pki}",
        ])
        token = cfg["token"]
        self._wait("kube-apiserver", api,
                   lambda: self._get(f"https://{HOST}:{p.apiserver}/readyz", token) == b"ok", wait)

        kcm = self._spawn("kube-controller-manager", [
            b("kube-controller-manager"), f"--kubeconfig={self.pki / 'kube-controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={self.pki / 'kube-controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={self.pki / 'kube-controller-manager.kubeconfig'}",
            f"--bind-address={HOST}", f"--secure-port={p.controller_manager}",
            "--leader-elect=false", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Faster node-loss detection than the production defaults, for tests.
            "--node-monitor-grace-period=20s",
            "--controllers=*,-cloud-node-lifecycle,-route,-service",
        ])
        sched = self._spawn("kube-scheduler", [
            b("kube-scheduler"), f"--kubeconfig={self.pki / 'kube-scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={self.pki / 'kube-scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={self.pki / 'kube-scheduler.kubeconfig'}",
            f"--bind-address={HOST}", f"--secure-port={p.scheduler}", "--leader-elect=false",
        ])
        kwok = self._spawn("kwok", [
            b("kwok"), f"--kubeconfig={self.pki / 'kwok.kubeconfig'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={kwok_stages.NODE_ANNOTATION}=fake",
            f"--server-address={HOST}:{p.kwok}",
            "--node-lease-duration-seconds=40",
            "--cidr=10.244.0.1/16",
            f"--config={self.state_dir / 'kwok.yaml'}",
        ])
        self._wait("kube-controller-manager", kcm,
                   lambda: self._get(f"https://{HOST}:{p.controller_manager}/healthz", verify=False) == b"ok", wait)
        self._wait("kube-scheduler", sched,
                   lambda: self._get(f"https://{HOST}:{p.scheduler}/healthz", verify=False) == b"ok", wait)
        self._wait("kwok", kwok, lambda: self._get(f"http://{HOST}:{p.kwok}/healthz") == b"ok", wait)
        # Pods can only be created once the service-account controller made `default` in a namespace.
        self._wait("kube-controller-manager", kcm, lambda: self._get(
            f"https://{HOST}:{p.apiserver}/api/v1/namespaces/default/serviceaccounts/default", token) != b"", wait)
        print(f"control plane up in {time.monotonic() - t0:.1f}s", file=log)

    # -- nodes -------------------------------------------------------------------------------
    def node_manifest(self, name: str, gpus: int, index: int, labels: dict[str, str] | None = None,
                      taints: list[dict] | None = None) -> dict:
        resources = {"cpu": "192", "memory": "2Ti", "pods": "110", "ephemeral-storage": "30Ti",
                     "nvidia.com/gpu": str(gpus)}
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {kwok_stages.NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                    "type": "kwok", "node.kubernetes.io/instance-type": INSTANCE_TYPE,
                    "topology.kubernetes.io/zone": f"dev-{'ab'[index % 2]}",
                    "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": GPU_PRODUCT,
                    "nvidia.com/gpu.count": str(gpus), "nvidia.com/gpu.memory": "81559",
                    **(labels or {}),
                },
            },
            "spec": {"taints": taints} if taints else {},
            "status": {"allocatable": resources, "capacity": resources},
        }

    def add_nodes(self, names: list[str], gpus: int, labels: dict[str, str] | None = None,
                  taints: list[dict] | None = None) -> None:
        """Create (or update) kwok GPU nodes; kwok makes them Ready within a second or two."""
        if not names:
            return
        items = [self.node_manifest(n, gpus, i, labels, taints) for i, n in enumerate(names)]
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        p = subprocess.run([str(kubectl()), "--kubeconfig", str(self.kubeconfig), "apply", "-f", "-"],
                           input=doc, capture_output=True, text=True)
        if p.returncode != 0:
            raise ClusterError(f"creating kwok nodes failed: {p.stderr.strip()}")

    def _ensure_nodes(self, cfg: dict, info: ClusterInfo, log, timeout: float = 60.0) -> None:
        names = [f"gpu-node-{i}" for i in range(cfg["nodes"])]
        self.add_nodes(names, cfg["gpus_per_node"])
        cfg["node_names"] = names
        self.config_file.write_text(json.dumps(cfg, indent=1))
        deadline = time.monotonic() + timeout
        while True:
            out = json.loads(self._get(f"{info.server}/api/v1/nodes", info.token))
            ready = {n["metadata"]["name"] for n in out["items"]
                     if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))}
            missing = [n for n in names if n not in ready]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"kwok nodes {missing} did not become Ready within {timeout:.0f}s; "
                                   f"log {self.logs / 'kwok.log'}:\n{self._log_tail('kwok')}")
            time.sleep(0.3)


# ---------------------------------------------------------------------------------------------
# module-level API


def up(nodes: int = 4, gpus_per_node: int = 8, state_dir: Path | str | None = None, ports: Ports | None = None,
       log=sys.stderr) -> ClusterInfo:
    return DevCluster(state_dir).up(nodes=nodes, gpus_per_node=gpus_per_node, ports=ports, log=log)


def down(state_dir: Path | str | None = None, purge: bool = False) -> list[str]:
    return DevCluster(state_dir).down(purge=purge)


def status(state_dir: Path | str | None = None) -> list[ComponentStatus]:
    return DevCluster(state_dir).status()
