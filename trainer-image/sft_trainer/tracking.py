"""Experiment tracking (``spec.tracking``): MLflow and TensorBoard, from rank 0.

- **MLflow** through its REST API (``/api/2.0/mlflow/...``) with the standard library: no MLflow
  client and its dependencies in the image. Credentials come from the environment that the
  operator fills from ``tracking.mlflow.secretRef`` (``MLFLOW_TRACKING_TOKEN`` → a bearer token,
  ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` → basic auth). A restarted attempt of the
  same job continues the same MLflow run (found by its ``sft.dev/run-key`` tag).
- **TensorBoard** event files (``tfevents``: TFRecord framing with masked CRC-32C around ``Event``
  protobufs, encoded here) written under ``<checkpoints.uri>/tensorboard/``, one file per attempt.

A tracker that is down never fails or slows training: every call goes through a background thread
that keeps what it could not send, retries with backoff, and reports ``status.tracking.healthy``
false with the last error while it fails (true again once it catches up).
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .config import ResolvedConfig
from .data import storage_options_for

log = logging.getLogger("sft_trainer")

RUN_KEY_TAG = "sft.dev/run-key"
MAX_PENDING_METRICS = 100_000  # beyond this the oldest metrics are dropped (and counted)
FLUSH_SECONDS = 30.0  # at the end of the run: how long to wait for the tracker before giving up


# ------------------------------------------------------------------------------ MLflow
class MlflowError(Exception):
    """The tracking server answered with an error, or could not be reached."""


class MlflowRest:
    """The few MLflow REST calls the trainer needs."""

    def __init__(self, tracking_uri: str, env: Mapping[str, str] | None = None, timeout: float = 10.0):
        env = os.environ if env is None else env
        self.base = tracking_uri.rstrip("/")
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json"}
        if env.get("MLFLOW_TRACKING_TOKEN"):
            self.headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
        elif env.get("MLFLOW_TRACKING_USERNAME"):
            pair = f"{env['MLFLOW_TRACKING_USERNAME']}:{env.get('MLFLOW_TRACKING_PASSWORD', '')}"
            self.headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             query: dict[str, str] | None = None) -> dict[str, Any]:
        url = f"{self.base}/api/2.0/mlflow/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            detail = e.read()[:500].decode(errors="replace")
            err = MlflowError(f"{method} {path}: HTTP {e.code}: {detail}")
            err.code = e.code  # type: ignore[attr-defined]
            err.not_found = "RESOURCE_DOES_NOT_EXIST" in detail  # type: ignore[attr-defined]
            raise err from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise MlflowError(f"{method} {path}: {getattr(e, 'reason', e)}") from None

    def experiment_id(self, name: str) -> str:
        try:
            return self.call("GET", "experiments/get-by-name", query={"experiment_name": name})["experiment"]["experiment_id"]
        except MlflowError as e:
            if not getattr(e, "not_found", False):
                raise
        return self.call("POST", "experiments/create", {"name": name})["experiment_id"]

    def find_run(self, experiment_id: str, run_key: str) -> str | None:
        found = self.call("POST", "runs/search", {
            "experiment_ids": [experiment_id], "max_results": 1,
            "filter": f"tags.`{RUN_KEY_TAG}` = '{run_key}'", "order_by": ["attributes.start_time DESC"]})
        runs = found.get("runs") or []
        return runs[0]["info"]["run_id"] if runs else None

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> str:
        body = {"experiment_id": experiment_id, "run_name": name, "start_time": _now_ms(),
                "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        return self.call("POST", "runs/create", body)["run"]["info"]["run_id"]


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Pending:
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    status: str | None = None

    def empty(self) -> bool:
        return not (self.params or self.metrics or self.tags or self.status)


class MlflowTracker:
    """Rank 0's MLflow run, fed from a background thread that retries what the server did not take."""

    def __init__(self, client: MlflowRest, experiment: str, run_name: str, run_key: str, tags: dict[str, str],
                 on_health: Any = None, retry_seconds: float = 2.0, max_retry_seconds: float = 60.0):
        self.client, self.experiment, self.run_name, self.run_key = client, experiment, run_name, run_key
        self.tags = {**tags, RUN_KEY_TAG: run_key}
        self.on_health = on_health or (lambda healthy, message: None)
        self.retry_seconds, self.max_retry_seconds = retry_seconds, max_retry_seconds
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.healthy: bool | None = None
        self.last_error: str | None = None
        self.dropped = 0
        self.sent_batches = 0
        self._pending = _Pending()
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="sft-mlflow", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ what training calls
    def log_params(self, params: Mapping[str, Any]) -> None:
        with self._cond:
            self._pending.params.update({k: _param_value(v) for k, v in params.items()})
            self._cond.notify()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        ts = _now_ms()
        with self._cond:
            self._pending.metrics.extend({"key": k, "value": float(v), "timestamp": ts, "step": int(step)}
                                         for k, v in metrics.items())
            over = len(self._pending.metrics) - MAX_PENDING_METRICS
            if over > 0:
                del self._pending.metrics[:over]
                self.dropped += over
            self._cond.notify()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        with self._cond:
            self._pending.tags.update({k: str(v) for k, v in tags.items()})
            self._cond.notify()

    def set_status(self, status: str) -> None:
        with self._cond:
            self._pending.status = status
            self._cond.notify()

    @property
    def run_url(self) -> str | None:
        if self.run_id is None:
            return None
        return f"{self.client.base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def pending_count(self) -> int:
        with self._cond:
            p = self._pending
            return len(p.metrics) + len(p.params) + len(p.tags) + (p.status is not None)

    def flush(self, timeout: float) -> bool:
        """Wait until everything logged so far reached the server; False if not within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self.run_id is None or not self._pending.empty() or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def close(self, timeout: float = FLUSH_SECONDS) -> bool:
        ok = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=2.0)
        if not ok:
            log.warning("tracking: MLflow did not take the last %d logs within %.0fs (%s); they are lost",
                        self.pending_count(), timeout, self.last_error)
        return ok

    # ------------------------------------------------------------------ the background thread
    def _ensure_run(self) -> None:
        if self.run_id is not None:
            return
        self.experiment_id = self.client.experiment_id(self.experiment)
        run_id = self.client.find_run(self.experiment_id, self.run_key)
        if run_id is not None:  # a restarted attempt continues its run
            self.client.call("POST", "runs/update", {"run_id": run_id, "status": "RUNNING"})
            log.info("tracking: continuing MLflow run %s", run_id)
        else:
            run_id = self.client.create_run(self.experiment_id, self.run_name, self.tags)
        self.run_id = run_id

    def _send(self, batch: _Pending) -> None:
        self._ensure_run()
        metrics = batch.metrics
        params = list(batch.params.items())
        tags = list(batch.tags.items())
        # MLflow's limits per log-batch: 1000 metrics, 100 params, 100 tags
        while metrics or params or tags:
            body = {"run_id": self.run_id,
                    "metrics": metrics[:1000],
                    "params": [{"key": k, "value": v} for k, v in params[:100]],
                    "tags": [{"key": k, "value": v} for k, v in tags[:100]]}
            self.client.call("POST", "runs/log-batch", body)
            metrics, params, tags = metrics[1000:], params[100:], tags[100:]
            self.sent_batches += 1
        if batch.status:
            self.client.call("POST", "runs/update", {"run_id": self.run_id, "status": batch.status,
                                                     "end_time": _now_ms()})

    def _set_health(self, healthy: bool, message: str | None) -> None:
        changed = healthy != self.healthy
        self.healthy, self.last_error = healthy, (message if not healthy else None)
        if changed:
            if not healthy:
                log.warning("tracking: MLflow at %s failed (%s); training goes on, the logs are retried",
                            self.client.base, message)
            elif message is None:
                log.info("tracking: MLflow run %s", self.run_url)
            self.on_health(healthy, message)

    def _run(self) -> None:
        delay = self.retry_seconds
        while True:
            with self._cond:
                while self._pending.empty() and self.run_id is not None and not self._closed:
                    self._cond.wait()
                if self._closed and (self._pending.empty() or self.healthy is False):
                    return
                batch, self._pending = self._pending, _Pending()
                self._busy = True
            try:
                self._send(batch)
                ok, err = True, None
            except MlflowError as e:
                ok, err = False, str(e)
            except Exception as e:  # noqa: BLE001 - a tracker must never stop training
                ok, err = False, f"{type(e).__name__}: {e}"
            with self._cond:
                self._busy = False
                if not ok:  # keep the batch, in front of what came since
                    newer = self._pending
                    batch.params.update(newer.params)
                    batch.tags.update(newer.tags)
                    batch.metrics.extend(newer.metrics)
                    batch.status = newer.status or batch.status
                    self._pending = batch
                self._cond.notify_all()
            pending = self.pending_count()
            self._set_health(ok, None if ok else f"{err}; {pending} logs wait for a retry")
            if ok:
                delay = self.retry_seconds
                continue
            with self._cond:
                deadline = time.monotonic() + delay
                while not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                if self._closed:
                    return  # close() already waited for the flush
            delay = min(delay * 2, self.max_retry_seconds)


def _param_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        v = ",".join(str(x) for x in v)
    return str(v)[:6000]  # MLflow's limit for a param value


# ------------------------------------------------------------------------------ TensorBoard
def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, *, file_version: str | None = None,
                 scalars: Mapping[str, float] | None = None) -> bytes:
    """One ``tensorflow.Event`` protobuf: wall_time (1, double), step (2, int64), file_version (3) or
    summary (5) of ``Summary.Value`` {tag (1), simple_value (2, float)}."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        out += _len_field(3, file_version.encode())
    if scalars:
        values = b"".join(_len_field(1, _len_field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", v))
                          for tag, v in scalars.items())
        out += _len_field(5, values)
    return out


def tfrecord(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data))


