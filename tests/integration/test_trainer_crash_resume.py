"""A real TRL training run, killed with kill -9 in the middle of a checkpoint upload to SeaweedFS,
or stopped with SIGTERM, resumes from the latest *committed* checkpoint and continues the loss
trajectory of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from ckpt_trainer_harness import SIGTERM_EXIT, launch, train_losses

from sft_trainer.checkpoint_store import MARKER, TEST_DELAY_ENV, CheckpointStore

pytestmark = pytest.mark.slow

MAX_STEPS, SAVE_STEPS = 24, 8
# A resumed run restores weights, optimizer, scheduler, RNG and data position, so on the same CPU
# it replays the same arithmetic: the measured difference to the uninterrupted run was exactly 0.0
# at every step. The tolerance only leaves room for float reductions that are not associative
# under other thread counts; any real divergence (a restart from scratch, a skipped or replayed
# batch, a lost optimizer state) moves this tiny model's loss by more than 0.05.
LOSS_TOL = 2e-3


def run_to_end(cfg: dict, tmp: Path, name: str, env: dict | None = None, timeout: float = 240):
    log = tmp / f"{name}.log"
    proc = launch({**cfg, "result": str(tmp / f"{name}.json")}, log, env)
    try:
        rc = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return rc, log


def read(tmp: Path, name: str) -> dict:
    return json.loads((tmp / f"{name}.json").read_text())


def base_cfg(tmp: Path, uri: str, opts: dict, name: str) -> dict:
    return {"store_uri": uri, "storage_options": opts, "output_dir": str(tmp / f"out-{name}"),
            "max_steps": MAX_STEPS, "save_steps": SAVE_STEPS, "keep": 3}


def test_kill9_mid_upload_then_resume_continues_the_loss_trajectory(s3, s3_bucket, tmp_path):
    opts = s3.storage_options()

    # 1. the reference: an uninterrupted run
    ref_uri = f"s3://{s3_bucket}/ref"
    rc, log = run_to_end(base_cfg(tmp_path, ref_uri, opts, "ref"), tmp_path, "ref")
    assert rc == 0, log.read_text()[-3000:]
    ref = read(tmp_path, "ref")
    assert ref["global_step"] == MAX_STEPS

    # 2. the same run, killed with SIGKILL while checkpoint-16 is half uploaded
    uri = f"s3://{s3_bucket}/crash"
    store = CheckpointStore(uri, opts)
    cfg = base_cfg(tmp_path, uri, opts, "crash")
    proc = launch({**cfg, "result": str(tmp_path / "crash.json")}, tmp_path / "crash.log",
                  {TEST_DELAY_ENV: "0.4"})
    half = f"{store.root}/checkpoint-16"
    try:
        deadline = time.monotonic() + 240
        while True:
            store.fs.invalidate_cache()
            if store.fs.exists(half) and len(store.fs.find(half)) >= 2:
                break
            assert proc.poll() is None, (tmp_path / "crash.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "checkpoint-16 never started uploading"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    store.fs.invalidate_cache()
    partial = store.fs.find(half)
    assert partial and not any(p.endswith(MARKER) for p in partial)
    assert store.latest_committed().step == 8
    assert store.uncommitted() == [f"{uri}/checkpoint-16/"]

    # 3. the next run resumes from checkpoint-8, ignoring (and reporting) checkpoint-16
    rc, log = run_to_end(cfg, tmp_path, "resume")
    assert rc == 0, log.read_text()[-3000:]
    res = read(tmp_path, "resume")
    assert res["resumed_from"] == 8
    assert res["uncommitted_seen"] == [f"{uri}/checkpoint-16/"]
    assert "ignoring uncommitted checkpoints" in log.read_text()
    assert res["global_step"] == MAX_STEPS == ref["global_step"]
    resumed, reference = train_losses(res), train_losses(ref)
    # the history of steps 1-8 comes back from the checkpoint; no step is replayed or skipped
    assert sorted(resumed) == list(range(1, MAX_STEPS + 1))
    diffs = {s: abs(resumed[s] - reference[s]) for s in resumed if s > 8}
    assert max(diffs.values()) < LOSS_TOL, diffs
    # the final state is committed, and checkpoint-16 was re-committed whole
    assert store.latest_committed().step == MAX_STEPS
    assert [c.step for c in store.committed()] == [8, 16, 24]
    assert store.uncommitted() == []


def test_sigterm_saves_commits_and_exits_retryable_then_resumes(tmp_path):
    uri = f"file://{tmp_path}/ckpts"
    store = CheckpointStore(uri)
    cfg = {**base_cfg(tmp_path, uri, {}, "term"), "save_steps": 1000, "step_sleep": 0.25}
    log = tmp_path / "term.log"
    proc = launch({**cfg, "result": str(tmp_path / "term.json")}, log)
    try:
        deadline = time.monotonic() + 180
        while "step 3/24" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "training never reached step 3"
            time.sleep(0.1)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == SIGTERM_EXIT, log.read_text()[-3000:]
    assert took < 30  # well inside a pod's termination grace period
    term = read(tmp_path, "term")
    stopped = term["global_step"]
    assert term["sigterm"] and 3 <= stopped < MAX_STEPS
    assert store.latest_committed().step == stopped  # saved and committed at the stop step

    rc, rlog = run_to_end({**cfg, "step_sleep": 0}, tmp_path, "term-resume")
    assert rc == 0, rlog.read_text()[-3000:]
    res = read(tmp_path, "term-resume")
    assert res["resumed_from"] == stopped and res["global_step"] == MAX_STEPS
    assert sorted(train_losses(res)) == list(range(1, MAX_STEPS + 1))
