"""CheckpointStore behaves the same on file:// and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sft_trainer.checkpoint_store import MARKER, TEST_DELAY_ENV, CheckpointError, CheckpointStore


def make_ckpt(root: Path, step: int, n_files: int = 4) -> Path:
    d = root / f"local-{step}"
    (d / "global_step").mkdir(parents=True)
    for i in range(n_files):
        (d / f"part{i}.bin").write_bytes(os.urandom(1000 + 100 * i))
    (d / "global_step" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(os.urandom(3000))
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


@pytest.fixture(params=["file", "s3"])
def backend(request, tmp_path):
    """(store, uri, storage_options) for each backend."""
    if request.param == "file":
        uri = f"file://{tmp_path}/ckpts"
        opts: dict = {}
    else:
        s3 = request.getfixturevalue("s3")
        bucket = request.getfixturevalue("s3_bucket")
        uri = f"s3://{bucket}/jobs/demo"
        opts = s3.storage_options()
    return CheckpointStore(uri, opts), uri, opts


def test_commit_discover_download_roundtrip(backend, tmp_path):
    store, uri, _ = backend
    local = make_ckpt(tmp_path, 100)
    ckpt_uri = store.commit(local, 100, {"eval_loss": 0.5})
    assert ckpt_uri == uri.rstrip("/") + "/checkpoint-100/"
    latest = store.latest_committed()
    assert latest.step == 100 and latest.uri == ckpt_uri
    assert len(latest.manifest["files"]) == 6
    out = store.download(latest, tmp_path / "restored")
    for p in local.rglob("*"):
        if p.is_file():
            assert (out / p.relative_to(local)).read_bytes() == p.read_bytes()


def test_partial_upload_is_ignored_and_reported(backend, tmp_path):
    store, uri, _ = backend
    store.commit(make_ckpt(tmp_path, 10), 10)
    store.upload(make_ckpt(tmp_path, 20), 20)  # no marker: a killed upload
    assert store.latest_committed().step == 10
    assert store.uncommitted() == [uri.rstrip("/") + "/checkpoint-20/"]


def test_missing_file_and_wrong_bytes_are_detected(backend, tmp_path):
    store, _, _ = backend
    store.commit(make_ckpt(tmp_path, 10), 10)
    store.commit(make_ckpt(tmp_path, 20), 20)
    store.fs.rm(f"{store.root}/checkpoint-20/part2.bin")
    assert store.latest_committed().step == 10
    # same size, different content: found by the sha256 check on download
    path = f"{store.root}/checkpoint-10/part0.bin"
    data = bytearray(store.fs.cat_file(path))
    data[10] ^= 0xFF
    store.fs.pipe_file(path, bytes(data))
    with pytest.raises(CheckpointError, match="part0.bin: sha256"):
        store.download(store.latest_committed(), tmp_path / "dl")


def test_retention_and_recommit(backend, tmp_path):
    store, _, _ = backend
    for step, loss in [(10, 2.0), (20, 0.9), (30, 1.1), (40, 1.0)]:
        store.commit(make_ckpt(tmp_path, step), step, {"eval_loss": loss})
        store.apply_retention(keep=2)
    assert [c.step for c in store.committed()] == [20, 30, 40]
    assert store.uncommitted() == []
    # a re-commit of the same step (a resumed run saving again) replaces it completely
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.bin").write_bytes(b"x")
    store.commit(other, 40)
    assert [f["path"] for f in store.latest_committed().manifest["files"]] == ["x.bin"]
    assert store.fs.find(f"{store.root}/checkpoint-40") == [
        f"{store.root}/checkpoint-40/{MARKER}", f"{store.root}/checkpoint-40/x.bin"
    ]


_COMMIT_SCRIPT = """
import json, sys
from sft_trainer.checkpoint_store import CheckpointStore
uri, opts, local, step = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
CheckpointStore(uri, opts).commit(local, step)
"""


def test_kill9_during_upload_leaves_no_committed_checkpoint(backend, tmp_path):
    store, uri, opts = backend
    store.commit(make_ckpt(tmp_path, 10), 10)
    local = make_ckpt(tmp_path, 20, n_files=8)
    env = {**os.environ, TEST_DELAY_ENV: "0.3"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _COMMIT_SCRIPT, uri, json.dumps(opts), str(local), "20"], env=env
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # wait until part of checkpoint-20 is uploaded
            store.fs.invalidate_cache()
            d = f"{store.root}/checkpoint-20"
            if store.fs.exists(d) and len(store.fs.find(d)) >= 3:
                break
            assert proc.poll() is None, "the upload finished before it could be killed"
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    uploaded = store.fs.find(f"{store.root}/checkpoint-20")
    assert 3 <= len(uploaded) < 10 and not any(p.endswith(MARKER) for p in uploaded)
    assert store.latest_committed().step == 10
    assert store.uncommitted() == [uri.rstrip("/") + "/checkpoint-20/"]
