"""A distributed commit that fails on one rank fails on every rank, in bounded time.

Two "nodes" (NNODES=2, one gloo process each, separate work directories) commit to one
file:// checkpoint prefix. On the second attempt node 1 runs in its own mount namespace where the
prefix is mounted read-only, so its upload of its part of the checkpoint (its RNG state) fails
with a real EROFS after the commit's retries.

Every rank now reaches the gather with its error, so all of them fail the commit with the failing
rank's message, exit 1 (retryable) within seconds, and the previous committed checkpoint
stays the latest: the failed step has no commit marker. Measured with the code before (rank 1
raised before the gather): under gloo, rank 0 died 1.3 s after rank 1's process exited, with only
"Connection closed by peer" and no word of the upload; nothing but the peer's exit bounded it
(NCCL may notice a dead peer only at the process-group timeout: not measured here, no GPUs)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainer_run_helpers import entrypoint_job, free_port

from sft_trainer.checkpoint_store import CheckpointStore
from sft_trainer.exit_codes import INTERRUPTED, RETRYABLE

pytestmark = pytest.mark.slow


def _launch(job: Path, workdir: Path, log: Path, node: int, port: str, read_only: Path | None = None):
    env = {**os.environ, "NNODES": "2", "NODE_RANK": str(node), "NPROC_PER_NODE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "SFT_METRICS_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SFT_JOB_NAME", "SFT_JOB_NAMESPACE"):
        env.pop(k, None)
    argv = [sys.executable, "-m", "sft_trainer", "--config", str(job), "--workdir", str(workdir)]
    if read_only is not None:  # this node sees the checkpoint prefix read-only; nothing else changes
        ro = shlex.quote(str(read_only))
        argv = ["unshare", "-m", "sh", "-c",
                f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec {shlex.join(argv)}"]
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_all(procs, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


def _wait_for(log: Path, text: str, procs, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in (log.read_text() if log.exists() else ""):
        assert all(p.poll() is None for p in procs), log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"never logged {text!r}"
        time.sleep(0.1)


def test_upload_failure_on_one_rank_fails_every_rank_quickly(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    job = entrypoint_job(tmp_path, "commit-fail", f"file://{ckpt}", max_steps=400, every_steps=2, keep=3, nodes=2)
    logs = [tmp_path / f"a1-node{n}.log" for n in (0, 1)]

    # attempt 1: both nodes write; SIGTERM after the first commit leaves one committed checkpoint
    port = str(free_port())
    procs = [_launch(job, tmp_path / f"node{n}", logs[n], n, port) for n in (0, 1)]
    _wait_for(logs[0], "committed checkpoint 2 to", procs)
    procs[0].send_signal(signal.SIGTERM)
    assert _wait_all(procs, 120) == [INTERRUPTED, INTERRUPTED], logs[0].read_text()[-3000:]
    store = CheckpointStore(f"file://{ckpt}")
    before = store.latest_committed()
    assert before is not None and before.step >= 2

    # attempt 2: node 1 cannot write to the prefix; its upload of the next checkpoint fails
    logs = [tmp_path / f"a2-node{n}.log" for n in (0, 1)]
    port = str(free_port())
    procs = [_launch(job, tmp_path / "node0", logs[0], 0, port),
             _launch(job, tmp_path / "node1", logs[1], 1, port, read_only=ckpt)]
    _wait_for(logs[0], f"resuming from committed checkpoint {before.step}", procs)
    _wait_for(logs[1], "failed after 3 attempts", procs, timeout=300)
    t_failed = time.monotonic()
    rcs = _wait_all(procs, 120)
    seconds = time.monotonic() - t_failed
    text = [log.read_text() for log in logs]
    assert rcs == [RETRYABLE, RETRYABLE], text[0][-3000:] + text[1][-3000:]
    assert seconds < 60, f"the ranks took {seconds:.0f}s to stop after the failed upload"
    failed_step = (before.step // 2 + 1) * 2  # the next everySteps multiple
    for t in text:  # each rank names the failed step and the rank whose upload failed
        assert f"commit of checkpoint {failed_step} failed at upload (rank 1: " in t, t[-3000:]
        assert "Read-only file system" in t
    # the previous committed checkpoint stays the latest; the failed one never got a marker
    assert store.latest_committed().step == before.step
    assert any(uri.rstrip("/").endswith(f"checkpoint-{failed_step}") for uri in store.uncommitted())
