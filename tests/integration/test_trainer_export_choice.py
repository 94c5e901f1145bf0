"""spec.output.checkpoint with real training of the tiny model on the CPU: the exported weights are those of
the chosen committed checkpoint (tensor for tensor), for each criterion; retention keeps the best checkpoint by
golden pass rate whatever `keep` says; the choice is in export.json, result.json and the evaluation status."""

from __future__ import annotations

import json

import pytest
from trainer_job_factory import job_doc, write_data

pytestmark = pytest.mark.slow


def _train(tmp_path, **spec):
    from sft_api import SFTJob
    from sft_trainer.train import train

    doc = job_doc(tmp_path, **spec)
    return train(SFTJob.model_validate(doc), workdir=tmp_path / "w", base_dir=tmp_path, serve_metrics=False)


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def _same(a, b) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _committed(tmp_path) -> dict[int, dict]:
    """step -> manifest metrics of the committed checkpoints left in the store."""
    from sft_trainer.checkpoint_store import CheckpointStore

    return {c.step: c.metrics for c in CheckpointStore(str(tmp_path / "ckpt")).committed()}


def _exported_record(tmp_path, result) -> dict:
    from sft_trainer.reporting import evaluation_status

    record = json.loads((tmp_path / "model" / "export.json").read_text())
    report = json.loads((tmp_path / "w" / "result.json").read_text())
    status = evaluation_status(result)["exportedCheckpoint"]
    assert record["step"] == report["exported"]["step"] == status["step"] == result.exported["step"]
    assert record["criterion"] == status["criterion"] and record["reason"] == status["reason"]
    return record


def _lowercase_golden(tmp_path) -> str:
    """"No capital letter in the answer to upper: ...": the untrained model passes it, the trained one fails it."""
    rows = [{"prompt": f"upper: {w}", "task_type": "upper", "checks": [{"type": "regex", "value": "^[^A-Z]*$"}]}
            for w in ("abc", "hgfe", "dcbah", "gfa", "bbcd", "ehh")]
    (tmp_path / "lower.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return "lower.jsonl"


def test_best_golden_pass_rate_is_kept_by_retention_and_exported(tmp_path):
    write_data(tmp_path / "train.jsonl", n=80)
    # the rig: a pass rate that falls as the model learns; maxDrop stops training at the first fall, so the
    # golden best is an earlier checkpoint than the last; onRegression: fail leaves output.checkpoint in charge
    golden = {"uri": _lowercase_golden(tmp_path), "maxNewTokens": 12, "everyCheckpoints": 1, "maxDrop": 0.3}
    result = _train(tmp_path, training={"maxSteps": 60, "learningRate": 5e-3},
                    eval={"everySteps": 100, "goldenSet": golden},  # no eval loss: keep=1 alone would keep the last
                    checkpoints={"uri": str(tmp_path / "ckpt"), "everySteps": 5, "keep": 1},
                    output={"uri": str(tmp_path / "model"), "checkpoint": "bestGoldenPassRate"})
    stop = result.golden_stop
    assert stop is not None and result.exit_code == 65, result.golden_checkpoints  # the job fails, after the export
    scores = {e["step"]: e["pass_rate"] for e in result.golden_checkpoints}
    last = stop["step"]
    best = min(s for s in scores if scores[s] == max(scores.values()))
    assert best == stop["best_step"] < last and scores[best] > scores[last], scores
    # retention: the last (keep: 1) and the golden best; every other checkpoint is gone
    assert sorted(_committed(tmp_path)) == [best, last]
    exported = _tensors(tmp_path / "model")
    assert _same(exported, _tensors(tmp_path / "ckpt" / f"checkpoint-{best}"))
    assert not _same(exported, _tensors(tmp_path / "ckpt" / f"checkpoint-{last}"))
    record = _exported_record(tmp_path, result)
    assert record["criterion"] == "bestGoldenPassRate" and record["step"] == best
    assert record["checkpointUri"].endswith(f"/ckpt/checkpoint-{best}/")
    assert f"at checkpoint {best}, the highest of {len(scores)} scored checkpoints" in record["reason"]
    # the final evaluation scored the exported weights: greedy answers, the same pass rate as at that checkpoint
    assert result.golden_after["pass_rate"] == scores[best]
    assert "scored_at_checkpoint" not in result.golden_after


def _rising_eval_loss_run(tmp_path, **output):
    """A constant learning rate too high for the tiny model: the validation loss falls, then rises again."""
    write_data(tmp_path / "train.jsonl", n=80)
    return _train(tmp_path, training={"maxSteps": 30, "learningRate": 3e-2, "lrScheduler": "constant",
                                      "warmupRatio": 0.0},
                  split={"validation": 0.2, "test": 0.0, "seed": 1}, eval={"everySteps": 5},
                  checkpoints={"uri": str(tmp_path / "ckpt"), "everySteps": 5, "keep": 1},
                  output={"uri": str(tmp_path / "model"), **output})


def test_best_eval_loss_exports_the_committed_checkpoint_with_the_lowest_eval_loss(tmp_path):
    result = _rising_eval_loss_run(tmp_path, checkpoint="bestEvalLoss")
    assert result.exit_code == 0, result.message
    committed = _committed(tmp_path)
    best = min(committed, key=lambda s: committed[s]["eval_loss"])
    assert best < 30 and sorted(committed) == [best, 30], committed  # the rig: retention kept the best and the last
    exported = _tensors(tmp_path / "model")
    assert _same(exported, _tensors(tmp_path / "ckpt" / f"checkpoint-{best}"))
    assert not _same(exported, _tensors(tmp_path / "ckpt" / "checkpoint-30"))
    record = _exported_record(tmp_path, result)
    assert record["criterion"] == "bestEvalLoss" and record["step"] == best
    assert f"eval loss {committed[best]['eval_loss']:.4f} at checkpoint {best}" in record["reason"]


def test_last_is_the_default_and_exports_the_end_of_training(tmp_path):
    result = _rising_eval_loss_run(tmp_path)  # no output.checkpoint: what every run did before the field
    assert result.exit_code == 0, result.message
    committed = _committed(tmp_path)
    best = min(committed, key=lambda s: committed[s]["eval_loss"])
    assert best < 30, committed
    exported = _tensors(tmp_path / "model")
    assert _same(exported, _tensors(tmp_path / "ckpt" / "checkpoint-30"))
    assert not _same(exported, _tensors(tmp_path / "ckpt" / f"checkpoint-{best}"))
    record = _exported_record(tmp_path, result)
    assert record == {"step": 30, "criterion": "last", "checkpointUri": None, "jobName": "itest",
                      "reason": "spec.output.checkpoint: last: the weights at the end of training (step 30)"}
