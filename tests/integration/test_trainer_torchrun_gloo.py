"""The trainer entrypoint (`python -m sft_trainer`) with NPROC_PER_NODE=2 launches torchrun: two
gloo processes over 127.0.0.1 that see world size 2 and commit checkpoints to SeaweedFS through
the distributed commit path (barrier, per-node upload, gathered manifest, marker by rank 0)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ckpt_trainer_harness import free_port

from sft_trainer.checkpoint_store import CheckpointStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
QUICKSTART_DATA = REPO / "examples" / "data" / "quickstart" / "train.jsonl"


def job_yaml(tmp: Path, checkpoints_uri: str, endpoint: str) -> Path:
    data = tmp / "train.jsonl"
    with open(QUICKSTART_DATA) as src:  # a small slice keeps preflight and tokenizing quick
        data.write_text("".join(line for _, line in zip(range(300), src)))
    job = {
        "apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob",
        "metadata": {"name": "ddp-gloo"},
        "spec": {
            "model": {"uri": "builtin://tiny-llama"},
            "datasets": [{"uri": str(data), "format": "messages"}],
            "split": {"validation": 0.0, "test": 0.0, "seed": 1},
            "method": {"type": "full"},
            "training": {"maxSteps": 6, "learningRate": 1e-3, "perDeviceBatchSize": 1,
                         "maxSeqLength": 256, "packing": True, "lossOn": "assistant",
                         "gradientCheckpointing": False, "precision": "fp32", "loggingSteps": 1},
            "checkpoints": {"uri": checkpoints_uri, "everySteps": 3, "keep": 2},
            "storage": {"endpoint": endpoint, "secretRef": "s3-credentials"},  # creds: env
            "workers": {"nodes": 1, "gpusPerNode": 0},
        },
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_two_process_gloo_run_commits_to_s3(s3, s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/ddp"
    cfg = job_yaml(tmp_path, uri, s3.endpoint)
    env = {**os.environ, **s3.env(), "NNODES": "1", "NODE_RANK": "0", "NPROC_PER_NODE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "SFT_METRICS_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SFT_JOB_NAME", "SFT_JOB_NAMESPACE"):
        env.pop(k, None)
    log = tmp_path / "trainer.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sft_trainer", "--config", str(cfg), "--workdir",
             str(tmp_path / "work")],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        rc = proc.wait(400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == 0, text[-4000:]
    assert "world size 2" in text  # rank 0's progress report: status.worldSize
    result = json.loads((tmp_path / "work" / "result.json").read_text())
    assert result["global_step"] == 6

    store = CheckpointStore(uri, {"endpoint_url": s3.endpoint, "key": s3.access_key,
                                  "secret": s3.secret_key})
    assert [c.step for c in store.committed()] == [3, 6]
    files = {f["path"] for f in store.latest_committed().manifest["files"]}
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json"} <= files
    # one RNG state per rank: both processes took part in the checkpoint
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= files
    assert store.uncommitted() == []
    assert text.count("committed checkpoint 6 to") == 1  # only rank 0 commits and logs
