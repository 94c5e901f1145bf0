"""``transformers.TrainerCallback``s: checkpoint commit, Prometheus metrics, progress, SIGTERM.

Every process runs the callbacks (the trainer calls them on all ranks), but only rank 0 does I/O,
except for checkpoint uploads: on several nodes, each node's local rank 0 uploads the files that
its node wrote (DeepSpeed ZeRO shards), and world rank 0 writes the commit marker once all of
them are done.

``build_callbacks()`` returns them wired together and in the order they must run.
"""

from __future__ import annotations

import collections
import datetime as _dt
import logging
import os
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from transformers import TrainerCallback

from . import phases
from .checkpoint_store import CheckpointError, CheckpointStore, transient_storage_errors
from .checkpoint_upload import SNAPSHOT_DIR, BackgroundJob, snapshot, upload_mode
from .metrics import OVERALL_TASK, TrainerMetrics, model_flops_per_token, mfu, peak_flops_for
from .progress import LogReporter, ProgressReporter, format_line

log = logging.getLogger(__name__)

_EVAL_TASK_RE = re.compile(r"^eval_(.+)_loss$")


# ---------------------------------------------------------------------------- helpers
def _dist():
    """torch.distributed if a process group is up with more than one process, else None."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is always there in the trainer
        return None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def _flag_tensor(dist: Any, value: int) -> Any:
    import torch

    device = "cpu"
    if dist.get_backend() == "nccl":  # NCCL collectives need CUDA tensors
        device = torch.device("cuda", torch.cuda.current_device())
    return torch.tensor([value], dtype=torch.int32, device=device)


def any_rank(flag: bool) -> bool:
    """True if ``flag`` is true on any rank (all ranks must call this at the same point)."""
    dist = _dist()
    if dist is None:
        return flag
    t = _flag_tensor(dist, 1 if flag else 0)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def eval_losses(logs: dict[str, Any]) -> dict[str, float]:
    """task_type -> eval loss from HF eval metrics (``eval_loss`` is the overall 'all')."""
    out: dict[str, float] = {}
    for k, v in logs.items():
        if not isinstance(v, (int, float)):
            continue
        if k == "eval_loss":
            out[OVERALL_TASK] = float(v)
        else:
            m = _EVAL_TASK_RE.match(k)
            if m:
                out[m.group(1)] = float(v)
    return out


def eta_seconds(step_durations: Iterable[float], step: int, total_steps: int) -> float | None:
    """Remaining time from the moving average of recent step durations; None before any step."""
    d = [x for x in step_durations if x > 0]
    if not d or total_steps <= 0:
        return None
    return max(0, total_steps - step) * (sum(d) / len(d))


class TokenRate:
    """Tokens/s between consecutive logs, from TRL's cumulative ``num_tokens`` (all ranks)."""

    def __init__(self) -> None:
        self.total: float | None = None
        self.rate: float | None = None
        self._last: tuple[float, float] | None = None  # (time, tokens)

    def start(self, tokens: float = 0.0) -> None:
        self._last = (time.monotonic(), tokens)

    def update(self, logs: dict[str, Any], state: Any) -> float | None:
        tokens = logs.get("num_tokens")
        if tokens is None:
            tokens = getattr(state, "num_input_tokens_seen", 0) or None
        if tokens is None:
            return self.rate
        now = time.monotonic()
        if self._last is not None and now > self._last[0] and tokens >= self._last[1]:
            if tokens > self._last[1]:
                self.rate = (tokens - self._last[1]) / (now - self._last[0])
        self._last = (now, float(tokens))
        self.total = float(tokens)
        return self.rate


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------- SIGTERM
class SigtermCallback(TrainerCallback):
    """On SIGTERM: finish the current step, save, commit and stop.

    The handler only sets a flag; at the next step end, the ranks agree (all-reduce) so that all
    of them stop at the same step, and the trainer saves a checkpoint (which
    ``CheckpointCommitCallback`` commits) and leaves its loop. ``received`` tells the entrypoint
    to exit with the retryable code.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM,), install: bool = True):
        self.signals = tuple(signals)
        self.received = False
        self.stopped_at_step: int | None = None
        self._previous: dict[int, Any] = {}
        if install:
            self.install()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("SIGTERM handler not installed: not on the main thread")
            return
        for s in self.signals:
            if s not in self._previous:
                self._previous[s] = signal.signal(s, self._handle)

    def uninstall(self) -> None:
        for s, prev in self._previous.items():
            signal.signal(s, prev)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        if not self.received:
            log.warning("received signal %d: saving a checkpoint at the end of this step", signum)
        self.received = True

    def on_step_end(self, args, state, control, **kwargs):
        if any_rank(self.received):
            self.received = True
            self.stopped_at_step = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control


# ---------------------------------------------------------------------------- max steps
class AlreadyAtMaxSteps(Exception):
    """Raised before a step past maxSteps: the run resumed a checkpoint taken at its last step."""


class MaxStepsGuard(TrainerCallback):
    """Nothing trains past maxSteps.

    transformers resumes a checkpoint taken at ``max_steps`` in the middle of an epoch by running
    one more step before its own stop check (measured: a finished 8-step run re-run unchanged
    trained "step 9/8"). The guard raises before that step; ``train.run_training`` catches it and
    goes on to the final evaluation with the state the checkpoint restored.
    """

    def on_step_begin(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            raise AlreadyAtMaxSteps(f"step {state.global_step} is already maxSteps {state.max_steps}")
        return control


# ---------------------------------------------------------------------------- checkpoints
class CommitFailed(CheckpointError):
    """A checkpoint could not be committed on some rank; every rank raises it (exit 1, retryable)."""


def _job_result(job: BackgroundJob | None, empty: Any) -> tuple[Any, str | None]:
    """The (value, error) that a commit or upload job's ``_attempt`` returned; ``(empty, None)`` without a job."""
    if job is None:
        return empty, None
    out, error = job.wait()
    if out is None:  # the job itself raised (a bug, not an upload error): report it like one
        return empty, error
    value, error = out
    return (empty if value is None else value), error


