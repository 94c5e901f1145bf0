"""The trainer entrypoint (`python -m sft_trainer`) with NPROC_PER_NODE=2 launches torchrun: two
gloo processes over 127.0.0.1 that see world size 2 and commit checkpoints to SeaweedFS through
the distributed commit path (barrier, per-node upload, gathered manifest, marker by rank 0)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from trainer_run_helpers import entrypoint_job, free_port, launch_entrypoint

from sft_trainer.checkpoint_store import CheckpointStore
from sft_trainer.exit_codes import INTERRUPTED

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


def test_two_nodes_sigterm_on_one_node_stops_both_with_one_checkpoint(s3, s3_bucket, tmp_path):
    """Two "nodes" (NNODES=2, one process each, separate workdirs as on separate machines).

    - Each node's local rank 0 uploads the files its own node wrote (rank 1's RNG state exists only
      on node 1), and world rank 0 writes one marker listing both nodes' files.
    - SIGTERM reaches only node 0's entrypoint (as when one pod is deleted): the ranks agree on the
      stop step, both save at that step, one checkpoint is committed, and both exit INTERRUPTED.
    """
    uri = f"s3://{s3_bucket}/nodes"
    job = entrypoint_job(tmp_path, "two-nodes", uri, max_steps=400, every_steps=2, keep=2,
                         endpoint=s3.endpoint, nodes=2)
    port = str(free_port())
    procs = []
    for node in (0, 1):
        env = {**s3.env(), "NNODES": "2", "NODE_RANK": str(node), "MASTER_PORT": port}
        procs.append(launch_entrypoint(job, tmp_path / f"node{node}", tmp_path / f"node{node}.log",
                                       env, nproc=1))
    log0 = tmp_path / "node0.log"
    try:
        deadline = time.monotonic() + 300
        while "committed checkpoint 2 to" not in (log0.read_text() if log0.exists() else ""):
            assert all(p.poll() is None for p in procs), log0.read_text()[-3000:]
            assert time.monotonic() < deadline, "the first checkpoint was never committed"
            time.sleep(0.1)
        procs[0].send_signal(signal.SIGTERM)  # the pod's PID 1 only; it forwards to torchrun
        rcs = [p.wait(120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    logs = [(tmp_path / f"node{n}.log").read_text() for n in (0, 1)]
    assert rcs == [INTERRUPTED, INTERRUPTED], logs[0][-3000:] + logs[1][-3000:]
    assert "world size 2" in logs[0]

    store = CheckpointStore(uri, {"endpoint_url": s3.endpoint, "key": s3.access_key,
                                  "secret": s3.secret_key})
    latest = store.latest_committed()
    stopped = latest.step
    assert 3 <= stopped < 400
    assert f"stopped by SIGTERM at step {stopped}" in logs[0]
    files = {f["path"] for f in latest.manifest["files"]}
    # rank 1's RNG state exists only on node 1's disk: node 1 uploaded it
    assert not list((tmp_path / "node0").rglob("rng_state_1.pth"))
    assert list((tmp_path / "node1").rglob(f"checkpoint-{stopped}/rng_state_1.pth"))
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json", "optimizer.pt"} <= files
    assert store.uncommitted() == []
