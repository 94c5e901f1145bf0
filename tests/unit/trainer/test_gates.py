"""The evaluation gates' decisions (gates.py) on the figures of a finished run, without training."""

from __future__ import annotations

import pytest
from trainer_test_helpers import make_job

from sft_trainer.config import ResolvedConfig
from sft_trainer.gates import evaluation_gates
from sft_trainer.train import TrainResult


def _run(tmp_path, golden: dict, sets: dict, regression_sets=(), by_task=None, rate=0.6):
    eval_spec = {"goldenSet": {"uri": "g.jsonl", **golden}, "regressionSets": list(regression_sets)}
    cfg = ResolvedConfig.from_job(make_job(eval=eval_spec), workdir=tmp_path, cuda=False, env={})
    result = TrainResult(min_pass_rate=cfg.min_pass_rate, scored_sets=sets)
    result.golden_after = {"pass_rate": rate, "by_task": by_task or {"upper": 0.8, "reverse": 0.4}}
    evaluation_gates(cfg, result)
    return result


SAFETY = {"name": "safety", "uri": "s.jsonl", "maxRegressionVsBase": 0.05}


@pytest.mark.parametrize("golden, sets, code, words", [
    pytest.param({}, {}, 0, [], id="no gate set: success"),
    pytest.param({"minPassRate": 0.7}, {}, 65, ["golden-set pass rate 60.00% < spec.eval.goldenSet.minPassRate 70.00%"],
                 id="below minPassRate fails"),
    pytest.param({"minPassRateByTask": {"reverse": 0.5}}, {}, 65,
                 ["task_type 'reverse' 40.00% < spec.eval.goldenSet.minPassRateByTask[reverse] 50.00%"],
                 id="a task below its floor fails"),
    pytest.param({"minPassRateByTask": {"upper": 0.8, "reverse": 0.4}}, {}, 0, [], id="tasks at their floors pass"),
    pytest.param({"minPassRateByTask": {"sql": 0.1}}, {}, 65, ["has no task_type 'sql'"],
                 id="a floor for a task the golden set lacks fails"),
    pytest.param({}, {"safety": {"base": 1.0, "final": 0.9, "delta": -0.1, "max_regression_vs_base": 0.05}}, 65,
                 ["regression set 'safety' pass rate 90.00% vs 100.00% on the base model (-10.00 points)",
                  "spec.eval.regressionSets[0].maxRegressionVsBase 5.00%"], id="a regression set below its base fails"),
    pytest.param({}, {"safety": {"base": 1.0, "final": 0.95, "delta": -0.05, "max_regression_vs_base": 0.05}}, 0, [],
                 id="a regression set at its allowed drop passes"),
    pytest.param({"maxRegressionVsBase": 0.0},
                 {"golden": {"base": 0.7, "final": 0.6, "delta": -0.1, "max_regression_vs_base": 0.0}}, 65,
                 ["golden set pass rate 60.00% vs 70.00% on the base model", "spec.eval.goldenSet.maxRegressionVsBase"],
                 id="the golden set below the base model fails"),
    pytest.param({}, {"golden": {"base": 0.7, "final": 0.6, "delta": -0.1, "max_regression_vs_base": None}}, 0, [],
                 id="a base figure without maxRegressionVsBase is only reported"),
])
def test_gates(tmp_path, golden, sets, code, words):
    result = _run(tmp_path, golden, sets, regression_sets=[SAFETY] if "safety" in sets else ())
    assert result.exit_code == code, result.message
    for w in words:
        assert w in result.message
    if code:
        assert result.message.startswith("GoldenSetRegression: ")


def test_every_failed_gate_is_in_the_message(tmp_path):
    result = _run(tmp_path, {"minPassRate": 0.9, "minPassRateByTask": {"reverse": 0.5}},
                  {"safety": {"base": 1.0, "final": 0.0, "delta": -1.0, "max_regression_vs_base": 0.0}},
                  regression_sets=[SAFETY])
    assert result.exit_code == 65 and result.message.count("; ") == 2


def test_a_maxdrop_stop_fails_only_with_on_regression_fail(tmp_path):
    stop = {"step": 8, "best_step": 4, "message": "golden-set pass rate fell", "on_regression": "fail"}
    cfg = ResolvedConfig.from_job(make_job(eval={"goldenSet": {"uri": "g.jsonl"}}), workdir=tmp_path, cuda=False, env={})
    failed = TrainResult(golden_stop=stop)
    evaluation_gates(cfg, failed)
    exported = TrainResult(golden_stop={**stop, "on_regression": "exportBest"})
    evaluation_gates(cfg, exported)
    assert (failed.exit_code, exported.exit_code) == (65, 0) and "fell" in failed.message


