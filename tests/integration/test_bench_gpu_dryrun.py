"""bench/gpu_throughput.py is ready for the day a GPU is lent: its CPU dry run trains every side (TRL
defaults, TRL's best, ours) on a config-built model through the same machinery, and writes a report
whose cells compare like for like. Without CUDA and without --dry-run it refuses with a message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_throughput.py"


def _run(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TMPDIR=str(tmp))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=1100)


def test_dry_run_trains_every_side_like_for_like(tmp_path):
    out = tmp_path / "gpu.json"
    p = _run("--dry-run", "--out", str(out), tmp=tmp_path)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    report = json.loads(out.read_text())
    assert report["benchmark"] == "gpu_throughput_dryrun"
    assert report["model_preset"] == "dryrun" and 10_000 < report["parameters"] < 1_000_000
    cells = report["cells"]
    assert set(cells) == {"trl_defaults@default", "trl_best@default", "ours@default"}
    for name, cell in cells.items():
        assert cell["tokens_per_second"]["min"] > 0, name
        assert len(cell["tokens_per_second"]["runs"]) == report["runs_per_cell"] == 1
    best, ours = cells["trl_best@default"], cells["ours@default"]
    assert best["settings"]["packing_strategy"] == "bfd" and best["settings"]["padding_free"]
    assert best["settings"]["assistant_only_loss"] and ours["settings"]["loss_on"] == "assistant"
    # the same workload: one packed row of max_length tokens per step on both sides
    assert best["settings"]["max_length"] == ours["settings"]["max_seq_length"] == report["max_length"]
    assert abs(best["tokens_per_step"] - ours["tokens_per_step"]) <= 0.1 * best["tokens_per_step"]
    assert cells["trl_defaults@default"]["settings"]["packing"] is False
    assert report["ratios_of_medians"]["ours_default_vs_trl_best_default"] > 0


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_refuses_and_says_how(tmp_path):
    p = _run(tmp=tmp_path)
    assert p.returncode == 2
    assert "no CUDA device" in p.stderr and "--dry-run" in p.stderr
    assert not (ROOT / "bench" / "results" / "gpu_throughput.json").exists() or \
        json.loads((ROOT / "bench" / "results" / "gpu_throughput.json").read_text())["benchmark"] == "gpu_throughput"
