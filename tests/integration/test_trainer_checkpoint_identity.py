"""Checkpoint identity through the real entrypoint (`python -m sft_trainer`, tiny model, local
checkpoints): a finished run re-run unchanged finishes at once with the same result; a changed
training spec refuses the other run's checkpoint (exit 64) instead of resuming it and stepping
past maxSteps; spec.checkpoints.resumeFrom is the explicit way to continue it.

The bug this pins (issue 11): a rerun with only learningRate changed printed "resuming from
committed checkpoint 100", trained "step 101/100" and reported success."""

from __future__ import annotations

import copy
import json
import re

import pytest
from trainer_job_factory import job_doc, run_entrypoint, trainer_env, write_data, write_job

from sft_api.training_identity import spec_hash
from sft_trainer.checkpoint_store import CheckpointStore
from sft_trainer.exit_codes import CONFIG_ERROR

pytestmark = pytest.mark.slow


def _steps_trained(stderr: str) -> list[int]:
    return [int(s) for s in re.findall(r"step (\d+)/\d+", stderr)]


def test_rerun_refuses_foreign_and_resume_from_continues(tmp_path):
    write_data(tmp_path / "train.jsonl", n=120)
    doc = job_doc(tmp_path, training={"maxSteps": 8}, checkpoints={"everySteps": 4, "keep": 5})
    ckpt = tmp_path / "ckpt"
    env = trainer_env(SFT_ATTEMPT="1")

    # 1. the first run: 8 steps, checkpoints 4 and 8 carry this run's identity
    first = run_entrypoint(write_job(tmp_path, doc), tmp_path / "w1", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    r1 = json.loads((tmp_path / "w1" / "result.json").read_text())
    store = CheckpointStore(str(ckpt))
    assert [c.step for c in store.committed()] == [4, 8]
    ident = store.latest_committed().identity
    assert ident == {"jobUid": None, "specHash": spec_hash(doc["spec"]), "jobName": "itest", "attempt": 1}

    # 2. the same spec again: it finishes at once with the same result and no step past maxSteps
    again = run_entrypoint(write_job(tmp_path, doc), tmp_path / "w2", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    r2 = json.loads((tmp_path / "w2" / "result.json").read_text())
    assert "resuming from committed checkpoint 8" in again.stderr
    assert (r2["resumed_from"], r2["global_step"], r2["max_steps"]) == (8, 8, 8)
    assert max(_steps_trained(again.stderr), default=0) <= 8
    assert r2["test_loss"] == pytest.approx(r1["test_loss"], abs=1e-6)
    assert r2["eval_loss"] == pytest.approx(r1["eval_loss"], abs=1e-6)
    assert [c.step for c in store.committed()] == [4, 8]

    # 3. only learningRate changed: the other run's checkpoint is refused before training
    changed = copy.deepcopy(doc)
    changed["spec"]["training"]["learningRate"] = 1e-4
    refused = run_entrypoint(write_job(tmp_path, changed, "changed.yaml"), tmp_path / "w3", env=env)
    assert refused.returncode == CONFIG_ERROR, refused.stderr[-3000:]
    assert "spec.checkpoints.uri" in refused.stderr and "spec.checkpoints.resumeFrom" in refused.stderr
    assert "resuming" not in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "w3" / "hf-checkpoints").exists()  # no step was trained
    assert [c.step for c in store.committed()] == [4, 8]

    # 4. resumeFrom: latest continues it explicitly, to the new maxSteps and no further
    cont = copy.deepcopy(changed)
    cont["spec"]["training"]["maxSteps"] = 12
    cont["spec"]["checkpoints"]["resumeFrom"] = "latest"
    resumed = run_entrypoint(write_job(tmp_path, cont, "cont.yaml"), tmp_path / "w4",
                             env=trainer_env(SFT_ATTEMPT="3"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    r4 = json.loads((tmp_path / "w4" / "result.json").read_text())
    assert (r4["resumed_from"], r4["global_step"]) == (8, 12)
    assert max(_steps_trained(resumed.stderr)) == 12
    steps = {c.step: c.identity for c in store.committed()}
    assert sorted(steps) == [4, 8, 12]  # retention never deletes the other run's checkpoints
    assert steps[12]["specHash"] == spec_hash(cont["spec"]) != steps[8]["specHash"]
    assert steps[12]["attempt"] == 3
    # one copy of the resumed checkpoint in the node's work directory, none per rank
    assert [p.name.split("-")[1] for p in (tmp_path / "w4" / "resume").iterdir()] == ["8"]
    assert not list((tmp_path / "w4").glob("resume-rank*"))
