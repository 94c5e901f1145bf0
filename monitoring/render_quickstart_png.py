#!/usr/bin/env python3
"""Draw the dashboard's main per-job panels from real Prometheus series of a quickstart run.

    python monitoring/render_quickstart_png.py                      # runs the quickstart, writes docs/images/quickstart-dashboard.png
    python monitoring/render_quickstart_png.py --max-steps 300      # a shorter run
    python monitoring/render_quickstart_png.py --prometheus http://127.0.0.1:9090 \\
        --namespace local --sftjob quickstart --start 1767000000 --end 1767000600   # series already in a Prometheus

Without a Prometheus URL it starts Debian's Prometheus on a free port (1 s scrapes), runs
`sftctl run examples/quickstart.yaml` (the real trainer on this CPU), scrapes its /metrics, and
then plots each panel's own PromQL (from monitoring/dashboards/sft-operator.json) with matplotlib,
since no Grafana server is available here.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import promdash  # noqa: E402

OUT = ROOT / "docs" / "images" / "quickstart-dashboard.png"
PANELS = ["Loss: train and eval per task_type", "Learning rate", "Tokens/s", "Step progress", "Checkpoint age", "Gradient norm"]


def run_quickstart(max_steps: int | None, workdir: Path, prom) -> tuple[float, float, str]:
    """Run the quickstart while `prom` scrapes it; returns (start, end, log path)."""

    job = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    job["spec"]["datasets"][0]["uri"] = str(ROOT / "examples" / "data" / "quickstart" / "train.jsonl")
    golden = job["spec"].get("eval", {}).get("goldenSet")
    if golden:
        golden["uri"] = str(ROOT / "examples" / "data" / "quickstart" / Path(golden["uri"]).name)
    job["spec"]["checkpoints"]["uri"] = str(workdir / "checkpoints")
    job["spec"]["output"]["uri"] = str(workdir / "model")
    if max_steps:
        job["spec"]["training"]["maxSteps"] = max_steps
        every = max(10, max_steps // 8)
        job["spec"]["eval"]["everySteps"] = every
        job["spec"]["checkpoints"]["everySteps"] = every
        job["spec"]["training"]["loggingSteps"] = max(1, max_steps // 100)
    job_file = workdir / "quickstart.yaml"
    job_file.write_text(yaml.safe_dump(job, sort_keys=False))

    sftctl = Path(sys.executable).parent / "sftctl"
    log = workdir / "sftctl-run.log"
    start = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(sftctl), "run", str(job_file)], cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, COLUMNS="400", PYTHONUNBUFFERED="1"))
    port = None
    while proc.poll() is None and port is None:
        m = re.search(r"http://[\d.]+:(\d+)/metrics", log.read_text(errors="replace"))
        port = int(m.group(1)) if m else None
        time.sleep(0.5)
    if port is None:
        sys.exit(f"sftctl run exited ({proc.returncode}) before serving /metrics; see {log}")
    prom.add_targets([f"127.0.0.1:{port}"], job="trainer")
    rc = proc.wait()
    end = time.time()
    if rc != 0:
        sys.exit(f"sftctl run failed with exit code {rc}; see {log}")
    return start, end, str(log)


def render(prom_url: str, namespace: str, sftjob: str, start: float, end: float, out: Path) -> dict[str, int]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = promdash.load_dashboard()
    panels = {p["title"]: p for p in dashboard["panels"] if p["type"] != "row"}
    step = max(1.0, (end - start) / 600)
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), constrained_layout=True)
    counts = {}
    for ax, title in zip(axes.flat, PANELS):
        panel = panels[title]
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        n = 0
        for target in panel["targets"]:
            expr = promdash.substitute(target["expr"], namespace=namespace, sftjob=sftjob, rate_interval="10s",
                                       range_=f"{int(end - start)}s")
            for s in promdash.query_range(prom_url, expr, start, end, step):
                pts = s.finite()
                if not pts:
                    continue
                xs = [(t - start) / 60 for t, _ in pts]
                ys = [v for _, v in pts]
                ax.plot(xs, ys, label=promdash.legend(target.get("legendFormat", ""), s.labels), linewidth=1.2)
                n += 1
        counts[title] = n
        ax.set_title(title, fontsize=11, loc="left")
        ax.set_xlabel("minutes since start")
        ax.set_ylabel({"s": "seconds", "sci": "learning rate", "short": "", "none": ""}.get(unit, unit))
        if unit == "sci":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.grid(alpha=0.3)
        if n:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"SFT operator dashboard, SFTJob {namespace}/{sftjob}: real series of a quickstart run "
                 f"({(end - start) / 60:.1f} min, Prometheus query_range)", fontsize=12)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prometheus", help="use series already in this Prometheus instead of running the quickstart")
    p.add_argument("--namespace", default="local")
    p.add_argument("--sftjob", default="quickstart")
    p.add_argument("--start", type=float)
    p.add_argument("--end", type=float)
    p.add_argument("--max-steps", type=int, help="train fewer steps than examples/quickstart.yaml")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.prometheus:
        if args.start is None or args.end is None:
            p.error("--prometheus needs --start and --end (unix seconds)")
        url, ns, start, end = args.prometheus, args.namespace, args.start, args.end
        counts = render(url, ns, args.sftjob, start, end, args.out)
    else:
        from sft_dev.prom import start_prometheus

        workdir = Path(tempfile.mkdtemp(prefix="sft-quickstart-png-"))
        prom = start_prometheus([], state_dir=workdir / "prometheus")
        try:
            start, end, log = run_quickstart(args.max_steps, workdir, prom)
            print(f"quickstart finished in {end - start:.0f}s (log {log})")
            counts = render(prom.url, "local", args.sftjob, start, end, args.out)
        finally:
            prom.stop()
    empty = [t for t, n in counts.items() if not n]
    print(f"wrote {args.out}: " + ", ".join(f"{t}: {n} series" for t, n in counts.items()))
    return 1 if empty else 0


if __name__ == "__main__":
    sys.exit(main())
