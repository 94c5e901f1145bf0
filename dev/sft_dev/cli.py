"""`sftctl dev-cluster up | down | status | env | build`: a local Kubernetes control plane with
kwok GPU nodes, for development and tests. Mounted by sftctl as a typer sub-app."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from sft_dev import build as build_mod
from sft_dev.build import BuildError
from sft_dev.cluster import REAL_NODE_NAME, ClusterError, DevCluster, Ports
from sft_dev.kueue import KueueError
from sft_dev.realnode import BRIDGE, NODE_IP, NODE_LABEL, RealNodeError
from sft_dev.tools import ToolError, helm, kubectl

app = typer.Typer(help="A local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler) "
                       "with kwok GPU nodes. No Docker needed.", no_args_is_help=True)

StateDir = typer.Option(None, "--state-dir", help="Where the cluster keeps its files "
                        "[default: $SFT_STATE or ~/.local/state/sft-operator/dev-cluster]")


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _tools_path() -> str:
    """The directories of the pinned kubectl and helm (helm is extracted once from its wheel, then
    cached), joined for PATH; those that cannot be found are left out."""
    dirs: list[str] = []
    for tool in (kubectl, helm):
        try:
            d = str(tool().parent)
        except ToolError:
            continue
        if d not in dirs:
            dirs.append(d)
    return ":".join(dirs)


@app.command()
def up(
    nodes: int = typer.Option(4, min=0, help="Number of kwok GPU nodes."),
    gpus_per_node: int = typer.Option(8, min=0, help="nvidia.com/gpu capacity of each node."),
    port_base: Optional[int] = typer.Option(None, help="Use ports N (apiserver), N+1 (etcd), N+2 (etcd peer), "
                                            "N+3 (controller-manager), N+4 (scheduler), N+5 (kwok)."),
    real_node: bool = typer.Option(False, "--real-node", help="Also run one real kubelet node (containerd, runc, "
                                   "a bridge network) where pods really run; loads the images `sftctl images "
                                   "build` made. Needs root."),
    kueue: bool = typer.Option(False, "--kueue", help="Also run Kueue (built from the Go module proxy, its CRDs "
                               "from the module cache, its webhooks on 127.0.0.1) for batch/v1 Jobs."),
    network_policy: bool = typer.Option(False, "--network-policy", help="With --real-node: enforce NetworkPolicies "
                                        "on it (kube-router's firewall; sets net.bridge.bridge-nf-call-iptables=1 "
                                        "until `down`)."),
    state_dir: Optional[Path] = StateDir,
) -> None:
    """Start the cluster (idempotent: a running one is left alone; nodes are added up to --nodes)."""
    ports = None
    if port_base is not None:
        if not 1024 <= port_base <= 65530:
            _fail(ValueError(f"--port-base {port_base}: must be between 1024 and 65530"))
        ports = Ports(*(port_base + i for i in range(6)))
    try:
        info = DevCluster(state_dir).up(nodes=nodes, gpus_per_node=gpus_per_node, ports=ports, real_node=real_node,
                                        kueue=kueue, network_policy=network_policy)
    except (ClusterError, BuildError, ToolError, RealNodeError, KueueError) as e:
        _fail(e)
    typer.echo(f"dev cluster running: {info.server}, {len(info.nodes)} kwok GPU node(s) "
               f"with nvidia.com/gpu={gpus_per_node}")
    if kueue:
        typer.echo("kueue: running (label Jobs or SFTJobs with kueue.x-k8s.io/queue-name to queue them)")
    if real_node:
        typer.echo(f"real node: {REAL_NODE_NAME} ({NODE_IP} on bridge {BRIDGE}); select it with "
                   f"nodeSelector {{{NODE_LABEL}: \"true\"}}")
        if network_policy:
            typer.echo("network policies: enforced on the real node (kube-router's firewall)")
    typer.echo(f"kubeconfig: {info.kubeconfig}")
    typer.echo("use it with:")
    typer.echo(f"  export KUBECONFIG={shlex.quote(str(info.kubeconfig))}")
    path = _tools_path()
    if path:
        typer.echo(f"  export PATH={shlex.quote(path)}:$PATH   # the pinned kubectl and helm")
    typer.echo("  kubectl get nodes")


@app.command()
def down(
    purge: bool = typer.Option(False, help="Also delete the state dir (etcd data, certificates, kubeconfig)."),
    state_dir: Optional[Path] = StateDir,
) -> None:
    """Stop every process the cluster started (also after a crash) and free its ports."""
    try:
        stopped = DevCluster(state_dir).down(purge=purge)
    except ClusterError as e:
        _fail(e)
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    state_dir: Optional[Path] = StateDir,
) -> None:
    """Say which components run, with their pids, ports and logs. Exit 1 unless all run."""
    c = DevCluster(state_dir)
    st = c.status()
    cfg = c.load_config()
    if as_json:
        typer.echo(json.dumps({
            "state_dir": str(c.state_dir), "kubeconfig": str(c.kubeconfig) if cfg else None,
            "components": [{"name": s.name, "pid": s.pid, "running": s.running, "ports": s.ports,
                            "log": str(s.log)} for s in st],
        }, indent=1))
    else:
        if cfg is None:
            typer.echo(f"no dev cluster in {c.state_dir} (start one with `sftctl dev-cluster up`)")
            raise typer.Exit(1)
        for s in st:
            state = typer.style("running", fg=typer.colors.GREEN) if s.running else typer.style(
                "stopped", fg=typer.colors.RED)
            ports = ",".join(map(str, s.ports))
            typer.echo(f"{s.name:<24} {state:<8} pid={s.pid or '-':<8} ports={ports:<12} log={s.log}")
        if cfg:
            typer.echo(f"kubeconfig: {c.kubeconfig}")
    raise typer.Exit(0 if all(s.running for s in st) else 1)


@app.command()
def env(state_dir: Optional[Path] = StateDir) -> None:
    """Print shell exports for the cluster: eval "$(sftctl dev-cluster env)"."""
    c = DevCluster(state_dir)
    if c.load_config() is None:
        _fail(ClusterError(f"no dev cluster in {c.state_dir} (run `sftctl dev-cluster up`)"))
    typer.echo(f"export KUBECONFIG={shlex.quote(str(c.kubeconfig))}")
    path = _tools_path()
    if path:
        typer.echo(f"export PATH={shlex.quote(path)}:$PATH")


@app.command("build")
def build_cmd(force: bool = typer.Option(False, help="Rebuild even if cached binaries exist."),
              real_node: bool = typer.Option(False, "--real-node", help="Also build containerd, runc, kubelet, "
                                             "CoreDNS and kube-router.")
              ) -> None:
    """Build (or reuse) etcd, kube-apiserver, controller-manager, scheduler and kwok from the Go module proxy."""
    rc = build_mod.main(["--force"] if force else [])
    if rc == 0 and real_node:
        from sft_dev import realnode_build

        rc = realnode_build.main(["--force"] if force else [])
    raise typer.Exit(rc)


images_app = typer.Typer(help="The operator and trainer images, built from the project's Dockerfiles without a "
                              "Docker daemon (buildah on a Debian base made by mmdebstrap).", no_args_is_help=True)


@images_app.command("build")
def images_build(
    names: Optional[list[str]] = typer.Argument(None, help="operator, trainer (default: both)."),
    state_dir: Optional[Path] = StateDir,
) -> None:
    """Build (or reuse, by a content hash of their inputs) sft-operator/operator:dev and sft-operator/trainer:dev
    (the trainer's CPU variant). When the dev cluster's real node is up, also load them into its containerd."""
    from sft_dev import images, realnode

    try:
        built = images.build(tuple(names or ("operator", "trainer")))
    except BuildError as e:
        _fail(e)
    c = DevCluster(state_dir)
    load = realnode.RealNode(c).alive("containerd") and realnode.running()
    for b in built:
        state = "cached" if b.cached else f"built in {b.seconds:.0f}s"
        typer.echo(f"{b.full_ref}: {b.size_bytes / 2**20:.0f} MiB ({state}), {b.archive}")
        if load:
            try:
                if realnode.import_archive(b.archive, b.full_ref, b.digest, sys.stderr):
                    typer.echo(f"  loaded into the real node's containerd ({realnode.NAMESPACE} namespace)")
            except RealNodeError as e:
                _fail(e)


if __name__ == "__main__":
    sys.exit(app())
