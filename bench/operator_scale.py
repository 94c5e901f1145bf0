"""Scale benchmark of the operator on the dev cluster (kwok GPU nodes). Not a test.

    python bench/operator_scale.py --jobs 200 --nodes 100

Starts a private dev cluster with --nodes kwok nodes (8 GPUs each), installs the CRD, starts the
operator (`python -m sft_operator.run_operator --standalone`), applies --jobs SFTJobs of
--job-nodes x --job-gpus, fails one pod in --fail of them once everything runs, and reports:
- apply -> Job created (p50, p99)
- apply -> all pods Running (p50, p99)
- pod failure -> next attempt's Job created (p50, p99)
- the operator's peak RSS and CPU seconds (psutil, sampled every 0.5 s)
- API requests per job: the operator's own (`sftoperator_api_requests_total`) and all clients'
  (the apiserver's `apiserver_request_total`, scraped with the admin credentials), before/after
- `job_controller_baseline`, in the same run and before the SFTJobs: --baseline-jobs plain Indexed
  Jobs of the same shape (the Job the operator renders for the same SFTJob: its pod template,
  parallelism = completions = --job-nodes), created the same way, in their own namespace: apply ->
  all pods created and apply -> all pods Running, p50/p99 (what the Job controller and the scheduler
  cost without the operator); they stay while the SFTJobs run, so the cluster needs GPUs for both
- whether etcd ran with --unsafe-no-fsync (read from the etcd process's command line)
Writes bench/results/operator_scale.json. Use --kubeconfig to reuse a running dev cluster instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "sft.dev", "v1alpha1", "sftjobs"


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return round(s[k], 3)


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99),
            "max": round(max(values), 3) if values else None, "mean": round(statistics.mean(values), 3) if values else None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sampler(threading.Thread):
    """Peak RSS and CPU seconds of the operator process (and its children)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.peak_rss = 0
        self.cpu_seconds = 0.0
        self.stop_flag = threading.Event()

    def sample(self) -> None:
        import psutil

        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in procs)
            cpu = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        except psutil.Error:
            return
        self.peak_rss = max(self.peak_rss, rss)
        self.cpu_seconds = max(self.cpu_seconds, cpu)

    def run(self) -> None:
        while not self.stop_flag.wait(0.5):
            self.sample()


class Recorder(threading.Thread):
    """Watches Jobs and pods of all SFTJobs in the namespace and stamps first sightings (`labels`: the
    job-name and attempt label keys; a plain Job's pods carry only the first)."""

    def __init__(self, api, namespace: str, kind: str, labels: tuple[str, str] = ("sft.dev/job-name", "sft.dev/attempt")):
        super().__init__(daemon=True)
        self.api, self.ns, self.kind, self.labels = api, namespace, kind, labels
        self.first_seen: dict[tuple[str, str], float] = {}  # (sftjob, attempt) -> time Job seen
        self.running: dict[tuple[str, str], set[str]] = {}  # (sftjob, attempt) -> running pod names
        self.all_running_at: dict[tuple[str, str], float] = {}
        self.created: dict[tuple[str, str], set[str]] = {}  # (sftjob, attempt) -> pod names seen
        self.all_created_at: dict[tuple[str, str], float] = {}
        self.failed_seen: dict[tuple[str, str], float] = {}  # first pod of the attempt seen Failed
        self.stop_flag = threading.Event()
        self.expected_pods = 1

    def run(self) -> None:
        from kubernetes import client, watch

        batch, core = client.BatchV1Api(self.api), client.CoreV1Api(self.api)
        fn = batch.list_namespaced_job if self.kind == "jobs" else core.list_namespaced_pod
        rv = None
        while not self.stop_flag.is_set():
            w = watch.Watch()
            try:
                kw = {"label_selector": self.labels[0], "timeout_seconds": 30}
                if rv:
                    kw["resource_version"] = rv
                for ev in w.stream(fn, self.ns, **kw):
                    obj = ev["object"]
                    rv = obj.metadata.resource_version
                    lbl = obj.metadata.labels or {}
                    key = (lbl.get(self.labels[0]), lbl.get(self.labels[1], "1"))
                    now = time.monotonic()
                    if self.kind == "jobs":
                        self.first_seen.setdefault(key, now)
                    else:
                        if obj.status.phase == "Failed":
                            self.failed_seen.setdefault(key, now)
                        seen = self.created.setdefault(key, set())
                        seen.add(obj.metadata.name)
                        if len(seen) >= self.expected_pods:
                            self.all_created_at.setdefault(key, now)
                        names = self.running.setdefault(key, set())
                        if obj.status.phase == "Running" and not obj.metadata.deletion_timestamp:
                            names.add(obj.metadata.name)
                        else:
                            names.discard(obj.metadata.name)
                        if len(names) >= self.expected_pods:
                            self.all_running_at.setdefault(key, now)
                    if self.stop_flag.is_set():
                        break
            except Exception:  # watch expired or connection reset: resume from the last version
                rv = None
                time.sleep(0.2)


