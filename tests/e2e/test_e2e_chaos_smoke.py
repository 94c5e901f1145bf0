"""A few faults of bench/chaos.py, one per cheap class, against real trainer processes, the real
operator, SeaweedFS and the apiserver of a private dev cluster: no checkpoint without a complete
manifest is ever resumed, no two attempts of a job run at once, and every job finishes correctly
(Succeeded at maxSteps with its final checkpoint committed).
The full run (100+ faults) is `python bench/chaos.py`; see docs/reliability.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLASSES = "trainer_sigkill,sigterm,s3_restart,operator_kill,apiserver_restart"


@pytest.mark.cluster
@pytest.mark.slow
def test_chaos_smoke(devcluster_bin, tmp_path):
    out = tmp_path / "chaos.json"
    p = subprocess.run(
        [sys.executable, str(REPO / "bench" / "chaos.py"), "--faults", "5", "--classes", CLASSES,
         "--concurrency", "1", "--max-steps", "15", "--every-steps", "5", "--gap", "2", "--upload-delay", "0.1",
         "--max-minutes", "4", "--drain-minutes", "2", "--job-timeout", "300",
         "--out", str(out), "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=480)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    detail = json.dumps({k: r[k] for k in ("by_class", "restarts", "jobs", "duplicate_gang_detail")}, indent=1)
    assert r["faults_total"] == 5, detail
    assert {c for c, v in r["by_class"].items() if v["faults"]} == set(CLASSES.split(",")), detail
    assert r["partial_checkpoints_used"] == 0, detail
    assert r["resumes_checked"] >= 1, detail  # SIGTERM commits a checkpoint: the next attempt resumes it
    assert r["duplicate_gangs"] == 0, detail
    # Not asserted here: max_lost_steps <= every_steps. The trainer misses it today (a kill during a
    # background upload loses the steps trained meanwhile too; docs/reliability.md); chaos.json records it.
    assert r["jobs"]["total"] >= 1 and r["jobs"]["finished_correctly"] == r["jobs"]["total"], detail
