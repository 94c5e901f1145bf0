"""GPU throughput benchmark, like for like, for the day a GPU is lent: TRL's SFTTrainer defaults, TRL's
best configuration and our trainer on one GPU, in the same run. Not a test.

    python bench/gpu_throughput.py             # one H100/H200: ~0.47B Llama, 2048-token rows, bf16
    python bench/gpu_throughput.py --dry-run   # any machine: a 2-layer model on the CPU, 3 steps a side

The machinery is bench/trainer_throughput.py's (the same cells, interleaved runs, each in its own
process, min/median/max). What differs is the preset:

- the model: ``0.5b``, a Llama (hidden 1024, 28 layers, ~0.47B parameters) built from a config with
  random weights and the local character tokenizer, saved once and loaded by every side, so nothing
  is downloaded;
- 2048-token rows, bf16 (the trainer's default precision on a GPU), SDPA attention (transformers'
  default), Liger kernels for TRL's best (``use_liger_kernel``) and for ours (``useLigerKernel``);
- ``trl_defaults`` stays at SFTConfig's own defaults (batch 8 padded, no packing, activation
  checkpointing on).

Reported per cell: non-pad tokens/s, MFU (``sft_trainer.metrics``; the GPU's peak from its table or
``SFT_PEAK_FLOPS``), peak GPU memory, with the runs' min/median/max. About 5 minutes on an H200 with
the defaults (3 sides x 3 runs x 30 steps). Writes bench/results/gpu_throughput.json; a dry run
writes to $TMPDIR unless --out says otherwise.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trainer_throughput as tt  # noqa: E402

OUT = tt.ROOT / "bench" / "results" / "gpu_throughput.json"
GPU = dict(model="0.5b", max_length=2048, steps=30, runs=3, rows=4000, liger=True)
DRY = dict(model="dryrun", max_length=256, steps=3, runs=1, rows=200, liger=False)


def main(argv: list[str] | None = None) -> int:
    p = tt.parser()
    p.description = __doc__.splitlines()[0]
    p.add_argument("--dry-run", action="store_true", help="a tiny model on the CPU: checks the script runs")
    p.set_defaults(threads="default", out=None, **{k: None for k in GPU})
    a = p.parse_args(argv)
    import torch

    if not (a.dry_run or torch.cuda.is_available()):
        print("error: no CUDA device; run on a GPU machine, or pass --dry-run to check the script on the CPU",
              file=sys.stderr)
        return 2
    for key, value in (DRY if a.dry_run else GPU).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.out is None:
        a.out = Path(tempfile.gettempdir()) / "gpu_throughput_dryrun.json" if a.dry_run else OUT
    report = tt.measure(a, benchmark="gpu_throughput" + ("_dryrun" if a.dry_run else ""))
    return 0 if all(c["tokens_per_second"]["min"] > 0 for c in report["cells"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
