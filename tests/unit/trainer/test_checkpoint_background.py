"""CheckpointCommitCallback with background uploads, against a real TrainerState and a local store:
the save returns before the upload ends, the marker still comes last, one upload at a time, the
train end (also SIGTERM's path) waits, and a failed upload fails the run."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from sft_trainer.callbacks import CheckpointCommitCallback, CommitFailed
from sft_trainer.checkpoint_store import MARKER, TEST_DELAY_ENV, CheckpointStore
from sft_trainer.checkpoint_upload import SNAPSHOT_DIR, snapshot, upload_mode

FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")


def hf_checkpoint(output_dir: Path, step: int) -> Path:
    d = output_dir / f"checkpoint-{step}"
    d.mkdir(parents=True)
    for name in FILES:
        (d / name).write_bytes(f"{name}@{step}".encode() * 10)
    return d


def state_at(step: int, history: list[dict] | None = None) -> TrainerState:
    s = TrainerState()
    s.global_step, s.max_steps, s.log_history = step, 100, history or []
    return s


def save(cb, args, step: int, history: list[dict] | None = None) -> float:
    """The HF order at a save step: on_step_end (should_save), on_save; returns on_save's seconds."""
    control = TrainerControl(should_save=True)
    cb.on_step_end(args, state_at(step, history), control)
    t0 = time.monotonic()
    cb.on_save(args, state_at(step, history), control)
    return time.monotonic() - t0


@pytest.fixture
def slow_upload(monkeypatch):
    monkeypatch.setenv(TEST_DELAY_ENV, "0.2")  # 5 files: about 1 s per upload


def test_save_returns_before_the_upload_and_the_train_end_commits(tmp_path, slow_upload):
    store = CheckpointStore(str(tmp_path / "remote"))
    cb = CheckpointCommitCallback(store, keep=2, background=True)
    args = SimpleNamespace(output_dir=str(tmp_path / "out"))
    hf_checkpoint(tmp_path / "out", 10)
    seconds = save(cb, args, 10, [{"loss": 2.0, "step": 10}])
    assert seconds < 0.5, seconds  # the upload takes about 1 s
    assert store.latest_committed() is None  # still uploading: no marker yet
    assert cb.last_commit is None
    cb.on_train_end(args, state_at(10), TrainerControl())
    latest = store.latest_committed()
    assert latest.step == 10 and latest.metrics == {"train_loss": 2.0}
    assert sorted(f["path"] for f in latest.manifest["files"]) == sorted(FILES)
    # the train end waited for the upload: training time too, so it counts as blocked
    assert cb.last_commit["step"] == 10 and cb.last_commit["blockedSeconds"] >= seconds
    assert not (tmp_path / "out" / SNAPSHOT_DIR / "checkpoint-10").exists()  # the snapshot is gone


def test_a_step_end_commits_once_the_upload_is_done(tmp_path):
    store = CheckpointStore(str(tmp_path / "remote"))
    cb = CheckpointCommitCallback(store, keep=2, background=True)
    args = SimpleNamespace(output_dir=str(tmp_path / "out"))
    hf_checkpoint(tmp_path / "out", 4)
    save(cb, args, 4)
    deadline = time.monotonic() + 30
    step = 5
    while cb.last_commit is None:  # training goes on; some step end sees the upload done
        assert time.monotonic() < deadline, "the upload never committed"
        cb.on_step_end(args, state_at(step), TrainerControl())
        step += 1
        time.sleep(0.01)
    assert cb.last_commit["step"] == 4
    assert [c.step for c in store.committed()] == [4]


