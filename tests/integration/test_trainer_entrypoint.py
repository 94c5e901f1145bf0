"""``python -m sft_trainer`` as the pod runs it: exit codes and one-line errors, never a traceback."""

from __future__ import annotations

import json

import pytest
from trainer_job_factory import job_doc, run_entrypoint, write_data, write_golden, write_job

from sft_trainer import exit_codes


def test_invalid_spec_exits_64_naming_the_field(tmp_path):
    doc = job_doc(tmp_path)
    doc["spec"]["training"]["learningRate"] = -1
    res = run_entrypoint(write_job(tmp_path, doc), tmp_path / "work")
    assert res.returncode == exit_codes.CONFIG_ERROR == 64, res.stderr[-2000:]
    assert "spec.training.learningRate" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_config_file_exits_64(tmp_path):
    res = run_entrypoint(tmp_path / "nope.yaml", tmp_path / "work")
    assert res.returncode == 64 and "No such file" in res.stderr and "Traceback" not in res.stderr


def test_bad_rows_above_threshold_exit_64_with_file_and_line(tmp_path):
    write_data(tmp_path / "train.jsonl", n=40, bad=4)
    res = run_entrypoint(write_job(tmp_path, job_doc(tmp_path, preflight={"maxBadRowRatio": 0.05})), tmp_path / "w")
    assert res.returncode == 64, res.stderr[-3000:]
    assert "DataError" in res.stderr and "4 of 44 rows are malformed" in res.stderr
    # a scheme-less path is relative to the working directory in the pod
    assert "  train.jsonl:4: no assistant turn to train on" in res.stderr
    assert "  train.jsonl:6: invalid JSON" in res.stderr
    assert "Traceback" not in res.stderr
    assert (tmp_path / "w" / "exit-code-rank0").read_text() == "64"


def test_world_size_mismatch_exits_66_with_topology_mismatch(tmp_path):
    # the spec wants 2 nodes, but this pod started alone (no NNODES): rank 0 sees world size 1
    write_data(tmp_path / "train.jsonl", n=40)
    res = run_entrypoint(write_job(tmp_path, job_doc(tmp_path, workers={"nodes": 2})), tmp_path / "w")
    assert res.returncode == exit_codes.TOPOLOGY_MISMATCH == 66, res.stderr[-2000:]
    assert "TopologyMismatch: world size 1 != spec.workers.nodes 2 x 1 processes per node (2)" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_golden_set_below_min_pass_rate_exits_65_after_training(tmp_path):
    write_data(tmp_path / "train.jsonl", n=60)
    write_golden(tmp_path / "golden.jsonl")
    doc = job_doc(tmp_path, training={"maxSteps": 4},
                  eval={"everySteps": 4, "goldenSet": {"uri": "golden.jsonl", "minPassRate": 1.0, "maxNewTokens": 8}},
                  output={"uri": str(tmp_path / "model")})
    res = run_entrypoint(write_job(tmp_path, doc), tmp_path / "w")
    assert res.returncode == exit_codes.GOLDEN_REGRESSION == 65, res.stderr[-3000:]
    assert "GoldenSetRegression: golden-set pass rate 0.00% < spec.eval.goldenSet.minPassRate 100.00%" in res.stderr
    result = json.loads((tmp_path / "w" / "result.json").read_text())
    assert result["global_step"] == 4 and result["golden_after"]["total"] == 2
    # the model was still exported and the checkpoint committed: the regression is a verdict, not a crash
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "ckpt" / "checkpoint-4" / "_COMMITTED").is_file()
    assert (tmp_path / "ckpt" / "loss.png").is_file()
