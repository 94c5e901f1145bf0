"""kopf handlers: fetch -> pure reconcile -> write. Nothing here decides anything.

Triggers only put the SFTJob's key into a work queue (`workqueue.py`: deduplicated, one pass per key at
a time, 8 worker threads), so kopf's event processing never waits on the apiserver. Triggers (all
level-based, all funnel into `reconcile_job`):
- every SFTJob event (create, spec change, the trainer's progress patches), and the initial listing
  at start-up, which picks up jobs created while the operator was down;
- every event of a child Job or pod (labels `sft.dev/job-name`, `sft.dev/attempt`);
- the pass's own `requeue_after`: the work queue re-adds the key when the next clock (deadline,
  stall, TTL, a create backoff) is due;
- a timer per SFTJob (`SFT_RESYNC_SECONDS`), a safety net only: no clock depends on it.

Errors are classified (apply.py): temporary ones retry with the queue's per-key exponential backoff,
permanent ones wait for the next change; a child the apiserver refuses is recorded in the SFTJob's
status (condition ChildCreateFailed, a Warning event) and retried with the job's own backoff.

Children are observed through kopf in-memory indices (no list calls per pass); the SFTJob itself is
read fresh from the apiserver, and the status write is guarded by its resourceVersion.

Run: `python -m sft_operator.run_operator` (or `kopf run -m sft_operator.handlers`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Mapping

import kopf

from sft_api.contract import FINALIZER

from . import metrics
from .apply import ApiError, ChildRefused, Conflict, KubeApi, PermanentError, TemporaryError, classify, write_result
from .children import GROUP, LABEL_ATTEMPT, LABEL_JOB, PLURAL, VERSION
from .policies import kueue
from .observe import Observation, observation, observe_job, observe_pod, parse_time
from .reconcile import Result, child_create_failed, reconcile, validate_body
from .settings import OperatorSettings, load_settings
from .workqueue import WorkQueue

log = logging.getLogger("sft_operator")

CHILD_LABELS = {LABEL_JOB: kopf.PRESENT, LABEL_ATTEMPT: kopf.PRESENT}


class _State:
    """Process-wide state: settings, API client, the work queue and kopf's child indices."""

    def __init__(self) -> None:
        self.settings: OperatorSettings = load_settings()
        self._api: KubeApi | None = None
        self.queue = WorkQueue(lambda key: _process(key), workers=self.settings.workers,
                               retry_seconds=self.settings.retry_base_seconds,
                               max_retry_seconds=self.settings.retry_max_seconds)
        self.indices: dict[str, Any] = {}
        self.metrics_server = None

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi()
        return self._api


STATE = _State()


