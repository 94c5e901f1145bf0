"""kopf handlers: fetch -> pure reconcile -> write. Nothing here decides anything.

Triggers only put the SFTJob's key into a work queue (`workqueue.py`: deduplicated, one pass per key at
a time, 8 worker threads), so kopf's event processing never waits on the apiserver. Triggers (all
level-based, all funnel into `reconcile_job`):
- every SFTJob event (create, spec change, the trainer's progress patches), and the initial listing
  at start-up, which picks up jobs created while the operator was down;
- every event of a child Job or pod (labels `sft.dev/job-name`, `sft.dev/attempt`);
- a node that vanished (`nodes.NodeNames`, a metadata-only list every few seconds instead of a watch of
  every node heartbeat): the jobs with pods on it;
A new SFTJob is queued at once; every other trigger waits `SFT_COALESCE_SECONDS` (0.25 s) for the rest
of its burst (a gang's pods scheduled and started, their Job's status), so a burst is one pass;
- the pass's own `requeue_after`: the work queue re-adds the key when the next clock (deadline,
  stall, TTL, a create backoff) is due;
- a timer per SFTJob (`SFT_RESYNC_SECONDS`), a safety net only: no clock depends on it.

Errors are classified (apply.py): temporary ones retry with the queue's per-key exponential backoff,
permanent ones wait for the next change; a child the apiserver refuses is recorded in the SFTJob's
status (condition ChildCreateFailed, a Warning event) and retried with the job's own backoff.

Children are observed through kopf in-memory indices (no list calls per pass). The SFTJob body a
pass starts from is the newest one seen (`BodyCache`: its watch events and the responses of the
operator's own writes), so a pass sends no GET; the status write is guarded by that body's
resourceVersion, so a stale body gets 409 and the pass is recomputed from a fresh GET. The per-job
ServiceAccount, Role and RoleBinding are indexed too, so a restart does not re-apply them unchanged;
and a pass that runs before kopf's Job index shows the Job an earlier pass created does not send that
attempt's children again (`Expectations`).

Run: `python -m sft_operator.run_operator` (or `kopf run -m sft_operator.handlers`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Mapping

import kopf

from sft_api.contract import FINALIZER

from . import metrics
from .apply import (WRITE_THREADS, ApiError, ChildRefused, Conflict, KubeApi, PermanentError, TemporaryError, classify, live_content,
                    write_result)
from .children import GROUP, LABEL_ATTEMPT, LABEL_JOB, PLURAL, VERSION
from .policies import kueue
from .observe import Observation, observation, observe_job, observe_pod, parse_time
from .reconcile import Result, child_create_failed, reconcile, validate_body
from .settings import OperatorSettings, load_settings
from .failed_creates import FailedCreates
from .nodes import NodeNames
from .workqueue import WorkQueue

log = logging.getLogger("sft_operator")

CHILD_LABELS = {LABEL_JOB: kopf.PRESENT, LABEL_ATTEMPT: kopf.PRESENT}


def _rv(body: Mapping) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:  # opaque to clients by contract; etcd's are integers
        return 0


class BodyCache:
    """The newest SFTJob body per key: from kopf's watch events and from the operator's own writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[tuple[str, str], Mapping] = {}

    def offer(self, key: tuple[str, str], body: Mapping | None) -> None:
        if not body:
            return
        with self._lock:
            have = self._bodies.get(key)
            if have is None or _rv(body) >= _rv(have):
                self._bodies[key] = body

    def get(self, key: tuple[str, str]) -> Mapping | None:
        with self._lock:
            return self._bodies.get(key)

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._bodies.pop(key, None)

    def __len__(self) -> int:
        return len(self._bodies)


