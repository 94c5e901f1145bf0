"""``python -m sft_trainer``: the trainer image's entrypoint.

Reads the SFTJob from ``--config`` (default ``/etc/sft/job.yaml``, mounted from the attempt's
ConfigMap) and the rendezvous env (MASTER_ADDR, MASTER_PORT, NNODES, NODE_RANK, NPROC_PER_NODE,
WORLD_SIZE). With more than one process in the gang it launches torchrun for ``gpusPerNode``
processes on this node (on the CPU: gloo, NPROC_PER_NODE processes, default 1); each worker runs
``train()``. Exit codes: see ``sft_trainer.exit_codes``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from . import exit_codes

DEFAULT_CONFIG = "/etc/sft/job.yaml"
TERMINATION_LOG = "/dev/termination-log"
log = logging.getLogger("sft_trainer")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sft_trainer", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.environ.get("SFT_CONFIG", DEFAULT_CONFIG),
                   help=f"SFTJob YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--workdir", default=os.environ.get("SFT_WORKDIR") or os.path.join(tempfile.gettempdir(), "sft-work"),
                   help="local scratch directory for checkpoints before upload, resume downloads, reports "
                        "(default SFT_WORKDIR, else sft-work in TMPDIR or /tmp: the pod's scratch volume)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus /metrics port on rank 0 (default SFT_METRICS_PORT or 9400)")
    return p.parse_args(argv)


def _fail(code: int, message: str) -> int:
    print(message, file=sys.stderr, flush=True)
    try:  # Kubernetes shows this as the container's termination message
        if os.path.exists(TERMINATION_LOG) and os.access(TERMINATION_LOG, os.W_OK):
            Path(TERMINATION_LOG).write_text(message[:4000])
    except OSError:
        pass
    return code


def _load(path: str):
    from sft_api import SFTJobLoadError, load_sftjob

    try:
        return load_sftjob(Path(path))
    except FileNotFoundError:
        raise exit_codes.ConfigError(f"{path}: SFTJob file not found")
    except SFTJobLoadError as e:
        raise exit_codes.ConfigError(str(e))


def _outputs_under(job, workdir: Path) -> None:
    """Scheme-less relative checkpoint and output paths go under the work dir, the pod's writable
    scratch (pod-local: they vanish with the pod). Scheme-less inputs stay relative to the working
    directory, the image's read-only one, which holds the examples' data."""
    for holder in (job.spec.checkpoints, job.spec.output):
        uri = getattr(holder, "uri", None)
        if uri and "://" not in uri and not os.path.isabs(uri):
            holder.uri = str(workdir / uri)


def _exit_file(workdir: Path, rank: int) -> Path:
    return workdir / f"exit-code-rank{rank}"


def worker(args: argparse.Namespace) -> int:
    """One training process (rank): train, and record the exit code for the launcher."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        job = _load(args.config)
        from .train import train

        _outputs_under(job, workdir)
        result = train(job, workdir=workdir, metrics_port=args.metrics_port)
        code, msg = result.exit_code, result.message
    except exit_codes.TrainerError as e:
        code, msg = e.exit_code, f"{e.reason}: {e}" if not str(e).startswith(e.reason) else str(e)
    except Exception as e:  # noqa: BLE001 - anything unexpected is retryable, with its traceback logged
        log.exception("training failed")
        code, msg = exit_codes.RETRYABLE, f"{type(e).__name__}: {e}"
    _exit_file(workdir, rank).write_text(str(code))
    if code != exit_codes.SUCCESS:
        return _fail(code, msg)
    return code


def launch(args: argparse.Namespace) -> int:
    """Start torchrun for this node's processes and return the most telling exit code."""
    from .config import Topology

    job = _load(args.config)
    topo = Topology.from_env(job.spec.workers.gpus_per_node)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for f in workdir.glob("exit-code-rank*"):  # a previous attempt's, on a reused scratch volume
        f.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={topo.nnodes}", f"--node_rank={topo.node_rank}", f"--nproc_per_node={topo.nproc_per_node}",
        f"--master_addr={topo.master_addr}", f"--master_port={topo.master_port}",
        "-m", "sft_trainer", "--config", args.config, "--workdir", args.workdir,
    ]
    if args.metrics_port is not None:
        cmd += ["--metrics-port", str(args.metrics_port)]
    env = dict(os.environ)
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):  # torchrun sets the real ones per worker
        env.pop(k, None)
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum, _frame):  # the pod's SIGTERM must reach the workers so they can checkpoint
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    rc = proc.wait()
    # torchrun reports any worker failure as 1; the workers' own codes say why
    codes = [int(f.read_text()) for f in workdir.glob("exit-code-rank*") if f.read_text().strip().isdigit()]
    for preferred in (exit_codes.TOPOLOGY_MISMATCH, exit_codes.CONFIG_ERROR, exit_codes.SANITY_CHECK_FAILED,
                      exit_codes.GOLDEN_REGRESSION, exit_codes.INTERRUPTED):
        if preferred in codes:
            return preferred
    return rc if rc != 0 else max(codes, default=0)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if "LOCAL_RANK" in os.environ:  # started by torchrun
        return worker(args)
    try:
        job = _load(args.config)
        from .config import Topology

        topo = Topology.from_env(job.spec.workers.gpus_per_node)
    except exit_codes.TrainerError as e:
        return _fail(e.exit_code, f"{e.reason}: {e}")
    # a single process needs no launcher, except DeepSpeed, which wants torchrun's rendezvous env
    if topo.nnodes == 1 and topo.nproc_per_node == 1 and job.spec.training.deepspeed is None:
        return worker(args)
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
