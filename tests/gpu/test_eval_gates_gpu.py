"""GPU checks of the evaluation gates and the export choice under DeepSpeed (marker ``gpu``; skipped, visibly,
without CUDA or DeepSpeed): exportBest and ``output.checkpoint: bestEvalLoss`` under ZeRO-3, where the chosen
checkpoint is loaded back from its committed copy by DeepSpeed's engine (every rank its partition), and the
sanity pre-run under DeepSpeed.

Each run goes through the real entrypoint (``python -m sft_trainer``, one process, DeepSpeed's launcher env) with
a tiny Llama built from a config (random weights, the local character tokenizer, saved to a directory, so nothing
is downloaded) and a few hundred upper-casing/reversal conversations written here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA not available)"),
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed"),
]

TINY = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=8, max_position_embeddings=512)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from sft_trainer.tiny_model import build_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=False, **TINY)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _data(tmp: Path, n: int = 200) -> Path:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        w = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
        task = "upper" if i % 2 else "reverse"
        rows.append(json.dumps({"task_type": task, "messages": [
            {"role": "user", "content": f"{task}: {w}"},
            {"role": "assistant", "content": w.upper() if task == "upper" else w[::-1]}]}))
    path = tmp / "train.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def _lowercase_golden(tmp: Path) -> Path:
    """"No capital letter in the answer to upper: ...": the base model passes it, training destroys it."""
    rows = [{"prompt": f"upper: {w}", "task_type": "upper", "checks": [{"type": "regex", "value": "^[^A-Z]*$"}]}
            for w in ("abc", "hgfe", "dcbah", "gfa", "bbcd", "ehh")]
    path = tmp / "lower.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _job(tmp: Path, model: Path, *, stage: int, training: dict | None = None, **spec) -> dict:
    doc = {
        "apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "gpu-gates"},
        "spec": {
            "model": {"uri": f"file://{model}"},
            "datasets": [{"uri": str(_data(tmp))}],
            "split": {"validation": 0.2, "test": 0.0, "seed": 1},
            "method": {"type": "full"},
            "training": {"maxSteps": 40, "learningRate": 5e-3, "warmupRatio": 0.0, "perDeviceBatchSize": 2,
                         "maxSeqLength": 64, "packing": False, "precision": "bf16", "loggingSteps": 1, "seed": 5,
                         "gradientCheckpointing": False, "deepspeed": {"zeroStage": stage}, **(training or {})},
            "eval": {"everySteps": 1000, "sanityCheck": {"enabled": False}},
            "checkpoints": {"uri": str(tmp / "ckpt"), "everySteps": 5, "keep": 1},
            "output": {"uri": str(tmp / "model")},
            "workers": {"nodes": 1, "gpusPerNode": 1},
        },
    }
    for k, v in spec.items():
        doc["spec"][k] = {**doc["spec"].get(k, {}), **v}
    return doc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(doc: dict, tmp: Path) -> tuple[int, dict, str]:
    import yaml

    (tmp / "job.yaml").write_text(yaml.safe_dump(doc))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), NNODES="1", NODE_RANK="0",
               SFT_METRICS_PORT="0", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "sft_trainer", "--config", str(tmp / "job.yaml"),
                           "--workdir", str(tmp / "work")], env=env, capture_output=True, text=True, timeout=1200)
    result_file = tmp / "work" / "result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return proc.returncode, result, (proc.stdout + proc.stderr)[-4000:]


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_best_under_zero3_exports_the_best_checkpoint(tiny_model, tmp_path):
    golden = {"uri": str(_lowercase_golden(tmp_path)), "maxNewTokens": 12, "everyCheckpoints": 1, "maxDrop": 0.3,
              "onRegression": "exportBest"}
    rc, result, tail = _run(_job(tmp_path, tiny_model, stage=3, eval={"goldenSet": golden}), tmp_path)
    assert rc == 0, tail
    stop = result["golden_stop"]
    assert stop is not None and stop["on_regression"] == "exportBest", result.get("golden_checkpoints")
    best = stop["best_step"]
    assert result["exported"]["step"] == best and result["exported"]["checkpoint_uri"].endswith(f"checkpoint-{best}/")
    # retention kept the golden best beside the last (keep: 1); the export is its weights, not the last's
    assert (tmp_path / "ckpt" / f"checkpoint-{best}" / "_COMMITTED").is_file()
    exported = _tensors(tmp_path / "model")
    assert _same(exported, _tensors(tmp_path / "ckpt" / f"checkpoint-{best}"))
    assert not _same(exported, _tensors(tmp_path / "ckpt" / f"checkpoint-{stop['step']}"))
    assert result["golden_after"]["pass_rate"] == stop["best_pass_rate"]  # the final evaluation scored them
    assert json.loads((tmp_path / "model" / "export.json").read_text())["step"] == best


def test_best_eval_loss_under_zero3_exports_that_checkpoint(tiny_model, tmp_path):
    # a constant learning rate too high for the tiny model: the validation loss falls, then rises
    doc = _job(tmp_path, tiny_model, stage=3, training={"learningRate": 3e-2, "lrScheduler": "constant"},
               eval={"everySteps": 5}, output={"checkpoint": "bestEvalLoss"})
    rc, result, tail = _run(doc, tmp_path)
    assert rc == 0, tail
    manifests = {int(p.parent.name.split("-")[1]): json.loads(p.read_text())["metrics"]
                 for p in (tmp_path / "ckpt").glob("checkpoint-*/_COMMITTED")}
    best = min(manifests, key=lambda s: (manifests[s]["eval_loss"], -s))
    assert result["exported"]["step"] == best and result["exported"]["criterion"] == "bestEvalLoss"
    assert _same(_tensors(tmp_path / "model"), _tensors(tmp_path / "ckpt" / f"checkpoint-{best}"))


@pytest.mark.xfail(strict=True, reason="sanity.py skips spec.eval.sanityCheck under DeepSpeed (not supported yet)")
@pytest.mark.parametrize("stage", [2, 3])
def test_sanity_check_under_deepspeed_catches_a_diverging_learning_rate(tiny_model, tmp_path, stage):
    doc = _job(tmp_path, tiny_model, stage=stage, training={"learningRate": 50.0},
               eval={"sanityCheck": {"enabled": True, "examples": 20, "steps": 20}})
    rc, result, tail = _run(doc, tmp_path)
    assert rc == 67, tail  # SanityCheckFailed, before the full run
    assert "SanityCheckFailed" in tail and not (tmp_path / "ckpt").exists()