def test_the_local_checkpoint_deleted_mid_upload_still_commits_whole(tmp_path, slow_upload):
    """HF's rotation (save_total_limit) may delete the directory while it uploads: the snapshot survives."""
    store = CheckpointStore(str(tmp_path / "remote"))
    cb = CheckpointCommitCallback(store, keep=2, background=True)
    args = SimpleNamespace(output_dir=str(tmp_path / "out"))
    local = hf_checkpoint(tmp_path / "out", 10)
    save(cb, args, 10)
    shutil.rmtree(local)
    cb.on_train_end(args, state_at(10), TrainerControl())
    assert len(store.get(10).manifest["files"]) == len(FILES)
    store.download(store.get(10), tmp_path / "dl")  # every sha256 matches the manifest


def test_one_upload_in_flight_and_retention_after_each_marker(tmp_path, slow_upload):
    store = CheckpointStore(str(tmp_path / "remote"))
    cb = CheckpointCommitCallback(store, keep=1, background=True)
    args = SimpleNamespace(output_dir=str(tmp_path / "out"))
    for step in (10, 20, 30):
        hf_checkpoint(tmp_path / "out", step)
        history = [{"loss": 1.0, "step": step}, {"eval_loss": {10: 1.0, 20: 2.0, 30: 3.0}[step], "step": step}]
        save(cb, args, step, history)
        # the save waited for the previous checkpoint's marker before it started this upload
        if step > 10:
            assert store.get(step - 10).step == step - 10
            assert not (Path(store.root) / f"checkpoint-{step}" / MARKER).exists()
    cb.on_train_end(args, state_at(30), TrainerControl())
    # keep=1 plus the best by eval_loss (step 10); 20 was pruned once 30 committed
    assert [c.step for c in store.committed()] == [10, 30]
    assert store.uncommitted() == []
    assert len(cb.blocked_seconds) == 3


def test_a_failed_background_upload_fails_the_run(tmp_path):
    remote = tmp_path / "remote"
    remote.write_text("a file where the checkpoint prefix should be")  # every upload fails: ENOTDIR
    store = CheckpointStore(str(remote))
    cb = CheckpointCommitCallback(store, keep=2, background=True, attempts=1)
    args = SimpleNamespace(output_dir=str(tmp_path / "out"))
    hf_checkpoint(tmp_path / "out", 10)
    save(cb, args, 10)
    with pytest.raises(CommitFailed, match="commit of checkpoint 10 failed .*previous committed checkpoint"):
        cb.on_train_end(args, state_at(10), TrainerControl())
    assert cb.last_commit is None


def test_a_non_zero_rank_without_a_process_group_does_nothing(tmp_path):
    store = CheckpointStore(str(tmp_path / "remote"))
    cb = CheckpointCommitCallback(store, keep=2, background=True)
    hf_checkpoint(tmp_path / "out", 10)
    state = state_at(10)
    state.is_world_process_zero = False
    cb.on_save(SimpleNamespace(output_dir=str(tmp_path / "out")), state, TrainerControl())
    cb.on_train_end(SimpleNamespace(output_dir=str(tmp_path / "out")), state, TrainerControl())
    assert store.latest_committed() is None


def test_snapshot_links_every_file_and_replaces_a_stale_one(tmp_path):
    src = hf_checkpoint(tmp_path / "out", 3)
    (src / "sub").mkdir()
    (src / "sub" / "shard.bin").write_bytes(b"x" * 100)
    dest = tmp_path / "snap"
    (dest / "stale").mkdir(parents=True)
    snapshot(src, dest)
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert got == sorted([*FILES, "sub/shard.bin"])
    assert (dest / "model.safetensors").stat().st_ino == (src / "model.safetensors").stat().st_ino


@pytest.mark.parametrize("value, mode", [
    pytest.param(None, "background", id="unset-uploads-in-the-background"),
    pytest.param("sync", "sync", id="sync-commits-inside-the-save"),
    pytest.param("SYNC ", "sync", id="case-and-blanks-ignored"),
    pytest.param("later", "background", id="unknown-value-falls-back-to-background"),
])
def test_upload_mode_from_the_environment(value, mode):
    env = {} if value is None else {"SFT_CHECKPOINT_UPLOAD": value}
    assert upload_mode(env) == mode
