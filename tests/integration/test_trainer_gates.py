"""Evaluation gates with real training of the tiny model on the CPU: regression sets against the base
model (eval.regressionSets, maxRegressionVsBase), per-task floors, and the golden set at checkpoints."""

from __future__ import annotations

import json

import pytest
from trainer_job_factory import job_doc, write_data, write_golden

pytestmark = pytest.mark.slow


def _train(tmp_path, **spec):
    from sft_api import SFTJob
    from sft_trainer.train import train

    doc = job_doc(tmp_path, **spec)
    return train(SFTJob.model_validate(doc), workdir=tmp_path / "w", base_dir=tmp_path, serve_metrics=False)


def _write_set(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.name


def test_a_regression_set_the_base_model_passes_and_training_destroys_fails_the_delta_gate(tmp_path):
    write_data(tmp_path / "train.jsonl", n=80)
    write_golden(tmp_path / "golden.jsonl")
    # "no capital letter in the answer": the untrained model (whose answers decode to nothing) passes it,
    # the trained one answers "upper: ..." in capitals: what training destroys
    lower = [{"prompt": f"upper: {w}", "task_type": "upper", "checks": [{"type": "regex", "value": "^[^A-Z]*$"}]}
             for w in ("abc", "hgfe", "dcbah", "gfa", "bbcd", "ehh")]
    name = _write_set(tmp_path / "lower.jsonl", lower)
    result = _train(tmp_path, training={"maxSteps": 40, "learningRate": 5e-3},
                    eval={"everySteps": 100, "goldenSet": {"uri": "golden.jsonl", "maxNewTokens": 16},
                          "regressionSets": [
                              {"name": "lowercase", "uri": name, "maxNewTokens": 16, "maxRegressionVsBase": 0.1},
                              {"name": "tolerant", "uri": name, "maxNewTokens": 16, "maxRegressionVsBase": 1.0}]},
                    checkpoints={"uri": str(tmp_path / "ckpt"), "everySteps": 100, "keep": 1})
    sets = result.scored_sets
    assert sets["lowercase"]["base"] == 1.0 and sets["lowercase"]["final"] <= 0.5, sets
    assert sets["lowercase"]["delta"] == sets["lowercase"]["final"] - 1.0
    assert sets["tolerant"]["final"] == sets["lowercase"]["final"]
    assert "golden" in sets and sets["golden"]["base"] is not None  # the golden set has its base figure too
    assert result.exit_code == 65, result.message
    assert result.message.startswith("GoldenSetRegression: regression set 'lowercase' pass rate")
    assert "spec.eval.regressionSets[0].maxRegressionVsBase 10.00%" in result.message
    assert "tolerant" not in result.message  # within its limit: that gate passes
    report = json.loads((tmp_path / "w" / "result.json").read_text())
    assert report["scored_sets"]["lowercase"]["base"] == 1.0 and "final" in report["scored_sets"]["lowercase"]
