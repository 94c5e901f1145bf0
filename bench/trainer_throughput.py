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

The same data (examples/data/quickstart, --rows rows), the same tiny Llama (hidden 128, 4 layers),
the same step count. ``trl_best`` and ``ours`` also train the same tokens per step (one packed
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


def run_trl(steps: int, rows: int, workdir: Path, best: bool) -> dict:
    """A plain TRL script: SFTConfig defaults (best=False), or TRL's best configuration (best=True)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from sft_trainer.tiny_model import build_model, build_tokenizer

    cuda = torch.cuda.is_available()
    tok = build_tokenizer()
    model = build_model(tok, seed=42)
    kw = dict(output_dir=str(workdir), max_steps=steps, report_to=[], save_strategy="no", logging_steps=10,
              disable_tqdm=True)
    if not cuda:
        kw.update(use_cpu=True, bf16=False)
    if best:
        kw.update(packing=True, packing_strategy="bfd", padding_free=True, assistant_only_loss=True,
                  max_length=512, per_device_train_batch_size=1, activation_checkpointing=False)
    args = SFTConfig(**kw)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(_rows(rows)), processing_class=tok)
    counter = _Counter(trainer.data_collator)
    trainer.data_collator = counter
    out = trainer.train()
    res = _trained(trainer, out, counter)
    res["settings"] = {"per_device_train_batch_size": args.per_device_train_batch_size,
                       "max_length": args.max_length, "packing": args.packing,
                       "packing_strategy": args.packing_strategy, "padding_free": args.padding_free,
                       "assistant_only_loss": args.assistant_only_loss, "bf16": args.bf16,
                       "activation_checkpointing": getattr(args, "activation_checkpointing", None)}
    res["mfu"] = _mfu(model, res["tokens_per_second"], args.max_length, cuda)
    return {**res, **_peak_memory(cuda)}


def run_ours(steps: int, rows: int, workdir: Path) -> dict:
    import torch

    from sft_api import SFTJob
    from sft_trainer.train import train

    cuda = torch.cuda.is_available()
    data = workdir / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(rows)))
    training: dict = {"maxSteps": steps, "loggingSteps": 10, "perDeviceBatchSize": 1, "maxSeqLength": 512,
                      "packing": True, "lossOn": "assistant", "gradientCheckpointing": False}
    if not cuda:
        training.update(precision="fp32")
    job = SFTJob.model_validate({
        "apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "bench"},
        "spec": {"model": {"uri": "builtin://tiny-llama"}, "datasets": [{"uri": str(data)}],
                 "split": {"validation": 0, "test": 0}, "method": {"type": "full"}, "training": training,
                 "checkpoints": {"uri": str(workdir / "ckpt"), "everySteps": 10**6},
                 "workers": {"nodes": 1, "gpusPerNode": 1 if cuda else 0}},
    })
    res = train(job, workdir=workdir / "work", serve_metrics=False)
    t = job.spec.training
    return {
        "steps": res.global_step, "trained_tokens": int(res.trained_tokens or 0),
        "tokens_per_second": round(res.tokens_per_second or 0, 1),
        "packing_efficiency": round(res.packing_efficiency or 0, 4), "row_fill": res.row_fill,
        "threads": torch.get_num_threads(),
        "settings": {"per_device_batch_size": t.per_device_batch_size, "max_seq_length": t.max_seq_length,
                     "packing": t.packing, "precision": t.precision, "loss_on": str(t.loss_on),
                     "gradient_checkpointing": t.gradient_checkpointing},
        **_peak_memory(cuda),
    }


def child(which: str, steps: int, rows: int, out: Path) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("sft_trainer.cpu_threads").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix=f"bench-{which}-") as tmp:
        if which == "ours":
            res = run_ours(steps, rows, Path(tmp))
        else:
            res = run_trl(steps, rows, Path(tmp), best=which == "trl_best")
    out.write_text(json.dumps(res))


def _one(which: str, threads: str, a, env: dict) -> dict:
    env = dict(env)
    env.pop("OMP_NUM_THREADS", None)
    if threads != "default":
        env["OMP_NUM_THREADS"] = threads
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, __file__, "--child", which, "--child-out", f.name, "--rows", str(a.rows),
               "--steps", str(a.steps)]
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
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs), "settings": runs[0]["settings"]}


def _ratio(cells: dict, num: str, den: str) -> float | None:
    if num not in cells or den not in cells:
        return None
    return round(cells[num]["tokens_per_second"]["median"] / cells[den]["tokens_per_second"]["median"], 3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--runs", type=int, default=3, help="interleaved runs per cell")
    p.add_argument("--threads", default="default,1,2", help="thread settings, comma-separated: default or a count")
    p.add_argument("--sides", default="trl_defaults,trl_best,ours")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--child", choices=["trl_defaults", "trl_best", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.steps, a.rows, a.child_out)
        return 0
    env = dict(os.environ, HF_DATASETS_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
    cells_runs: dict[str, list[dict]] = {}
    order = [(s, t) for t in a.threads.split(",") for s in a.sides.split(",")
             if not (s == "trl_defaults" and t != "default")]  # (a) at its own defaults only
    load_start = os.getloadavg()
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
        "benchmark": "trainer_throughput",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "python": platform.python_version(), "torch": torch.__version__,
        "model": "builtin://tiny-llama", "rows": a.rows, "steps": a.steps, "runs_per_cell": a.runs,
        "ratios_of_medians": ratios, "cells": cells,
        "load_average_at_start": [round(x, 2) for x in load_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "bench/trainer_throughput.py", *sys.argv[1:]]),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    for k, c in cells.items():
        t = c["tokens_per_second"]
        print(f"{k:24} {t['median']:8.1f} tokens/s (min {t['min']:.1f}, max {t['max']:.1f}), threads {c['threads_ran']}")
    print(json.dumps(ratios), f"-> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
