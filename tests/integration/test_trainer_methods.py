"""LoRA through PEFT with the adapters merged into the exported model, and early stopping, through
``python -m sft_trainer`` on the CPU."""

from __future__ import annotations

import json

import pytest
from trainer_job_factory import job_doc, run_entrypoint, write_data, write_job

pytestmark = pytest.mark.slow


def test_lora_adapters_are_merged_into_the_exported_model(tmp_path):
    import torch
    from safetensors.torch import load_file

    from sft_trainer.tiny_model import build_model, build_tokenizer

    write_data(tmp_path / "train.jsonl", n=60)
    doc = job_doc(tmp_path, training={"maxSteps": 3, "learningRate": 5e-3},
                  method={"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0,
                                                   "targetModules": ["q_proj", "v_proj"]}},
                  output={"uri": str(tmp_path / "merged"), "mergeAdapters": True})
    res = run_entrypoint(write_job(tmp_path, doc), tmp_path / "w")
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "merged"
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    merged = load_file(out / "model.safetensors")
    base = build_model(build_tokenizer(), seed=5).state_dict()  # the job's seed initialises the base
    q = "model.layers.0.self_attn.q_proj.weight"
    assert merged[q].shape == base[q].shape and not torch.equal(merged[q], base[q])  # the adapter moved it
    k = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(merged[k], base[k])  # not a target: untouched
    # the adapter checkpoint itself is small: only adapter weights are saved
    ckpt = tmp_path / "ckpt" / "checkpoint-3"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "_COMMITTED").is_file()


def test_early_stopping_ends_the_run_when_eval_loss_stops_improving(tmp_path):
    write_data(tmp_path / "train.jsonl", n=60)
    # a learning rate too small to move eval loss: no improvement after the first evaluation
    doc = job_doc(tmp_path, training={"maxSteps": 20, "learningRate": 1e-12, "warmupRatio": 0.0},
                  eval={"everySteps": 2, "earlyStoppingPatience": 1},
                  checkpoints={"uri": str(tmp_path / "ckpt"), "everySteps": 2, "keep": 2},
                  output={"uri": str(tmp_path / "model")})
    res = run_entrypoint(write_job(tmp_path, doc), tmp_path / "w")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((tmp_path / "w" / "result.json").read_text())
    assert result["max_steps"] == 20 and result["global_step"] == 4
    assert set(result["eval_loss_by_task"]) == {"upper", "reverse"}


def test_time_budget_annotation_stops_with_a_final_checkpoint(tmp_path):
    write_data(tmp_path / "train.jsonl", n=60)
    doc = job_doc(tmp_path, training={"maxSteps": 50}, eval={"everySteps": 100},
                  checkpoints={"uri": str(tmp_path / "ckpt"), "everySteps": 100, "keep": 2})
    doc["metadata"]["annotations"] = {"sft.dev/max-train-seconds": "0.001"}
    res = run_entrypoint(write_job(tmp_path, doc), tmp_path / "w")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((tmp_path / "w" / "result.json").read_text())
    assert result["global_step"] == 1 and result["max_steps"] == 50
    assert (tmp_path / "ckpt" / "checkpoint-1" / "_COMMITTED").is_file()
    assert "time budget of 0s spent at step 1" in res.stderr
