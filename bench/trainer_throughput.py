"""Throughput benchmark, like for like: TRL's SFTTrainer against our trainer on the same workload, in
the same run of this script. Not a test.

    python bench/trainer_throughput.py [--steps 150] [--runs 3] [--threads default,1,2]

Cells (each run in its own subprocess: clean memory figures, no shared state; runs interleaved, so
a change in the machine's load hits every side alike):

- ``trl_defaults``: a plain TRL script with ``SFTConfig()`` defaults (batch 8 padded to the longest,
  no packing, activation checkpointing on), only max_steps and fp32 on the CPU: baseline (a);
- ``trl_best``: a plain TRL script with TRL's best configuration for this workload: packing with
  BFD (which turns padding-free on), ``assistant_only_loss``, max_length 512, batch 1, activation
  checkpointing off, fp32: baseline (b);
- ``ours``: ``sft_trainer.train`` (the path ``sftctl run`` takes) on an SFTJob with the quickstart's
  training settings: packing, maxSeqLength 512, batch 1, lossOn assistant, gradientCheckpointing off,
  fp32.

The same data (examples/data/quickstart, --rows rows), the same model, the same step count. Models
(``--model``): ``tiny`` is ``builtin://tiny-llama`` (~1M parameters, hidden 128, 4 layers); ``30m``
(hidden 512, 8 layers, ~34M parameters, where the matmuls dominate) and ``0.5b`` (hidden 1024, 28
layers, ~0.47B, for a GPU) are built from a Llama config with random weights and the same local
character tokenizer, saved once to a directory that every side loads, so nothing is downloaded. ``trl_best`` and ``ours`` also train the same tokens per step (one packed
512-token row). Thread counts: ``default`` is each side's own choice (torch's default, all cores,
for TRL; the trainer's choice, cpu_threads.py, for ours), a number sets OMP_NUM_THREADS on both.
Reported per cell: non-pad tokens/s (TRL's ``num_tokens`` / ``train_runtime``), runs and
min/median/max, the intra-op threads that ran (torch.get_num_threads() after training) and the load
average before each run. Ratios are of medians. Writes bench/results/trainer_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "quickstart" / "train.jsonl"
OUT = ROOT / "bench" / "results" / "trainer_throughput.json"
# Llama shapes built from a config (random weights); "tiny" is the builtin model itself.
MODELS: dict[str, dict | None] = {
    "tiny": None,
    "30m": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=8, max_position_embeddings=4096),
    "0.5b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=16, max_position_embeddings=4096),
    "dryrun": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, max_position_embeddings=4096),
}


def build_model_dir(name: str, out: Path) -> Path | None:
    """Save the named model (config-built, random weights, seed 42) and the tokenizer to ``out``."""
    shape = MODELS[name]
    if shape is None:
        return None
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sft_trainer.tiny_model import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(42)
    cfg = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=True, rms_norm_eps=1e-6, **shape)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _parameters(model_dir: Path | None) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sft_trainer.tiny_model import build_model, build_tokenizer

    with torch.device("meta"):
        model = (AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)) if model_dir
                 else build_model(build_tokenizer(), seed=0))
    return sum(p.numel() for p in model.parameters())


def _rows(n: int) -> list[dict]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:n]]
    return [{"messages": r["messages"]} for r in rows]


def _peak_memory(cuda: bool) -> dict:
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if cuda:
        import torch

        out["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def _mfu(model, tokens_per_second: float, seq_len: int, cuda: bool) -> float | None:
    if not cuda:
        return None
    import torch

    from sft_trainer.metrics import mfu, model_flops_per_token, peak_flops_for

    peak = peak_flops_for(torch.cuda.get_device_name(0))
    return mfu(tokens_per_second, model_flops_per_token(model, seq_len), peak) if peak else None


class _Counter:
    def __init__(self, inner):
        self.inner, self.real, self.slots = inner, 0, 0

    def __call__(self, features):
        b = self.inner(features)
        self.slots += int(b["input_ids"].numel())
        m = b.get("attention_mask")
        self.real += int(m.sum()) if m is not None else int(b["input_ids"].numel())
        return b


def _trained(trainer, out, counter) -> dict:
    import torch

    tokens = next(h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h)
    return {"steps": trainer.state.global_step, "trained_tokens": int(tokens),
            "tokens_per_second": round(tokens / out.metrics["train_runtime"], 1),
            "packing_efficiency": round(counter.real / counter.slots, 4), "threads": torch.get_num_threads()}


def _load(model_dir: Path | None):
    from sft_trainer.tiny_model import build_model, build_tokenizer

    if model_dir is None:
        tok = build_tokenizer()
        return build_model(tok, seed=42), tok
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


def run_trl(steps: int, rows: int, workdir: Path, best: bool, model_dir: Path | None = None,
            max_length: int = 512, liger: bool = False) -> dict:
    """A plain TRL script: SFTConfig defaults (best=False), or TRL's best configuration (best=True;
    on a GPU with ``liger`` also TRL's Liger kernels)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    model, tok = _load(model_dir)
    kw = dict(output_dir=str(workdir), max_steps=steps, report_to=[], save_strategy="no", logging_steps=10,
              disable_tqdm=True)
    if not cuda:
        kw.update(use_cpu=True, bf16=False)
    if best:
        kw.update(packing=True, packing_strategy="bfd", padding_free=True, assistant_only_loss=True,
                  max_length=max_length, per_device_train_batch_size=1, activation_checkpointing=False)
        if cuda and liger:
            kw.update(use_liger_kernel=True)
    args = SFTConfig(**kw)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(_rows(rows)), processing_class=tok)
    counter = _Counter(trainer.data_collator)
    trainer.data_collator = counter
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out = trainer.train()
    res = _trained(trainer, out, counter)
    res["settings"] = {"per_device_train_batch_size": args.per_device_train_batch_size,
                       "max_length": args.max_length, "packing": args.packing,
                       "packing_strategy": args.packing_strategy, "padding_free": args.padding_free,
                       "assistant_only_loss": args.assistant_only_loss, "bf16": args.bf16,
                       "use_liger_kernel": args.use_liger_kernel,
                       "activation_checkpointing": getattr(args, "activation_checkpointing", None)}
    res["mfu"] = _mfu(model, res["tokens_per_second"], args.max_length or max_length, cuda)
    return {**res, **_peak_memory(cuda)}


