"""The README's first command, for real: ``examples/quickstart.yaml`` on this CPU with no downloads,
all 1,600 steps (no time box: the figures must not depend on the machine's load), and it learns
(held-out exact match and golden set, before → after), writing its figures to results.json."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainer_job_factory import ROOT, trainer_env

pytestmark = pytest.mark.slow
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def test_bundled_data_is_what_the_generator_makes():
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "data" / "generate.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_quickstart_learns_on_the_cpu(tmp_path):
    env = trainer_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # no downloads
    env.pop("OMP_NUM_THREADS")  # as a user runs it
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-c", "import sys; from sft_trainer import run_local; sys.exit(run_local(sys.argv[1]))",
         str(QUICKSTART)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=2400,
    )
    wall = time.monotonic() - t0
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    result = json.loads((tmp_path / "runs" / "quickstart" / "work" / "result.json").read_text())
    print(json.dumps({k: result[k] for k in ("exact_match_before", "exact_match_after", "golden_before",
                                             "golden_after", "tokens_per_second", "train_seconds")}, indent=1))
    print(f"wall {wall:.0f}s")  # about 4 min on an idle 2-core machine; longer on a busy one
    before, after = result["exact_match_before"], result["exact_match_after"]
    # an untrained model gets nothing right; after all the steps most held-out answers are exactly
    # right (bench/results/quickstart.json has the measured figures the README quotes)
    assert before["overall"] == 0.0 and result["golden_before"]["pass_rate"] == 0.0
    assert result["global_step"] == result["max_steps"] == 1600
    assert after["overall"] >= 0.5 and result["golden_after"]["pass_rate"] >= 0.5, (after, result["golden_after"])
    assert result["test_loss"] < 0.5  # ~4.6 untrained
    figures = json.loads((tmp_path / "runs" / "quickstart" / "results.json").read_text())
    assert figures["exact_match_after"] == after and figures["stopped_before_max_steps"] is False
    # the console shows the preflight, the progress lines and the before/after table
    for text in ("preflight", "tokens with loss", "step 50/", "golden set pass rate"):
        assert text in out
    ckpt = tmp_path / "runs" / "quickstart" / "checkpoints"
    assert (ckpt / f"checkpoint-{result['global_step']}" / "_COMMITTED").is_file()
    assert (ckpt / "loss.png").stat().st_size > 10_000
    assert (tmp_path / "runs" / "quickstart" / "model" / "model.safetensors").is_file()
