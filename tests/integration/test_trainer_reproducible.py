"""Same spec, same seed, same machine: two runs of the real entrypoint give identical per-step
losses (bit for bit; packed rows, the tiny model, one intra-op thread). A run with another seed
gives other losses, so the comparison can fail."""

from __future__ import annotations

import json

import pytest
import yaml
from trainer_run_helpers import entrypoint_job, launch_entrypoint

pytestmark = pytest.mark.slow

STEPS = 12


def _losses(tmp_path, name: str, seed: int) -> dict[int, tuple[float, float]]:
    job = entrypoint_job(tmp_path, name, str(tmp_path / f"ckpt-{name}"), max_steps=STEPS, every_steps=STEPS)
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["training"]["seed"] = seed
    job.write_text(yaml.safe_dump(doc))
    log = tmp_path / f"{name}.log"
    proc = launch_entrypoint(job, tmp_path / f"w-{name}", log)
    assert proc.wait(300) == 0, log.read_text()[-3000:]
    state = json.loads(next((tmp_path / f"ckpt-{name}").glob(f"checkpoint-{STEPS}/trainer_state.json")).read_text())
    return {h["step"]: (h["loss"], h["grad_norm"]) for h in state["log_history"] if "loss" in h}


def test_same_spec_and_seed_give_identical_per_step_losses(tmp_path):
    a = _losses(tmp_path, "a", seed=42)
    b = _losses(tmp_path, "b", seed=42)
    assert sorted(a) == list(range(1, STEPS + 1))
    assert a == b  # exact: same data order, same packing, same initialisation, same arithmetic
    c = _losses(tmp_path, "c", seed=7)
    assert c != a