def run_ours(steps: int, rows: int, workdir: Path, model_dir: Path | None = None, max_length: int = 512,
             liger: bool = False) -> dict:
    import torch

    from sft_api import SFTJob
    from sft_trainer.train import train

    cuda = torch.cuda.is_available()
    data = workdir / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(rows)))
    training: dict = {"maxSteps": steps, "loggingSteps": 10, "perDeviceBatchSize": 1, "maxSeqLength": max_length,
                      "packing": True, "lossOn": "assistant", "gradientCheckpointing": False,
                      "useLigerKernel": bool(cuda and liger)}
    if not cuda:
        training.update(precision="fp32")
    job = SFTJob.model_validate({
        "apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "bench"},
        "spec": {"model": {"uri": f"file://{model_dir}" if model_dir else "builtin://tiny-llama"},
                 "datasets": [{"uri": str(data)}],
                 "split": {"validation": 0, "test": 0}, "method": {"type": "full"}, "training": training,
                 "checkpoints": {"uri": str(workdir / "ckpt"), "everySteps": 10**6},
                 "workers": {"nodes": 1, "gpusPerNode": 1 if cuda else 0}},
    })
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    res = train(job, workdir=workdir / "work", serve_metrics=False)
    t = job.spec.training
    return {
        "steps": res.global_step, "trained_tokens": int(res.trained_tokens or 0),
        "tokens_per_second": round(res.tokens_per_second or 0, 1),
        "packing_efficiency": round(res.packing_efficiency or 0, 4), "row_fill": res.row_fill,
        "threads": torch.get_num_threads(),
        "settings": {"per_device_batch_size": t.per_device_batch_size, "max_seq_length": t.max_seq_length,
                     "packing": t.packing, "precision": t.precision, "loss_on": str(t.loss_on),
                     "gradient_checkpointing": t.gradient_checkpointing, "use_liger_kernel": t.use_liger_kernel},
        "mfu": _mfu(_load(model_dir)[0], res.tokens_per_second or 0, max_length, cuda) if cuda else None,
        **_peak_memory(cuda),
    }


def child(which: str, a, out: Path) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("sft_trainer.cpu_threads").setLevel(logging.INFO)
    model_dir = Path(a.model_dir) if a.model_dir else None
    with tempfile.TemporaryDirectory(prefix=f"bench-{which}-") as tmp:
        if which == "ours":
            res = run_ours(a.steps, a.rows, Path(tmp), model_dir, a.max_length, a.liger)
        else:
            res = run_trl(a.steps, a.rows, Path(tmp), which == "trl_best", model_dir, a.max_length, a.liger)
    out.write_text(json.dumps(res))


