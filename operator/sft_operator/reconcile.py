"""The pure reconcile function: (SFTJob body, observed children, now) -> what to do.

It reads as a recipe: guards (deleted, invalid, finished), suspend, deadline, teardown of other
attempts, create the current attempt, then judge the current attempt (success, failure, stall,
queued, pending, running). It never talks to the API; `handlers.py` applies the `Result` in the
order status -> deletes -> applies -> events, so a crash between steps is repaired by the next pass
and counters are never incremented twice (the increment and `attempt+1` are one status write).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping

from . import children as ch
from .conditions import CondType, Phase, Reason, get_condition, set_condition, truncate
from .observe import Observation, fmt_time
from .policies import deadline_ttl, kueue, restart_policy, stall, suspend
from .settings import OperatorSettings

__all__ = ["reconcile", "Result", "Event", "ChildRef", "OWNED_STATUS_FIELDS"]

OWNED_STATUS_FIELDS = (
    "phase",
    "conditions",
    "attempt",
    "restarts",
    "preemptions",
    "startTime",
    "completionTime",
    "observedGeneration",
    "lastFailure",
)


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class ChildRef:
    kind: str  # Job | Pod | Service | ConfigMap | ServiceAccount | Role | RoleBinding
    name: str
    force: bool = False  # pods on a lost node: delete with grace 0


@dataclass
class Result:
    status: dict  # the full operator-owned status after this pass
    status_patch: dict  # only the owned fields that changed ({} = no write)
    apply: list[dict] = field(default_factory=list)
    delete: list[ChildRef] = field(default_factory=list)
    annotations: dict = field(default_factory=dict)  # annotation patch (None deletes)
    events: list[Event] = field(default_factory=list)
    counted: list[str] = field(default_factory=list)  # restart/preemption reasons counted in this pass
    became_running: bool = False

    @property
    def noop(self) -> bool:
        return not (self.status_patch or self.apply or self.delete or self.annotations or self.events)


class _Pass:
    """Mutable scratch state of one reconcile pass."""

    def __init__(self, body: Mapping, obs: Observation, now: datetime, settings: OperatorSettings, validate):
        self.body = body
        self.meta = body.get("metadata") or {}
        self.spec = body.get("spec") or {}
        self.obs = obs
        self.now = now
        self.now_s = fmt_time(now)
        self.settings = settings
        self.validate = validate
        self.name = self.meta.get("name", "")
        old = body.get("status") or {}
        self.old = {k: copy.deepcopy(old[k]) for k in OWNED_STATUS_FIELDS if k in old}
        self.st = copy.deepcopy(self.old)
        self.progress = old.get("progress") or {}
        self.res = Result(status={}, status_patch={})

    # -- small helpers ---------------------------------------------------------------------------
    @property
    def phase(self) -> str | None:
        return self.st.get("phase")

    @property
    def attempt(self) -> int:
        return int(self.st.get("attempt") or 0)

    def cond(self, ctype: CondType, status: bool, reason: str, message: str) -> bool:
        conds, changed = set_condition(self.st.get("conditions"), ctype, status, reason, message, self.now_s)
        self.st["conditions"] = conds
        return changed

    def event(self, type_: str, reason: str, message: str) -> None:
        self.res.events.append(Event(type_, str(reason), truncate(message)))

    def set_phase(self, phase: Phase, reason: Reason, message: str, *, warning: bool = False) -> None:
        """Phase change plus event. The event is emitted once: only when the phase or reason changes."""
        before = (self.st.get("phase"), self._last_reason)
        self.st["phase"] = str(phase)
        self._last_reason = str(reason)
        if before != (str(phase), str(reason)):
            self.event("Warning" if warning else "Normal", reason, message)

    _last_reason: str | None = None

    def delete_attempt(self, attempt: int | None, jobs: bool = True) -> None:
        if attempt is None:
            return
        self.res.delete.append(ChildRef("Service", ch.service_name(self.name, attempt)))
        self.res.delete.append(ChildRef("ConfigMap", ch.configmap_name(self.name, attempt)))
        if jobs:
            self.res.delete.append(ChildRef("Job", ch.job_name(self.name, attempt)))

    def delete_pods(self, pods) -> None:
        for p in pods:
            self.res.delete.append(ChildRef("Pod", p.name, force=bool(p.node and p.node in self.obs.missing_nodes)))

    def stop_everything(self) -> None:
        attempts = {j.attempt for j in self.obs.jobs} | {p.attempt for p in self.obs.pods}
        for a in sorted(x for x in attempts if x is not None):
            self.delete_attempt(a)
        self.delete_pods([p for p in self.obs.pods if not p.deleting])

    def fail(self, reason: Reason, message: str) -> None:
        self.cond(CondType.FAILED, True, reason, message)
        self.cond(CondType.RUNNING, False, reason, message)
        self.cond(CondType.RESTARTING, False, reason, message)
        self.st["completionTime"] = self.st.get("completionTime") or self.now_s
        self.set_phase(Phase.FAILED, reason, message, warning=True)

    # -- spec accessors --------------------------------------------------------------------------
    def fp(self, key: str, default: Any = None) -> Any:
        return (self.spec.get("failurePolicy") or {}).get(key, default)

    @property
    def nodes(self) -> int:
        return int((self.spec.get("workers") or {}).get("nodes") or 1)


def _last_reason(status: Mapping) -> str | None:
    """The reason of the condition that describes the current phase (to de-duplicate events)."""
    phase = status.get("phase")
    ctype = {
        "Running": CondType.RUNNING,
        "Pending": CondType.RUNNING,
        "Restarting": CondType.RESTARTING,
        "Suspended": CondType.SUSPENDED,
        "Succeeded": CondType.SUCCEEDED,
        "Failed": CondType.FAILED,
    }.get(phase or "")
    c = get_condition(status.get("conditions"), ctype) if ctype else None
    return c.get("reason") if c else None


def reconcile(
    body: Mapping,
    obs: Observation,
    now: datetime,
    settings: OperatorSettings | None = None,
    *,
    validate: Callable[[Mapping], str | None] | None = None,
) -> Result:
    """Compute what to do for one SFTJob. `validate(body)` returns an error naming the field, or None."""
    p = _Pass(body, obs, now, settings or OperatorSettings(), validate)
    p._last_reason = _last_reason(p.old)
    if not p.meta.get("deletionTimestamp"):  # deletion: garbage collection removes the children
        _run(p)
    p.res.status = p.st
    p.res.status_patch = {k: v for k, v in p.st.items() if p.old.get(k) != v}
    return p.res


def _run(p: _Pass) -> None:
    gen = p.meta.get("generation")
    if gen is not None:
        p.st["observedGeneration"] = gen

    if p.phase in (Phase.SUCCEEDED, Phase.FAILED):
        _finished(p)
        return

    if p.validate is not None:
        error = p.validate(p.body)
        if error:
            p.st.setdefault("attempt", p.attempt)
            p.st.setdefault("restarts", 0)
            p.st.setdefault("preemptions", 0)
            p.fail(Reason.INVALID_SPEC, error)
            p.stop_everything()
            return

    if p.attempt == 0:
        p.st.update(attempt=1, restarts=int(p.st.get("restarts") or 0), preemptions=int(p.st.get("preemptions") or 0))

    act = suspend.action(bool(p.spec.get("suspend")), p.phase)
    if act == "suspend":
        msg = "spec.suspend is true: pods stopped, status and checkpoints kept"
        p.cond(CondType.SUSPENDED, True, Reason.SUSPENDED, msg)
        p.cond(CondType.RUNNING, False, Reason.SUSPENDED, msg)
        p.set_phase(Phase.SUSPENDED, Reason.SUSPENDED, msg)
        p.stop_everything()
        return
    if act == "resume":
        p.st["attempt"] = p.attempt + 1
        p.st["startTime"] = None  # the deadline clock restarts, as for a resumed batch Job
        msg = f"resumed: attempt {p.attempt} continues from the latest committed checkpoint"
        p.cond(CondType.SUSPENDED, False, Reason.RESUMED, msg)
        p.cond(CondType.RUNNING, False, Reason.RESUMED, msg)
        p.set_phase(Phase.PENDING, Reason.RESUMED, msg)

    if deadline_ttl.deadline_exceeded(p.st.get("startTime"), p.spec.get("activeDeadlineSeconds"), p.now):
        p.fail(Reason.DEADLINE, f"activeDeadlineSeconds={p.spec['activeDeadlineSeconds']} exceeded since startTime {p.st['startTime']}")
        p.stop_everything()
        return

    # Tear down every other attempt; the next one starts only when none of its pods is left.
    stale_jobs, stale_pods = p.obs.stale(p.attempt)
    if stale_jobs or stale_pods:
        for a in sorted({j.attempt for j in stale_jobs if not j.deleting and j.attempt is not None}):
            p.delete_attempt(a)
        p.delete_pods([pd for pd in stale_pods if not pd.deleting or (pd.node and pd.node in p.obs.missing_nodes)])
        # The next attempt waits only for old pods that may still run: a terminal pod (it may linger
        # behind the Job tracking finalizer) or one whose node is gone (pod GC removes it) does not.
        blocking = [pd for pd in stale_pods if not pd.terminal and not (pd.node and pd.node in p.obs.missing_nodes)]
        if blocking or [j for j in stale_jobs if not j.deleting]:
            msg = f"waiting for {len(blocking)} pod(s) and {len(stale_jobs)} Job(s) of earlier attempts to go"
            p.cond(CondType.RUNNING, False, Reason.TEARING_DOWN, msg)
            return

    attempt = p.attempt
    job = p.obs.job(attempt)
    pods = p.obs.pods_of(attempt)
    if job is None:
        if pods:  # the Job vanished under its pods: clear them before creating it again
            p.delete_pods([pd for pd in pods if not pd.deleting])
            return
        p.res.apply = ch.render(p.body, attempt=attempt, settings=p.settings)
        if p.phase is None:
            msg = f"attempt {attempt}: {p.nodes} node(s) requested"
            p.cond(CondType.RUNNING, False, Reason.CREATED, msg)
            p.set_phase(Phase.PENDING, Reason.CREATED, msg)
        return

    if not job.suspended and not p.st.get("startTime"):
        p.st["startTime"] = p.now_s

    if job.complete or (job.succeeded >= p.nodes and not job.failed_reason):
        msg = f"attempt {attempt} completed: {job.succeeded}/{p.nodes} node(s) succeeded"
        p.cond(CondType.SUCCEEDED, True, Reason.COMPLETED, msg)
        p.cond(CondType.RUNNING, False, Reason.COMPLETED, msg)
        p.cond(CondType.RESTARTING, False, Reason.COMPLETED, msg)
        p.st["completionTime"] = p.now_s
        p.set_phase(Phase.SUCCEEDED, Reason.COMPLETED, msg)
        return

    failure = restart_policy.classify(job, pods, p.obs.missing_nodes)
    if failure is not None:
        _restart_or_fail(p, failure, job)
        return

    if kueue.is_queued(job):
        queue = kueue.queue_name(p.meta) or "?"
        msg = f"waiting for admission by Kueue (queue {queue})"
        p.cond(CondType.RUNNING, False, Reason.QUEUED, msg)
        p.set_phase(Phase.PENDING, Reason.QUEUED, msg)
        return

    # A rank that already finished with exit 0 still counts: the Job is about to complete.
    running = [pd for pd in pods if (pd.running or pd.succeeded) and not pd.deleting]
    if len(running) >= p.nodes:
        _running(p, attempt, len(running))
        return

    if p.phase == Phase.RUNNING:
        # A gang that ran keeps its phase until a failure, a stall or success is seen: a pod that
        # just stopped running is about to be classified (its failure may not be visible yet).
        return
    unsched = next((pd for pd in pods if pd.unschedulable), None)
    if unsched is not None:
        reason, msg = Reason.UNSCHEDULABLE, f"{unsched.label} cannot be scheduled: {unsched.unschedulable}"
    else:
        reason, msg = Reason.PODS_PENDING, f"{len(running)}/{p.nodes} pod(s) of attempt {attempt} running"
    p.cond(CondType.RUNNING, False, reason, msg)
    keep = Phase.RESTARTING if p.phase == Phase.RESTARTING else Phase.PENDING
    p.set_phase(keep, reason, msg, warning=reason == Reason.UNSCHEDULABLE)


def _running(p: _Pass, attempt: int, n_running: int) -> None:
    msg = f"attempt {attempt}: {n_running}/{p.nodes} pod(s) running"
    if p.phase != Phase.RUNNING:
        p.res.became_running = True
    p.cond(CondType.RUNNING, True, Reason.PODS_RUNNING, msg)
    if get_condition(p.st.get("conditions"), CondType.RESTARTING) is not None:
        p.cond(CondType.RESTARTING, False, Reason.PODS_RUNNING, msg)
    p.set_phase(Phase.RUNNING, Reason.PODS_RUNNING, msg)

    seen = stall.parse_seen((p.meta.get("annotations") or {}).get(stall.ANNOTATION))
    step = p.progress.get("step")
    timeout = p.fp("stallTimeoutSeconds")
    check = stall.check(seen, attempt=attempt, step=step, now=p.now, timeout=timeout)
    if check.changed:
        p.res.annotations[stall.ANNOTATION] = json.dumps(check.seen, sort_keys=True)
        stalled_cond = get_condition(p.st.get("conditions"), CondType.STALLED)
        if stalled_cond is not None and stalled_cond.get("status") == "True" and seen is not None and seen.get("attempt") == attempt:
            p.cond(CondType.STALLED, False, Reason.NOT_STALLED, f"progress reported: step {step}")
    if check.stalled:
        msg = f"no progress for {int(check.idle_seconds)}s (stallTimeoutSeconds={timeout}); last step {step}"
        p.cond(CondType.STALLED, True, Reason.STALLED, msg)
        failure = restart_policy.Failure(Reason.STALLED, f"attempt {attempt} stalled: {msg}")
        _restart_or_fail(p, failure, p.obs.job(attempt))


def _restart_or_fail(p: _Pass, failure: restart_policy.Failure, job) -> None:
    decision = restart_policy.decide(
        failure,
        restarts=int(p.st.get("restarts") or 0),
        preemptions=int(p.st.get("preemptions") or 0),
        max_restarts=3 if p.fp("maxRestarts") is None else int(p.fp("maxRestarts")),
        max_preemptions=p.settings.max_preemptions if p.fp("maxPreemptions") is None else int(p.fp("maxPreemptions")),
    )
    p.st["lastFailure"] = failure.info()
    if not decision.restart:
        p.fail(decision.reason, decision.message)
        # Stop what is left of the gang; a finished Job keeps its pods for `kubectl logs`.
        if job is not None and not job.finished:
            p.delete_attempt(job.attempt)
        return
    counter = decision.counts_as
    p.st[counter] = int(p.st.get(counter) or 0) + 1
    p.res.counted.append(str(decision.reason))
    old_attempt = p.attempt
    p.st["attempt"] = old_attempt + 1
    msg = f"attempt {old_attempt} torn down ({counter} {p.st[counter]}): {decision.message}; starting attempt {old_attempt + 1}"
    p.cond(CondType.RESTARTING, True, decision.reason, msg)
    p.cond(CondType.RUNNING, False, decision.reason, msg)
    p.set_phase(Phase.RESTARTING, decision.reason, msg, warning=True)
    p.delete_attempt(old_attempt)
    p.delete_pods([pd for pd in p.obs.pods_of(old_attempt) if not pd.deleting or (pd.node and pd.node in p.obs.missing_nodes)])


def _finished(p: _Pass) -> None:
    ann = p.meta.get("annotations") or {}
    cleaned = bool(ann.get(deadline_ttl.CLEANED_ANNOTATION))
    if p.phase == Phase.FAILED:
        # A failure decided by the operator (deadline, stall budget, invalid spec) may leave pods running.
        active = [j for j in p.obs.jobs if not j.finished and not j.deleting]
        for j in active:
            p.delete_attempt(j.attempt)
    if deadline_ttl.ttl_expired(p.st.get("completionTime"), p.spec.get("ttlSecondsAfterFinished"), p.now, cleaned):
        attempts = set(range(1, p.attempt + 1)) | {j.attempt for j in p.obs.jobs if j.attempt}
        for a in sorted(attempts):
            p.delete_attempt(a)
        sa = ch.trainer_sa_name(p.name)
        p.res.delete += [ChildRef("RoleBinding", sa), ChildRef("Role", sa), ChildRef("ServiceAccount", sa)]
        p.res.annotations[deadline_ttl.CLEANED_ANNOTATION] = p.now_s
        p.event("Normal", Reason.TTL_EXPIRED, f"ttlSecondsAfterFinished={p.spec['ttlSecondsAfterFinished']} expired: children removed, status kept")


def validate_body(body: Mapping) -> str | None:
    """Schema and cross-field problems of the SFTJob's spec, each naming its field; None when valid."""
    from sft_api import validate_document

    meta = body.get("metadata") or {}
    doc = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta},
        "spec": body.get("spec"),
    }
    problems = validate_document(doc)
    return "; ".join(str(p) for p in problems) if problems else None