@dataclass
class _PendingCommit:
    """A checkpoint whose upload is in flight: committed by ``CheckpointCommitCallback._finish``."""

    step: int
    t0: float  # when the step end decided to save
    metrics: dict[str, Any]  # the manifest's metrics, taken at the save
    job: BackgroundJob | None  # None on a rank with nothing to upload (not a node's local rank 0)
    blocked: float  # training time spent on this checkpoint so far


class CheckpointCommitCallback(TrainerCallback):
    """Commit each checkpoint the trainer writes to the store, then apply retention.

    HF writes ``<output_dir>/checkpoint-<step>/`` (model or adapter, optimizer, scheduler,
    rng_state*, trainer_state.json with the data position) and then calls ``on_save``.
    """

    def __init__(
        self,
        store: CheckpointStore,
        keep: int,
        *,
        metrics: TrainerMetrics | None = None,
        reporter: ProgressReporter | None = None,
        best_metric: str = "eval_loss",
        greater_is_better: bool = False,
        attempts: int = 3,
        background: bool = False,
    ):
        self.store = store
        self.keep = keep
        self.metrics = metrics
        self.reporter = reporter
        self.best_metric = best_metric
        self.greater_is_better = greater_is_better
        self.attempts = max(1, attempts)
        # background: upload while training continues (checkpoint_upload.py); False: on_save
        # returns only once the checkpoint is committed (the benchmark's baseline, and the unit tests)
        self.background = background
        self.last_commit: dict[str, Any] | None = None
        self.blocked_seconds: list[float] = []  # per committed checkpoint: training time spent on it
        self._t0: float | None = None
        self._pending: _PendingCommit | None = None
        self._housekeeping: BackgroundJob | None = None  # rank 0's retention after a distributed commit
        # steps retention keeps whatever their rank: the best by golden pass rate (golden_checkpoints.py
        # sets it; read on the upload thread too, so it returns a fresh collection each call)
        self.protected_steps: Callable[[], Iterable[int]] = lambda: ()

    # Save time = from the step end that decided to save (after any evaluation) to the commit.
    def on_step_end(self, args, state, control, **kwargs):
        if self._pending is not None:
            self._finish(state, wait=False)  # commits the upload in flight once every rank's part is done
        self._t0 = time.monotonic() if control.should_save else None

    def on_train_end(self, args, state, control, **kwargs):
        # also the SIGTERM path: the trainer stops after the save, and the process exits only once
        # that checkpoint is committed
        self._finish(state, wait=True)
        self._wait_housekeeping()

    def on_evaluate(self, args, state, control, **kwargs):
        if self._t0 is not None:
            self._t0 = time.monotonic()

    @staticmethod
    def checkpoint_metrics(log_history: list[dict[str, Any]], step: int) -> dict[str, Any]:
        """Metrics recorded in the manifest: evaluation at exactly this step, latest train loss.

        ``eval_loss`` (what retention ranks by) falls back to ``eval_all_loss`` or the mean of the
        per-task losses when the trainer evaluated a dict of per-task splits.
        """
        out: dict[str, Any] = {}
        for entry in log_history:
            if entry.get("step") != step:
                continue
            for k, v in entry.items():
                if k.startswith("eval_") and isinstance(v, (int, float)):
                    out[k] = v
        if "eval_loss" not in out:
            # per-task evaluation only (eval_dataset as a dict): the overall split if it is one of
            # them, else the unweighted mean of the task losses, so that "best" stays defined
            tasks = eval_losses(out)
            if tasks:
                out["eval_loss"] = tasks.get(OVERALL_TASK, sum(tasks.values()) / len(tasks))
        for entry in reversed(log_history):
            if "loss" in entry and entry.get("step", 0) <= step:
                out["train_loss"] = entry["loss"]
                break
        return out

    def _with_retries(self, what: str, fn, *a):
        for i in range(self.attempts):
            try:
                return fn(*a)
            except transient_storage_errors() as e:
                if i + 1 == self.attempts:
                    raise
                log.warning("%s failed (%s); retrying", what, e)
                time.sleep(2.0 * (i + 1))

    def on_save(self, args, state, control, **kwargs):
        if self.background:
            return self._save_in_background(args, state)
        step = state.global_step
        local_dir = Path(args.output_dir) / f"checkpoint-{step}"
        entered = time.monotonic()
        t0 = self._t0 if self._t0 is not None else entered
        dist = _dist()
        phases.enter("checkpointing")
        if dist is None:
            if not state.is_world_process_zero:
                return
            uri = self._with_retries(
                f"commit of step {step}", self.store.commit, local_dir, step,
                self.checkpoint_metrics(state.log_history, step),
            )
        else:
            uri = self._commit_distributed(dist, state, local_dir, step)
        if state.is_world_process_zero:
            self._report_commit(step, uri, time.monotonic() - t0, time.monotonic() - entered)
            self._retention()
        self._t0 = None
        phases.enter("training")

    def _attempt(self, what: str, fn, *a) -> tuple[Any, str | None]:
        """(result, None), or (None, the error) once the retries are spent: never raises."""
        try:
            return self._with_retries(what, fn, *a), None
        except Exception as e:  # noqa: BLE001 - reported to every rank, then raised there
            log.error("%s failed after %d attempts: %s: %s", what, self.attempts, type(e).__name__, e)
            return None, f"{type(e).__name__}: {e}"

    @staticmethod
    def _agree(dist, step: int, stage: str, value: Any, error: str | None) -> list[Any]:
        """Every rank shares (value, its error or None); all of them raise if any rank failed,
        else every rank gets the list of values by rank."""
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (value, error))
        failed = [(r, e) for r, (_, e) in enumerate(gathered) if e]
        if failed:
            detail = "; ".join(f"rank {r}: {e}" for r, e in failed)
            raise CommitFailed(f"commit of checkpoint {step} failed at {stage} ({detail}); "
                               f"the previous committed checkpoint stays the latest")
        return [v for v, _ in gathered]

    def _commit_distributed(self, dist, state, local_dir: Path, step: int) -> str | None:
        """Every rank reaches every collective whatever failed: a failed step (after its retries)
        on any rank fails the commit on all of them with that rank's error, instead of one rank
        raising before a gather that the others then wait in until its process is gone (or, under
        NCCL, until the process-group timeout). No marker is written unless every part was uploaded."""
        dist.barrier()  # every rank has finished writing its part of the checkpoint
        error = None
        if state.is_world_process_zero:
            _, error = self._attempt(f"preparing checkpoint {step}", self.store.begin, step)
        self._agree(dist, step, "begin", None, error)
        entries, error = [], None
        if state.is_local_process_zero and local_dir.is_dir():
            entries, error = self._attempt(f"upload of step {step}", self.store.upload, local_dir, step)
        parts = self._agree(dist, step, "upload", entries or [], error)
        uri, error = None, None
        if state.is_world_process_zero:
            merged = [e for part in parts for e in part]
            uri, error = self._attempt(f"commit marker of step {step}", self.store.write_marker, step, merged,
                                       self.checkpoint_metrics(state.log_history, step))
        self._agree(dist, step, "marker", None, error)
        return uri

    def _report_commit(self, step: int, uri: str | None, seconds: float, blocked: float) -> None:
        saved_at = _utcnow()
        self.last_commit = {"step": step, "uri": uri, "savedAt": saved_at, "seconds": seconds,
                            "blockedSeconds": blocked}
        self.blocked_seconds.append(blocked)
        log.info("committed checkpoint %d to %s in %.1fs (training blocked %.3fs)", step, uri, seconds, blocked)
        if self.metrics is not None:
            self.metrics.observe_checkpoint(step, seconds)
        if self.reporter is not None:
            self.reporter.report({"checkpoint": {"step": step, "uri": uri, "savedAt": saved_at}})

    def _retention(self) -> None:
        try:
            self.store.apply_retention(self.keep, self.best_metric, self.greater_is_better,
                                       keep_steps=tuple(self.protected_steps()))
        except OSError as e:  # retention is housekeeping: never lose the run over it
            log.warning("checkpoint retention failed: %s", e)

    # -------------------------------------------------------------- in the background
    def _save_in_background(self, args, state):
        """Wait for the previous commit, snapshot this checkpoint, start its upload, return to training."""
        step, entered = state.global_step, time.monotonic()
        t0 = self._t0 if self._t0 is not None else entered
        self._t0 = None
        dist = _dist()
        if dist is None and not state.is_world_process_zero:
            return
        phases.enter("checkpointing")
        self._finish(state, wait=True)  # at most one upload in flight
        resumed = time.monotonic()  # what follows is this checkpoint's blocked time
        self._wait_housekeeping()  # retention never runs beside an upload
        local_dir = Path(args.output_dir) / f"checkpoint-{step}"
        snap_dir = Path(args.output_dir) / SNAPSHOT_DIR / f"checkpoint-{step}"
        metrics = self.checkpoint_metrics(state.log_history, step)  # as of this step, not the commit's
        if dist is None:
            job = BackgroundJob(f"commit of checkpoint {step}", self._commit_job, snapshot(local_dir, snap_dir),
                                step, metrics)
        else:
            job = self._start_distributed(dist, state, local_dir, snap_dir, step)
        self._pending = _PendingCommit(step, t0, metrics, job, time.monotonic() - resumed)
        phases.enter("training")

    def _commit_job(self, snap_dir: Path, step: int, metrics: dict[str, Any]) -> tuple[str | None, str | None]:
        """On the upload thread (one process): the whole commit, then retention: (uri, error)."""
        try:
            uri, error = self._attempt(f"commit of step {step}", self.store.commit, snap_dir, step, metrics)
            if error is None:
                self._retention()
            return uri, error
        finally:
            shutil.rmtree(snap_dir, ignore_errors=True)

    def _upload_job(self, snap_dir: Path, step: int) -> tuple[Any, str | None]:
        """On the upload thread (several processes): this node's files only: (entries, error)."""
        try:
            return self._attempt(f"upload of step {step}", self.store.upload, snap_dir, step)
        finally:
            shutil.rmtree(snap_dir, ignore_errors=True)

    def _start_distributed(self, dist, state, local_dir: Path, snap_dir: Path, step: int) -> BackgroundJob | None:
        """Rank 0 prepares the step's directory (a few small requests) before any node uploads into it;
        then each node's local rank 0 starts uploading its part."""
        dist.barrier()  # every rank has finished writing its part of the checkpoint
        error = None
        if state.is_world_process_zero:
            _, error = self._attempt(f"preparing checkpoint {step}", self.store.begin, step)
        self._agree(dist, step, "begin", None, error)
        if state.is_local_process_zero and local_dir.is_dir():
            return BackgroundJob(f"upload of checkpoint {step}", self._upload_job, snapshot(local_dir, snap_dir), step)
        return None

    def _finish(self, state, *, wait: bool) -> None:
        """Commit the checkpoint in flight if its upload is done on every rank (or, with ``wait``, once it is).

        Every rank calls this at the same points (each step end while a commit is pending, each save,
        the train end), so the collectives below match on all of them; the upload thread itself never
        runs a collective."""
        p = self._pending
        if p is None:
            return
        entered = time.monotonic()
        dist = _dist()
        done = wait or (p.job is None or p.job.done())
        if not wait and dist is not None:
            done = not any_rank(not done)  # all ranks' parts are uploaded
        if not done:
            p.blocked += time.monotonic() - entered
            return
        self._pending = None
        if dist is None:
            uri, error = _job_result(p.job, None)
            if error:
                raise CommitFailed(f"commit of checkpoint {p.step} failed ({error}); "
                                   f"the previous committed checkpoint stays the latest")
        else:
            uri = self._finish_distributed(dist, state, p)
        p.blocked += time.monotonic() - entered
        if state.is_world_process_zero:
            self._report_commit(p.step, uri, time.monotonic() - p.t0, p.blocked)
            if dist is not None:
                self._housekeeping = BackgroundJob("checkpoint retention", self._retention)

    def _finish_distributed(self, dist, state, p: "_PendingCommit") -> str | None:
        """Gather every node's file list (or error), then rank 0 writes the marker: as ``_commit_distributed``."""
        entries, error = _job_result(p.job, [])
        parts = self._agree(dist, p.step, "upload", entries or [], error)
        uri, error = None, None
        if state.is_world_process_zero:
            merged = [e for part in parts for e in part]
            uri, error = self._attempt(f"commit marker of step {p.step}", self.store.write_marker, p.step, merged,
                                       p.metrics)
        self._agree(dist, p.step, "marker", None, error)
        return uri

    def _wait_housekeeping(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.wait()
            self._housekeeping = None


# ---------------------------------------------------------------------------- metrics
class PrometheusMetricsCallback(TrainerCallback):
    """Serves ``/metrics`` from rank 0 and keeps the docs/monitoring.md gauges current.

    ``port``: ``None`` reads ``SFT_METRICS_PORT`` (default 9400); 0 picks a free port (tests).
    """

    def __init__(
        self,
        namespace: str | None = None,
        job: str | None = None,
        port: int | None = None,
        *,
        metrics: TrainerMetrics | None = None,
        seq_len: int | None = None,
        serve: bool = True,
    ):
        self.metrics = metrics or TrainerMetrics(
            namespace or os.environ.get("SFT_JOB_NAMESPACE", "local"),
            job or os.environ.get("SFT_JOB_NAME", "local"),
        )
        self.port = port
        self.serve = serve
        self.seq_len = seq_len
        self.tokens = TokenRate()
        self.flops_per_token = 0.0
        self.peak_flops: float | None = None
        self.last_mfu = 0.0
        self.n_devices = 1

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.serve:
            try:
                self.port = self.metrics.serve(self.port)
            except OSError as e:  # e.g. a second local run on the same port: train without /metrics
                log.warning("cannot serve Prometheus metrics on port %s (%s); continuing without",
                            self.port if self.port is not None else "SFT_METRICS_PORT", e)
        self.metrics.set("sftjob_total_steps", state.max_steps)
        self.metrics.set("sftjob_step", state.global_step)
        if state.global_step > 0:
            # resumed: from a committed checkpoint at exactly this step; without this the gauge
            # would read 0 until the next commit and the checkpoint-age alert would fire
            self.metrics.set("sftjob_checkpoint_last_step", state.global_step)
        self.tokens.start(0.0)
        self.n_devices = max(1, int(getattr(args, "world_size", 1) or 1))
        seq_len = self.seq_len or getattr(args, "max_length", None) or 0
        if model is not None:
            self.flops_per_token = model_flops_per_token(model, int(seq_len))
        self.peak_flops = peak_flops_for(_cuda_device_name())

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.metrics.set("sftjob_step", state.global_step)
        self.metrics.set("sftjob_total_steps", state.max_steps)
        mem = _cuda_max_memory()
        if mem is not None:
            self.metrics.set("sftjob_gpu_memory_used_bytes", mem)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            self.metrics.set("sftjob_train_loss", logs["loss"])
        if "learning_rate" in logs:
            self.metrics.set("sftjob_learning_rate", logs["learning_rate"])
        if logs.get("grad_norm") is not None:
            self.metrics.set("sftjob_grad_norm", logs["grad_norm"])
        for task, v in eval_losses(logs).items():
            self.metrics.set_eval_loss(v, task)
        if "loss" in logs:  # train logs carry the token count; eval logs count eval tokens
            rate = self.tokens.update(logs, state)
            if self.tokens.total is not None:
                self.metrics.set("sftjob_tokens_total", self.tokens.total)
            if rate is not None:
                self.metrics.set("sftjob_tokens_per_second", rate)
                self.last_mfu = mfu(rate, self.flops_per_token, self.peak_flops, self.n_devices)
                self.metrics.set("sftjob_mfu_ratio", self.last_mfu)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero and metrics:
            for task, v in eval_losses(metrics).items():
                self.metrics.set_eval_loss(v, task)


def _cuda_device_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.cuda.current_device())
    except Exception:  # noqa: BLE001
        pass
    return None


