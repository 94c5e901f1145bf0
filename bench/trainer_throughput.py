"""Throughput benchmark: a plain TRL SFTTrainer script with TRL's defaults vs our trainer with its
defaults, on the same data and the same tiny model, in the same run of this script.

    python bench/trainer_throughput.py [--baseline-steps 120] [--ours-steps 120] [--rows 4000]

Run it once as is (each side's defaults, including our single intra-op thread for the tiny CPU
model), then with OMP_NUM_THREADS=1 --out bench/results/trainer_throughput_1thread.json and
OMP_NUM_THREADS=2 --out bench/results/trainer_throughput_2threads.json (the same thread count on both
sides: the packing/padding difference alone). Run it on an otherwise idle machine: with 2 threads,
TRL's default side slows down several times when other processes share the cores.

Each side runs in its own subprocess (clean peak-memory figures, no shared state). Reports trained
(non-pad) tokens per second for each and their ratio, packing efficiency (non-pad share of the
positions the model processed), peak memory, and on a GPU the MFU. Writes
bench/results/trainer_throughput.json.

What "defaults" means here, on both sides, is written into the JSON:
- baseline: ``SFTConfig()`` defaults (per-device batch 8, padding to the longest example, no
  packing, activation checkpointing on, bf16 on a GPU), only max_steps set;
- ours: an SFTJob with the API defaults (packing with BFD/padding-free, gradient checkpointing,
  bf16 on a GPU), method full.
On the CPU both use fp32 (bf16 autocast on a CPU is not a setting anyone trains with), and ours
uses the quickstart's CPU sizing (maxSeqLength 512, one packed row per step), because attention
over 4 x 2048-token rows is quadratic and far too slow on 2 cores; on a GPU ours keeps the API
defaults (maxSeqLength 2048, per-device batch 4).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "quickstart" / "train.jsonl"
OUT = ROOT / "bench" / "results" / "trainer_throughput.json"


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


def run_baseline(steps: int, rows: int, workdir: Path) -> dict:
    """A plain TRL script: SFTConfig defaults, only max_steps (and fp32 on the CPU)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from sft_trainer.tiny_model import build_model, build_tokenizer

    cuda = torch.cuda.is_available()
    tok = build_tokenizer()
    model = build_model(tok, seed=42)
    kw = dict(output_dir=str(workdir), max_steps=steps, report_to=[], save_strategy="no", logging_steps=10)
    if not cuda:
        kw.update(use_cpu=True, bf16=False)
    args = SFTConfig(**kw)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(_rows(rows)), processing_class=tok)
    counter = _Counter(trainer.data_collator)
    trainer.data_collator = counter
    t0 = time.monotonic()
    out = trainer.train()
    wall = time.monotonic() - t0
    tokens = next(h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h)
    tps = tokens / out.metrics["train_runtime"]
    return {
        "steps": trainer.state.global_step, "train_seconds": round(wall, 2), "trained_tokens": int(tokens),
        "tokens_per_second": round(tps, 1), "packing_efficiency": round(counter.real / counter.slots, 4),
        "mfu": _mfu(model, tps, args.max_length, cuda),
        "settings": {"per_device_train_batch_size": args.per_device_train_batch_size, "max_length": args.max_length,
                     "packing": args.packing, "bf16": args.bf16,
                     "activation_checkpointing": getattr(args, "activation_checkpointing", None)},
        **_peak_memory(cuda),
    }


def run_ours(steps: int, rows: int, workdir: Path) -> dict:
    import torch

    from sft_api import SFTJob
    from sft_trainer.train import train

    cuda = torch.cuda.is_available()
    data = workdir / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(rows)))
    training: dict = {"maxSteps": steps, "loggingSteps": 10}
    if not cuda:
        training.update(precision="fp32", maxSeqLength=512, perDeviceBatchSize=1)
    job = SFTJob.model_validate({
        "apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "bench"},
        "spec": {"model": {"uri": "builtin://tiny-llama"}, "datasets": [{"uri": str(data)}],
                 "split": {"validation": 0, "test": 0}, "method": {"type": "full"}, "training": training,
                 "checkpoints": {"uri": str(workdir / "ckpt"), "everySteps": 10**6},
                 "workers": {"nodes": 1, "gpusPerNode": 1 if cuda else 0}},
    })
    t0 = time.monotonic()
    res = train(job, workdir=workdir / "work", serve_metrics=False)
    wall = time.monotonic() - t0
    t = job.spec.training
    return {
        "steps": res.global_step, "train_seconds": round(res.train_seconds, 2), "wall_seconds": round(wall, 2),
        "trained_tokens": int(res.trained_tokens or 0), "tokens_per_second": round(res.tokens_per_second or 0, 1),
        "packing_efficiency": round(res.packing_efficiency or 0, 4), "row_fill": res.row_fill,
        "mfu": None,  # filled below from the same formula as the baseline
        "settings": {"per_device_batch_size": t.per_device_batch_size, "max_seq_length": t.max_seq_length,
                     "packing": t.packing, "precision": t.precision,
                     "gradient_checkpointing": t.gradient_checkpointing},
        **_peak_memory(cuda),
        "_mfu_inputs": {"seq_len": t.max_seq_length},
    }


def child(which: str, steps: int, rows: int, out: Path) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix=f"bench-{which}-") as tmp:
        res = (run_baseline if which == "baseline" else run_ours)(steps, rows, Path(tmp))
    if which == "ours" and res.get("_mfu_inputs"):
        import torch

        if torch.cuda.is_available():
            from sft_trainer.tiny_model import build_model, build_tokenizer

            tok = build_tokenizer()
            res["mfu"] = _mfu(build_model(tok), res["tokens_per_second"], res["_mfu_inputs"]["seq_len"], True)
        res.pop("_mfu_inputs")
    out.write_text(json.dumps(res))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline-steps", type=int, default=150)
    p.add_argument("--ours-steps", type=int, default=150)
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--child", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.baseline_steps if a.child == "baseline" else a.ours_steps, a.rows, a.child_out)
        return 0
    results = {}
    env = dict(os.environ, HF_DATASETS_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
    for which in ("baseline", "ours"):
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, __file__, "--child", which, "--child-out", f.name, "--rows", str(a.rows),
                   "--baseline-steps", str(a.baseline_steps), "--ours-steps", str(a.ours_steps)]
            print(f"running {which} ...", file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            results[which] = json.loads(Path(f.name).read_text())
    import torch

    report = {
        "benchmark": "trainer_throughput",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "python": platform.python_version(), "torch": torch.__version__,
        "model": "builtin://tiny-llama", "rows": a.rows,
        "baseline_trl_defaults": results["baseline"], "ours_defaults": results["ours"],
        "ratio_tokens_per_second": round(results["ours"]["tokens_per_second"]
                                         / results["baseline"]["tokens_per_second"], 2),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    b, o = results["baseline"], results["ours"]
    print(f"{'':28}{'TRL defaults':>16}{'ours':>16}")
    for k in ("tokens_per_second", "packing_efficiency", "peak_rss_bytes", "train_seconds", "steps"):
        print(f"{k:28}{b.get(k)!s:>16}{o.get(k)!s:>16}")
    print(f"ratio (ours / TRL defaults) tokens/s: {report['ratio_tokens_per_second']}x  -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
