"""SIGTERM → save, commit, exit 75; the next run resumes from that committed checkpoint and continues
the same loss trajectory as an uninterrupted run (same steps, same losses), through ``train()``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_job_factory import job_doc, trainer_env, write_data, write_job

from sft_trainer import exit_codes
from sft_trainer.checkpoint_store import CheckpointStore

pytestmark = pytest.mark.slow
DRIVER = Path(__file__).with_name("trainer_sigterm_driver.py")


def drive(job: Path, workdir: Path, sigterm_at: int | None = None) -> tuple[int, dict, str]:
    cmd = [sys.executable, str(DRIVER), str(job), str(workdir)] + ([str(sigterm_at)] if sigterm_at else [])
    res = subprocess.run(cmd, env=trainer_env(), capture_output=True, text=True, timeout=600)
    out = workdir / "driver-result.json"
    return res.returncode, (json.loads(out.read_text()) if out.exists() else {}), res.stderr


def test_sigterm_commits_and_the_resumed_run_continues_the_trajectory(tmp_path):
    write_data(tmp_path / "train.jsonl", n=240)
    def doc(ckpt: str) -> dict:
        return job_doc(tmp_path, training={"maxSteps": 14}, eval={"everySteps": 100},
                       checkpoints={"uri": str(tmp_path / ckpt), "everySteps": 4, "keep": 5})

    ref_job = write_job(tmp_path, doc("ref-ckpt"), "ref.yaml")
    job = write_job(tmp_path, doc("ckpt"), "job.yaml")

    rc, ref, err = drive(ref_job, tmp_path / "w-ref")
    assert rc == 0, err[-3000:]
    assert ref["global_step"] == 14

    rc, first, err = drive(job, tmp_path / "w1", sigterm_at=6)
    assert rc == exit_codes.INTERRUPTED == 75, err[-3000:]
    # the signal arrives after step 6's callbacks: the trainer finishes step 7, saves and commits
    assert first["interrupted"] and first["global_step"] == 7
    store = CheckpointStore(str(tmp_path / "ckpt"))
    assert [c.step for c in store.committed()] == [4, 7]
    assert store.uncommitted() == []

    rc, second, err = drive(job, tmp_path / "w2")
    assert rc == 0, err[-3000:]
    assert second["resumed_from"] == 7 and second["global_step"] == 14
    # the same steps as the uninterrupted run, and the same losses (data position, RNG and optimizer restored)
    assert sorted(map(int, second["losses"])) == list(range(8, 15))
    for step in range(8, 15):
        assert second["losses"][str(step)] == pytest.approx(ref["losses"][str(step)], rel=2e-3, abs=2e-3), step
    for step in range(1, 8):
        assert first["losses"][str(step)] == pytest.approx(ref["losses"][str(step)], rel=1e-5)
    assert [c.step for c in store.committed()][-1] == 14