class NoEssenceDiffBase(kopf.AnnotationsDiffBaseStorage):
    """An empty "essence" for every watched body.

    kopf deep-copies each event's whole body (every pod and Job event too) into an essence and diffs
    it against the last handled one, for change handlers (on.create/update/resume/delete). This
    operator registers none (event handlers, indices and a timer only; test_handlers_registry
    asserts so), so nothing reads that diff: profiled at 300 jobs, the copies were ~40% of the
    kopf thread's CPU (bench/operator_scale.py --profile)."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return kopf.BodyEssence()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf keeps its bookkeeping in annotations; `status` belongs to the operator and the trainer.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.sft.dev")
    settings.persistence.diffbase_storage = NoEssenceDiffBase(prefix="kopf.sft.dev")
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING  # our own Events describe transitions
    if not settings.peering.standalone:
        settings.peering.name = "sft-operator"
        settings.peering.clusterwide = True
    settings.peering.lifetime = load_settings().peering_lifetime_seconds
    # kopf logs every handler call ("Handler ... succeeded") at INFO: thousands of lines per minute at
    # scale. Our own "reconciled" lines (logger sft_operator) say what changed.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # On deletion kopf stops the resync timer before it drops the finalizer; a timer caught inside a
    # (sync) pass would otherwise be re-checked only after 60 s.
    settings.background.instant_exit_timeout = 2.0
    settings.background.cancellation_polling = 1.0
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    STATE.settings = load_settings()
    validate_body({"spec": {}})  # warm the schema validators now, not on the first SFTJob
    if STATE.metrics_server is None and STATE.settings.metrics_port > 0:
        STATE.metrics_server = metrics.serve(STATE.settings.metrics_port)
    STATE.queue.start()
    log.info("sft-operator configured", extra={"settings": STATE.settings.describe()})


@kopf.on.cleanup()
def stop_workers(**_: Any) -> None:
    STATE.queue.stop()


@kopf.on.probe(id="sftjobs_tracked")
def probe_tracked(**_: Any) -> int:
    return sum(metrics.JOBS.counts().values())


# -- indices of the children ------------------------------------------------------------------------


@kopf.index("batch", "v1", "jobs", labels=CHILD_LABELS)
def sft_child_jobs(body: Mapping, namespace: str, labels: Mapping, **_: Any) -> dict:
    return {(namespace, labels[LABEL_JOB]): observe_job(body)}


@kopf.index("", "v1", "pods", labels=CHILD_LABELS)
def sft_child_pods(body: Mapping, namespace: str, labels: Mapping, **_: Any) -> dict:
    return {(namespace, labels[LABEL_JOB]): observe_pod(body)}


@kopf.index("", "v1", "nodes")
def sft_nodes(name: str, **_: Any) -> dict:
    return {name: True}


def _observation(key: tuple[str, str], jobs_idx, pods_idx, nodes_idx) -> Observation:
    jobs = tuple(jobs_idx.get(key, ())) if jobs_idx is not None else ()
    pods = tuple(pods_idx.get(key, ())) if pods_idx is not None else ()
    missing: frozenset[str] = frozenset()
    if nodes_idx is not None:
        missing = frozenset(p.node for p in pods if p.node and p.node not in nodes_idx)
    return observation(jobs, pods, missing)


def _with_pod_create_errors(api: KubeApi, body: Mapping, obs: Observation) -> Observation:
    """Add the Job controller's latest FailedCreate message for the current attempt's Job (the gang's,
    else the preflight's) when that Job has no pod: one list call, and only while pods are missing."""
    attempt = int((body.get("status") or {}).get("attempt") or 0)
    job, pods = obs.job(attempt), obs.pods_of(attempt)
    if job is None:  # no gang yet: the preflight's Job and pod
        job = next((j for j in obs.preflight_jobs if j.attempt == attempt and not j.deleting), None)
        pods = [p for p in obs.preflight_pods if p.attempt == attempt]
    if job is None or job.suspended or job.finished or pods:
        return obs
    meta = body.get("metadata") or {}
    selector = f"involvedObject.kind=Job,involvedObject.name={job.name},reason=FailedCreate"
    try:
        events = api.list("Event", meta.get("namespace"), field_selector=selector)
    except ApiError as exc:  # e.g. an older ClusterRole without `list events`: status just lacks the detail
        log.warning(f"FailedCreate events of Job {job.name} not readable: {exc}")
        return obs
    if not events:
        return obs
    latest = max(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp") or "")
    message = str(latest.get("message") or "").removeprefix("Error creating: ")
    return replace(obs, pod_create_errors={job.name: message})


def _with_queue_message(api: KubeApi, body: Mapping, obs: Observation) -> Observation:
    """Add Kueue's verdict on the current attempt's queued Job: its Workload's not-yet-true admission
    condition (e.g. "insufficient unused quota for nvidia.com/gpu ..."). One list, only while queued."""
    job = obs.job(int((body.get("status") or {}).get("attempt") or 0))
    if not kueue.is_queued(job):  # only Kueue suspends a child Job (spec.suspend deletes them)
        return obs
    try:
        workloads = api.list("Workload", (body.get("metadata") or {}).get("namespace"))
    except ApiError as exc:  # Kueue not installed, or an older ClusterRole: the condition just lacks the detail
        log.debug(f"Kueue Workloads not readable: {exc}")
        return obs
    message = kueue.admission_message(workloads, job.name)
    return replace(obs, queue_message=message) if message else obs


# -- the one reconcile path -------------------------------------------------------------------------


def reconcile_job(namespace: str, name: str, *, jobs_idx=None, pods_idx=None, nodes_idx=None) -> Result | None:
    """One pass for one SFTJob: fresh read, pure reconcile, write. Callers must not run two passes
    of the same SFTJob at once (the work queue guarantees it)."""
    key = (namespace, name)
    api = STATE.api
    for _ in range(5):
        started = time.monotonic()
        body = api.get("SFTJob", namespace, name)
        if body is None:
            metrics.forget_job(key)
            return None
        obs = _with_pod_create_errors(api, body, _observation(key, jobs_idx, pods_idx, nodes_idx))
        obs = _with_queue_message(api, body, obs)
        now = datetime.now(timezone.utc)
        result = reconcile(body, obs, now, STATE.settings, validate=validate_body)
        try:
            write_result(api, body, result)
        except Conflict:
            continue  # changed under us (often a progress patch): recompute from a fresh read
        except ChildRefused as refused:
            result = _record_refusal(key, obs, refused)
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        _record(key, body, result, now)
        return result
    raise TemporaryError(f"SFTJob {namespace}/{name} kept changing during reconcile", delay=1.0)


def _record_refusal(key: tuple[str, str], obs: Observation, refused: ChildRefused) -> Result:
    """Write the refusal into the SFTJob's status (the status write above has landed already)."""
    log.warning(f"{key[0]}/{key[1]}: {refused.kind} {refused.name} refused: {refused.error}")
    for _ in range(5):
        body = STATE.api.get("SFTJob", *key)
        if body is None:
            raise PermanentError(f"SFTJob {key[0]}/{key[1]} is gone")
        result = child_create_failed(body, obs, datetime.now(timezone.utc), STATE.settings, kind=refused.kind,
                                     name=refused.name, code=refused.error.status, message=refused.error.message)
        try:
            write_result(STATE.api, body, result)
            return result
        except Conflict:
            continue
    raise TemporaryError(f"SFTJob {key[0]}/{key[1]} kept changing while its refused child was recorded", delay=1.0)


def _record(key, body: Mapping, result: Result, now: datetime) -> None:
    if not (body.get("metadata") or {}).get("deletionTimestamp"):
        metrics.JOBS.set(key, result.status.get("phase"))
    for reason in result.counted:
        metrics.RESTARTS.labels(namespace=key[0], sftjob=key[1], reason=reason).inc()
    if result.became_running and int(result.status.get("attempt") or 1) == 1:
        created = parse_time((body.get("metadata") or {}).get("creationTimestamp"))
        if created is not None:
            metrics.TIME_TO_RUNNING.observe(max((now - created).total_seconds(), 0.0))
    if result.status_patch or result.delete or result.apply:
        log.info(
            f"reconciled {key[0]}/{key[1]}: phase={result.status.get('phase')} attempt={result.status.get('attempt')} "
            f"events={[e.reason for e in result.events]}",
            extra={
                "sftjob": f"{key[0]}/{key[1]}",
                "phase": result.status.get("phase"),
                "attempt": result.status.get("attempt"),
                "status_patch": sorted(result.status_patch),
                "applied": [f"{o['kind']}/{o['metadata']['name']}" for o in result.apply],
                "deleted": [f"{d.kind}/{d.name}" for d in result.delete],
                "events": [e.reason for e in result.events],
            },
        )


def _process(key: tuple[str, str]) -> float | None:
    """A work-queue pass: the kopf indices are the ones the handlers saw last. Returns the pass's
    `requeue_after`; raises a classified error for the queue to retry (or not)."""
    namespace, name = key
    try:
        result = reconcile_job(
            namespace,
            name,
            jobs_idx=STATE.indices.get("sft_child_jobs"),
            pods_idx=STATE.indices.get("sft_child_pods"),
            nodes_idx=STATE.indices.get("sft_nodes"),
        )
    except ApiError as exc:
        if exc.status == 403 and "being terminated" in str(exc):
            log.info(f"namespace {namespace} is being deleted; nothing to create for {name}")
            return None
        metrics.RECONCILE_ERRORS.inc()
        raise classify(exc) from exc
    except Exception:
        metrics.RECONCILE_ERRORS.inc()
        raise
    return result.requeue_after if result is not None else None


def _trigger(namespace: str | None, name: str | None, kwargs: Mapping) -> None:
    if not namespace or not name:
        return
    if not STATE.indices:
        STATE.indices = {k: kwargs.get(k) for k in ("sft_child_jobs", "sft_child_pods", "sft_nodes")}
    STATE.queue.add((namespace, name))


# -- triggers: they only queue the SFTJob ---------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, PLURAL)
async def sftjob_event(type: str | None, name: str, namespace: str, **kwargs: Any) -> None:
    if type == "DELETED":
        metrics.forget_job((namespace, name))
        return
    _trigger(namespace, name, kwargs)


@kopf.timer(GROUP, VERSION, PLURAL, interval=load_settings().resync_seconds, sharp=False)
async def sftjob_resync(name: str, namespace: str, **kwargs: Any) -> None:
    _trigger(namespace, name, kwargs)


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
async def child_job_event(namespace: str, labels: Mapping, **kwargs: Any) -> None:
    _trigger(namespace, labels.get(LABEL_JOB), kwargs)


@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
async def child_pod_event(namespace: str, labels: Mapping, **kwargs: Any) -> None:
    _trigger(namespace, labels.get(LABEL_JOB), kwargs)
