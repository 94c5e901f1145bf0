"""sftctl: validate, render and run SFTJobs, and manage the local dev cluster."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer
import yaml
from rich.console import Console

from sft_api import SFTJob, SFTJobLoadError, load_document, validate_document

app = typer.Typer(
    help="sftctl: supervised fine-tuning jobs (SFTJob, sft.dev/v1alpha1) on Kubernetes and on this machine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@app.command()
def validate(
    files: List[Path] = typer.Argument(..., help="SFTJob YAML files."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only problems."),
) -> None:
    """Check SFTJob files against the API; report every problem with its field path."""
    failed = 0
    for path in files:
        try:
            doc, _ = load_document(path)
        except SFTJobLoadError as exc:
            err.print(f"[red]✗[/] {exc}", highlight=False)
            failed += 1
            continue
        problems = validate_document(doc)
        if problems:
            failed += 1
            err.print(f"[red]✗[/] {path}: {len(problems)} problem(s)", highlight=False)
            for problem in problems:
                err.print(f"    {problem}", highlight=False, markup=False)
        elif not quiet:
            out.print(f"[green]✓[/] {path}: valid SFTJob {doc['metadata'].get('name')!r}", highlight=False)
    if failed:
        raise typer.Exit(1)


def _load_valid(path: Path) -> SFTJob:
    try:
        doc, _ = load_document(path)
    except SFTJobLoadError as exc:
        err.print(f"[red]✗[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    problems = validate_document(doc)
    if problems:
        err.print(f"[red]✗[/] {path}: {len(problems)} problem(s)", highlight=False)
        for problem in problems:
            err.print(f"    {problem}", highlight=False, markup=False)
        raise typer.Exit(1)
    return SFTJob.model_validate(doc, by_alias=True, by_name=False)


@app.command()
def render(
    file: Path = typer.Argument(..., help="An SFTJob YAML file."),
    attempt: int = typer.Option(1, min=1, help="Attempt number to render (restarts create attempt+1)."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="Namespace (default: the file's, or 'default')."),
) -> None:
    """Print the Kubernetes objects the operator creates for this SFTJob, as YAML (for review and GitOps)."""
    from .children import render as render_children

    job = _load_valid(file)
    if namespace:
        job.metadata.namespace = namespace
    objects = render_children(job, attempt=attempt)
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))


@app.command()
def run(
    file: Path = typer.Argument(..., help="An SFTJob YAML file; relative data paths resolve against its directory."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Override spec.training.maxSteps."),
    time_budget: Optional[float] = typer.Option(
        None, "--time-budget", min=1, help="Seconds of training; then stop with a final committed checkpoint."
    ),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Local scratch directory (default: runs/<name>)."),
    metrics_port: Optional[int] = typer.Option(
        None, "--metrics-port", min=0, max=65535, help="Port of the Prometheus /metrics endpoint (default: a free one)."
    ),
    measure: bool = typer.Option(
        True, "--measure/--no-measure",
        help="Measure held-out exact match and the golden set on the base model too (after training: always).",
    ),
) -> None:
    """Train an SFTJob on this machine (the CPU quickstart, or a GPU box), with the same trainer as the pods."""
    _load_valid(file)
    # The trainer is reached through its public entry point, never imported: the operator package
    # does not depend on the trainer's, and `sftctl run` behaves exactly like `python -m sft_trainer.local`.
    if importlib.util.find_spec("sft_trainer") is None:  # the [trainer] extra is not installed
        err.print("[red]✗[/] sftctl run needs the trainer: pip install 'sft-operator[trainer]'")
        raise typer.Exit(1)
    argv = [sys.executable, "-m", "sft_trainer.local", str(file)]
    for flag, value in (("--max-steps", max_steps), ("--time-budget", time_budget), ("--workdir", workdir),
                        ("--metrics-port", metrics_port)):
        if value is not None:
            argv += [flag, str(value)]
    if not measure:
        argv.append("--no-measure")
    child = subprocess.Popen(argv)
    # Ctrl-C reaches the child too (same process group); it stops with a committed checkpoint, so wait.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = child.wait()
        code = 128 - code if code < 0 else code  # killed by a signal: the shell convention
    finally:
        signal.signal(signal.SIGINT, previous)
    raise typer.Exit(code)


def _trainer_entry(module: str, argv: list[str]) -> int:
    """Run a trainer entry point (``python -m <module>``) as a child process; its exit code.

    The trainer is reached through its public entry points, never imported: the operator package
    does not depend on the trainer's, and sftctl behaves exactly like the entry point.
    """
    if importlib.util.find_spec("sft_trainer") is None:  # the [trainer] extra is not installed
        err.print(f"[red]✗[/] sftctl needs the trainer for this: pip install 'sft-operator[trainer]'")
        raise typer.Exit(1)
    child = subprocess.Popen([sys.executable, "-m", module, *argv])
    # Ctrl-C reaches the child too (same process group); let it finish its own way, so wait.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - code if code < 0 else code  # killed by a signal: the shell convention


@app.command()
def preflight(
    file: Path = typer.Argument(..., help="An SFTJob YAML file; relative data paths resolve against its directory."),
    examples: int = typer.Option(3, "--examples", min=0, help="Training examples to show with their trained spans."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the report (counts, lengths, template "
                                             "verdict, shown examples) as JSON to this file."),
) -> None:
    """Check the data and the chat template as training will, on this machine: tokenizer and data only, no weights.

    Exit codes are the trainer's: 0, or 64 for a data, template or spec error (with file:line or the field).
    """
    _load_valid(file)
    # relative data paths resolve against the SFTJob file, as under sftctl run
    argv = [str(file), "--examples", str(examples), "--base-dir", str(file.resolve().parent)]
    if json_path is not None:
        argv += ["--json", str(json_path)]
    raise typer.Exit(_trainer_entry("sft_trainer.preflight", argv))


@app.command("crd")
def crd_cmd() -> None:
    """Print the SFTJob CustomResourceDefinition generated from the API models."""
    from sft_api.crdgen import render_crd_yaml

    sys.stdout.write(render_crd_yaml())


def _mount_dev_cluster() -> None:
    try:
        from sft_dev.cli import app as dev_cluster_app  # a checkout only: dev tooling is not in the wheel
        from sft_dev.cli import images_app
    except ImportError:
        return
    app.add_typer(dev_cluster_app, name="dev-cluster")
    app.add_typer(images_app, name="images")


_mount_dev_cluster()


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