class EventFileWriter:
    """One event file under ``<uri>`` (local or any fsspec store): appended locally, copied on flush."""

    def __init__(self, uri: str, local_dir: Path, storage: Any = None):
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.0"
        self.uri = uri.rstrip("/") + "/"
        self.remote = None if "://" not in uri or uri.startswith("file://") else self.uri + name
        base = Path(uri[len("file://"):] if uri.startswith("file://") else uri) if self.remote is None else local_dir
        base.mkdir(parents=True, exist_ok=True)
        self.path = base / name
        self.storage = storage
        self._lock = threading.Lock()
        self._dirty = False
        with open(self.path, "wb") as f:
            f.write(tfrecord(encode_event(time.time(), file_version="brain.Event:2")))

    def add_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        with self._lock, open(self.path, "ab") as f:
            f.write(tfrecord(encode_event(time.time(), step, scalars=scalars)))
            self._dirty = True

    def flush(self) -> None:
        """Copy the file to the store (object stores cannot append: the whole file, it is small)."""
        if self.remote is None or not self._dirty:
            return
        import fsspec

        with self._lock:
            try:
                fs, path = fsspec.core.url_to_fs(self.remote, **storage_options_for(self.remote, self.storage))
                fs.put_file(str(self.path), path)
                self._dirty = False
            except OSError as e:
                log.warning("tracking: cannot copy TensorBoard events to %s: %s (retried at the next flush)",
                            self.remote, e)