class Expectations:
    """The Jobs a pass created that kopf's Job index has not shown yet, in the manner of the Job
    controller's expectations: until they show (or `timeout` passes), a pass that would create the same
    Jobs again (its children rendered from an index that lags behind) applies nothing."""

    def __init__(self, timeout: float = 15.0) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], tuple[frozenset[str], float]] = {}

    def created(self, key: tuple[str, str], result: Result) -> None:
        names = frozenset(o["metadata"]["name"] for o in result.apply if o["kind"] == "Job")
        if names:
            with self._lock:
                self._jobs[key] = (names, time.monotonic() + self.timeout)

    def unseen(self, key: tuple[str, str], obs: Observation, result: Result) -> bool:
        """True when every Job `result` would create was created by an earlier pass and is not indexed yet."""
        with self._lock:
            names, until = self._jobs.get(key, (frozenset(), 0.0))
            seen = {j.name for j in (*obs.jobs, *obs.preflight_jobs)}
            if not names or time.monotonic() > until or names <= seen:
                self._jobs.pop(key, None)
                return False
        wanted = {o["metadata"]["name"] for o in result.apply if o["kind"] == "Job"}
        return bool(wanted) and wanted <= names

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._jobs.pop(key, None)


class _State:
    """Process-wide state: settings, API client, the work queue, kopf's child indices, the body cache."""

    def __init__(self) -> None:
        self.settings: OperatorSettings = load_settings()
        self._api: KubeApi | None = None
        self.queue = WorkQueue(lambda key: _process(key), workers=self.settings.workers,
                               retry_seconds=self.settings.retry_base_seconds,
                               max_retry_seconds=self.settings.retry_max_seconds)
        self.indices: dict[str, Any] = {}
        self.nodes = NodeNames(lambda: self.api, interval=self.settings.node_poll_seconds, on_gone=lambda gone: _nodes_gone(gone))
        self.bodies = BodyCache()
        self.expected = Expectations()
        self.failed_creates = FailedCreates(lambda: self.api.api_client, on_event=lambda ns, job: _failed_create(ns, job))
        self.metrics_server = None

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi(pool_size=self.settings.workers + WRITE_THREADS + 4)  # a pass's writes run at once
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
    STATE.nodes.interval = STATE.settings.node_poll_seconds
    STATE.nodes.start()
    STATE.failed_creates.start()
    STATE.queue.start()
    log.info("sft-operator configured", extra={"settings": STATE.settings.describe()})


@kopf.on.cleanup()
def stop_workers(**_: Any) -> None:
    STATE.nodes.stop()
    STATE.failed_creates.stop()
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


# The per-job ServiceAccount, Role and RoleBinding (the same objects in every attempt): what they hold
# now, so that a restart applies only the ones deleted or edited (apply.unchanged).
JOB_LABEL_ONLY = {LABEL_JOB: kopf.PRESENT}
RBAC_INDICES = ("sft_child_serviceaccounts", "sft_child_roles", "sft_child_rolebindings")


@kopf.index("", "v1", "serviceaccounts", labels=JOB_LABEL_ONLY)
def sft_child_serviceaccounts(body: Mapping, namespace: str, name: str, labels: Mapping, **_: Any) -> dict:
    return {(namespace, labels[LABEL_JOB]): ("ServiceAccount", name, live_content(body))}


@kopf.index("rbac.authorization.k8s.io", "v1", "roles", labels=JOB_LABEL_ONLY)
def sft_child_roles(body: Mapping, namespace: str, name: str, labels: Mapping, **_: Any) -> dict:
    return {(namespace, labels[LABEL_JOB]): ("Role", name, live_content(body))}


@kopf.index("rbac.authorization.k8s.io", "v1", "rolebindings", labels=JOB_LABEL_ONLY)
def sft_child_rolebindings(body: Mapping, namespace: str, name: str, labels: Mapping, **_: Any) -> dict:
    return {(namespace, labels[LABEL_JOB]): ("RoleBinding", name, live_content(body))}


def _live_children(key: tuple[str, str], indices: Mapping[str, Any]) -> dict | None:
    """(kind, name) -> live content of the job's per-job children; None before the indices are known."""
    idxs = [indices.get(n) for n in RBAC_INDICES]
    if any(idx is None for idx in idxs):
        return None
    return {(kind, name): content for idx in idxs for kind, name, content in idx.get(key, ())}


