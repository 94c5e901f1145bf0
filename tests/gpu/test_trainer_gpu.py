"""GPU checks of the trainer (marker ``gpu``; skipped, visibly, without CUDA): a QLoRA step, DeepSpeed
ZeRO-2 and ZeRO-3 steps through the real entrypoint, and MFU of a ~0.5B Llama.

Models are built from a config (random weights) with the local character tokenizer and saved to a
directory, so nothing is downloaded. Figures go to ``bench/results/gpu_trainer.json`` (or
``$SFT_GPU_RESULTS``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA not available)"),
]

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("SFT_GPU_RESULTS", ROOT / "bench" / "results" / "gpu_trainer.json"))
# ~0.47B parameters: 28 layers x (4 h^2 + 3 h i) with h=1024, i=4096
HALF_B = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=28, num_attention_heads=16,
              num_key_value_heads=16, max_position_embeddings=4096)


def record(key: str, value: dict) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = {**value, "device": torch.cuda.get_device_name(0)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


@pytest.fixture(scope="module")
def half_b_model(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from sft_trainer.tiny_model import build_tokenizer

    path = tmp_path_factory.mktemp("llama-0.5b")
    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, **HALF_B)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def job(tmp: Path, model: Path, **training) -> dict:
    data = ROOT / "examples" / "data" / "quickstart" / "train.jsonl"
    return {
        "apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "gpu"},
        "spec": {
            "model": {"uri": f"file://{model}"},
            "datasets": [{"uri": str(data)}],
            "split": {"validation": 0.01, "test": 0.0},
            "method": {"type": "full"},
            "training": {"maxSteps": 4, "learningRate": 1e-4, "perDeviceBatchSize": 2, "maxSeqLength": 1024,
                         "precision": "bf16", "loggingSteps": 1, **training},
            "eval": {"everySteps": 1000},
            "checkpoints": {"uri": str(tmp / "ckpt"), "everySteps": 1000, "keep": 1},
            "workers": {"nodes": 1, "gpusPerNode": 1},
        },
    }


def run_train(doc: dict, tmp: Path):
    from sft_api import SFTJob
    from sft_trainer.train import train

    return train(SFTJob.model_validate(doc), workdir=tmp / "work", serve_metrics=False)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_qlora_step(half_b_model, tmp_path):
    doc = job(tmp_path, half_b_model)
    doc["spec"]["method"] = {"type": "qlora", "lora": {"r": 16, "alpha": 32, "targetModules": ["all-linear"]}}
    torch.cuda.reset_peak_memory_stats()
    res = run_train(doc, tmp_path)
    assert res.exit_code == 0 and res.global_step == 4
    assert res.train_loss is not None and res.train_loss == res.train_loss  # finite, not NaN
    record("qlora_0.5b", {"steps": 4, "tokens_per_second": res.tokens_per_second,
                          "peak_gpu_bytes": torch.cuda.max_memory_allocated(), "train_loss": res.train_loss})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_step_through_the_entrypoint(half_b_model, tmp_path, stage):
    import yaml

    doc = job(tmp_path, half_b_model, deepspeed={"zeroStage": stage})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), NNODES="1", NODE_RANK="0",
               SFT_METRICS_PORT="0")
    res = subprocess.run([sys.executable, "-m", "sft_trainer", "--config", str(tmp_path / "job.yaml"),
                          "--workdir", str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    result = json.loads((tmp_path / "work" / "result.json").read_text())
    assert result["global_step"] == 4 and result["world_size"] == 1
    assert (tmp_path / "ckpt" / "checkpoint-4" / "_COMMITTED").is_file()
    record(f"zero{stage}_0.5b", {"steps": 4, "tokens_per_second": result["tokens_per_second"],
                                 "train_loss": result["train_loss"]})


def test_mfu_of_a_half_billion_model(half_b_model, tmp_path):
    from sft_api import SFTJob
    from sft_trainer.metrics import mfu, model_flops_per_token, peak_flops_for
    from sft_trainer.train import train

    doc = job(tmp_path, half_b_model, maxSteps=30, perDeviceBatchSize=4, maxSeqLength=2048, packing=True,
              gradientCheckpointing=True)
    torch.cuda.reset_peak_memory_stats()
    res = train(SFTJob.model_validate(doc), workdir=tmp_path / "work", serve_metrics=False)
    assert res.exit_code == 0 and res.tokens_per_second
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(half_b_model))
    peak = peak_flops_for(torch.cuda.get_device_name(0))
    value = mfu(res.tokens_per_second, model_flops_per_token(model, 2048), peak)
    record("mfu_0.5b", {"tokens_per_second": res.tokens_per_second, "mfu": value, "peak_flops": peak,
                        "peak_gpu_bytes": torch.cuda.max_memory_allocated(), "packing_efficiency":
                            res.packing_efficiency, "row_fill": res.row_fill})
    assert peak is not None, "add this GPU to sft_trainer.metrics.PEAK_BF16_FLOPS or set SFT_PEAK_FLOPS"
    assert 0.05 < value < 1.0
