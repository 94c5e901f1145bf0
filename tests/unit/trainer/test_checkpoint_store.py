"""CheckpointStore on the local filesystem: commit marker, manifest, discovery, retention."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from sft_trainer.checkpoint_store import (
    MARKER,
    TEST_DELAY_ENV,
    CheckpointError,
    CheckpointStore,
)


def make_ckpt(root: Path, step: int, n_files: int = 3) -> Path:
    d = root / f"local-{step}"
    (d / "sub").mkdir(parents=True)
    for i in range(n_files):
        (d / f"file{i}.bin").write_bytes(f"step {step} file {i} ".encode() * (i + 1) * 50)
    (d / "sub" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(f"file://{tmp_path}/ckpts")


def test_commit_writes_manifest_with_sizes_and_sha256(store, tmp_path):
    local = make_ckpt(tmp_path, 10)
    uri = store.commit(local, 10, {"eval_loss": 1.5})
    assert uri == f"file://{tmp_path}/ckpts/checkpoint-10/"
    manifest = json.loads((tmp_path / "ckpts/checkpoint-10" / MARKER).read_text())
    assert manifest["step"] == 10
    assert manifest["metrics"] == {"eval_loss": 1.5}
    assert manifest["committedAt"].endswith("Z")
    files = {f["path"]: f for f in manifest["files"]}
    expected = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert sorted(files) == expected == ["file0.bin", "file1.bin", "file2.bin", "sub/trainer_state.json"]
    for rel, f in files.items():
        data = (local / rel).read_bytes()
        assert f["size"] == len(data)
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
        assert (tmp_path / "ckpts/checkpoint-10" / rel).read_bytes() == data
    assert manifest["totalBytes"] == sum(f["size"] for f in files.values())
    latest = store.latest_committed()
    assert latest is not None and latest.step == 10 and latest.uri == uri
    assert latest.metrics == {"eval_loss": 1.5}


def test_marker_is_written_last(store, tmp_path, monkeypatch):
    """While files are still uploading, the checkpoint must not look committed."""
    store.commit(make_ckpt(tmp_path, 5), 5)
    local = make_ckpt(tmp_path, 10, n_files=6)
    monkeypatch.setenv(TEST_DELAY_ENV, "0.1")
    t = threading.Thread(target=store.commit, args=(local, 10))
    t.start()
    target = tmp_path / "ckpts/checkpoint-10"
    observations = []
    while t.is_alive():
        if target.exists():
            n_files = sum(1 for p in target.rglob("*") if p.is_file() and p.name != MARKER)
            has_marker = (target / MARKER).exists()
            observations.append((n_files, has_marker))
            if not has_marker:
                # a partial upload is never chosen for resume: 10 only once its marker is there (the
                # upload may finish between the two looks)
                latest = store.latest_committed().step
                assert latest == 5 or (latest == 10 and (target / MARKER).exists()), latest
        time.sleep(0.02)
    t.join()
    partial = [o for o in observations if o[0] < 7]
    assert partial, "the upload was too fast to observe"
    assert all(not has_marker for _, has_marker in partial)
    assert (target / MARKER).exists()
    assert store.latest_committed().step == 10


def test_uncommitted_dirs_are_ignored_and_reported(store, tmp_path):
    store.commit(make_ckpt(tmp_path, 10), 10)
    store.upload(make_ckpt(tmp_path, 20), 20)  # killed before the marker
    bad = tmp_path / "ckpts/checkpoint-30"
    bad.mkdir()
    (bad / MARKER).write_text("{not json")
    wrong = tmp_path / "ckpts/checkpoint-40"
    store.commit(make_ckpt(tmp_path, 40), 40)
    m = json.loads((wrong / MARKER).read_text())
    m["step"] = 41
    (wrong / MARKER).write_text(json.dumps(m))
    (tmp_path / "ckpts/not-a-checkpoint").mkdir()

    assert store.latest_committed().step == 10
    assert store.uncommitted() == [
        f"file://{tmp_path}/ckpts/checkpoint-{s}/" for s in (20, 30, 40)
    ]
    committed, broken = store.scan()
    assert [c.step for c in committed] == [10]
    reasons = dict(broken)
    assert reasons[f"file://{tmp_path}/ckpts/checkpoint-20/"] == "no commit marker"
    assert "unreadable" in reasons[f"file://{tmp_path}/ckpts/checkpoint-30/"]
    assert "step 41" in reasons[f"file://{tmp_path}/ckpts/checkpoint-40/"]


def test_missing_or_truncated_file_invalidates_the_checkpoint(store, tmp_path):
    store.commit(make_ckpt(tmp_path, 10), 10)
    store.commit(make_ckpt(tmp_path, 20), 20)
    (tmp_path / "ckpts/checkpoint-20/file1.bin").unlink()
    assert store.latest_committed().step == 10
    store.commit(make_ckpt(tmp_path, 30), 30)
    p = tmp_path / "ckpts/checkpoint-30/sub/trainer_state.json"
    p.write_text(p.read_text()[:-2])
    assert store.latest_committed().step == 10
    assert dict(store.scan()[1])[f"file://{tmp_path}/ckpts/checkpoint-30/"].startswith(
        "file sub/trainer_state.json has"
    )


def test_download_verifies_sha256(store, tmp_path):
    local = make_ckpt(tmp_path, 10)
    store.commit(local, 10)
    ckpt = store.latest_committed()
    out = store.download(ckpt, tmp_path / "restore")
    for p in local.rglob("*"):
        if p.is_file():
            assert (out / p.relative_to(local)).read_bytes() == p.read_bytes()
    # same size, different bytes: only the hash can tell
    f = tmp_path / "ckpts/checkpoint-10/file0.bin"
    data = bytearray(f.read_bytes())
    data[0] ^= 0xFF
    f.write_bytes(bytes(data))
    assert store.latest_committed().step == 10
    with pytest.raises(CheckpointError, match="file0.bin: sha256"):
        store.download(store.latest_committed(), tmp_path / "restore2")


def test_recommit_replaces_old_files_and_marker(store, tmp_path):
    first = make_ckpt(tmp_path, 10, n_files=3)
    store.commit(first, 10, {"eval_loss": 2.0})
    second = tmp_path / "second"
    second.mkdir()
    (second / "only.bin").write_bytes(b"new")
    store.commit(second, 10, {"eval_loss": 1.0})
    ckpt = store.latest_committed()
    assert [f["path"] for f in ckpt.manifest["files"]] == ["only.bin"]
    assert ckpt.metrics == {"eval_loss": 1.0}
    assert sorted(p.name for p in (tmp_path / "ckpts/checkpoint-10").iterdir()) == [MARKER, "only.bin"]


def test_retention_keeps_last_n_plus_best(store, tmp_path):
    losses = {10: 3.0, 20: 1.0, 30: 2.0, 40: 2.5, 50: 2.4}
    for step, loss in losses.items():
        store.commit(make_ckpt(tmp_path, step), step, {"eval_loss": loss})
        store.apply_retention(keep=2)
    assert [c.step for c in store.committed()] == [20, 40, 50]
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == [
        "checkpoint-20", "checkpoint-40", "checkpoint-50"
    ]
    # greater_is_better flips the choice of best
    assert store.apply_retention(keep=1, best_metric="eval_loss", greater_is_better=True) == [20]
    assert [c.step for c in store.committed()] == [40, 50]


def test_retention_keeps_the_protected_steps_as_well(store, tmp_path):
    # keep_steps: the best by golden pass rate, which no manifest records (it is scored after the commit)
    losses = {10: 3.0, 20: 1.0, 30: 2.0, 40: 2.5}
    for step, loss in losses.items():
        store.commit(make_ckpt(tmp_path, step), step, {"eval_loss": loss})
    assert store.apply_retention(keep=1, keep_steps=[10]) == [30]
    assert [c.step for c in store.committed()] == [10, 20, 40]  # golden best, eval-loss best, last
    assert store.apply_retention(keep=1) == [10]  # unprotected, it goes


def test_retention_without_metric_keeps_last_n_and_prunes_stale_partials(store, tmp_path):
    store.upload(make_ckpt(tmp_path, 5), 5)  # a killed upload from an earlier attempt
    for step in (10, 20, 30):
        store.commit(make_ckpt(tmp_path, step), step)
    store.upload(make_ckpt(tmp_path, 40), 40)  # newer than every commit: left alone
    assert store.apply_retention(keep=2) == [5, 10]
    assert [c.step for c in store.committed()] == [20, 30]
    assert store.uncommitted() == [f"file://{tmp_path}/ckpts/checkpoint-40/"]
    assert store.apply_retention(keep=0) == []


def test_delete_removes_marker_before_files(store, tmp_path, monkeypatch):
    store.commit(make_ckpt(tmp_path, 10), 10)
    order: list[str] = []
    real_rm = store.fs.rm

    def spy(path, *a, **kw):
        order.append(str(path).rsplit("/", 1)[-1])
        return real_rm(path, *a, **kw)

    monkeypatch.setattr(store.fs, "rm", spy)
    store.delete(10)
    assert order == [MARKER, "checkpoint-10"]
    assert not (tmp_path / "ckpts/checkpoint-10").exists()


def test_plain_path_and_file_uri_are_the_same_store(tmp_path):
    a = CheckpointStore(str(tmp_path / "ckpts"))
    a.commit(make_ckpt(tmp_path, 7), 7)
    b = CheckpointStore(f"file://{tmp_path}/ckpts/")
    assert b.latest_committed().step == 7
    assert a.uri == b.uri == f"file://{tmp_path}/ckpts/"


def test_empty_store_and_missing_local_dir(store, tmp_path):
    assert store.latest_committed() is None
    assert store.uncommitted() == []
    assert store.apply_retention(3) == []
    with pytest.raises(CheckpointError, match="does not exist"):
        store.commit(tmp_path / "nope", 1)
    with pytest.raises(ValueError, match="checkpoints.uri"):
        CheckpointStore("")
