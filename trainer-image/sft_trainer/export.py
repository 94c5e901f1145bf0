"""The run's artefacts: the final model at ``output.uri`` and the loss-curve picture."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from .config import ResolvedConfig
from .data import storage_options_for
from .distributed import barrier, rank

log = logging.getLogger("sft_trainer")


def _join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


EXPORT_RECORD = "export.json"  # beside the model: which checkpoint step it is, and why (export_choice.py)


def export_model(trainer: Any, tokenizer: Any, cfg: ResolvedConfig, exported: dict[str, Any] | None = None) -> str:
    """Save the model (adapters merged when ``output.mergeAdapters``) to ``output.uri``, with ``export.json``
    (``exported``: the checkpoint step that ``spec.output.checkpoint`` chose, and why)."""
    import fsspec

    from . import phases

    phases.enter("exporting")

    uri = cfg.output_uri
    local_target = None
    if "://" not in uri or uri.startswith("file://"):
        local_target = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    staging = local_target if local_target is not None else cfg.workdir / "final-model"
    if staging.exists() and rank() == 0:
        shutil.rmtree(staging)
    barrier()
    if cfg.merge_adapters and not cfg.zero3:
        if rank() == 0:
            merged = trainer.model.merge_and_unload() if hasattr(trainer.model, "merge_and_unload") else trainer.model
            merged.save_pretrained(str(staging))
            tokenizer.save_pretrained(str(staging))
    else:
        if cfg.merge_adapters:
            log.warning("output.mergeAdapters under ZeRO-3 is not supported: exporting the adapters unmerged")
        trainer.save_model(str(staging))  # collective under DeepSpeed: every rank calls it
        if rank() == 0:
            tokenizer.save_pretrained(str(staging))
    if exported is not None and rank() == 0:
        record = {"step": exported["step"], "criterion": exported["criterion"], "reason": exported["reason"],
                  "checkpointUri": exported.get("checkpoint_uri"), "jobName": cfg.job_name}
        (staging / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if local_target is None and rank() == 0:
        fs, path = fsspec.core.url_to_fs(uri, **storage_options_for(uri, cfg.storage))
        fs.put(str(staging) + "/", path.rstrip("/") + "/", recursive=True)
    barrier()
    return uri


def write_loss_curve(cfg: ResolvedConfig, log_history: list[dict[str, Any]]) -> str | None:
    """``<checkpoints.uri>/loss.png``; a picture that cannot be written never fails a finished run."""
    if not cfg.checkpoints_uri:
        return None
    from .plots import write_loss_curve as draw

    png = _join(cfg.checkpoints_uri, "loss.png")
    try:
        return draw(log_history, png, title=f"{cfg.job_name}: loss", storage_options=storage_options_for(png, cfg.storage))
    except OSError as e:
        log.warning("cannot write the loss curve to %s: %s", png, e)
        return None
