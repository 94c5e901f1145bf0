"""Progress channel: ETA, status snapshot, rate limiting, reporter choice, loss-curve PNG."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from sft_trainer.callbacks import ProgressCallback, eta_seconds
from sft_trainer.plots import loss_series, write_loss_curve
from sft_trainer.progress import (
    STATUS_FIELDS,
    KubeStatusReporter,
    LogReporter,
    deep_merge,
    format_line,
    make_reporter,
)


class Recorder:
    def __init__(self):
        self.patches: list[dict] = []

    def report(self, patch):
        self.patches.append(patch)

    def close(self, timeout=5.0):
        pass


def test_eta_is_mean_recent_step_time_times_remaining_steps():
    assert eta_seconds([], 0, 100) is None
    assert eta_seconds([2.0, 4.0], 10, 100) == pytest.approx(90 * 3.0)
    assert eta_seconds([1.0], 120, 100) == 0
    assert eta_seconds([1.0], 5, 0) is None


def test_snapshot_has_the_status_fields_in_camel_case():
    cb = ProgressCallback(Recorder())
    state = TrainerState()
    state.global_step, state.max_steps, state.epoch = 30, 120, 0.75
    cb.step_durations.extend([0.5, 1.5])
    cb.latest = {"trainLoss": 1.2}
    snap = cb.snapshot(state)
    assert snap["progress"].pop("updatedAt").endswith("Z")
    assert snap == {
        "progress": {"step": 30, "totalSteps": 120, "epoch": 0.75, "percent": 25.0,
                     "etaSeconds": 90},
        "metrics": {"trainLoss": 1.2},
    }


def test_reports_are_rate_limited_but_always_sent_at_checkpoint_and_end(monkeypatch):
    rec = Recorder()
    cb = ProgressCallback(rec, min_interval_s=10.0, console=False)
    clock = [1000.0]
    monkeypatch.setattr("sft_trainer.callbacks.time.monotonic", lambda: clock[0])
    args, control = SimpleNamespace(world_size=2), TrainerControl()
    state = TrainerState()
    state.max_steps = 100
    cb.on_train_begin(args, state, control)
    assert rec.patches[-1]["worldSize"] == 2
    for step in range(1, 21):  # 0.8 s per step: 16 s in all
        clock[0] += 0.8
        state.global_step = step
        cb.on_step_end(args, state, control)
        if step == 5:
            cb.on_log(args, state, control, logs={"loss": 2.0, "learning_rate": 1e-3,
                                                  "num_tokens": 500})
    steps_reported = [p["progress"]["step"] for p in rec.patches]
    assert steps_reported == [0, 13]  # begin, then the first step end >= 10 s later
    cb.on_save(args, state, control)
    cb.on_train_end(args, state, control)
    assert [p["progress"]["step"] for p in rec.patches] == [0, 13, 20, 20]
    last = rec.patches[-1]
    assert last["progress"]["percent"] == 20.0
    assert last["progress"]["etaSeconds"] == 64  # 80 steps left x 0.8 s
    assert last["metrics"]["trainLoss"] == 2.0 and last["metrics"]["learningRate"] == 1e-3


def test_mfu_reaches_status_metrics_when_known():
    rec = Recorder()
    src = SimpleNamespace(last_mfu=0.0)
    cb = ProgressCallback(rec, console=False, mfu_source=src)
    state, args, control = TrainerState(), SimpleNamespace(world_size=1), TrainerControl()
    state.max_steps = 10
    cb.on_log(args, state, control, logs={"loss": 1.0})
    assert "mfu" not in cb.latest  # unknown on the CPU: left out, not reported as 0
    src.last_mfu = 0.41234
    cb.on_log(args, state, control, logs={"loss": 0.9})
    assert cb.snapshot(state)["metrics"]["mfu"] == 0.4123


def test_non_zero_rank_never_reports():
    rec = Recorder()
    cb = ProgressCallback(rec)
    state = TrainerState()
    state.is_world_process_zero = False
    cb.on_train_begin(SimpleNamespace(world_size=2), state, TrainerControl())
    cb.on_train_end(SimpleNamespace(world_size=2), state, TrainerControl())
    assert rec.patches == []


def test_log_reporter_rejects_fields_the_operator_owns(caplog):
    r = LogReporter()
    with pytest.raises(ValueError, match="phase"):
        r.report({"phase": "Succeeded"})
    with caplog.at_level(logging.INFO, logger="sft_trainer.progress"):
        r.report({"checkpoint": {"step": 10, "uri": "s3://b/checkpoint-10/"}})
    assert "checkpoint 10 -> s3://b/checkpoint-10/" in caplog.text
    assert set(STATUS_FIELDS) == {"progress", "metrics", "checkpoint", "worldSize", "evaluation", "lineage",
                                  "tracking"}


def test_format_line_and_deep_merge():
    line = format_line({"progress": {"step": 4, "totalSteps": 8, "percent": 50.0, "etaSeconds": 3.2},
                        "metrics": {"trainLoss": 1.23456, "tokensPerSecond": 99.6}})
    assert line == "step 4/8 (50.0%) eta 3s | loss 1.2346 tok/s 100"
    merged = deep_merge({"progress": {"step": 1, "totalSteps": 9}}, {"progress": {"step": 2}})
    assert merged == {"progress": {"step": 2, "totalSteps": 9}}


def test_make_reporter_outside_a_cluster_logs(monkeypatch):
    assert isinstance(make_reporter({}), LogReporter)
    # a job name without an in-cluster service account still logs
    env = {"SFT_JOB_NAME": "j", "SFT_JOB_NAMESPACE": "n", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert isinstance(make_reporter(env), LogReporter)


def test_kube_reporter_keeps_failed_reports_and_never_raises():
    # nothing listens on port 9 of 127.0.0.1: every patch fails fast
    r = KubeStatusReporter.from_token("j", "n", host="https://127.0.0.1:9", token="t",
                                      verify_ssl=False, retry_seconds=0.05, request_timeout=1)
    try:
        r.report({"progress": {"step": 1}})
        r.report({"progress": {"step": 2, "totalSteps": 5}})
        assert r.flush(timeout=1.0) is False
        assert r.failures >= 1 and r.sent == 0
        assert r.pending() == {"progress": {"step": 2, "totalSteps": 5}}
    finally:
        r.close(timeout=0.2)


def test_loss_curve_png(tmp_path):
    history = [{"loss": 3 - i * 0.1, "step": i} for i in range(1, 11)]
    history += [{"eval_loss": 2.5, "eval_arith_loss": 2.7, "eval_upper_loss": 2.2, "step": 5},
                {"eval_loss": 2.0, "eval_arith_loss": 2.4, "eval_upper_loss": 1.6, "step": 10},
                {"train_runtime": 3.0, "step": 10}]
    series = loss_series(history)
    assert sorted(series) == ["eval", "eval/arith", "eval/upper", "train"]
    assert series["eval/upper"] == [(5, 2.2), (10, 1.6)]
    out = write_loss_curve(history, str(tmp_path / "plots" / "loss.png"))
    data = open(out, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
