"""The golden set at checkpoints (golden_checkpoints.py) and retention: the commit callback keeps the best
checkpoint by golden pass rate in a real checkpoint store; a resumed run scores its resume checkpoint again
when that checkpoint's score was lost with the attempt that wrote it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from trainer_test_helpers import make_job

from sft_trainer.callbacks import CheckpointCommitCallback
from sft_trainer.checkpoint_store import CheckpointStore
from sft_trainer.config import ResolvedConfig
from sft_trainer.evaluation import load_golden
from sft_trainer.golden_checkpoints import GoldenCheckpointCallback, golden_checkpoint_callbacks


def _commit(store: CheckpointStore, tmp_path, step: int) -> None:
    local = tmp_path / f"local-{step}"
    local.mkdir()
    (local / "model.bin").write_bytes(b"weights %d" % step)
    store.commit(local, step, {"train_loss": 1.0 / step})


def _golden(tmp_path):
    f = tmp_path / "g.jsonl"
    f.write_text(json.dumps({"prompt": "upper: ab", "task_type": "upper",
                             "checks": [{"type": "regex", "value": "^[^A-Z]*$"}]}) + "\n")
    return load_golden(str(f))


def test_the_commit_callbacks_retention_keeps_the_golden_best_checkpoint(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    commit = CheckpointCommitCallback(store, keep=1)
    cfg = ResolvedConfig.from_job(make_job(eval={"goldenSet": {"uri": "g.jsonl", "everyCheckpoints": 1}},
                                           checkpoints={"everySteps": 5}), workdir=tmp_path, cuda=False, env={})
    inputs = SimpleNamespace(golden=_golden(tmp_path), tokenizer=None)
    (golden,) = golden_checkpoint_callbacks(cfg, inputs, [commit], SimpleNamespace(golden_checkpoints=[]))
    assert golden.keep_best_weights is False  # the best checkpoint is loaded back from the store instead
    assert commit.protected_steps() == ()
    for step, rate in ((5, 0.5), (10, 1.0), (15, 0.0), (20, 0.5)):
        _commit(store, tmp_path, step)
        commit._retention()  # as after each commit: the step's own score comes after it
        golden._judge({"step": step, "pass_rate": rate})
    assert commit.protected_steps() == (10,)
    _commit(store, tmp_path, 25)
    commit._retention()
    assert [c.step for c in store.committed()] == [10, 25]  # keep: 1, plus the golden best


def test_without_a_store_the_best_weights_are_kept_in_memory(tmp_path):
    cfg = ResolvedConfig.from_job(make_job(eval={"goldenSet": {"uri": "g.jsonl", "everyCheckpoints": 2}}),
                                  workdir=tmp_path, cuda=False, env={})
    (golden,) = golden_checkpoint_callbacks(cfg, SimpleNamespace(golden=_golden(tmp_path), tokenizer=None), [],
                                            SimpleNamespace(golden_checkpoints=[]))
    assert golden.keep_best_weights is True


@pytest.fixture(scope="module")
def tiny():
    from sft_trainer.tiny_model import build_model, build_tokenizer

    tok = build_tokenizer()
    return tok, build_model(tok)


# the untrained model's answers decode to no capital letter: a checkpoint scored here passes (1.0), and is the best
@pytest.mark.parametrize("step, history, scored, best", [
    pytest.param(10, [{"step": 5, "golden_pass_rate": 0.0}], [5, 10], (10,),
                 id="a due resume checkpoint without its score is scored again"),
    pytest.param(10, [{"step": 5, "golden_pass_rate": 0.0}, {"step": 10, "golden_pass_rate": 0.0}], [5, 10], (5,),
                 id="a resume checkpoint with its score is not scored twice"),
    pytest.param(7, [{"step": 5, "golden_pass_rate": 0.0}], [5], (5,), id="a resume step that was not due is not scored"),
    pytest.param(0, [], [], (), id="a fresh start scores nothing"),
])
def test_a_resumed_run_scores_its_resume_checkpoint_again(tiny, tmp_path, step, history, scored, best):
    from transformers import TrainerControl, TrainerState

    tok, model = tiny
    result = SimpleNamespace(golden_checkpoints=[], golden_stop=None)
    cb = GoldenCheckpointCallback(items=_golden(tmp_path), tokenizer=tok, max_new_tokens=4, every=1, save_steps=5,
                                  max_drop=None, on_regression="fail", result=result, keep_best_weights=False)
    state = TrainerState(global_step=step, max_steps=20, log_history=[dict(e) for e in history])
    cb.on_train_begin(None, state, TrainerControl(), model=model)
    assert [e["step"] for e in result.golden_checkpoints] == scored
    assert [e["step"] for e in state.log_history if "golden_pass_rate" in e] == scored
    assert cb.best_steps() == best
