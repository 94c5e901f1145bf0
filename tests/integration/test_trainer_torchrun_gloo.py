"""The trainer entrypoint (`python -m sft_trainer`) with NPROC_PER_NODE=2 launches torchrun: two
gloo processes over 127.0.0.1 that see world size 2 and commit checkpoints to SeaweedFS through
the distributed commit path (barrier, per-node upload, gathered manifest, marker by rank 0)."""

from __future__ import annotations

import json
import os
import signal

import pytest
from trainer_run_helpers import entrypoint_job, launch_entrypoint

from sft_trainer.checkpoint_store import CheckpointStore

pytestmark = pytest.mark.slow


def test_two_process_gloo_run_commits_to_s3(s3, s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/ddp"
    job = entrypoint_job(tmp_path, "ddp-gloo", uri, max_steps=6, every_steps=3, keep=2,
                         endpoint=s3.endpoint)
    log = tmp_path / "trainer.log"
    proc = launch_entrypoint(job, tmp_path / "work", log, s3.env(), nproc=2)
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
