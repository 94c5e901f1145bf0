"""The loss-curve PNG written next to the checkpoints at the end of a run."""

from __future__ import annotations

import io
import re
from typing import Any, Iterable

_EVAL_TASK_RE = re.compile(r"^eval_(.+)_loss$")


def loss_series(log_history: Iterable[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Split HF ``state.log_history`` into series: 'train', 'eval', and 'eval/<task_type>'."""
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            if not isinstance(value, (int, float)):
                continue
            if key == "loss":
                name = "train"
            elif key == "eval_loss":
                name = "eval"
            elif m := _EVAL_TASK_RE.match(key):
                name = f"eval/{m.group(1)}"
            else:
                continue
            series.setdefault(name, []).append((int(step), float(value)))
    return series


_GOLDEN_TASK_RE = re.compile(r"^golden_(.+)_pass_rate$")


def golden_series(log_history: Iterable[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """The golden set's pass rate at scored checkpoints (golden_checkpoints.py): 'golden' and 'golden/<task>'."""
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        step = entry.get("step")
        for key, value in entry.items():
            if step is None or not isinstance(value, (int, float)):
                continue
            if key == "golden_pass_rate":
                series.setdefault("golden", []).append((int(step), float(value)))
            elif m := _GOLDEN_TASK_RE.match(key):
                series.setdefault(f"golden/{m.group(1)}", []).append((int(step), float(value)))
    return series


def _draw_golden(ax: Any, series: dict[str, list[tuple[int, float]]], plt: Any) -> None:
    """Pass rates on a second axis (0..1), green: the whole set bold, each task_type dotted."""
    g = ax.twinx()
    greens = iter(plt.get_cmap("Greens")([0.45, 0.6, 0.75, 0.9] * 4))
    for name in sorted(series, key=lambda n: (n != "golden", n)):
        pts = series[name]
        kw = (dict(color="darkgreen", lw=2.0, marker="s", ms=5) if name == "golden"
              else dict(color=next(greens), lw=1.0, ls=":", marker="s", ms=3))
        g.plot([s for s, _ in pts], [v for _, v in pts], label=name.replace("/", ": ") + " pass rate", **kw)
    g.set_ylim(-0.02, 1.02)
    g.set_ylabel("golden-set pass rate")
    g.legend(fontsize=8, loc="center left")


def write_loss_curve(
    log_history: Iterable[dict[str, Any]],
    path: str,
    *,
    title: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Plot train and eval loss (and eval loss per task_type) to a PNG at ``path``.

    ``path`` is a local path or any fsspec URI (``s3://…/loss.png`` next to the checkpoints).
    """
    import fsspec
    import matplotlib

    matplotlib.use("Agg")  # headless: pods and CI have no display
    import matplotlib.pyplot as plt

    log_history = list(log_history)
    series = loss_series(log_history)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    try:
        styles = {"train": dict(color="tab:blue", lw=1.2, alpha=0.8),
                  "eval": dict(color="black", lw=2.0, marker="o", ms=4)}
        task_colors = iter(plt.get_cmap("tab10").colors[1:] * 4)  # blue is the train loss
        for name in sorted(series, key=lambda n: (n != "train", n != "eval", n)):
            pts = series[name]
            kw = styles.get(name) or dict(color=next(task_colors), lw=1.2, ls="--", marker=".", ms=4)
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=name.replace("/", ": "), **kw)
        if not series:
            ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title or "SFT loss")
        ax.grid(True, alpha=0.3)
        if series:
            ax.legend(fontsize=8)
        golden = golden_series(log_history)
        if golden:
            _draw_golden(ax, golden, plt)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    if "://" not in path:
        import os

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with fsspec.open(path, "wb", **(storage_options or {})) as f:
        f.write(buf.getvalue())
    return path
