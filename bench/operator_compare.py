"""Before/after of the operator at scale, in one session: bench/operator_scale.py run interleaved
against two checkouts of the operator (e.g. ``git archive <commit> operator api | tar -x -C DIR``),
--runs times each, a fresh dev cluster per run. Not a test.

    python bench/operator_compare.py --before /tmp/op-before --after /tmp/op-after --jobs 60 --nodes 30

The same checkout on both sides with a setting changed on one (``--before-env SFT_WRITE_THREADS=1``)
measures what one change is worth alone.

Writes bench/results/operator_scale_before_after.json: per side the runs and min/median/max of
apply -> Job created (p50, p99), failure -> next attempt (p50, p99), the operator's CPU seconds per
job, its apiserver requests and reconcile passes per job, plus the load average before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES = {
    "apply_to_job_created_p50_s": ("apply_to_job_created_seconds", "p50"),
    "apply_to_job_created_p99_s": ("apply_to_job_created_seconds", "p99"),
    "apply_to_all_pods_running_p50_s": ("apply_to_all_pods_running_seconds", "p50"),
    "failure_to_next_attempt_p50_s": ("failure_to_next_attempt_seconds", "p50"),
    "failure_to_next_attempt_p99_s": ("failure_to_next_attempt_seconds", "p99"),
    "operator_cpu_seconds_per_job": ("work_per_job", "operator_cpu_seconds_per_job"),
    "operator_requests_per_job": ("work_per_job", "operator_requests_per_job"),
    "apiserver_requests_per_job_all_clients": ("work_per_job", "apiserver_requests_per_job_all_clients"),
    "reconcile_passes_per_job": ("work_per_job", "reconcile_passes_per_job"),
    "reconcile_pass_mean_seconds": ("work_per_job", "reconcile_pass_mean_seconds"),
    "operator_peak_rss_mib": ("operator", "peak_rss_mib"),
}


def spread(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None]
    return {"runs": xs, "min": min(xs), "median": statistics.median(xs), "max": max(xs)} if xs else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--nodes", type=int, default=30)
    ap.add_argument("--fail", type=int, default=15)
    ap.add_argument("--baseline-jobs", type=int, default=0, help="plain Jobs per run for job_controller_baseline")
    ap.add_argument("--before-env", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment setting for the before side's operator (repeatable)")
    ap.add_argument("--after-env", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "operator_scale_before_after.json")
    a = ap.parse_args()
    envs = {side: dict(kv.split("=", 1) for kv in getattr(a, f"{side}_env")) for side in ("before", "after")}
    work = Path(tempfile.mkdtemp(prefix="op-compare-"))
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for i in range(a.runs):
        for side in ("before", "after"):
            out = work / f"{side}-{i}.json"
            load = os.getloadavg()[0]
            cmd = [sys.executable, str(REPO / "bench" / "operator_scale.py"), "--jobs", str(a.jobs), "--nodes",
                   str(a.nodes), "--fail", str(a.fail), "--baseline-jobs", str(a.baseline_jobs), "--operator-src", getattr(a, side), "--out", str(out)]
            rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, **envs[side]}).returncode
            res = json.loads(out.read_text()) if out.exists() else {}
            res["load_average_1m_before"] = round(load, 2)
            res["rc"] = rc
            runs[side].append(res)
            fig = {k: (res.get(s) or {}).get(f) for k, (s, f) in FIGURES.items()}
            print(f"run {i + 1} {side}: rc {rc}, load {load:.1f}, {fig}", flush=True)
    report = {
        "benchmark": "operator_scale_before_after", "jobs": a.jobs, "nodes": a.nodes, "fail": a.fail,
        "runs_per_side": a.runs, "sources": {"before": a.before, "after": a.after}, "env": envs,
        "etcd": next((r["etcd"] for rs in runs.values() for r in rs if r.get("etcd")), None),
        **{side: {k: spread([(r.get(s) or {}).get(f) for r in rs]) for k, (s, f) in FIGURES.items()}
           | {"load_average_1m_before": [r["load_average_1m_before"] for r in rs], "complete": [r.get("complete") for r in rs],
              "operator_requests_by_kind": [(r.get("work_per_job") or {}).get("operator_requests_by_kind") for r in rs]}
           for side, rs in runs.items()},
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(["python", "bench/operator_compare.py", *sys.argv[1:]]),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
