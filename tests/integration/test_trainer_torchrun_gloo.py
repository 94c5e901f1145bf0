"""Two processes under torchrun on gloo over 127.0.0.1 see world size 2 and commit a checkpoint to
SeaweedFS: the distributed commit path (barrier, per-node upload, gathered manifest)."""

from __future__ import annotations

import json
import os
import signal

import pytest
from ckpt_trainer_harness import launch, train_losses

from sft_trainer.checkpoint_store import CheckpointStore

pytestmark = pytest.mark.slow


def test_two_process_gloo_run_commits_to_s3(s3, s3_bucket, tmp_path):
    opts = s3.storage_options()
    uri = f"s3://{s3_bucket}/ddp"
    cfg = {"store_uri": uri, "storage_options": opts, "output_dir": str(tmp_path / "out"),
           "max_steps": 6, "save_steps": 3, "keep": 2, "result": str(tmp_path / "result.json")}
    log = tmp_path / "torchrun.log"
    proc = launch(cfg, log, torchrun_nproc=2)
    try:
        rc = proc.wait(300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == 0, text[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    assert result["backend"] == "gloo"
    assert "world size 2" in text  # the progress channel reports status.worldSize
    assert sorted(train_losses(result)) == list(range(1, 7))

    store = CheckpointStore(uri, opts)
    assert [c.step for c in store.committed()] == [3, 6]
    latest = store.latest_committed()
    files = {f["path"] for f in latest.manifest["files"]}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= files
    # one RNG state per rank: both ranks' states are in the checkpoint
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= files
    assert store.uncommitted() == []
    # exactly one commit per checkpoint: only rank 0 reports it
    assert text.count("committed checkpoint 6 to") == 1
