"""The trainer entrypoint (`python -m sft_trainer`) with NPROC_PER_NODE=2 launches torchrun: two
gloo processes over 127.0.0.1 that see world size 2 and commit checkpoints to SeaweedFS through
the distributed commit path (barrier, per-node upload, gathered manifest, marker by rank 0)."""

from __future__ import annotations

import json
import os
import signal

import pytest
from trainer_run_helpers import entrypoint_job, free_port, launch_entrypoint

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


def test_two_nodes_with_separate_disks_commit_one_checkpoint(s3, s3_bucket, tmp_path):
    """Two "nodes" (NNODES=2, one process each, separate workdirs as on separate machines): each
    node's local rank 0 uploads the files its node wrote, world rank 0 writes one marker listing
    both nodes' files, and a resume on either node finds everything."""
    uri = f"s3://{s3_bucket}/nodes"
    job = entrypoint_job(tmp_path, "two-nodes", uri, max_steps=4, every_steps=2, keep=2,
                         endpoint=s3.endpoint, nodes=2)
    port = str(free_port())
    procs = []
    for node in (0, 1):
        env = {**s3.env(), "NNODES": "2", "NODE_RANK": str(node), "MASTER_PORT": port}
        procs.append(launch_entrypoint(job, tmp_path / f"node{node}", tmp_path / f"node{node}.log",
                                       env, nproc=1))
    try:
        rcs = [p.wait(400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    logs = [(tmp_path / f"node{n}.log").read_text() for n in (0, 1)]
    assert rcs == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "world size 2" in logs[0]

    store = CheckpointStore(uri, {"endpoint_url": s3.endpoint, "key": s3.access_key,
                                  "secret": s3.secret_key})
    assert [c.step for c in store.committed()] == [2, 4]
    files = {f["path"] for f in store.latest_committed().manifest["files"]}
    # rank 1's RNG state exists only on node 1's disk: node 1 uploaded it
    assert not list((tmp_path / "node0").rglob("rng_state_1.pth"))
    assert list((tmp_path / "node1").rglob("rng_state_1.pth"))
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json", "optimizer.pt"} <= files
    assert store.uncommitted() == []
