"""The sanity pre-run (spec.eval.sanityCheck) with real training of the tiny model on the CPU: it leaves
the full run exactly as it would have been, and a diverging learning rate fails the job within a minute,
before the full run, with exit 67 and the figures."""

from __future__ import annotations

import json
import time

import pytest
from trainer_job_factory import job_doc, run_entrypoint, write_data, write_job

pytestmark = pytest.mark.slow

SANITY = {"enabled": True, "examples": 12, "steps": 20, "minLossDrop": 0.7}


def _train(tmp_path, name: str, **spec):
    """train() in this process; the per-step losses of the full run and the result."""
    from transformers import TrainerCallback

    from sft_api import SFTJob
    from sft_trainer.train import train

    losses: dict[int, float] = {}

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses[state.global_step] = float(logs["loss"])

    run = tmp_path / name
    run.mkdir()
    spec = {"split": {"validation": 0.0, "test": 0.0, "seed": 1},
            "checkpoints": {"uri": str(run / "ckpt"), "everySteps": 100, "keep": 1}, **spec}
    doc = job_doc(run, name=name, **spec)
    result = train(SFTJob.model_validate(doc), workdir=run / "w", base_dir=tmp_path, serve_metrics=False,
                   extra_callbacks=[Record()])
    return losses, result


@pytest.mark.parametrize("method, lr, factor", [
    pytest.param({"type": "full"}, 5e-3, 0.7, id="full fine-tuning gets its base weights back"),
    # adapters on a randomly initialised tiny base learn slowly (4.6 -> 3.9 in 20 steps): a looser factor
    pytest.param({"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["all-linear"]}},
                 5e-2, 0.9, id="lora gets fresh adapters on the untouched base"),
])
def test_the_full_run_is_identical_with_and_without_the_sanity_check(tmp_path, method, lr, factor):
    write_data(tmp_path / "train.jsonl", n=60)
    training = {"maxSteps": 6, "learningRate": lr}
    without, r0 = _train(tmp_path, "without", method=method, training=training,
                         eval={"everySteps": 100, "sanityCheck": {"enabled": False}})
    with_check, r1 = _train(tmp_path, "with", method=method, training=training,
                            eval={"everySteps": 100, "sanityCheck": {**SANITY, "minLossDrop": factor}})
    assert r0.sanity_check is None
    assert r1.sanity_check["passed"] and len(r1.sanity_check["losses"]) == SANITY["steps"]
    assert r1.sanity_check["final_loss"] <= factor * r1.sanity_check["first_loss"]
    assert sorted(without) == list(range(1, 7))
    assert with_check == without  # every step's loss, bit for bit
    assert r1.train_loss == r0.train_loss
    report = json.loads((tmp_path / "with" / "w" / "sanity-check.json").read_text())
    assert report["passed"] and report["losses"] == r1.sanity_check["losses"]


def test_a_diverging_learning_rate_fails_within_a_minute_before_the_full_run(tmp_path):
    write_data(tmp_path / "train.jsonl", n=60)
    doc = job_doc(tmp_path, training={"maxSteps": 400, "learningRate": 1.0, "warmupRatio": 0.0},
                  eval={"everySteps": 100, "sanityCheck": SANITY})
    t0 = time.monotonic()
    res = run_entrypoint(write_job(tmp_path, doc), tmp_path / "w")
    elapsed = time.monotonic() - t0
    assert res.returncode == 67, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("SanityCheckFailed: the sanity pre-run on 12 examples") and "learningRate 1)" in last, last
    report = json.loads((tmp_path / "w" / "sanity-check.json").read_text())
    assert not report["passed"]
    # caught within a minute of the check's start (the rest of the wall time is imports and preflight,
    # which a loaded 2-core machine stretches); ~10 s on a quiet one
    assert report["seconds"] < 60, report["seconds"]
    # the full run never started: no checkpoint, no step of it
    assert not list((tmp_path / "ckpt").glob("checkpoint-*")) and not (tmp_path / "w" / "hf-checkpoints").exists()
    print(last, f"({elapsed:.1f}s in all, {report['seconds']:.1f}s in the check)")


def test_two_gloo_processes_run_the_sanity_check_and_the_golden_checkpoints_together(tmp_path):
    """torchrun, 2 processes: both ranks overfit and restore, DDP wraps the model again for the run, and
    the golden set at each checkpoint (rank 0 generates) keeps the ranks in step to the end."""
    import os
    import signal

    import yaml
    from trainer_job_factory import write_golden
    from trainer_run_helpers import entrypoint_job, launch_entrypoint

    job = entrypoint_job(tmp_path, "ddp-gates", str(tmp_path / "ckpt"), max_steps=6, every_steps=3, keep=3)
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["training"]["learningRate"] = 5e-3
    doc["spec"]["eval"] = {"sanityCheck": {**SANITY, "steps": 10},
                           "goldenSet": {"uri": str(write_golden(tmp_path / "golden.jsonl")), "maxNewTokens": 8,
                                         "everyCheckpoints": 1, "maxDrop": 1.0}}
    job.write_text(yaml.safe_dump(doc))
    log = tmp_path / "trainer.log"
    proc = launch_entrypoint(job, tmp_path / "work", log, nproc=2)
    try:
        rc = proc.wait(500)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == 0, text[-4000:]
    assert "world size 2" in text and "sanity check passed" in text
    result = json.loads((tmp_path / "work" / "result.json").read_text())
    assert result["global_step"] == 6 and result["sanity_check"]["passed"]
    assert [e["step"] for e in result["golden_checkpoints"]] == [3, 6]
