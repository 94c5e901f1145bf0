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
                          "minExactMatchByTask": {"upper": 0.0, "reverse": 0.0},
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
    # the exact-match floors are measured in a pod too (train() without sftctl run's before/after), and pass
    assert set(result.exact_match_after) == {"upper", "reverse", "overall"} and "exact match" not in result.message
    report = json.loads((tmp_path / "w" / "result.json").read_text())
    assert report["scored_sets"]["lowercase"]["base"] == 1.0 and "final" in report["scored_sets"]["lowercase"]


def _lowercase_golden(tmp_path):
    """A rigged golden set: "no capital letter in the answer to upper: ...". The untrained model passes it,
    and its pass rate falls as training teaches the model to answer in capitals."""
    rows = [{"prompt": f"upper: {w}", "task_type": "upper", "checks": [{"type": "regex", "value": "^[^A-Z]*$"}]}
            for w in ("abc", "hgfe", "dcbah", "gfa", "bbcd", "ehh")]
    return _write_set(tmp_path / "lower.jsonl", rows)


def _falling_run(tmp_path, on_regression: str):
    write_data(tmp_path / "train.jsonl", n=80)
    golden = {"uri": _lowercase_golden(tmp_path), "maxNewTokens": 12, "everyCheckpoints": 1, "maxDrop": 0.3,
              "onRegression": on_regression}
    return _train(tmp_path, training={"maxSteps": 60, "learningRate": 5e-3},
                  eval={"everySteps": 100, "goldenSet": golden},
                  checkpoints={"uri": str(tmp_path / "ckpt"), "everySteps": 5, "keep": 20},
                  output={"uri": str(tmp_path / "model")})


def _first_fall(entries, max_drop):
    best = None
    for e in entries:
        if best is not None and best - e["pass_rate"] > max_drop:
            return e["step"]
        best = e["pass_rate"] if best is None else max(best, e["pass_rate"])
    return None


def test_a_golden_set_whose_pass_rate_falls_stops_training_at_that_checkpoint(tmp_path):
    result = _falling_run(tmp_path, "fail")
    entries = result.golden_checkpoints
    stop = result.golden_stop
    assert stop is not None, entries
    assert [e["step"] for e in entries] == list(range(5, stop["step"] + 1, 5))  # every checkpoint, none after
    assert stop["step"] == _first_fall(entries, 0.3) == result.global_step < 60
    assert stop["best_pass_rate"] - stop["pass_rate"] > 0.3
    # the final evaluation reuses the stop checkpoint's golden score: the same weights, no second generation
    assert result.golden_after["scored_at_checkpoint"] == stop["step"]
    assert result.golden_after["pass_rate"] == stop["pass_rate"] == entries[-1]["pass_rate"]
    assert result.exit_code == 65, result.message
    assert "golden-set pass rate fell from" in result.message and "spec.eval.goldenSet.maxDrop 30.00%" in result.message
    report = json.loads((tmp_path / "w" / "result.json").read_text())
    assert report["golden_stop"]["step"] == stop["step"] and len(report["golden_checkpoints"]) == len(entries)
    from sft_trainer.plots import golden_series

    state = json.loads((tmp_path / "ckpt" / f"checkpoint-{stop['step']}" / "trainer_state.json").read_text())
    # the checkpoint's own score is logged after it is saved; the earlier ones are in its trainer state
    assert [s for s, _ in golden_series(state["log_history"])["golden"]] == [e["step"] for e in entries[:-1]]
    assert (tmp_path / "ckpt" / "loss.png").stat().st_size > 10_000


def test_on_regression_export_best_succeeds_with_the_best_checkpoint_exported(tmp_path):
    import torch
    from safetensors.torch import load_file

    result = _falling_run(tmp_path, "exportBest")
    stop = result.golden_stop
    assert stop is not None and stop["on_regression"] == "exportBest"
    assert result.exit_code == 0, result.message
    exported = load_file(tmp_path / "model" / "model.safetensors")
    best = load_file(tmp_path / "ckpt" / f"checkpoint-{stop['best_step']}" / "model.safetensors")
    last = load_file(tmp_path / "ckpt" / f"checkpoint-{stop['step']}" / "model.safetensors")
    assert exported.keys() == best.keys()
    assert all(torch.equal(exported[k], best[k]) for k in best)
    assert not all(torch.equal(exported[k], last[k]) for k in last)
    # the final evaluation ran on the best checkpoint's weights: greedy answers, the same pass rate
    assert result.golden_after["pass_rate"] == stop["best_pass_rate"]
    assert "scored_at_checkpoint" not in result.golden_after  # generated again, with the best weights
    # loaded back from the committed checkpoint (export_choice.py), and said so
    assert result.exported["step"] == stop["best_step"] and result.exported["criterion"] == "bestGoldenPassRate"
    assert result.exported["checkpoint_uri"].endswith(f"/ckpt/checkpoint-{stop['best_step']}/")
    assert "onRegression: exportBest after the maxDrop stop" in result.exported["reason"]
