"""``sftctl run job.yaml``: the same trainer, in this process, on this machine.

Scheme-less *input* paths (datasets, golden set, a model directory) are relative to the SFTJob
file's directory, so an example runs from any working directory; scheme-less *outputs*
(checkpoints, output) are relative to the current directory. Checkpoints default to
``./runs/<name>/checkpoints``. Before training it measures the untrained model (held-out exact
match per task_type, golden-set pass rate) and prints the same figures after training.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from . import exit_codes

TIME_BUDGET_ENV = "SFT_TIME_BUDGET_SECONDS"  # same as --time-budget: stop training after this long


def _abs(uri: str | None) -> str | None:
    if uri is None or "://" in uri:
        return uri
    return str(Path(uri).resolve())


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _apply_overrides(job: Any, overrides: dict[str, Any]) -> None:
    t = job.spec.training
    if overrides.get("max_steps"):
        t.max_steps, t.epochs = int(overrides["max_steps"]), None
    if overrides.get("checkpoints_uri"):
        job.spec.checkpoints.uri = overrides["checkpoints_uri"]


def _points(before: float | None, after: float | None) -> str:
    return "-" if before is None or after is None else f"{100 * (after - before):+.1f}"


def summary_table(result: Any):
    """Before (the base model) → after training, with the delta in points: held-out exact match per
    task_type, the golden set per task_type and overall, and each regression set."""
    from rich.table import Table

    table = Table(title="held-out exact match (test split), golden and regression sets: base model → after training")
    for name, justify in (("task_type", "left"), ("before", "right"), ("after", "right"), ("delta", "right")):
        table.add_column(name, justify=justify)
    before, after = result.exact_match_before or {}, result.exact_match_after or {}
    for task in sorted(set(before) | set(after), key=lambda t: (t == "overall", t)):
        table.add_row(task, _pct(before.get(task)), _pct(after.get(task)), _points(before.get(task), after.get(task)))
    if result.golden_after is not None:
        golden_before = result.golden_before or {}
        for task, rate in result.golden_after.get("by_task", {}).items():
            b = golden_before.get("by_task", {}).get(task)
            table.add_row(f"golden: {task}", _pct(b), _pct(rate), _points(b, rate))
        gb, ga = golden_before.get("pass_rate"), result.golden_after["pass_rate"]
        table.add_row("[bold]golden set pass rate", _pct(gb), _pct(ga), _points(gb, ga))
    for name, row in (result.scored_sets or {}).items():
        if name != "golden":
            table.add_row(f"[bold]regression set {name}", _pct(row.get("base")), _pct(row.get("final")),
                          _points(row.get("base"), row.get("final")))
    return table


def _quiet_logging(console: Any) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO, format="%(message)s", datefmt="[%X]", force=True,
                        handlers=[RichHandler(console=console, show_path=False, markup=False)])
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging

    disable_progress_bar()
    hf_logging.disable_progress_bar()


def _load(job_path: Path, console: Any, overrides: dict[str, Any]) -> Any:
    """The SFTJob with the overrides applied and its outputs made absolute; None after an error."""
    from sft_api import SFTJobLoadError, load_sftjob

    try:
        job = load_sftjob(job_path)
    except FileNotFoundError:
        console.print(f"[red]error:[/] {job_path}: no such file")
        return None
    except SFTJobLoadError as e:
        console.print(f"[red]invalid SFTJob:[/] {e}")
        return None
    _apply_overrides(job, overrides)
    job.spec.checkpoints.uri = _abs(job.spec.checkpoints.uri or f"runs/{job.metadata.name}/checkpoints")
    if job.spec.output is not None:
        job.spec.output.uri = _abs(job.spec.output.uri)
    return job


def _print_summary(console: Any, result: Any, workdir: Path, results_path: Path | None) -> None:
    console.print(summary_table(result))
    tps = f"{result.tokens_per_second:.0f}" if result.tokens_per_second else "-"
    console.print(
        f"steps {result.global_step}/{result.max_steps} in {result.train_seconds:.0f}s, {tps} tokens/s, "
        f"train loss {result.train_loss if result.train_loss is None else round(result.train_loss, 4)}, "
        f"eval loss {result.eval_loss if result.eval_loss is None else round(result.eval_loss, 4)}, "
        f"test loss {result.test_loss if result.test_loss is None else round(result.test_loss, 4)}"
    )
    if result.resumed_from is not None:
        console.print(f"resumed from committed checkpoint {result.resumed_from}")
    if result.max_steps and result.global_step < result.max_steps and not result.interrupted:
        # the figures of a run stopped early (a time box on a busy machine) are not the spec's
        console.print(f"[yellow]stopped at step {result.global_step} of {result.max_steps}[/] (time budget or early "
                      f"stopping): the learning rate had not decayed, so these figures are below those of a full run")
    for label, value in (("checkpoint", result.checkpoint_uri), ("model", result.output_uri),
                         ("loss curve", result.loss_curve), ("report", str(workdir / "result.json")),
                         ("figures", str(results_path) if results_path else None)):
        if value:
            console.print(f"{label}: {value}")
    if result.output_uri and result.exported:  # which checkpoint the model is (spec.output.checkpoint)
        console.print(f"exported checkpoint {result.exported['step']}: {result.exported['reason']}")
    if result.exit_code != exit_codes.SUCCESS:
        console.print(f"[red]{result.message}[/] (exit {result.exit_code})")


def run_local(job_path: str | os.PathLike[str], *, overrides: dict[str, Any] | None = None) -> int:
    """Run an SFTJob on this machine; returns the trainer's exit code (see ``exit_codes``).

    ``overrides``: ``time_budget`` (seconds of training, then stop with a final checkpoint),
    ``max_steps``, ``workdir``, ``checkpoints_uri``, ``metrics_port`` (default: a free port; the
    URL is printed), ``measure`` (default True: before/after exact match and golden set),
    ``results`` (path of the figures file; default ``runs/<name>/results.json``).
    """
    from rich.console import Console

    overrides = dict(overrides or {})
    console = Console(stderr=False)
    job_path = Path(job_path)
    job = _load(job_path, console, overrides)
    if job is None:
        return exit_codes.CONFIG_ERROR
    name = job.metadata.name
    workdir = Path(overrides.get("workdir") or f"runs/{name}/work").resolve()
    results_path = Path(overrides.get("results") or f"runs/{name}/results.json").resolve()
    _quiet_logging(console)
    if overrides.get("time_budget") is None and os.environ.get(TIME_BUDGET_ENV):
        overrides["time_budget"] = float(os.environ[TIME_BUDGET_ENV])

    from .console import RichProgressCallback
    from .train import train

    def on_preflight(report: Any) -> None:
        from rich.panel import Panel

        console.print(Panel("\n".join(report.lines()), title="preflight", expand=False))

    console.print(f"[bold]sftctl run[/] {job_path} → checkpoints {job.spec.checkpoints.uri}")
    started = _machine_load()
    try:
        result = train(
            job, workdir=workdir, base_dir=job_path.resolve().parent, measure_before=overrides.get("measure", True),
            max_train_seconds=overrides.get("time_budget"), metrics_port=overrides.get("metrics_port", 0),
            extra_callbacks=[RichProgressCallback(console)], on_preflight=on_preflight,
            on_phase=lambda msg: console.print(f"[cyan]›[/] {msg}"),
        )
    except exit_codes.TrainerError as e:
        console.print(f"[red]{e.reason}[/] (exit {e.exit_code}): {e}")
        return e.exit_code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return exit_codes.INTERRUPTED
    write_results(results_path, job, result, started=started)
    _print_summary(console, result, workdir, results_path)
    return result.exit_code


def _machine_load() -> dict[str, Any]:
    import platform

    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {"cpus": os.cpu_count(), "loadavg1": load[0], "platform": platform.platform()}


def write_results(path: Path, job: Any, result: Any, *, started: dict[str, Any]) -> dict[str, Any]:
    """The figures the README quotes, in one small JSON file (bench/quickstart.py collects them).

    Besides the scores it records what decides them: the steps trained of the planned ones (a
    time box stops early on a loaded machine, before the learning rate has decayed), the training
    seconds, the thread count and the machine's load.
    """
    import torch

    from sft_api.training_identity import spec_hash

    figures = {
        "job": job.metadata.name,
        "spec_hash": spec_hash(job.spec),
        "seed": job.spec.training.seed,
        "global_step": result.global_step,
        "max_steps": result.max_steps,
        "stopped_before_max_steps": bool(result.max_steps and result.global_step < result.max_steps
                                       and not result.interrupted),
        "train_seconds": round(result.train_seconds, 1),
        "tokens_per_second": result.tokens_per_second,
        "test_loss": result.test_loss,
        "eval_loss": result.eval_loss,
        "exact_match_before": result.exact_match_before,
        "exact_match_after": result.exact_match_after,
        "golden_pass_rate_before": (result.golden_before or {}).get("pass_rate"),
        "golden_pass_rate_after": (result.golden_after or {}).get("pass_rate"),
        "resumed_from": result.resumed_from,
        "exit_code": result.exit_code,
        "torch_threads": torch.get_num_threads(),
        "machine": {**started, "loadavg1_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return figures


def result_json(workdir: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(workdir) / "result.json").read_text())


def main(argv: list[str] | None = None) -> int:
    """``python -m sft_trainer.local JOB.yaml [...]``: the public entry point that ``sftctl run`` calls."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m sft_trainer.local", description=run_local.__doc__.splitlines()[0])
    p.add_argument("job", help="SFTJob YAML; relative data paths resolve against its directory")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--time-budget", type=float, default=None)
    p.add_argument("--workdir", default=None)
    p.add_argument("--checkpoints-uri", default=None)
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument("--no-measure", dest="measure", action="store_false", default=True)
    p.add_argument("--results", default=None, help="figures file (default runs/<name>/results.json)")
    args = vars(p.parse_args(argv))
    job = args.pop("job")
    return run_local(job, overrides={k: v for k, v in args.items() if v is not None})


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
