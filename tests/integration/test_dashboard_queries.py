"""After a real run, every PromQL query of every dashboard panel returns data through a real
Prometheus' HTTP API.

What runs, all real: the dev cluster's kube-apiserver with kwok GPU nodes; the operator process
(`python -m sft_operator.run_operator`) reconciling a cut-down quickstart SFTJob there, through one
pod failure and one preemption; the trainer of that same job under `sftctl run` on this CPU; and
Debian's Prometheus scraping both every second. The operator and the trainer label their series
with the same namespace and job name, as in a cluster, so one choice of the dashboard's variables
shows them together.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "monitoring"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import promdash  # noqa: E402
from sft_e2e_helpers import OperatorProcess  # noqa: E402

pytestmark = pytest.mark.slow
JOB = "quickstart"
STEPS = 60


def cut_down_quickstart(dest: Path, namespace: str) -> Path:
    """examples/quickstart.yaml with fewer steps, small splits and no golden set: about a minute of CPU."""
    job = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    job["metadata"]["namespace"] = namespace
    spec = job["spec"]
    spec["datasets"][0]["uri"] = str(ROOT / "examples" / "data" / "quickstart" / "train.jsonl")
    spec["split"] = {"validation": 0.01, "test": 0.005, "seed": 42}
    spec["training"].update(maxSteps=STEPS, loggingSteps=2, warmupRatio=0.1)
    # the golden set at every checkpoint feeds the golden-pass-ratio panel; no maxDrop stop in a short run
    spec["eval"] = {"everySteps": 20, "goldenSet": {
        "uri": str(ROOT / "examples" / "data" / "quickstart" / "golden.jsonl"), "minPassRate": 0.0,
        "maxNewTokens": 48, "everyCheckpoints": 1}}
    spec["checkpoints"] = {"uri": str(dest / "checkpoints"), "everySteps": 20, "keep": 2}
    spec["output"] = {"uri": str(dest / "model")}
    spec["workers"]["resources"] = {"requests": {"cpu": "1", "memory": "1Gi"}}
    spec["preflight"] = {"enabled": False}  # this test runs the gang's pod spec; the preflight pod is not its subject
    path = dest / "quickstart.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def _status(kubectl, ns: str) -> dict:
    out = kubectl("get", "sftjob", JOB, "-n", ns, "-o", "yaml").stdout
    return yaml.safe_load(out).get("status") or {}


def _wait_status(kubectl, ns: str, pred, what: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = _status(kubectl, ns)
        if pred(st):
            return st
        assert time.monotonic() < deadline, f"SFTJob {ns}/{JOB}: {what} not reached in {timeout}s: {st}"
        time.sleep(0.5)


def _running_pod(kwok_pods, ns: str, attempt: int) -> str:
    pods = kwok_pods.wait_for_pods(ns, f"sft.dev/job-name={JOB},sft.dev/attempt={attempt}", count=1, timeout=60)
    return pods[0].metadata.name


def _start_trainer(job_yaml: Path, workdir: Path) -> tuple[subprocess.Popen, int, list[str]]:
    """`sftctl run` in its own process; returns it, the port its /metrics is served on, and its output lines."""
    sftctl = Path(sys.executable).parent / "sftctl"
    env = dict(os.environ, COLUMNS="400", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([str(sftctl), "run", str(job_yaml)], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    port: list[int] = []
    found = threading.Event()

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"http://[\d.]+:(\d+)/metrics", line)
            if m and not port:
                port.append(int(m.group(1)))
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    found.wait(timeout=400)
    assert port, "sftctl run never served /metrics:\n" + "".join(lines[-60:])
    return proc, port[0], lines


def test_every_dashboard_query_returns_data_after_a_real_run(dev_cluster, kubectl, sftjob_crd, kwok_pods, namespace,
                                                             prometheus, tmp_path):
    ns = namespace
    job_yaml = cut_down_quickstart(tmp_path, ns)
    op = OperatorProcess(Path(dev_cluster.kubeconfig), tmp_path)
    op.start()
    trainer = None
    try:
        # Prometheus first: counters and histograms must be seen before they move.
        start = time.time()
        prom = prometheus([f"127.0.0.1:{op.metrics_port}"])
        # The alert rules evaluate on the same real series (an evaluation error shows as rule health).
        prom.set_rule_files([ROOT / "monitoring" / "alerts" / "sft-operator.rules.yaml"])

        # The operator's side: the job runs, fails once (a restart), is preempted once.
        kubectl("apply", "-f", str(job_yaml))
        _wait_status(kubectl, ns, lambda s: s.get("phase") == "Running", "phase Running")
        kwok_pods.fail(ns, _running_pod(kwok_pods, ns, 1), exit_code=1, wait=False)  # the operator deletes it
        _wait_status(kubectl, ns, lambda s: s.get("attempt") == 2 and s.get("phase") == "Running", "attempt 2 Running")
        kwok_pods.preempt(ns, _running_pod(kwok_pods, ns, 2), wait=False)
        st = _wait_status(kubectl, ns, lambda s: s.get("attempt") == 3 and s.get("phase") == "Running", "attempt 3 Running")
        assert st["restarts"] == 1 and st["preemptions"] == 1

        # The trainer's side: the same job trained for real on this CPU.
        trainer, port, lines = _start_trainer(job_yaml, tmp_path)
        prom.add_targets([f"127.0.0.1:{port}"], job="trainer")
        rc = trainer.wait(timeout=420)
        assert rc == 0, "sftctl run failed:\n" + "".join(lines[-60:])
        end = time.time()

        dashboard = promdash.load_dashboard()
        options = promdash.variable_options(prom.url, dashboard, start, end, {"namespace": ns})
        assert ns in options["namespace"] and options["sftjob"] == [JOB]

        window = f"{int(end - start) + 60}s"
        empty, checked = [], 0
        for q in promdash.panel_queries(dashboard):
            expr = promdash.substitute(q.expr, namespace=ns, sftjob=JOB, rate_interval="10s", range_=window)
            series = promdash.query_range(prom.url, expr, start, end, step=2)
            checked += 1
            if not any(s.finite() for s in series):
                empty.append(f"{q.panel} [{q.ref}]: {expr} -> {len(series)} series, none with a finite value")
        assert checked >= 25
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

        rules = promdash.rules(prom.url)
        assert len(rules) == 9
        bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
        assert not bad, f"alert rules failed to evaluate on real series: {bad}"
        firing = {r["name"] for r in rules if r["state"] == "firing"}
        assert not firing & {"SFTOperatorDown", "SFTJobLossNaN", "SFTJobStalled"}, firing

        # The series say what happened.
        step = promdash.query_range(prom.url, f'max(sftjob_step{{namespace="{ns}", sftjob="{JOB}"}})', start, end, 2)
        assert max(v for s in step for _, v in s.finite()) == STEPS
        tasks = promdash.query_range(prom.url, f'sftjob_eval_loss{{namespace="{ns}", sftjob="{JOB}"}}', start, end, 2)
        assert len({s.labels.get("task_type") for s in tasks}) >= 4  # every task_type of the quickstart data
        ckpt = promdash.query_range(prom.url, f'max(sftjob_checkpoint_last_step{{namespace="{ns}"}})', start, end, 2)
        assert max(v for s in ckpt for _, v in s.finite()) == STEPS
        running = promdash.query_range(prom.url, 'sftoperator_jobs{phase="Running"}', start, end, 2)
        assert max(v for s in running for _, v in s.finite()) >= 1
        assert all(math.isfinite(v) for s in step for _, v in s.finite())
    finally:
        if trainer is not None and trainer.poll() is None:
            trainer.kill()
            trainer.wait(10)
        # While the operator still runs, so that it releases its finalizer and the namespace can go.
        kubectl("delete", "sftjob", JOB, "-n", ns, "--timeout=60s", check=False)
        op.stop()
