"""Two processes of one node (torchrun, gloo) share one copy of what they read from S3: the base
model (an s3:// model on SeaweedFS) and the checkpoint they resume. Local rank 0 downloads each
once into a temporary directory and renames it into place; local rank 1 waits for the rename.
Before: each rank downloaded the resume checkpoint into its own ``resume-rank<N>`` directory, and
both downloaded the base model into one directory with no lock."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import yaml
from trainer_run_helpers import entrypoint_job, launch_entrypoint

from sft_trainer.checkpoint_store import CheckpointStore
from sft_trainer.exit_codes import INTERRUPTED

pytestmark = pytest.mark.slow


def _upload_tiny_model(s3, bucket: str, tmp_path) -> str:
    from sft_trainer.tiny_model import build_model, build_tokenizer

    local = tmp_path / "tiny-model"
    tok = build_tokenizer()
    build_model(tok, seed=3).save_pretrained(local)
    tok.save_pretrained(local)
    client = s3.client()
    for path in local.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"models/tiny/{path.relative_to(local).as_posix()}")
    return f"s3://{bucket}/models/tiny"


def _wait(proc, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_two_local_ranks_share_one_model_and_one_resume_download(s3, s3_bucket, tmp_path):
    model_uri = _upload_tiny_model(s3, s3_bucket, tmp_path)
    uri = f"s3://{s3_bucket}/ckpt"
    job = entrypoint_job(tmp_path, "node-downloads", uri, max_steps=8, every_steps=2, endpoint=s3.endpoint)
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["model"]["uri"] = model_uri
    job.write_text(yaml.safe_dump(doc))
    work = tmp_path / "work"

    # attempt 1: downloads the model once, commits checkpoint 2, stops on SIGTERM
    log1 = tmp_path / "a1.log"
    proc = launch_entrypoint(job, work, log1, s3.env(), nproc=2)
    deadline = time.monotonic() + 300
    while "committed checkpoint 2 to" not in (log1.read_text() if log1.exists() else ""):
        assert proc.poll() is None, log1.read_text()[-3000:]
        assert time.monotonic() < deadline, "checkpoint 2 was never committed"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert _wait(proc, 120) == INTERRUPTED, log1.read_text()[-3000:]
    text1 = log1.read_text()
    models = [p for p in work.iterdir() if p.name.startswith("base-model")]
    assert len(models) == 1 and (models[0] / "config.json").is_file(), sorted(p.name for p in work.iterdir())
    assert text1.count(f"base model {model_uri}: downloading once for this node") == 1
    assert not [p.name for p in work.iterdir() if ".tmp-" in p.name]

    store = CheckpointStore(uri, {"endpoint_url": s3.endpoint, "key": s3.access_key, "secret": s3.secret_key})
    stopped = store.latest_committed().step
    assert 2 <= stopped < 8

    # attempt 2, same scratch volume: reuses the model, downloads the checkpoint once, finishes
    log2 = tmp_path / "a2.log"
    proc = launch_entrypoint(job, work, log2, s3.env(), nproc=2)
    assert _wait(proc, 300) == 0, log2.read_text()[-3000:]
    text2 = log2.read_text()
    assert "reusing the node's copy" in text2 and "downloading once for this node into" in text2
    assert f"resuming from committed checkpoint {stopped}" in text2
    copies = list((work / "resume").iterdir())
    assert [p.name.split("-")[1] for p in copies] == [str(stopped)]
    # both ranks' RNG states are in the one copy, and each rank resumed from it
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in copies[0].iterdir()}
    assert not list(work.glob("resume-rank*"))
    result = json.loads((work / "result.json").read_text())
    assert (result["resumed_from"], result["global_step"], result["world_size"]) == (stopped, 8, 2)
