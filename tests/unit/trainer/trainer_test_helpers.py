"""Shared builders for the trainer unit tests: SFTJob specs and the tiny tokenizer's token ids."""

from __future__ import annotations

import copy
from typing import Any

BASE_JOB: dict[str, Any] = {
    "apiVersion": "sft.dev/v1alpha1",
    "kind": "SFTJob",
    "metadata": {"name": "unit"},
    "spec": {
        "model": {"uri": "builtin://tiny-llama"},
        "datasets": [{"uri": "train.jsonl", "format": "messages"}],
        "method": {"type": "full"},
        "training": {"maxSteps": 10, "learningRate": 1e-3, "perDeviceBatchSize": 2, "maxSeqLength": 64,
                     "packing": False, "lossOn": "assistant", "gradientCheckpointing": False,
                     "precision": "fp32"},
        "workers": {"nodes": 1, "gpusPerNode": 0},
    },
}


def make_job(**spec_updates: Any):
    """An SFTJob with BASE_JOB's spec, top-level spec keys replaced (dicts merged one level)."""
    from sft_api import SFTJob

    doc = copy.deepcopy(BASE_JOB)
    for k, v in spec_updates.items():
        if isinstance(v, dict) and isinstance(doc["spec"].get(k), dict):
            doc["spec"][k] = {**doc["spec"][k], **v}
        else:
            doc["spec"][k] = v
    return SFTJob.model_validate(doc)


def ids(tok, text: str) -> list[int]:
    """Token ids of ``text`` with special tokens spelled out (the tiny tokenizer is per character)."""
    return tok(text, add_special_tokens=False)["input_ids"]