# ------------------------------------------------------------------------------ the run's tracker
def _scalars(logs: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in logs.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


class Tracker:
    """What train() holds: the trackers of this run (inert off rank 0 and without spec.tracking)."""

    def __init__(self, cfg: ResolvedConfig, reporter: Any = None, env: Mapping[str, str] | None = None, *,
                 enabled: bool = True, lineage: Mapping[str, Any] | None = None):
        self.cfg, self.reporter, self.lineage = cfg, reporter, lineage
        self.mlflow: MlflowTracker | None = None
        self.tensorboard: EventFileWriter | None = None
        self.status: dict[str, Any] = {}
        self.result: Any = None
        self.finished = False
        spec = cfg.tracking if enabled else None
        if spec is None:
            return
        if spec.mlflow is not None:
            m = spec.mlflow
            # attempts of one job (same UID) continue one MLflow run; sftctl run starts a new one each time
            run_key = f"{cfg.namespace}/{cfg.job_name}/{cfg.job_uid or f'local-{time.time_ns()}'}"
            tags = {"sft.dev/job": cfg.job_name, "sft.dev/namespace": cfg.namespace,
                    "sft.dev/job-uid": cfg.job_uid or "", "mlflow.runName": cfg.job_name}
            self.mlflow = MlflowTracker(MlflowRest(m.tracking_uri, env), m.experiment_name or cfg.job_name,
                                        cfg.job_name, run_key, tags, on_health=self._health)
        if spec.tensorboard is not None and spec.tensorboard.enabled and cfg.checkpoints_uri:
            uri = cfg.checkpoints_uri.rstrip("/") + "/tensorboard/"
            try:
                self.tensorboard = EventFileWriter(uri, cfg.workdir / "tensorboard", cfg.storage)
                self.status["tensorboardUri"] = uri
            except OSError as e:
                log.warning("tracking: cannot write TensorBoard events under %s: %s", uri, e)
        if self.mlflow is not None or self.tensorboard is not None:
            atexit.register(self._at_exit)  # SIGTERM returns early, an error raises: close the run anyway

    # ------------------------------------------------------------------ status
    def _links(self) -> None:
        m = self.mlflow
        if m is not None:
            self.status.update({k: v for k, v in (("mlflowRunId", m.run_id), ("mlflowRunUrl", m.run_url),
                                                  ("mlflowExperimentId", m.experiment_id)) if v})

    def _health(self, healthy: bool, message: str | None) -> None:
        self._links()
        self.status.update({"healthy": healthy, "message": message})
        if self.reporter is not None:
            try:
                self.reporter.report({"tracking": dict(self.status)})
            except Exception as e:  # noqa: BLE001
                log.warning("tracking: cannot report status.tracking: %s", e)

    # ------------------------------------------------------------------ events
    def begin(self, world_size: int) -> None:
        if self.mlflow is not None:
            params = {**self.cfg.tracking_params, "world_size": world_size}
            if self.lineage:
                params.update(lineage_digest=self.lineage.get("digest"), lineage_uri=self.lineage.get("uri"))
            self.mlflow.log_params(params)
        if self.tensorboard is not None and self.reporter is not None and self.mlflow is None:
            self.reporter.report({"tracking": dict(self.status)})

    def log(self, logs: Mapping[str, Any], step: int) -> None:
        scalars = _scalars(logs)
        if not scalars:
            return
        if self.mlflow is not None:
            self.mlflow.log_metrics(scalars, step)
        if self.tensorboard is not None:
            self.tensorboard.add_scalars(scalars, step)

    def checkpoint(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def finish(self, result: Any) -> None:
        """The run's figures (test loss, eval loss per task_type, golden set, exact match) and its
        status, then the last flush; ``result.tracking`` gets the links and the health."""
        final: dict[str, float] = {}
        if result.test_loss is not None:
            final["test_loss"] = result.test_loss
        for task, v in (result.eval_loss_by_task or {}).items():
            final[f"eval_{task}_loss"] = v
        golden = result.golden_after or {}
        if golden.get("pass_rate") is not None:
            final["golden_pass_rate"] = golden["pass_rate"]
        for task, v in (golden.get("by_task") or {}).items():
            if isinstance(v, (int, float)):
                final[f"golden_{task}_pass_rate"] = v
        for task, v in (result.exact_match_after or {}).items():
            final[f"exact_match_{task}"] = v
        if final:
            self.log(final, result.global_step)
        self._close("FINISHED" if result.exit_code == 0 else "FAILED", FLUSH_SECONDS)
        result.tracking = dict(self.status) or None

    def _at_exit(self) -> None:
        if not self.finished:
            interrupted = self.result is not None and self.result.interrupted
            self._close("KILLED" if interrupted else "FAILED", 5.0)

    def _close(self, status: str, timeout: float) -> None:
        if self.finished:
            return
        self.finished = True
        atexit.unregister(self._at_exit)
        if self.tensorboard is not None:
            self.tensorboard.flush()
        if self.mlflow is not None:
            self.mlflow.set_status(status)
            # a tracker that is down already had its retries: do not hold the end of the run for it
            self.mlflow.close(timeout if self.mlflow.healthy is not False else min(timeout, 5.0))
            self._links()
            self.status["healthy"] = bool(self.mlflow.healthy) and self.mlflow.pending_count() == 0
            self.status["message"] = None if self.status["healthy"] else self.mlflow.last_error

    @property
    def callbacks(self) -> list[Any]:
        """The TrainerCallback that feeds the trackers (none when there is nothing to track)."""
        if self.mlflow is None and self.tensorboard is None:
            return []
        from transformers import TrainerCallback

        tracker = self

        class TrackingCallback(TrainerCallback):
            """Rank 0: params at the start, every log's numbers as metrics, event files copied on save."""

            def on_train_begin(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    tracker.begin(int(args.world_size))

            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.is_world_process_zero and logs:
                    tracker.log(logs, state.global_step)

            def on_save(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    tracker.checkpoint()

        return [TrackingCallback()]


def start_tracking(cfg: ResolvedConfig, result: Any, reporter: Any, *, rank: int,
                   env: Mapping[str, str] | None = None) -> Tracker:
    """Rank 0's trackers for ``spec.tracking`` (an inert Tracker elsewhere); they carry the lineage
    digest into the params."""
    tracker = Tracker(cfg, reporter, env, enabled=rank == 0, lineage=result.lineage)
    tracker.result = result
    return tracker


def finish_tracking(tracker: Tracker, result: Any) -> None:
    """Log the run's final figures and close the trackers; never raises."""
    try:
        tracker.finish(result)
    except Exception as e:  # noqa: BLE001 - tracking must never fail a finished run
        log.warning("tracking: finishing the run failed: %s", e)