def _one(which: str, threads: str, a, env: dict) -> dict:
    env = dict(env)
    env.pop("OMP_NUM_THREADS", None)
    if threads != "default":
        env["OMP_NUM_THREADS"] = threads
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, __file__, "--child", which, "--child-out", f.name, "--rows", str(a.rows),
               "--steps", str(a.steps), "--max-length", str(a.max_length), *(["--liger"] if a.liger else []),
               *(["--model-dir", str(a.model_dir)] if a.model_dir else [])]
        load = os.getloadavg()[0]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        res = json.loads(Path(f.name).read_text())
    res["load_average_1m_before"] = round(load, 2)
    print(f"  {which:12} threads={threads:7} ran {res['threads']} threads: {res['tokens_per_second']:8.1f} tokens/s "
          f"(load {load:.1f})", file=sys.stderr, flush=True)
    return res


def _cell(runs: list[dict]) -> dict:
    tps = [r["tokens_per_second"] for r in runs]
    return {"tokens_per_second": {"runs": tps, "min": min(tps), "median": statistics.median(tps), "max": max(tps)},
            "threads_ran": sorted({r["threads"] for r in runs}),
            "load_average_1m_before": [r["load_average_1m_before"] for r in runs],
            "packing_efficiency": statistics.median(r["packing_efficiency"] for r in runs),
            "tokens_per_step": round(statistics.median(r["trained_tokens"] / max(1, r["steps"]) for r in runs), 1),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs), "settings": runs[0]["settings"],
            **({"peak_gpu_bytes": max(r["peak_gpu_bytes"] for r in runs)} if "peak_gpu_bytes" in runs[0] else {}),
            **({"mfu_median": statistics.median(r["mfu"] for r in runs)} if runs[0].get("mfu") is not None else {})}


def _ratio(cells: dict, num: str, den: str) -> float | None:
    if num not in cells or den not in cells:
        return None
    return round(cells[num]["tokens_per_second"]["median"] / cells[den]["tokens_per_second"]["median"], 3)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--runs", type=int, default=3, help="interleaved runs per cell")
    p.add_argument("--threads", default="default,1,2", help="thread settings, comma-separated: default or a count")
    p.add_argument("--sides", default="trl_defaults,trl_best,ours")
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--max-length", type=int, default=512, help="tokens per packed row (max_length / maxSeqLength)")
    p.add_argument("--liger", action="store_true", help="Liger kernels for TRL's best and ours (GPU only)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--child", choices=["trl_defaults", "trl_best", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    return p


def measure(a, benchmark: str = "trainer_throughput") -> dict:
    """Every cell, interleaved, a.runs times; the report (also written to a.out)."""
    env = dict(os.environ, HF_DATASETS_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
    cells_runs: dict[str, list[dict]] = {}
    order = [(s, t) for t in a.threads.split(",") for s in a.sides.split(",")
             if not (s == "trl_defaults" and t != "default")]  # (a) at its own defaults only
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        a.model_dir = build_model_dir(a.model, Path(tmp) / "model")
        parameters = _parameters(a.model_dir)
        for i in range(a.runs):  # interleaved: every cell once per round
            print(f"round {i + 1}/{a.runs}", file=sys.stderr, flush=True)
            for side, threads in order:
                cells_runs.setdefault(f"{side}@{threads}", []).append(_one(side, threads, a, env))
    cells = {k: _cell(v) for k, v in cells_runs.items()}
    import torch

    ratios = {"ours_default_vs_trl_best_default": _ratio(cells, "ours@default", "trl_best@default"),
              "ours_default_vs_trl_defaults": _ratio(cells, "ours@default", "trl_defaults@default")}
    for t in a.threads.split(","):
        if t != "default":
            ratios[f"ours_vs_trl_best_at_{t}_threads"] = _ratio(cells, f"ours@{t}", f"trl_best@{t}")
    report = {
        "benchmark": benchmark,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "python": platform.python_version(), "torch": torch.__version__,
        "model": "builtin://tiny-llama" if a.model == "tiny" else f"llama-{a.model} (config-built)",
        "model_preset": a.model, "parameters": parameters, "max_length": a.max_length, "liger": a.liger,
        "rows": a.rows, "steps": a.steps, "runs_per_cell": a.runs,
        "ratios_of_medians": ratios, "cells": cells,
        "load_average_at_start": [round(x, 2) for x in load_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    for k, c in cells.items():
        t = c["tokens_per_second"]
        print(f"{k:24} {t['median']:8.1f} tokens/s (min {t['min']:.1f}, max {t['max']:.1f}), threads {c['threads_ran']}")
    print(json.dumps(ratios), f"-> {a.out}")
    return report


def main() -> int:
    a = parser().parse_args()
    if a.child:
        child(a.child, a, a.child_out)
        return 0
    measure(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
