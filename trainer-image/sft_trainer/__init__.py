"""The sft-operator trainer: TRL SFTTrainer + PEFT + DeepSpeed, driven by an SFTJob spec."""

from __future__ import annotations

import os
from typing import Any


def run_local(job_path: str | os.PathLike[str], *, overrides: dict[str, Any] | None = None) -> int:
    """``sftctl run``: train an SFTJob on this machine; returns the exit code (see ``exit_codes``)."""
    from .local import run_local as _run_local

    return _run_local(job_path, overrides=overrides)