def _observation(key: tuple[str, str], jobs_idx, pods_idx, nodes: NodeNames | None) -> Observation:
    """`nodes`: which nodes exist (None: unknown, so no pod counts as on a lost node)."""
    jobs = tuple(jobs_idx.get(key, ())) if jobs_idx is not None else ()
    pods = tuple(pods_idx.get(key, ())) if pods_idx is not None else ()
    missing: frozenset[str] = frozenset()
    if nodes is not None:
        missing = nodes.missing(p.node for p in pods)
    return observation(jobs, pods, missing)


def _with_pod_create_errors(body: Mapping, obs: Observation) -> Observation:
    """Add the Job controller's latest FailedCreate message for the current attempt's Job (the gang's,
    else the preflight's) while that Job has no pod: from the watch (`failed_creates.py`), no request.
    Its first list ingests the events from before a restart; until then, or without `watch events` in
    an older ClusterRole, the status just lacks the detail."""
    attempt = int((body.get("status") or {}).get("attempt") or 0)
    job, pods = obs.job(attempt), obs.pods_of(attempt)
    if job is None:  # no gang yet: the preflight's Job and pod
        job = next((j for j in obs.preflight_jobs if j.attempt == attempt and not j.deleting), None)
        pods = [p for p in obs.preflight_pods if p.attempt == attempt]
    if job is None or job.suspended or job.finished or pods:
        return obs
    message = STATE.failed_creates.message((body.get("metadata") or {}).get("namespace"), job.name)
    return replace(obs, pod_create_errors={job.name: message}) if message else obs


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


def _read(key: tuple[str, str], fresh: bool) -> Mapping | None:
    """The pass's SFTJob body: the cached newest one, or (`fresh`, or nothing cached) a GET."""
    body = None if fresh else STATE.bodies.get(key)
    if body is not None:
        metrics.SFTJOB_READS.labels(source="cache").inc()
        return body
    metrics.SFTJOB_READS.labels(source="get").inc()
    body = STATE.api.get("SFTJob", *key)
    if body is None:
        STATE.bodies.forget(key)
    else:
        STATE.bodies.offer(key, body)
    return body


def _gone(key: tuple[str, str]) -> None:
    metrics.forget_job(key)
    STATE.bodies.forget(key)
    STATE.expected.forget(key)
    STATE.failed_creates.forget(key[0], f"{key[1]}-")


def _skip_applies(result: Result) -> None:
    for obj in result.apply:
        metrics.SKIPPED_APPLIES.labels(kind=obj["kind"]).inc()
    result.apply = []


def reconcile_job(namespace: str, name: str, *, jobs_idx=None, pods_idx=None, nodes: NodeNames | None = None,
                  live: Mapping | None = None) -> Result | None:
    """One pass for one SFTJob: read (cached, or fresh after a conflict), pure reconcile, write. Callers
    must not run two passes of the same SFTJob at once (the work queue guarantees it)."""
    key = (namespace, name)
    api = STATE.api
    for i in range(5):
        started = time.monotonic()
        body = _read(key, fresh=i > 0)
        if body is None:
            _gone(key)
            return None
        obs = _with_pod_create_errors(body, _observation(key, jobs_idx, pods_idx, nodes))
        obs = _with_queue_message(api, body, obs)
        now = datetime.now(timezone.utc)
        result = reconcile(body, obs, now, STATE.settings, validate=validate_body)
        if result.apply and STATE.expected.unseen(key, obs, result):
            _skip_applies(result)  # created by an earlier pass; kopf's Job index has not caught up
        try:
            STATE.bodies.offer(key, write_result(api, body, result, live))
        except Conflict:
            continue  # changed under us (often a progress patch): recompute from a fresh read
        except ApiError as exc:
            if exc.status != 404:
                raise
            _gone(key)  # deleted since the cached body was seen
            return None
        except ChildRefused as refused:
            result = _record_refusal(key, obs, refused)
        else:
            STATE.expected.created(key, result)
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
            STATE.bodies.offer(key, write_result(STATE.api, body, result))
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
            nodes=STATE.nodes,
            live=_live_children(key, STATE.indices),
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