def _samples(text: str, name: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """Sum of a Prometheus text metric's samples by the given labels."""
    import re

    out: dict[tuple[str, ...], float] = {}
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
            continue
        head, _, value = line.rpartition(" ")
        got = dict(re.findall(r'(\w+)="([^"]*)"', head))
        key = tuple(got.get(k, "") for k in labels)
        out[key] = out.get(key, 0.0) + float(value)
    return out


def _delta(after: dict, before: dict, per: int) -> dict[str, float]:
    rows = {" ".join(k): round((v - before.get(k, 0.0)) / per, 2) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in rows.items() if v), key=lambda kv: -kv[1]))


class Scrapes:
    """The operator's own /metrics and the apiserver's, read before and after the burst."""

    def __init__(self, api, operator_port: str):
        self.api, self.url = api, f"http://127.0.0.1:{operator_port}/metrics"

    def operator(self) -> dict:
        with urllib.request.urlopen(self.url, timeout=10) as r:
            text = r.read().decode()
        return {"requests": _samples(text, "sftoperator_api_requests_total", ("verb", "resource")),
                "reads": _samples(text, "sftoperator_sftjob_reads_total", ("source",)),
                "skipped": _samples(text, "sftoperator_skipped_applies_total", ("kind",)),
                "unchanged": _samples(text, "sftoperator_unchanged_writes_total", ("resource",)),
                "passes": _samples(text, "sftoperator_reconcile_duration_seconds_count", ()),
                "pass_seconds": _samples(text, "sftoperator_reconcile_duration_seconds_sum", ())}

    def apiserver(self) -> dict:
        return self.apiserver_of(self.api)

    @staticmethod
    def apiserver_of(api) -> dict:
        resp = api.call_api("/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False,
                            _return_http_data_only=True)
        text = resp.data.decode()
        return {"requests": _samples(text, "apiserver_request_total", ("verb", "resource", "subresource"))}

    def take(self) -> dict:
        return {"operator": self.operator(), "apiserver": self.apiserver(), "t": time.monotonic()}

    @staticmethod
    def per_job(after: dict, before: dict, jobs: int) -> dict:
        o, b = after["operator"], before["operator"]
        passes = sum(o["passes"].values()) - sum(b["passes"].values())
        seconds = sum(o["pass_seconds"].values()) - sum(b["pass_seconds"].values())
        op_req = _delta(o["requests"], b["requests"], jobs)
        cuts = {f"{name}_per_job": _delta(o.get(name, {}), b.get(name, {}), jobs) for name in ("reads", "skipped", "unchanged")}
        return {"operator_requests_per_job": round(sum(op_req.values()), 2), "operator_requests_by_kind": op_req,
                # sftjob reads from the cache vs GET, applies not sent, status writes that changed nothing
                # (absent from an operator that predates the counters)
                "operator_cuts": cuts,
                "reconcile_passes_per_job": round(passes / jobs, 2),
                "reconcile_pass_mean_seconds": round(seconds / passes, 4) if passes else None,
                "reconcile_busy_seconds_total": round(seconds, 1),
                "apiserver_requests_per_job_all_clients": round(
                    sum(_delta(after["apiserver"]["requests"], before["apiserver"]["requests"], jobs).values()), 2),
                "apiserver_requests_by_kind_all_clients": _delta(after["apiserver"]["requests"],
                                                                 before["apiserver"]["requests"], jobs)}


def manifest(name: str, nodes: int, gpus: int) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SFTJob", "metadata": {"name": name},
        "spec": {
            "model": {"uri": "builtin://tiny-llama"},
            "datasets": [{"uri": "data/quickstart/train.jsonl"}],
            "training": {"maxSteps": 100},
            "workers": {"nodes": nodes, "gpusPerNode": gpus, "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
            "failurePolicy": {"maxRestarts": 3, "stallTimeoutSeconds": 86400},
            # The figures are apply -> gang; kwok never finishes a preflight pod by itself.
            "preflight": {"enabled": False},
        },
    }


