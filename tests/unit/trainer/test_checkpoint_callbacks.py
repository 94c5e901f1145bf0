"""CheckpointCommitCallback and SigtermCallback against a real TrainerState and a local store."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from sft_trainer.callbacks import CheckpointCommitCallback, SigtermCallback, any_rank
from sft_trainer.checkpoint_store import CheckpointStore
from sft_trainer.metrics import TrainerMetrics
from sft_trainer.progress import LogReporter


def hf_checkpoint(output_dir: Path, step: int) -> Path:
    d = output_dir / f"checkpoint-{step}"
    d.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                 "trainer_state.json"):
        (d / name).write_bytes(f"{name}@{step}".encode() * 10)
    return d


def state_at(step: int, history: list[dict]) -> TrainerState:
    s = TrainerState()
    s.global_step = step
    s.max_steps = 100
    s.log_history = history
    return s


def test_on_save_commits_records_metrics_reports_and_prunes(tmp_path):
    store = CheckpointStore(str(tmp_path / "remote"))
    metrics = TrainerMetrics("ns", "job")
    reporter = LogReporter()
    cb = CheckpointCommitCallback(store, keep=1, metrics=metrics, reporter=reporter)
    args = SimpleNamespace(output_dir=str(tmp_path / "out"))
    history: list[dict] = []
    evals = {10: 2.0, 20: 1.0, 30: 1.5}
    for step, ev in evals.items():
        hf_checkpoint(tmp_path / "out", step)
        history += [{"loss": ev + 1, "step": step},
                    {"eval_loss": ev, "eval_arith_loss": ev * 2, "step": step}]
        control = TrainerControl(should_save=True)
        cb.on_step_end(args, state_at(step, history), control)
        cb.on_save(args, state_at(step, history), control)

    # keep=1 plus the best by eval_loss (step 20)
    assert [c.step for c in store.committed()] == [20, 30]
    best = store.committed()[0]
    assert best.metrics == {"eval_loss": 1.0, "eval_arith_loss": 2.0, "train_loss": 2.0}
    assert cb.last_commit["step"] == 30
    assert cb.last_commit["uri"] == store.checkpoint_uri(30)
    assert reporter.last["checkpoint"]["step"] == 30
    assert reporter.last["checkpoint"]["uri"].endswith("/remote/checkpoint-30/")
    assert reporter.last["checkpoint"]["savedAt"].endswith("Z")
    g = metrics.registry.get_sample_value
    labels = {"namespace": "ns", "sftjob": "job"}
    assert g("sftjob_checkpoint_last_step", labels) == 30
    assert 0 <= g("sftjob_checkpoint_save_seconds", labels) < 30


def test_checkpoint_metrics_only_take_eval_at_that_step():
    history = [
        {"loss": 3.0, "step": 5},
        {"eval_loss": 2.5, "step": 5},
        {"loss": 2.0, "step": 10},
    ]
    assert CheckpointCommitCallback.checkpoint_metrics(history, 10) == {"train_loss": 2.0}
    assert CheckpointCommitCallback.checkpoint_metrics(history, 5) == {
        "eval_loss": 2.5, "train_loss": 3.0
    }
    per_task = [{"eval_a_loss": 1.0, "eval_b_loss": 3.0, "step": 4}]
    assert CheckpointCommitCallback.checkpoint_metrics(per_task, 4)["eval_loss"] == 2.0
    per_task[0]["eval_all_loss"] = 1.5
    assert CheckpointCommitCallback.checkpoint_metrics(per_task, 4)["eval_loss"] == 1.5


def test_non_zero_rank_does_not_commit(tmp_path):
    store = CheckpointStore(str(tmp_path / "remote"))
    cb = CheckpointCommitCallback(store, keep=2)
    hf_checkpoint(tmp_path / "out", 10)
    state = state_at(10, [])
    state.is_world_process_zero = False
    cb.on_save(SimpleNamespace(output_dir=str(tmp_path / "out")), state, TrainerControl())
    assert store.latest_committed() is None


@pytest.fixture
def sigterm_cb():
    cb = SigtermCallback()
    yield cb
    cb.uninstall()


def test_sigterm_sets_save_and_stop_at_next_step_end(sigterm_cb):
    args, state = SimpleNamespace(), state_at(7, [])
    control = TrainerControl()
    sigterm_cb.on_step_end(args, state, control)
    assert not control.should_save and not control.should_training_stop
    os.kill(os.getpid(), signal.SIGTERM)  # the real signal, through the installed handler
    assert sigterm_cb.received
    sigterm_cb.on_step_end(args, state, control)
    assert control.should_save and control.should_training_stop
    assert sigterm_cb.stopped_at_step == 7


def test_sigterm_uninstall_restores_previous_handler():
    before = signal.getsignal(signal.SIGTERM)
    cb = SigtermCallback()
    assert signal.getsignal(signal.SIGTERM) == cb._handle
    cb.uninstall()
    assert signal.getsignal(signal.SIGTERM) == before


def test_any_rank_without_process_group_is_the_local_flag():
    assert any_rank(True) is True
    assert any_rank(False) is False
