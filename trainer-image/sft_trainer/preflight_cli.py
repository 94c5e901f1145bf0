"""``python -m sft_trainer.preflight JOB.yaml [--examples N] [--json PATH]``: the preflight alone.

Loads the tokenizer and the data, never the weights (an ``s3://`` model directory contributes its
tokenizer files only), and runs every data and template check that training runs first. Shows N
training examples with their trained tokens highlighted, and writes the report as JSON. The exit
code is the trainer's: 0, or 64 for a data, template or spec error. ``sftctl preflight`` and the
operator's CPU-only preflight pod run this entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import exit_codes

TERMINATION_LOG = "/dev/termination-log"
# What AutoTokenizer reads from a model directory; the weights are never fetched.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "config.json", "generation_config.json")


def tokenizer_location(cfg: Any, workdir: Path) -> str:
    """Where to load the tokenizer from: ``model_location``, except that s3:// fetches only tokenizer files."""
    from .modeling import model_location

    uri = cfg.spec.model.uri
    if not uri.startswith("s3://"):
        return model_location(cfg)
    import fsspec

    from .data import storage_options_for

    fs, path = fsspec.core.url_to_fs(uri, **storage_options_for(uri, cfg.spec.storage))
    local = workdir / "tokenizer"
    local.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        remote = path.rstrip("/") + "/" + name
        if fs.exists(remote):
            fs.get(remote, str(local / name))
    if not any(local.iterdir()):
        raise exit_codes.ConfigError(f"spec.model.uri: {uri} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])})")
    return str(local)


def preflight_job(job_path: Path, *, examples: int, base_dir: Path | None, workdir: Path):
    """Load, check and report: (report, tokenizer, training examples shown). Raises TrainerError."""
    from sft_api import SFTJobLoadError, load_sftjob

    from .config import ResolvedConfig
    from .data import load_datasets
    from .modeling import load_tokenizer
    from .preflight import run_preflight

    try:
        job = load_sftjob(job_path)
    except FileNotFoundError as e:
        raise exit_codes.ConfigError(f"{job_path}: SFTJob file not found") from e
    except SFTJobLoadError as e:
        raise exit_codes.ConfigError(str(e)) from e
    t0 = time.monotonic()
    # the pods get the GPUs they ask for: this CPU-only check must not fail on GPU-only settings
    cfg = ResolvedConfig.from_job(job, workdir=workdir, base_dir=base_dir,
                                  cuda=job.spec.workers.gpus_per_node > 0, env={})
    splits, sources = load_datasets(cfg.spec, base_dir=base_dir)
    tokenizer = load_tokenizer(cfg, tokenizer_location(cfg, workdir))
    report = run_preflight(splits, sources, tokenizer, loss_on=cfg.loss_on,
                           max_seq_length=cfg.spec.training.max_seq_length,
                           max_bad_row_ratio=cfg.spec.preflight.max_bad_row_ratio, show_examples=examples)
    report.warnings.extend(cfg.warnings)
    report.seconds = time.monotonic() - t0  # data loading and the tokenizer included
    return report, tokenizer, splits.train[:examples]


def highlighted(tokenizer: Any, example: dict[str, Any], max_seq_length: int):
    """The rendered example, trained tokens in reverse green, what truncation cuts struck through."""
    from rich.text import Text

    from . import masking
    from .preflight import TOKENS_KEY

    text = masking.render(tokenizer, example["messages"])
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    mask = example[TOKENS_KEY]["mask"]
    out, pos = Text(), 0
    for i, (s, e) in enumerate(offsets):
        if s > pos:
            out.append(text[pos:s], style="dim")
        style = "bold black on green" if i < len(mask) and mask[i] else "dim"
        if i >= max_seq_length:
            style += " strike"
        out.append(text[s:e], style=style)
        pos = max(pos, e)
    out.append(text[pos:], style="dim")
    return out


def show(console: Any, report: Any, tokenizer: Any, shown: list[dict[str, Any]], max_seq_length: int) -> None:
    from rich.panel import Panel

    console.print(Panel("\n".join(report.lines()), title="preflight", expand=False))
    for e, info in zip(shown, report.shown_examples):
        title = f"{info['source']}: {info['trained_tokens']} of {info['tokens']} tokens trained"
        console.print(Panel(highlighted(tokenizer, e, max_seq_length), title=title, title_align="left"))


def _termination_message(path: str, message: str) -> None:
    """Kubernetes shows this file as the container's termination message (only if it exists)."""
    try:
        if os.path.exists(path) and os.access(path, os.W_OK):
            Path(path).write_text(message[:4000])
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    p = argparse.ArgumentParser(prog="python -m sft_trainer.preflight", description=__doc__.splitlines()[0])
    p.add_argument("job", help="SFTJob YAML")
    p.add_argument("--examples", type=int, default=3, help="training examples to show with trained spans (default 3)")
    p.add_argument("--json", dest="json_path", default=None, help="write the report as JSON to this path")
    p.add_argument("--base-dir", default=None,
                   help="directory that scheme-less data paths are relative to (default: the working directory, "
                        "as for the trainer in a pod; sftctl preflight passes the SFTJob file's directory)")
    p.add_argument("--workdir", default=None, help="scratch directory for tokenizer files fetched from s3://")
    p.add_argument("--termination-log", default=TERMINATION_LOG,
                   help=f"where a pod's one-line result goes, when the file exists (default {TERMINATION_LOG})")
    args = p.parse_args(argv)
    console = Console(stderr=False)
    job_path = Path(args.job)
    base_dir = Path(args.base_dir).resolve() if args.base_dir else None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sft-preflight-"))
    try:
        report, tokenizer, shown = preflight_job(job_path, examples=max(0, args.examples), base_dir=base_dir,
                                                 workdir=workdir)
    except exit_codes.TrainerError as e:
        msg = str(e) if str(e).startswith(e.reason) else f"{e.reason}: {e}"
        print(msg, file=sys.stderr, flush=True)
        if args.json_path:
            Path(args.json_path).write_text(json.dumps({"error": msg, "exit_code": e.exit_code}, indent=2))
        _termination_message(args.termination_log, msg)
        return e.exit_code
    _termination_message(args.termination_log, report.summary())
    show(console, report, tokenizer, shown, report.max_seq_length)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report.to_dict(), indent=2, default=str))
        console.print(f"report: {args.json_path}")
    return exit_codes.SUCCESS