PLAIN_LABEL = "bench.sft.dev/plain-job"


def plain_job(name: str, nodes: int, gpus: int) -> dict:
    """The Indexed Job the operator renders for the same SFTJob, as a plain Job: its pod template and
    parallelism/completions, without owner, Kueue labels or the per-job ServiceAccount."""
    from sft_operator.children import render
    from sft_operator.settings import OperatorSettings

    body = {**manifest(name, nodes, gpus), "metadata": {"name": name, "namespace": "plain"}}
    [job] = [o for o in render(body, attempt=1, settings=OperatorSettings()) if o["kind"] == "Job"]
    lbls = {PLAIN_LABEL: name}
    job["metadata"] = {"name": name, "labels": dict(lbls)}
    job["spec"]["template"]["metadata"]["labels"] = dict(lbls)
    job["spec"]["template"]["spec"]["serviceAccountName"] = "default"
    job["spec"]["suspend"] = False
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == nodes
    return job


def run_plain_jobs(api, args, core) -> dict:
    """The Job controller's baseline: --baseline-jobs plain Indexed Jobs, created as the SFTJobs are."""
    from kubernetes import client

    ns = f"plain-{int(time.time())}"
    core.create_namespace({"metadata": {"name": ns}})
    deadline = time.monotonic() + 60
    while not core.list_namespaced_service_account(ns, field_selector="metadata.name=default").items:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no default ServiceAccount in {ns}")
        time.sleep(0.2)
    rec = Recorder(api, ns, "pods", labels=(PLAIN_LABEL, ""))
    rec.expected_pods = args.job_nodes
    rec.start()
    batch = client.BatchV1Api(api)
    before = Scrapes.apiserver_of(api)
    applied: dict[str, float] = {}
    t0 = time.monotonic()
    for i in range(args.baseline_jobs):
        name = f"plain-{i:04d}"
        applied[name] = time.monotonic()
        batch.create_namespaced_job(ns, plain_job(name, args.job_nodes, args.job_gpus))
        if args.apply_rate:
            time.sleep(1 / args.apply_rate)
    apply_seconds = time.monotonic() - t0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and len([n for n in applied if (n, "1") in rec.all_running_at]) < len(applied):
        time.sleep(0.5)
    rec.stop_flag.set()
    created = [rec.all_created_at[(n, "1")] - t for n, t in applied.items() if (n, "1") in rec.all_created_at]
    running = [rec.all_running_at[(n, "1")] - t for n, t in applied.items() if (n, "1") in rec.all_running_at]
    after = Scrapes.apiserver_of(api)
    by_kind = _delta(after["requests"], before["requests"], max(len(applied), 1))
    return {"jobs": len(applied), "namespace": ns, "apply_seconds_total": round(apply_seconds, 2),
            "harness_apply_rate_jobs_per_second": round(len(applied) / apply_seconds, 1) if apply_seconds else None,
            "apply_to_pods_created_seconds": summary(created), "apply_to_all_pods_running_seconds": summary(running),
            "apiserver_requests_per_job_all_clients": round(sum(by_kind.values()), 2),
            "apiserver_requests_by_kind_all_clients": by_kind,
            "complete": len(created) == len(applied) and len(running) == len(applied)}


def etcd_fsync(state_dir: Path | None) -> dict:
    """Whether the cluster's etcd runs with --unsafe-no-fsync, from its process's command line."""
    import psutil

    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if proc.info.get("name") != "etcd" and not (cmd and cmd[0].endswith("/etcd")):
            continue
        if state_dir is not None and not any(str(state_dir) in a for a in cmd):
            continue
        return {"unsafe_no_fsync": "--unsafe-no-fsync" in cmd, "found": True,
                "note": "no fsync latency in any figure" if "--unsafe-no-fsync" in cmd else "etcd fsyncs every commit"}
    return {"unsafe_no_fsync": None, "found": False, "note": "etcd process not found on this machine"}