def test_the_loss_curve_draws_the_golden_pass_rate(tmp_path):
    from sft_trainer.golden_checkpoints import golden_entries
    from sft_trainer.plots import golden_series, write_loss_curve

    history = [{"step": s, "loss": 3.0 / s} for s in range(1, 21)]
    plain = write_loss_curve(history, str(tmp_path / "plain.png"))
    history += [{"step": 10, "golden_pass_rate": 0.5, "golden_upper_pass_rate": 1.0, "golden_reverse_pass_rate": 0.0},
                {"step": 20, "golden_pass_rate": 0.75, "golden_upper_pass_rate": 1.0, "golden_reverse_pass_rate": 0.5}]
    assert golden_series(history) == {"golden": [(10, 0.5), (20, 0.75)], "golden/upper": [(10, 1.0), (20, 1.0)],
                                      "golden/reverse": [(10, 0.0), (20, 0.5)]}
    assert golden_entries(history)[1] == {"step": 20, "pass_rate": 0.75, "by_task": {"upper": 1.0, "reverse": 0.5}}
    with_golden = write_loss_curve(iter(history), str(tmp_path / "golden.png"))  # any iterable
    assert (tmp_path / "golden.png").read_bytes() != (tmp_path / "plain.png").read_bytes()
    assert plain and with_golden


def test_the_evaluation_status_fits_the_status_schema():
    """What the trainer reports is what the CRD keeps (EvaluationStatus forbids unknown fields)."""
    from sft_api.models import EvaluationStatus
    from sft_trainer.reporting import evaluation_status
    from sft_trainer.sanity import judge

    result = TrainResult(test_loss=1.5)
    result.golden_after = {"pass_rate": 0.5, "by_task": {"upper": 1.0, "reverse": 0.0}}
    result.golden_checkpoints = [{"step": 5, "pass_rate": 1.0, "by_task": {"upper": 1.0}, "seconds": 0.2}]
    result.golden_stop = {"step": 10, "best_step": 5, "best_pass_rate": 1.0, "pass_rate": 0.0,
                          "on_regression": "fail", "message": "fell"}
    result.scored_sets = {"golden": {"total": 2, "base": 0.0, "base_by_task": {"upper": 0.0}, "final": 0.5,
                                     "final_by_task": {"upper": 1.0}, "delta": 0.5, "max_regression_vs_base": None,
                                     "base_seconds": 0.1},
                          "safety": {"total": 3, "base": 1.0, "final": 0.0, "delta": -1.0}}
    status = evaluation_status(result)
    parsed = EvaluationStatus.model_validate(status)
    assert parsed.sets["safety"].delta == -1.0 and parsed.sets["golden"].base_by_task == {"upper": 0.0}
    assert parsed.golden_checkpoints[0].pass_rate == 1.0 and parsed.best_golden_step == 5
    assert parsed.golden_set_by_task == {"upper": 1.0, "reverse": 0.0}
    sanity = judge([2.0, 1.0, float("nan")], factor=0.7, steps=3, examples=4, trained_tokens=10).status()
    assert EvaluationStatus.model_validate({"sanityCheck": sanity}).sanity_check.passed is False


@pytest.mark.parametrize("after, want", [
    pytest.param({"kv_json": 0.5, "upper": 0.25, "overall": 0.375},
                 {"exactMatch": 0.375, "exactMatchByTask": {"kv_json": 0.5, "upper": 0.25}},
                 id="the held-out exact match goes to status overall and by task"),
    pytest.param({"kv_json": 0.0, "overall": 0.0}, {"exactMatch": 0.0, "exactMatchByTask": {"kv_json": 0.0}},
                 id="a zero is reported, not dropped"),
    pytest.param({}, {}, id="an empty test split reports nothing"),
    pytest.param(None, {}, id="a rank that measured nothing (rank > 0 of a gang) reports nothing"),
])
def test_the_held_out_exact_match_reaches_the_evaluation_status(after, want):
    from sft_api.models import EvaluationStatus
    from sft_trainer.reporting import evaluation_status

    status = evaluation_status(TrainResult(exact_match_after=after))
    assert {k: v for k, v in status.items() if k.startswith("exactMatch")} == want
    parsed = EvaluationStatus.model_validate(status)  # the CRD keeps both fields
    assert parsed.exact_match == want.get("exactMatch") and parsed.exact_match_by_task == want.get("exactMatchByTask", {})


@pytest.mark.parametrize("floors, after, code, words", [
    pytest.param({"upper": 0.5}, {"upper": 0.6, "overall": 0.6}, 0, [], id="exact match above its floor passes"),
    pytest.param({"upper": 0.5}, {"upper": 0.4, "overall": 0.4}, 65,
                 ["held-out exact match of task_type 'upper' 40.00% < spec.eval.minExactMatchByTask[upper] 50.00%"],
                 id="exact match below its floor fails"),
    pytest.param({"sql": 0.1}, {"upper": 1.0}, 65, ["the test split has no task_type 'sql'"],
                 id="a floor for a task the test split lacks fails"),
    # found by the 2-pod gang on the real node: rank 1 exited 65 and failed the job
    pytest.param({"upper": 0.5}, None, 0, [], id="a rank that measured nothing (rank > 0 of a gang) passes"),
])
def test_exact_match_floors(tmp_path, floors, after, code, words):
    cfg = ResolvedConfig.from_job(make_job(eval={"minExactMatchByTask": floors}), workdir=tmp_path, cuda=False, env={})
    result = TrainResult(exact_match_after=after)
    evaluation_gates(cfg, result)
    assert result.exit_code == code and all(w in result.message for w in words), result.message
