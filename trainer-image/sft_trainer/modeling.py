"""Loading the base model and tokenizer named by ``spec.model.uri``.

``builtin://tiny-llama`` builds the tiny model locally; ``hf://org/name`` loads from the hub (or
its cache); ``file://`` and plain paths load a local directory (a mounted PVC too); ``s3://`` is
downloaded to the work directory first.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .config import ResolvedConfig
from .data import resolve_uri, storage_options_for
from .exit_codes import ConfigError
from .tiny_model import BUILTIN_TINY_LLAMA

log = logging.getLogger(__name__)


def model_location(cfg: ResolvedConfig) -> str:
    """A local directory, an ``org/name`` hub id, or the builtin URI."""
    uri = cfg.spec.model.uri
    if uri.startswith("builtin://"):
        if uri != BUILTIN_TINY_LLAMA:
            raise ConfigError(f"spec.model.uri: unknown builtin model {uri!r}; the only one is {BUILTIN_TINY_LLAMA}")
        return uri
    if uri.startswith("hf://"):
        return uri[len("hf://"):]
    if uri.startswith("s3://"):
        return str(download_base_model(cfg, uri))
    path = resolve_uri(uri, cfg.base_dir)
    path = path[len("file://"):] if path.startswith("file://") else path
    if not Path(path).is_dir():
        raise ConfigError(f"spec.model.uri: {path} is not a model directory")
    return path


def download_base_model(cfg: ResolvedConfig, uri: str) -> Path:
    """One copy per node, by local rank 0, renamed into place when complete (node_cache.py).

    The directory name carries a digest of the URI and revision, so that another model never
    reuses a scratch volume's earlier copy.
    """
    import hashlib

    import fsspec

    from .node_cache import fetch_once

    key = hashlib.sha256(f"{uri}@{cfg.spec.model.revision or ''}".encode()).hexdigest()[:12]

    def fetch(tmp: Path) -> None:
        fs, path = fsspec.core.url_to_fs(uri, **storage_options_for(uri, cfg.spec.storage))
        fs.get(path.rstrip("/") + "/", str(tmp) + "/", recursive=True)
        if not (tmp / "config.json").is_file():
            raise ConfigError(f"spec.model.uri: {uri} holds no config.json: not a model directory")

    return fetch_once(cfg.workdir / f"base-model-{key}", fetch, what=f"base model {uri}")


def load_tokenizer(cfg: ResolvedConfig, location: str) -> Any:
    if location == BUILTIN_TINY_LLAMA:
        from .tiny_model import build_tokenizer

        tok = build_tokenizer()
    else:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(location, revision=cfg.spec.model.revision)
        except OSError as e:
            raise ConfigError(f"spec.model.uri: cannot load a tokenizer from {cfg.spec.model.uri}: {e}") from e
    if cfg.spec.model.chat_template:
        tok.chat_template = cfg.spec.model.chat_template
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ResolvedConfig, location: str, tokenizer: Any) -> Any:
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.precision]
    if location == BUILTIN_TINY_LLAMA:
        from .tiny_model import build_model

        if not cfg.cuda and not os.environ.get("OMP_NUM_THREADS"):
            # the idle CPUs, not a fixed count: a second thread is 1.4x faster on an idle 2-core
            # machine and several times slower on a busy one (cpu_threads.py)
            from .cpu_threads import set_torch_threads

            set_torch_threads(torch)
        # fp32 master weights; bf16/fp16 autocast comes from the trainer's mixed precision
        return build_model(tokenizer, seed=cfg.spec.training.seed)
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"revision": cfg.spec.model.revision}
    quant = cfg.quantization_config()
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["dtype"] = dtype
    elif cfg.method != "full":
        kwargs["dtype"] = dtype  # frozen base in half precision; adapters train in fp32
    else:
        # full fine-tuning keeps fp32 master weights (mixed precision autocasts); DeepSpeed keeps
        # its own fp32 master copy, so it can start from half-precision weights
        kwargs["dtype"] = dtype if cfg.use_deepspeed else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except OSError as e:
        raise ConfigError(f"spec.model.uri: cannot load a model from {cfg.spec.model.uri}: {e}") from e
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.spec.training.gradient_checkpointing)
    return model