def _trigger(namespace: str | None, name: str | None, kwargs: Mapping, *, urgent: bool = False) -> None:
    """Queue the SFTJob: `urgent` (a job not seen before, a child that finished or went) at once and
    ahead of the rest, else after the coalescing delay."""
    if not namespace or not name:
        return
    if not STATE.indices:
        STATE.indices = {k: kwargs.get(k) for k in ("sft_child_jobs", "sft_child_pods", *RBAC_INDICES)}
    if urgent or STATE.settings.coalesce_seconds <= 0:
        STATE.queue.add((namespace, name), urgent=urgent)
    else:
        STATE.queue.add_soon((namespace, name), STATE.settings.coalesce_seconds)


def sftjob_event_is_urgent(before: Mapping | None, body: Mapping) -> bool:
    """A job not seen before, a spec change (a new generation: suspend, resume, an edit) or a delete;
    not the status patches (ours, the trainer's progress)."""
    if before is None:
        return True
    meta, old = body.get("metadata") or {}, before.get("metadata") or {}
    return bool(meta.get("deletionTimestamp")) or meta.get("generation") != old.get("generation")


def pod_event_is_urgent(event_type: str | None, body: Mapping) -> bool:
    """A pod that is gone (what a next attempt waits for) or whose trainer finished: a restart, a
    teardown or a success to act on. Its other events (scheduled, started, ready, being deleted) only
    change status: a pod being deleted blocks the next attempt until it is gone."""
    if event_type == "DELETED":
        return True
    status = body.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):
        return True
    return any((c.get("state") or {}).get("terminated") for c in status.get("containerStatuses") or ())


def job_event_is_urgent(event_type: str | None, body: Mapping) -> bool:
    """A Job that is gone or finished (Complete or Failed)."""
    if event_type == "DELETED":
        return True
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (body.get("status") or {}).get("conditions") or ())


def _failed_create(namespace: str, job: str) -> None:
    """A FailedCreate event for Job `job`: queue the SFTJob it belongs to (none: not ours)."""
    jobs_idx = STATE.indices.get("sft_child_jobs")
    if jobs_idx is None:
        return
    for key, jobs in list(jobs_idx.items()):
        if key[0] == namespace and any(j.name == job for j in jobs):
            STATE.queue.add(key, urgent=True)
            return


def _nodes_gone(gone: frozenset[str]) -> None:
    """Queue every SFTJob with a pod on a node that vanished."""
    pods_idx = STATE.indices.get("sft_child_pods")
    if pods_idx is None:
        return
    for key, pods in list(pods_idx.items()):
        if any(p.node in gone for p in pods):
            STATE.queue.add(key, urgent=True)


# -- triggers: they only queue the SFTJob ---------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, PLURAL)
async def sftjob_event(type: str | None, name: str, namespace: str, **kwargs: Any) -> None:
    if type == "DELETED":
        _gone((namespace, name))
        return
    key = (namespace, name)
    before = STATE.bodies.get(key)
    body = (kwargs.get("event") or {}).get("object") or {}
    STATE.bodies.offer(key, body)
    _trigger(namespace, name, kwargs, urgent=sftjob_event_is_urgent(before, body))


@kopf.timer(GROUP, VERSION, PLURAL, interval=load_settings().resync_seconds, sharp=False)
async def sftjob_resync(name: str, namespace: str, **kwargs: Any) -> None:
    _trigger(namespace, name, kwargs)


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
async def child_job_event(namespace: str, labels: Mapping, **kwargs: Any) -> None:
    _trigger(namespace, labels.get(LABEL_JOB), kwargs, urgent=job_event_is_urgent(kwargs.get("type"), kwargs.get("body") or {}))


@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
async def child_pod_event(namespace: str, labels: Mapping, **kwargs: Any) -> None:
    _trigger(namespace, labels.get(LABEL_JOB), kwargs, urgent=pod_event_is_urgent(kwargs.get("type"), kwargs.get("body") or {}))