def _cuda_max_memory() -> int | None:
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
    except Exception:  # noqa: BLE001
        pass
    return None


# ---------------------------------------------------------------------------- progress
class ProgressCallback(TrainerCallback):
    """Reports ``status.progress``/``metrics``/``worldSize`` to the operator and the console.

    Reports are rate-limited to one every ``min_interval_s`` seconds, plus one at each checkpoint
    and at the end; the console gets one summary line per logging step.
    """

    def __init__(
        self,
        reporter: ProgressReporter | None = None,
        *,
        min_interval_s: float = 10.0,
        window: int = 20,
        console: bool = True,
        mfu_source: Any = None,
    ):
        self.reporter = reporter if reporter is not None else LogReporter()
        self.mfu_source = mfu_source  # e.g. the PrometheusMetricsCallback: its last_mfu
        self.min_interval_s = min_interval_s
        self.console = console
        self.step_durations: collections.deque[float] = collections.deque(maxlen=window)
        self.tokens = TokenRate()
        self.latest: dict[str, float] = {}
        self._last_step_t: float | None = None
        self._last_report_t = float("-inf")
        self.world_size = 1

    def snapshot(self, state: Any) -> dict[str, Any]:
        total = int(state.max_steps or 0)
        step = int(state.global_step)
        progress: dict[str, Any] = {"step": step, "totalSteps": total}
        if state.epoch is not None:
            progress["epoch"] = round(float(state.epoch), 4)
        if total:
            progress["percent"] = round(100.0 * step / total, 2)
        eta = eta_seconds(self.step_durations, step, total)
        if eta is not None:
            progress["etaSeconds"] = int(round(eta))
        progress["updatedAt"] = _utcnow()
        patch: dict[str, Any] = {"progress": progress}
        if self.latest:
            patch["metrics"] = dict(self.latest)
        return patch

    def _report(self, state: Any, **extra: Any) -> None:
        patch = self.snapshot(state)
        patch.update(extra)
        self.reporter.report(patch)
        self._last_report_t = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_step_t = time.monotonic()
        self.tokens.start(0.0)
        self.world_size = int(getattr(args, "world_size", 1) or 1)
        if state.is_world_process_zero:
            self._report(state, worldSize=self.world_size)

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        if self._last_step_t is not None:
            self.step_durations.append(now - self._last_step_t)
        self._last_step_t = now
        if state.is_world_process_zero and now - self._last_report_t >= self.min_interval_s:
            self._report(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            self.latest["trainLoss"] = float(logs["loss"])
            rate = self.tokens.update(logs, state)
            if rate is not None:
                self.latest["tokensPerSecond"] = round(rate, 1)
        if "learning_rate" in logs:
            self.latest["learningRate"] = float(logs["learning_rate"])
        if logs.get("grad_norm") is not None:
            self.latest["gradNorm"] = float(logs["grad_norm"])
        if self.mfu_source is not None and getattr(self.mfu_source, "last_mfu", 0) > 0:
            self.latest["mfu"] = round(float(self.mfu_source.last_mfu), 4)
        if "eval_loss" in logs:
            self.latest["evalLoss"] = float(logs["eval_loss"])
        if self.console and ("loss" in logs or "eval_loss" in logs):
            log.info("%s", format_line(self.snapshot(state)))

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._report(state)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._report(state)
            flush = getattr(self.reporter, "flush", None)
            if flush is not None:
                flush(10.0)


# ---------------------------------------------------------------------------- wiring
def build_callbacks(
    *,
    store: CheckpointStore | None,
    keep: int = 3,
    reporter: ProgressReporter | None = None,
    namespace: str | None = None,
    job: str | None = None,
    metrics_port: int | None = None,
    serve_metrics: bool = True,
    seq_len: int | None = None,
    progress_interval_s: float = 10.0,
    handle_sigterm: bool = True,
) -> list[TrainerCallback]:
    """The trainer's callbacks, wired together, in the order they must run.

    SigtermCallback comes first so that its ``should_save`` is seen by the commit callback's
    timer; the commit callback comes before ProgressCallback so that the checkpoint is reported
    before the progress that follows it.
    """
    reporter = reporter if reporter is not None else LogReporter()
    cbs: list[TrainerCallback] = [MaxStepsGuard()]
    if handle_sigterm:
        cbs.append(SigtermCallback())
    prom = PrometheusMetricsCallback(
        namespace, job, metrics_port, seq_len=seq_len, serve=serve_metrics
    )
    cbs.append(prom)
    if store is not None:
        cbs.append(CheckpointCommitCallback(store, keep, metrics=prom.metrics, reporter=reporter,
                                            background=upload_mode() == "background"))
    # after the metrics callback in the list: its MFU for this log is computed first
    cbs.append(ProgressCallback(reporter, min_interval_s=progress_interval_s, mfu_source=prom))
    return cbs
