"""Small SFTJob files and data for the trainer's integration tests (real training, tiny model)."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def write_data(path: Path, n: int = 240, seed: int = 0, bad: int = 0) -> Path:
    """``n`` upper-casing conversations (task_type upper/reverse), plus ``bad`` malformed lines."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        w = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
        task = "upper" if i % 2 else "reverse"
        ans = w.upper() if task == "upper" else w[::-1]
        lines.append(json.dumps({"task_type": task, "messages": [
            {"role": "user", "content": f"{task}: {w}"}, {"role": "assistant", "content": ans}]}))
    for i in range(bad):
        lines.insert(3 + i * 2, '{"messages": "oops"' if i % 2 else '{"messages": [{"role": "user", "content": "q"}]}')
    path.write_text("\n".join(lines) + "\n")
    return path


def write_golden(path: Path) -> Path:
    rows = [{"task_type": "upper", "prompt": "upper: abc", "checks": [{"type": "exact", "value": "ABC"}]},
            {"task_type": "reverse", "prompt": "reverse: abc", "checks": [{"type": "regex", "value": "^cba$"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def job_doc(tmp: Path, name: str = "itest", **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name},
        "spec": {
            "model": {"uri": "builtin://tiny-llama"},
            "datasets": [{"uri": "train.jsonl", "format": "messages"}],
            "split": {"validation": 0.1, "test": 0.1, "seed": 1},
            "method": {"type": "full"},
            "training": {"maxSteps": 12, "learningRate": 2e-3, "warmupRatio": 0.1, "perDeviceBatchSize": 2,
                         "maxSeqLength": 64, "packing": False, "lossOn": "assistant",
                         "gradientCheckpointing": False, "precision": "fp32", "loggingSteps": 1, "seed": 5},
            "eval": {"everySteps": 6},
            "checkpoints": {"uri": str(tmp / "ckpt"), "everySteps": 6, "keep": 3},
            "workers": {"nodes": 1, "gpusPerNode": 0},
        },
    }
    for k, v in spec.items():
        if isinstance(v, dict) and isinstance(doc["spec"].get(k), dict):
            doc["spec"][k] = {**doc["spec"][k], **v}
        else:
            doc["spec"][k] = v
    return doc


def write_job(tmp: Path, doc: dict[str, Any], name: str = "job.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(copy.deepcopy(doc), sort_keys=False))
    return path


def trainer_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "MASTER_ADDR",
                        "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    env.update({"SFT_METRICS_PORT": "0", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra)
    return env


def run_entrypoint(job: Path, workdir: Path, *, env: dict[str, str] | None = None,
                   timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sft_trainer", "--config", str(job), "--workdir", str(workdir)],
        cwd=job.parent, env=env or trainer_env(), capture_output=True, text=True, timeout=timeout,
    )
