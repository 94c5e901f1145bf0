"""The sanity pre-run's verdict and defaults (sanity.py, config.py), without training."""

from __future__ import annotations

import math

import pytest
from trainer_test_helpers import make_job

from sft_trainer.config import ResolvedConfig
from sft_trainer.sanity import judge


def _cfg(tmp_path, **spec):
    return ResolvedConfig.from_job(make_job(**spec), workdir=tmp_path, cuda=False, env={})


@pytest.mark.parametrize("losses, passed, words", [
    pytest.param([2.0, 1.8, 1.2, 0.9, 0.5], True, ["sanity check passed", "2.0000 (step 1) to 0.5000"],
                 id="a loss that falls below 0.7 x the first passes"),
    pytest.param([2.0, 2.5, 3.0, 4.0, 9.0], False, ["SanityCheckFailed", "2.0000 (step 1) to 9.0000", "<= 1.4000"],
                 id="a rising loss fails with both figures and the limit"),
    pytest.param([2.0, 1.9, 1.8, 1.7, 1.6], False, ["SanityCheckFailed", "minLossDrop 0.7"],
                 id="a loss that falls too little fails"),
    pytest.param([2.0, 3.0, float("nan")], False, ["the loss is nan at step 3 of 5"],
                 id="a NaN fails at its step"),
    pytest.param([2.0, float("inf")], False, ["the loss is inf at step 2 of 5"], id="an infinite loss fails"),
])
def test_verdict(losses, passed, words):
    v = judge(losses, factor=0.7, steps=5, examples=20, trained_tokens=100, hint=" (lr 50)")
    assert v.passed is passed
    for w in words:
        assert w in v.message
    assert v.message.endswith("(lr 50)") is (not passed)


def test_the_final_loss_is_the_mean_of_the_last_tenth():
    losses = [10.0] + [5.0] * 89 + [1.0] * 5 + [3.0] * 5  # 100 steps: the last 5 average 3.0
    v = judge(losses, factor=0.5, steps=100, examples=20, trained_tokens=1)
    assert v.final_loss == 3.0 and v.passed and "mean of steps 96-100" in v.message


def test_no_trained_token_fails_before_any_step():
    v = judge([], factor=0.7, steps=50, examples=20, trained_tokens=0)
    assert not v.passed and "no trained token" in v.message and "lossOn" in v.message


def test_status_has_no_nan():
    v = judge([2.0, float("nan")], factor=0.7, steps=2, examples=3, trained_tokens=9)
    st = v.status()
    assert st["passed"] is False and st["losses"] == [2.0, None] and st["finalLoss"] is None
    assert st["firstLoss"] == 2.0 and not any(isinstance(x, float) and math.isnan(x) for x in st.values())


def test_defaults_on_for_gpu_jobs_off_on_the_cpu(tmp_path):
    assert _cfg(tmp_path).sanity_check is None  # gpusPerNode 0
    gpu = _cfg(tmp_path, workers={"nodes": 1, "gpusPerNode": 1})
    sc = gpu.sanity_check
    assert (sc.examples, sc.steps, sc.min_loss_drop) == (20, 50, 0.7)
    on = _cfg(tmp_path, eval={"sanityCheck": {"enabled": True, "steps": 30, "examples": 8}}).sanity_check
    assert (on.steps, on.examples) == (30, 8)
    off = _cfg(tmp_path, workers={"nodes": 1, "gpusPerNode": 8}, eval={"sanityCheck": {"enabled": False}})
    assert off.sanity_check is None


@pytest.mark.parametrize("field, value", [("minLossDrop", 0), ("minLossDrop", 1.5), ("steps", 1), ("examples", 0)])
def test_invalid_settings_name_the_field(field, value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        make_job(eval={"sanityCheck": {field: value}})
    assert field in str(e.value)
