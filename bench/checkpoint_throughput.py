"""Checkpoint benchmark against a real SeaweedFS, in one run of this script. Not a test.

    python bench/checkpoint_throughput.py [--mb 32] [--runs 5] [--train-runs 3] [--checkpoints 3]

1. **Throughput.** The same checkpoint directory (an HF-shaped set of files of random bytes:
   model.safetensors, optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json; --mb in all)
   is uploaded, runs interleaved:
   - raw: boto3's managed multipart upload (``upload_file``, its default TransferConfig: 8 MiB
     parts, 10 threads), one file after another, nothing else;
   - ours: ``CheckpointStore.commit`` (remove an old marker, sha256 of every file, s3fs's batched
     ``put``, the manifest PUT last), through the same endpoint.
   MB/s = bytes of the files / wall seconds. ``ratio_vs_raw`` = median ours / median raw.
2. **Blocked training time.** A training loop in the main thread (torch matmuls on a 512-wide MLP
   with Adam: the GIL is released as in a real step) saves a checkpoint every --every steps, the
   way the HF Trainer does (its files appear in ``output_dir/checkpoint-<step>``, here hard links
   to the template, then ``on_step_end``/``on_save``), through ``CheckpointCommitCallback`` with
   ``background=False`` (sync: the commit inside the save, what the trainer did before) and
   ``background=True`` (the upload on a thread while training continues), runs interleaved.
   Blocked seconds per checkpoint = the time the training thread spends inside the callback's hooks
   (save, step ends), over the periodic checkpoints; the final wait at the train end is reported
   apart. ``blocked_ratio`` = median background / median sync. Training steps/s with uploads in
   flight are reported too (the upload thread shares the cores).

Writes bench/results/checkpoint_throughput.json with ``ratio_vs_raw`` and ``blocked_ratio`` at the
top level, each with the runs, min/median/max and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "dev"), str(REPO / "api"), str(REPO / "trainer-image")]
OUT = REPO / "bench" / "results" / "checkpoint_throughput.json"
# shares of the checkpoint: weights 1/3, Adam's two moments 2/3 (fp32 full fine-tuning), small rest
SHAPE = {"model.safetensors": 1 / 3, "optimizer.pt": 2 / 3}
SMALL = {"scheduler.pt": 1_064, "rng_state.pth": 14_512, "trainer_state.json": 3_000, "training_args.bin": 5_304}


def spread(xs: list[float]) -> dict:
    return {"runs": [round(x, 4) for x in xs], "min": round(min(xs), 4), "median": round(statistics.median(xs), 4),
            "max": round(max(xs), 4)}


def make_checkpoint(root: Path, mb: float) -> tuple[Path, int]:
    root.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, share in SHAPE.items():
        n = int(mb * 1024 * 1024 * share)
        with open(root / name, "wb") as f:
            for _ in range(n // (1 << 20)):
                f.write(os.urandom(1 << 20))
            f.write(os.urandom(n % (1 << 20)))
        total += n
    for name, n in SMALL.items():
        (root / name).write_bytes(os.urandom(n))
        total += n
    return root, total


def raw_upload(s3, bucket: str, prefix: str, src: Path) -> float:
    client = s3.client()
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig()  # boto3's defaults: multipart from 8 MiB, 10 threads
    t0 = time.perf_counter()
    for p in sorted(src.iterdir()):
        client.upload_file(str(p), bucket, f"{prefix}/{p.name}", Config=cfg)
    return time.perf_counter() - t0


def ours_upload(store, src: Path, step: int) -> float:
    t0 = time.perf_counter()
    store.commit(src, step)
    return time.perf_counter() - t0


def empty_bucket(s3, bucket: str) -> None:
    c = s3.client()
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            c.delete_object(Bucket=bucket, Key=obj["Key"])


def throughput(s3, template: Path, nbytes: int, runs: int) -> dict:
    from sft_trainer.checkpoint_store import CheckpointStore

    bucket = s3.create_bucket("bench-throughput")
    store = CheckpointStore(f"s3://{bucket}/ours", {"endpoint_url": s3.endpoint, "key": s3.access_key,
                                                     "secret": s3.secret_key})
    raw, ours = [], []
    for i in range(runs):  # interleaved: raw, ours, raw, ours, ...
        raw.append(nbytes / 1e6 / raw_upload(s3, bucket, f"raw/{i}", template))
        ours.append(nbytes / 1e6 / ours_upload(store, template, i + 1))
        print(f"  run {i + 1}: raw {raw[-1]:.1f} MB/s, ours {ours[-1]:.1f} MB/s", flush=True)
        empty_bucket(s3, bucket)
    return {"raw_boto3_mb_per_s": spread(raw), "ours_commit_mb_per_s": spread(ours),
            "ratio_vs_raw": round(statistics.median(ours) / statistics.median(raw), 3)}


class Model:
    """A small MLP trained with Adam: a real torch step (matmuls release the GIL)."""

    def __init__(self, width: int = 512):
        import torch

        torch.manual_seed(0)
        self.torch = torch
        self.net = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.Linear(width, width))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-4)
        self.x = torch.randn(128, width)

    def step(self) -> None:
        loss = self.net(self.x).pow(2).mean()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()


def write_hf_checkpoint(template: Path, out: Path, step: int) -> None:
    d = out / f"checkpoint-{step}"
    d.mkdir(parents=True)
    for p in template.iterdir():
        os.link(p, d / p.name)  # what HF would have written; its cost is not the commit's


def train_run(s3, bucket: str, template: Path, model: Model, *, background: bool, steps: int, every: int,
              work: Path) -> dict:
    from transformers import TrainerControl, TrainerState

    from sft_trainer.callbacks import CheckpointCommitCallback
    from sft_trainer.checkpoint_store import CheckpointStore

    store = CheckpointStore(f"s3://{bucket}/{'bg' if background else 'sync'}-{time.monotonic_ns()}",
                            {"endpoint_url": s3.endpoint, "key": s3.access_key, "secret": s3.secret_key})
    cb = CheckpointCommitCallback(store, keep=1, background=background)
    out = work / f"out-{time.monotonic_ns()}"
    args = SimpleNamespace(output_dir=str(out))
    state = TrainerState()
    state.max_steps, state.log_history = steps, []
    in_hooks, step_times = 0.0, []
    t_run = time.perf_counter()
    for step in range(1, steps + 1):
        t = time.perf_counter()
        model.step()
        step_times.append(time.perf_counter() - t)
        state.global_step = step
        control = TrainerControl(should_save=step % every == 0)
        if control.should_save:
            write_hf_checkpoint(template, out, step)
        t = time.perf_counter()
        cb.on_step_end(args, state, control)
        if control.should_save:
            cb.on_save(args, state, control)
        in_hooks += time.perf_counter() - t
    t = time.perf_counter()
    cb.on_train_end(args, state, TrainerControl())
    final_wait = time.perf_counter() - t
    wall = time.perf_counter() - t_run
    n = steps // every
    committed = [c.step for c in store.committed()]
    assert store.uncommitted() == [] and committed and committed[-1] == n * every, (committed, store.uncommitted())
    shutil.rmtree(out, ignore_errors=True)
    return {"blocked_per_checkpoint_s": in_hooks / n, "final_wait_s": final_wait, "wall_s": wall,
            "train_steps_per_s": steps / sum(step_times), "checkpoints": n,
            "last_commit_seconds": round((cb.last_commit or {}).get("seconds", 0.0), 3),
            "callback_blocked_s": [round(x, 4) for x in cb.blocked_seconds]}


def blocked(s3, template: Path, runs: int, checkpoints: int, work: Path) -> dict:
    model = Model()
    for _ in range(5):
        model.step()  # warm-up
    t = time.perf_counter()
    for _ in range(10):
        model.step()
    step_s = (time.perf_counter() - t) / 10
    # steps between saves: long enough that an upload finishes between two saves
    every = max(5, int(args_upload_seconds(s3, template) * 2.0 / step_s) + 1)
    bucket = s3.create_bucket("bench-blocked")
    sides: dict[str, list[dict]] = {"sync": [], "background": []}
    for i in range(runs):
        for name in ("sync", "background"):
            r = train_run(s3, bucket, template, model, background=name == "background", steps=every * checkpoints,
                          every=every, work=work)
            sides[name].append(r)
            print(f"  run {i + 1} {name}: blocked {r['blocked_per_checkpoint_s']:.3f} s/checkpoint, "
                  f"{r['train_steps_per_s']:.1f} steps/s, final wait {r['final_wait_s']:.2f} s", flush=True)
            empty_bucket(s3, bucket)
    med = {k: statistics.median(r["blocked_per_checkpoint_s"] for r in v) for k, v in sides.items()}
    return {
        "steps_between_checkpoints": every, "checkpoints_per_run": checkpoints, "idle_step_seconds": round(step_s, 4),
        **{name: {"blocked_per_checkpoint_s": spread([r["blocked_per_checkpoint_s"] for r in rs]),
                  "train_steps_per_s": spread([r["train_steps_per_s"] for r in rs]),
                  "final_wait_s": spread([r["final_wait_s"] for r in rs]),
                  "wall_s": spread([r["wall_s"] for r in rs])} for name, rs in sides.items()},
        "blocked_ratio": round(med["background"] / med["sync"], 4),
    }


_UPLOAD_S: float | None = None


def args_upload_seconds(s3, template: Path) -> float:
    """One commit's seconds, measured once (sizes the save interval)."""
    global _UPLOAD_S
    if _UPLOAD_S is None:
        from sft_trainer.checkpoint_store import CheckpointStore

        bucket = s3.create_bucket("bench-probe")
        store = CheckpointStore(f"s3://{bucket}/p", {"endpoint_url": s3.endpoint, "key": s3.access_key,
                                                      "secret": s3.secret_key})
        _UPLOAD_S = ours_upload(store, template, 1)
        empty_bucket(s3, bucket)
    return _UPLOAD_S


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=32.0, help="checkpoint size in MB (weights 1/3, optimizer 2/3)")
    ap.add_argument("--runs", type=int, default=5, help="interleaved upload runs per side")
    ap.add_argument("--train-runs", type=int, default=3, help="interleaved training runs per side")
    ap.add_argument("--checkpoints", type=int, default=3, help="checkpoints per training run")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads for the training loop")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    import torch

    from sft_dev.s3 import start_s3, stop_s3

    if a.threads:
        torch.set_num_threads(a.threads)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    s3 = start_s3(work / "s3")
    try:
        template, nbytes = make_checkpoint(work / "template", a.mb)
        print(f"checkpoint: {nbytes / 1e6:.1f} MB in {len(list(template.iterdir()))} files; SeaweedFS {s3.endpoint}")
        print("throughput (interleaved):", flush=True)
        tp = throughput(s3, template, nbytes, a.runs)
        print("blocked training time (interleaved):", flush=True)
        bl = blocked(s3, template, a.train_runs, a.checkpoints, work)
    finally:
        stop_s3(s3)
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "ratio_vs_raw": tp["ratio_vs_raw"], "blocked_ratio": bl["blocked_ratio"],
        "checkpoint_bytes": nbytes, "throughput": tp, "blocked": bl,
        "torch_threads": torch.get_num_threads(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(["python", "bench/checkpoint_throughput.py", *sys.argv[1:]]),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ratio_vs_raw", "blocked_ratio", "load_average_before",
                                             "load_average_after")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
