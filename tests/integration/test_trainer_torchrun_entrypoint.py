"""The pod's path end to end on the CPU: ``python -m sft_trainer`` reads the rendezvous env, launches
torchrun with two gloo processes over 127.0.0.1, both see world size 2, and the run commits its
checkpoints to a real SeaweedFS S3 named by ``spec.storage`` (credentials from the environment)."""

from __future__ import annotations

import json
import socket

import pytest
from trainer_job_factory import job_doc, run_entrypoint, trainer_env, write_data, write_job

from sft_trainer.checkpoint_store import CheckpointStore

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_via_the_entrypoint_commit_to_s3(s3, s3_bucket, tmp_path):
    write_data(tmp_path / "train.jsonl", n=120)
    uri = f"s3://{s3_bucket}/ddp/"
    doc = job_doc(tmp_path, training={"maxSteps": 6}, eval={"everySteps": 3},
                  checkpoints={"uri": uri, "everySteps": 3, "keep": 2},
                  # in a pod the operator injects the secret as AWS_* env; here the test sets them
                  storage={"secretRef": "s3-creds", "endpoint": s3.endpoint, "region": s3.region})
    env = trainer_env(NNODES="1", NODE_RANK="0", NPROC_PER_NODE="2", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()), AWS_ACCESS_KEY_ID=s3.access_key,
                      AWS_SECRET_ACCESS_KEY=s3.secret_key)
    res = run_entrypoint(write_job(tmp_path, doc), tmp_path / "w", env=env, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    result = json.loads((tmp_path / "w" / "result.json").read_text())
    assert result["world_size"] == 2 and result["global_step"] == 6
    assert sorted((tmp_path / "w").glob("exit-code-rank*")) == [tmp_path / "w" / "exit-code-rank0",
                                                                 tmp_path / "w" / "exit-code-rank1"]

    store = CheckpointStore(uri, s3.storage_options())
    assert [c.step for c in store.committed()] == [3, 6]
    files = {f["path"] for f in store.latest_committed().manifest["files"]}
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json", "rng_state_0.pth", "rng_state_1.pth"} <= files
    assert store.fs.exists(f"{s3_bucket}/ddp/loss.png")
