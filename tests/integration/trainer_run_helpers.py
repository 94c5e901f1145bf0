"""Helpers of the trainer integration tests: a small SFTJob for the real trainer entrypoint
(`python -m sft_trainer`, the tiny built-in model on a slice of the quickstart data) and a launcher
that starts it the way a pod does (rendezvous env, its own session so that tests can signal it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
QUICKSTART_DATA = REPO / "examples" / "data" / "quickstart" / "train.jsonl"


def entrypoint_job(tmp: Path, name: str, checkpoints_uri: str, *, max_steps: int, every_steps: int,
                   keep: int = 3, endpoint: str | None = None, rows: int = 300,
                   validation: float = 0.0, eval_every: int | None = None, nodes: int = 1) -> Path:
    """A small SFTJob for the real trainer entrypoint: the tiny model on a slice of the
    quickstart data (no test split), checkpoints to ``checkpoints_uri``."""
    data = tmp / "train.jsonl"
    if not data.exists():
        with open(QUICKSTART_DATA) as src:  # a small slice keeps preflight and tokenizing quick
            data.write_text("".join(line for _, line in zip(range(rows), src)))
    spec = {
        "model": {"uri": "builtin://tiny-llama"},
        "datasets": [{"uri": str(data), "format": "messages"}],
        "split": {"validation": validation, "test": 0.0, "seed": 1},
        "method": {"type": "full"},
        "training": {"maxSteps": max_steps, "learningRate": 1e-3, "perDeviceBatchSize": 1,
                     "maxSeqLength": 256, "packing": True, "lossOn": "assistant",
                     "gradientCheckpointing": False, "precision": "fp32", "loggingSteps": 1},
        "checkpoints": {"uri": checkpoints_uri, "everySteps": every_steps, "keep": keep},
        "workers": {"nodes": nodes, "gpusPerNode": 0},
    }
    if eval_every:
        spec["eval"] = {"everySteps": eval_every}
    if endpoint:  # credentials come from the environment, as the operator injects secretRef
        spec["storage"] = {"endpoint": endpoint, "secretRef": "s3-credentials"}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob",
                                    "metadata": {"name": name}, "spec": spec}))
    return path


def launch_entrypoint(job: Path, workdir: Path, log_path: Path, env: dict | None = None,
                      nproc: int = 1):
    """Start ``python -m sft_trainer`` as a pod would (rendezvous env for one node)."""
    full_env = {**os.environ, "NNODES": "1", "NODE_RANK": "0", "NPROC_PER_NODE": str(nproc),
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                "SFT_METRICS_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", **(env or {})}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SFT_JOB_NAME", "SFT_JOB_NAMESPACE"):
        full_env.pop(k, None)
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "sft_trainer", "--config", str(job), "--workdir", str(workdir)],
            stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    finally:
        log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