def start_cluster(cluster, nodes: int):
    from sft_dev.cluster import ClusterError, Ports

    ports = Ports.free()
    for attempt in range(4):  # up() is idempotent: on a loaded machine 500 kwok nodes take longer than its wait
        try:
            return cluster.up(nodes=nodes, ports=ports)
        except ClusterError as exc:
            if attempt == 3 or "did not become Ready" not in str(exc):
                raise
            print(f"kwok nodes still coming up; waiting again ({str(exc)[:80]}...)", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--nodes", type=int, default=100, help="kwok GPU nodes (8 GPUs each)")
    ap.add_argument("--job-nodes", type=int, default=2, help="pods per SFTJob")
    ap.add_argument("--job-gpus", type=int, default=1, help="GPUs per pod")
    ap.add_argument("--fail", type=int, default=50, help="SFTJobs that get one pod failure")
    ap.add_argument("--baseline-jobs", type=int, default=None,
                    help="plain Indexed Jobs of the same shape for job_controller_baseline (default --jobs; 0: none)")
    ap.add_argument("--apply-rate", type=float, default=0, help="SFTJobs per second (0: as fast as possible)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--workers", type=int, default=None, help="operator reconcile workers (SFT_WORKERS; default: the operator's)")
    ap.add_argument("--resync", type=float, default=None,
                    help="the operator's resync timer (SFT_RESYNC_SECONDS; default: the operator's)")
    ap.add_argument("--kubeconfig", help="use this running dev cluster (it must have --nodes nodes)")
    ap.add_argument("--operator-src", help="run the operator from this checkout (its operator/ and api/ first on "
                    "PYTHONPATH), e.g. an earlier commit from git archive, for a before/after in one session")
    ap.add_argument("--profile", help="run the operator under cProfile (bench/profiled_operator.py); pstats path")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "operator_scale.json"))
    args = ap.parse_args()
    if args.baseline_jobs is None:
        args.baseline_jobs = args.jobs

    from kubernetes import client, config

    from sft_dev import kwok_stages as ks

    load_start = round(os.getloadavg()[0], 2)  # the machine is shared: record how busy it was
    cluster = None
    state = None
    if args.kubeconfig:
        kubeconfig = Path(args.kubeconfig)
    else:
        from sft_dev.cluster import DevCluster, Ports

        state = Path(tempfile.mkdtemp(prefix="sft-bench-"))
        cluster = DevCluster(state)
        t = time.monotonic()
        try:
            info = start_cluster(cluster, args.nodes)
        except BaseException:  # a failed or interrupted start leaves no servers behind
            cluster.down(purge=True)
            raise
        print(f"dev cluster with {args.nodes} nodes up in {time.monotonic() - t:.1f}s", file=sys.stderr)
        kubeconfig = Path(info.kubeconfig)
    op = None
    try:
        from sft_dev.tools import kubectl, wait_crd_established

        kc = [str(kubectl()), "--kubeconfig", str(kubeconfig)]
        subprocess.run([*kc, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / "sftjob.yaml")], check=True, capture_output=True)
        if not wait_crd_established(kubeconfig, "sftjobs.sft.dev"):
            raise RuntimeError("the SFTJob CRD is not Established after 60 s")
        api = config.new_client_from_config(str(kubeconfig))
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        ns = f"bench-{int(time.time())}"
        core.create_namespace({"metadata": {"name": ns}})
        gpu_nodes = [n for n in core.list_node().items if (n.status.allocatable or {}).get("nvidia.com/gpu")]
        capacity = sum(int(n.status.allocatable["nvidia.com/gpu"]) for n in gpu_nodes)
        need = (args.jobs + args.baseline_jobs) * args.job_nodes * args.job_gpus
        if need > capacity:
            print(f"{need} GPUs requested but the cluster has {capacity}", file=sys.stderr)
            return 2

        env = dict(os.environ, KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1",
                   SFT_OPERATOR_METRICS_PORT=str(free_port()), SFT_OPERATOR_HEALTH_PORT=str(free_port()))
        # The operator's own defaults unless given: a before/after compares the operators as shipped.
        if args.workers is not None:
            env["SFT_WORKERS"] = str(args.workers)
        if args.resync is not None:
            env["SFT_RESYNC_SECONDS"] = str(args.resync)
        log = open(Path(tempfile.gettempdir()) / f"sft-bench-operator-{ns}.log", "w")
        if args.operator_src:
            src = Path(args.operator_src).resolve()
            env["PYTHONPATH"] = os.pathsep.join([str(src / "operator"), str(src / "api"), env.get("PYTHONPATH", "")])
        argv = [sys.executable, "-m", "sft_operator.run_operator"]
        if args.profile:
            env["SFT_BENCH_PROFILE"] = str(Path(args.profile).resolve())
            argv = [sys.executable, str(REPO / "bench" / "profiled_operator.py")]
        op = subprocess.Popen([*argv, "--standalone", "--log-format", "json"],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        sampler = Sampler(op.pid)
        sampler.start()
        health = f"http://127.0.0.1:{env['SFT_OPERATOR_HEALTH_PORT']}/healthz"
        deadline = time.monotonic() + 60
        while True:  # measure the operator at work, not its start-up
            try:
                with urllib.request.urlopen(health, timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or op.poll() is not None:
                    print("the operator did not become healthy", file=sys.stderr)
                    return 2
                time.sleep(0.2)
        time.sleep(1)
        jobs_rec, pods_rec = Recorder(api, ns, "jobs"), Recorder(api, ns, "pods")
        pods_rec.expected_pods = args.job_nodes
        jobs_rec.start()
        pods_rec.start()

        # Baseline in the same run: one SFTJob alone on the same cluster and operator.
        base = "baseline"
        t0 = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest(base, args.job_nodes, args.job_gpus))
        deadline = time.monotonic() + 120
        while (base, "1") not in pods_rec.all_running_at and time.monotonic() < deadline:
            time.sleep(0.05)
        baseline = {"apply_to_job_created_seconds": round(jobs_rec.first_seen.get((base, "1"), float("nan")) - t0, 3),
                    "apply_to_all_pods_running_seconds": round(pods_rec.all_running_at.get((base, "1"), float("nan")) - t0, 3)}
        pods = core.list_namespaced_pod(ns, label_selector=f"sft.dev/job-name={base},sft.dev/attempt=1").items
        t1 = time.monotonic()
        core.patch_namespaced_pod(pods[0].metadata.name, ns, {"metadata": {"annotations": {ks.OUTCOME_ANNOTATION: "fail", ks.EXIT_CODE_ANNOTATION: "1"}}})
        while (base, "2") not in jobs_rec.first_seen and time.monotonic() < deadline:
            time.sleep(0.05)
        baseline["failure_to_next_attempt_seconds"] = round(jobs_rec.first_seen.get((base, "2"), float("nan")) - t1, 3)
        custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, base)
        print(f"baseline (one job alone): {baseline}", file=sys.stderr)
        time.sleep(3)

        plain = run_plain_jobs(api, args, core) if args.baseline_jobs else None
        if plain:
            print(f"job controller baseline: {json.dumps(plain)}", file=sys.stderr)
            time.sleep(3)

        scrapes = Scrapes(api, env["SFT_OPERATOR_METRICS_PORT"])
        before = scrapes.take()
        sampler.sample()
        cpu_before = sampler.cpu_seconds
        applied: dict[str, float] = {}
        t_apply0 = time.monotonic()
        for i in range(args.jobs):
            name = f"job-{i:04d}"
            applied[name] = time.monotonic()
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest(name, args.job_nodes, args.job_gpus))
            if args.apply_rate:
                time.sleep(1 / args.apply_rate)
        apply_seconds = time.monotonic() - t_apply0

        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and len([n for n in applied if (n, "1") in pods_rec.all_running_at]) < args.jobs:
            time.sleep(0.5)
        all_running = [pods_rec.all_running_at[(n, "1")] - t for n, t in applied.items() if (n, "1") in pods_rec.all_running_at]
        job_created = [jobs_rec.first_seen[(n, "1")] - t for n, t in applied.items() if (n, "1") in jobs_rec.first_seen]

        # Failures: one pod of each of the first --fail jobs.
        failed_at: dict[str, float] = {}
        for name in list(applied)[: args.fail]:
            pods = core.list_namespaced_pod(ns, label_selector=f"sft.dev/job-name={name},sft.dev/attempt=1").items
            if not pods:
                continue
            core.patch_namespaced_pod(pods[0].metadata.name, ns, {"metadata": {"annotations": {ks.OUTCOME_ANNOTATION: "fail", ks.EXIT_CODE_ANNOTATION: "1"}}})
            failed_at[name] = time.monotonic()
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and len([n for n in failed_at if (n, "2") in jobs_rec.first_seen]) < len(failed_at):
            time.sleep(0.5)
        restart = [jobs_rec.first_seen[(n, "2")] - t for n, t in failed_at.items() if (n, "2") in jobs_rec.first_seen]
        # Where a restart's time goes: kwok marking the pod Failed, then the operator's restart pass, the
        # other pods of the attempt going (the deletes, kwok removing them) and the next Job's create.
        restart_parts = {"annotated_to_pod_failed_seconds": [], "pod_failed_to_next_job_seconds": []}
        for n, t in failed_at.items():
            f, j = pods_rec.failed_seen.get((n, "1")), jobs_rec.first_seen.get((n, "2"))
            if f is None or j is None:
                continue
            restart_parts["annotated_to_pod_failed_seconds"].append(f - t)
            restart_parts["pod_failed_to_next_job_seconds"].append(j - f)
        time.sleep(2)
        sampler.sample()
        work = Scrapes.per_job(scrapes.take(), before, args.jobs)
        work["operator_cpu_seconds_per_job"] = round((sampler.cpu_seconds - cpu_before) / args.jobs, 4)

        result = {
            "benchmark": "operator_scale",
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                        "load_avg_1m_start": load_start, "load_avg_1m_end": round(os.getloadavg()[0], 2)},
            "params": {"jobs": args.jobs, "nodes": args.nodes, "job_nodes": args.job_nodes, "job_gpus": args.job_gpus,
                       "fail": args.fail, "pods": args.jobs * args.job_nodes,
                       # None: the operator's default (its settings.py at --operator-src)
                       "resync_seconds": args.resync, "workers": args.workers,
                       "baseline_jobs": args.baseline_jobs},
            "baseline_single_job": baseline,
            "apply_seconds_total": round(apply_seconds, 2),
            "harness_apply_rate_jobs_per_second": round(args.jobs / apply_seconds, 1),
            "etcd": etcd_fsync(state),
            "work_per_job": work,
            "profile": args.profile,
            "operator_src": args.operator_src,
            "job_controller_baseline": plain,
            "apply_to_job_created_seconds": summary(job_created),
            "apply_to_all_pods_running_seconds": summary(all_running),
            "failure_to_next_attempt_seconds": summary(restart),
            "failure_to_next_attempt_parts": {k: summary(v) for k, v in restart_parts.items()},
            "operator": {"peak_rss_mib": round(sampler.peak_rss / 2**20, 1), "cpu_seconds": round(sampler.cpu_seconds, 1)},
            "complete": len(job_created) == args.jobs and len(all_running) == args.jobs and len(restart) == len(failed_at)
                        and (plain is None or plain["complete"]),
        }
        sampler.stop_flag.set()
        jobs_rec.stop_flag.set()
        pods_rec.stop_flag.set()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        print(f"\n| metric | n | p50 (s) | p99 (s) |\n|---|---|---|---|")
        for key in ("apply_to_job_created_seconds", "apply_to_all_pods_running_seconds", "failure_to_next_attempt_seconds"):
            r = result[key]
            print(f"| {key} | {r['n']} | {r['p50']} | {r['p99']} |")
        b = result["baseline_single_job"]
        print(f"| baseline, one job alone: job created / pods running / next attempt | 1 | "
              f"{b['apply_to_job_created_seconds']} / {b['apply_to_all_pods_running_seconds']} / {b['failure_to_next_attempt_seconds']} | |")
        if plain:
            for key in ("apply_to_pods_created_seconds", "apply_to_all_pods_running_seconds"):
                r = plain[key]
                print(f"| job_controller_baseline {key} | {r['n']} | {r['p50']} | {r['p99']} |")
        print(f"| operator peak RSS | | {result['operator']['peak_rss_mib']} MiB | |")
        print(f"| operator CPU | | {result['operator']['cpu_seconds']} s | |")
        for name in (ns, plain["namespace"] if plain else None):
            try:
                if name:
                    core.delete_namespace(name)
            except Exception:
                pass
        return 0 if result["complete"] else 1
    finally:
        if op is not None and op.poll() is None:
            os.killpg(op.pid, signal.SIGTERM)
            try:
                op.wait(90 if args.profile else 15)  # the profiled operator writes its stats at exit
            except subprocess.TimeoutExpired:
                os.killpg(op.pid, signal.SIGKILL)
        if cluster is not None:
            cluster.down(purge=True)


if __name__ == "__main__":
    sys.exit(main())
