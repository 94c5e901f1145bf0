"""The pure reconcile function: (SFTJob body, observed children, now) -> what to do.

`_run` is the recipe, one named step per line, in the manner of jobset's `reconcile()`: guard the
finished and the invalid, suspend or resume, enforce the deadline, tear down stale attempts, run the
preflight, ensure the attempt, judge the attempt. Each step edits the pass's scratch status; the
`Result` carries the whole status once, plus the children to apply and delete, the events, and
`requeue_after`: when the next clock (deadline, stall, TTL, a create backoff) wants a pass.

It never talks to the API; `apply.write_result` applies the `Result` in the order status -> events ->
annotations -> deletes -> applies, so a crash between steps is repaired by the next pass and counters
are never incremented twice (the increment and `attempt+1` are one status write). A child the
apiserver refuses comes back through `child_create_failed`, which records the refusal in status.
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
from .policies import create_backoff, deadline, kueue, preflight, restart_policy, stall, suspend, ttl
from .settings import OperatorSettings

__all__ = ["reconcile", "child_create_failed", "Result", "Event", "ChildRef", "OWNED_STATUS_FIELDS"]

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
    "preflight",
)


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class ChildRef:
    kind: str  # Job | Pod | Service | ConfigMap | ServiceAccount | Role | RoleBinding | NetworkPolicy
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
    requeue_after: float | None = None  # seconds until a clock wants the next pass (None: only on events)

    @property
    def noop(self) -> bool:
        return not (self.status_patch or self.apply or self.delete or self.annotations or self.events)


class _Pass:
    """Mutable scratch state of one reconcile pass."""

    def __init__(self, body: Mapping, obs: Observation, now: datetime, settings: OperatorSettings, validate):
        self.body = body
        self.meta = body.get("metadata") or {}
        self.annotations = self.meta.get("annotations") or {}
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
        self._last_reason = _last_reason(self.old)

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

    def wake(self, seconds: float | None) -> None:
        """Ask for a pass in `seconds` (the earliest of all clocks wins)."""
        if seconds is None:
            return
        seconds = max(float(seconds), 0.0)
        if self.res.requeue_after is None or seconds < self.res.requeue_after:
            self.res.requeue_after = seconds

    def set_phase(self, phase: Phase, reason: Reason, message: str, *, warning: bool = False) -> None:
        """Phase change plus event. The event is emitted once: only when the phase or reason changes."""
        before = (self.st.get("phase"), self._last_reason)
        self.st["phase"] = str(phase)
        self._last_reason = str(reason)
        if before != (str(phase), str(reason)):
            self.event("Warning" if warning else "Normal", reason, message)

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

    def delete_preflight(self, jobs) -> None:
        """The preflight Jobs given, and their pods (they hold no GPU, so nothing waits for them)."""
        names = {j.name for j in jobs}
        self.res.delete += [ChildRef("Job", n) for n in sorted(names)]
        attempts = {j.attempt for j in jobs}
        self.delete_pods([pd for pd in self.obs.preflight_pods if pd.attempt in attempts and not pd.deleting])

    def stop_everything(self) -> None:
        attempts = {j.attempt for j in self.obs.jobs} | {p.attempt for p in self.obs.pods}
        for a in sorted(x for x in attempts if x is not None):
            self.delete_attempt(a)
        self.delete_pods([p for p in self.obs.pods if not p.deleting])
        self.delete_preflight([j for j in self.obs.preflight_jobs if not j.deleting])

    def fail(self, reason: Reason, message: str) -> None:
        self.cond(CondType.FAILED, True, reason, message)
        self.cond(CondType.RUNNING, False, reason, message)
        self.cond(CondType.RESTARTING, False, reason, message)
        self.st["completionTime"] = self.st.get("completionTime") or self.now_s
        self.set_phase(Phase.FAILED, reason, message, warning=True)

    def start_clock(self) -> None:
        """activeDeadlineSeconds counts from the first child's creation; under Kueue from admission."""
        if not self.st.get("startTime") and not kueue.queue_name(self.meta):
            self.st["startTime"] = self.now_s
            self.wake(deadline.seconds_left(self.now_s, self.spec.get("activeDeadlineSeconds"), self.now))

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


def _result(p: _Pass) -> Result:
    p.res.status = p.st
    p.res.status_patch = {k: v for k, v in p.st.items() if p.old.get(k) != v}
    return p.res


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
    if not p.meta.get("deletionTimestamp"):  # deletion: garbage collection removes the children
        _run(p)
    return _result(p)


def _run(p: _Pass) -> None:
    # Record which generation of the spec this pass acted on.
    _observe_generation(p)
    # The trainer's sanity pre-run verdict becomes a condition and, once, an Event.
    _report_sanity_check(p)
    # A tracker that cannot take the logs is a warning condition; training goes on.
    _report_tracking(p)
    # A finished job keeps no gang running and waits only for its TTL.
    if p.phase in (Phase.SUCCEEDED, Phase.FAILED):
        return _finished(p)
    # An invalid spec fails at once, naming the field; nothing is created for it.
    if _guard_invalid(p):
        return
    # spec.suspend stops the gang and keeps status; clearing it starts the next attempt.
    if _suspend_or_resume(p):
        return
    # activeDeadlineSeconds, counted from the first attempt's creation, fails the job.
    if _enforce_deadline(p):
        return
    # Only one attempt may have pods: tear down every other one before going on.
    if _tear_down_stale_attempts(p):
        return
    # The data and template checks run in one CPU-only pod before any GPU is requested.
    if _ensure_preflight(p):
        return
    # Create the attempt's children (waiting out the backoff after a refused create).
    if _ensure_attempt(p):
        return
    # Judge the attempt: success, failure, stall, queued, pending or running.
    _judge_attempt(p)


# -- the steps ---------------------------------------------------------------------------------------


def _observe_generation(p: _Pass) -> None:
    gen = p.meta.get("generation")
    if gen is not None:
        p.st["observedGeneration"] = gen


def _report_sanity_check(p: _Pass) -> None:
    check = ((p.body.get("status") or {}).get("evaluation") or {}).get("sanityCheck") or {}
    if check.get("passed") is None:
        return
    passed = bool(check["passed"])
    reason = Reason.SANITY_CHECK_PASSED if passed else Reason.SANITY_CHECK_FAILED
    message = check.get("message") or f"sanity check {'passed' if passed else 'failed'}"
    if p.cond(CondType.SANITY_CHECK, passed, reason, message):
        p.event("Normal" if passed else "Warning", reason, message)


def _report_tracking(p: _Pass) -> None:
    tracking = (p.body.get("status") or {}).get("tracking") or {}
    healthy = tracking.get("healthy")
    if healthy is None or (healthy and get_condition(p.st.get("conditions"), CondType.TRACKING) is None):
        return  # nothing reported yet, or healthy all along: no condition to keep
    if healthy:
        p.cond(CondType.TRACKING, True, Reason.TRACKER_HEALTHY, "the experiment trackers take the run's logs")
    elif p.cond(CondType.TRACKING, False, Reason.TRACKER_UNAVAILABLE,
                tracking.get("message") or "an experiment tracker cannot be reached"):
        p.event("Warning", Reason.TRACKER_UNAVAILABLE, tracking.get("message") or "an experiment tracker cannot be reached")


def _guard_invalid(p: _Pass) -> bool:
    error = p.validate(p.body) if p.validate is not None else None
    if error:
        p.st.setdefault("attempt", p.attempt)
        p.st.setdefault("restarts", 0)
        p.st.setdefault("preemptions", 0)
        p.fail(Reason.INVALID_SPEC, error)
        p.stop_everything()
        return True
    if p.attempt == 0:  # the first pass of a valid job: attempt 1, counters at zero
        p.st.update(attempt=1, restarts=int(p.st.get("restarts") or 0), preemptions=int(p.st.get("preemptions") or 0))
    return False


def _suspend_or_resume(p: _Pass) -> bool:
    act = suspend.action(bool(p.spec.get("suspend")), p.phase)
    if act == "suspend":
        msg = "spec.suspend is true: pods stopped, status and checkpoints kept"
        p.cond(CondType.SUSPENDED, True, Reason.SUSPENDED, msg)
        p.cond(CondType.RUNNING, False, Reason.SUSPENDED, msg)
        p.set_phase(Phase.SUSPENDED, Reason.SUSPENDED, msg)
        p.stop_everything()
        return True
    if act == "resume":
        p.st["attempt"] = p.attempt + 1
        p.st["startTime"] = None  # the deadline clock restarts, as for a resumed batch Job
        msg = f"resumed: attempt {p.attempt} continues from the latest committed checkpoint"
        p.cond(CondType.SUSPENDED, False, Reason.RESUMED, msg)
        p.cond(CondType.RUNNING, False, Reason.RESUMED, msg)
        p.set_phase(Phase.PENDING, Reason.RESUMED, msg)
    return False


def _enforce_deadline(p: _Pass) -> bool:
    limit = p.spec.get("activeDeadlineSeconds")
    left = deadline.seconds_left(p.st.get("startTime"), limit, p.now)
    if left is None or left > 0:
        p.wake(left)
        return False
    p.fail(Reason.DEADLINE, f"activeDeadlineSeconds={limit} exceeded since startTime {p.st['startTime']}")
    p.stop_everything()
    return True


def _tear_down_stale_attempts(p: _Pass) -> bool:
    """Delete every other attempt; the next one starts only when none of its pods may still run."""
    p.delete_preflight([j for j in p.obs.preflight_jobs if j.attempt != p.attempt and not j.deleting])
    stale_jobs, stale_pods = p.obs.stale(p.attempt)
    if not (stale_jobs or stale_pods):
        return False
    for a in sorted({j.attempt for j in stale_jobs if not j.deleting and j.attempt is not None}):
        p.delete_attempt(a)
    p.delete_pods([pd for pd in stale_pods if not pd.deleting or (pd.node and pd.node in p.obs.missing_nodes)])
    # A terminal pod (it may linger behind the Job tracking finalizer) or one whose node is gone (pod
    # GC removes it) no longer holds its GPUs: the next attempt does not wait for it.
    blocking = [pd for pd in stale_pods if not pd.terminal and not (pd.node and pd.node in p.obs.missing_nodes)]
    if blocking or [j for j in stale_jobs if not j.deleting]:
        msg = f"waiting for {len(blocking)} pod(s) and {len(stale_jobs)} Job(s) of earlier attempts to go"
        p.cond(CondType.RUNNING, False, Reason.TEARING_DOWN, msg)
        return True
    return False


def _create(p: _Pass, objects: list[dict]) -> bool:
    """Queue `objects` for creation unless a refused create of this attempt is backing off."""
    rec = create_backoff.parse(p.annotations.get(create_backoff.ANNOTATION))
    left = create_backoff.wait_left(rec, attempt=p.attempt, now=p.now, base=p.settings.retry_base_seconds,
                                    cap=p.settings.retry_max_seconds)
    if left > 0:
        p.wake(left)
        return False
    p.res.apply = objects
    p.start_clock()
    return True


def _children_exist(p: _Pass) -> None:
    """A child of the attempt exists: clear a recorded refusal and its backoff."""
    if create_backoff.ANNOTATION in p.annotations:
        p.res.annotations[create_backoff.ANNOTATION] = None
    refused = get_condition(p.st.get("conditions"), CondType.CHILD_CREATE_FAILED)
    if refused is not None and refused.get("status") == "True":
        p.cond(CondType.CHILD_CREATE_FAILED, False, Reason.CHILDREN_CREATED, f"the children of attempt {p.attempt} were created")


def _pods_refused(p: _Pass, job, pods) -> None:
    """The Job exists; when the apiserver refuses its pods (a GPU quota, PodSecurity, a webhook), the
    Job controller retries by itself and only says so in an Event on the Job: say it in status too."""
    refused = None if pods else p.obs.pod_create_errors.get(job.name)
    if not refused:
        _children_exist(p)
        return
    msg = f"attempt {p.attempt}: Job {job.name} cannot create its pods: {refused}"
    if p.cond(CondType.CHILD_CREATE_FAILED, True, Reason.FAILED_CREATE, msg):
        p.event("Warning", Reason.FAILED_CREATE, msg)


_PREFLIGHT_REASONS = (str(Reason.PREFLIGHT_RUNNING), str(Reason.PREFLIGHT_PASSED))


def _ensure_attempt(p: _Pass) -> bool:
    """Create the current attempt's children; True when this pass has nothing more to judge."""
    attempt = p.attempt
    job = p.obs.job(attempt)
    if job is not None:
        _pods_refused(p, job, p.obs.pods_of(attempt))
        if not job.suspended and not p.st.get("startTime"):
            p.st["startTime"] = p.now_s  # a Job Kueue admitted starts the clock now
            p.wake(deadline.seconds_left(p.now_s, p.spec.get("activeDeadlineSeconds"), p.now))
        return False
    pods = p.obs.pods_of(attempt)
    if pods:  # the Job vanished under its pods: clear them before creating it again
        p.delete_pods([pd for pd in pods if not pd.deleting])
        return True
    if _create(p, ch.render(p.body, attempt=attempt, settings=p.settings)) and (
        p.phase is None or (p.phase == Phase.PENDING and p._last_reason in _PREFLIGHT_REASONS)
    ):
        msg = f"attempt {attempt}: {p.nodes} node(s) requested"
        p.cond(CondType.RUNNING, False, Reason.CREATED, msg)
        p.set_phase(Phase.PENDING, Reason.CREATED, msg)
    return True


def _ensure_preflight(p: _Pass) -> bool:
    """True while the preflight holds the gang back (running, retried or failed the job)."""
    attempt = p.attempt
    if p.obs.job(attempt) is not None or p.obs.pods_of(attempt):
        return False  # this attempt's gang exists already
    if not preflight.enabled(p.spec):
        p.cond(CondType.PREFLIGHT, False, Reason.PREFLIGHT_SKIPPED, "spec.preflight.enabled is false")
        return False
    digest = preflight.spec_hash(p.spec)
    if preflight.passed_for(p.st.get("preflight"), digest):
        return False  # passed for this spec in an earlier attempt: once per spec, not per restart
    mine = [j for j in p.obs.preflight_jobs if j.attempt == attempt]
    old = [j for j in mine if j.preflight_hash != digest]
    p.delete_preflight([j for j in old if not j.deleting])  # it checked an earlier spec
    job = next((j for j in mine if j.preflight_hash == digest and not j.deleting), None)
    if job is None:
        if not old and _create(p, ch.render_preflight(p.body, attempt=attempt, spec_hash=digest, settings=p.settings)):
            _preflight_running(p, f"attempt {attempt}: preflight Job {ch.preflight_job_name(p.name, attempt)} created")
        return True
    pods = [pd for pd in p.obs.preflight_pods if pd.attempt == attempt and pd.preflight_hash == digest]
    _pods_refused(p, job, pods)
    outcome = preflight.judge(job, pods)
    if outcome.state == "running":
        _preflight_running(p, outcome.message)
        return True
    p.st["preflight"] = {"specHash": digest, "generation": p.meta.get("generation"), "passed": outcome.state == "passed",
                         "message": truncate(outcome.message), "finishedAt": p.now_s}
    if outcome.state == "passed":
        if p.cond(CondType.PREFLIGHT, True, Reason.PREFLIGHT_PASSED, outcome.message):
            p.event("Normal", Reason.PREFLIGHT_PASSED, outcome.message)
        return False
    # A failed preflight fails the job or, when a restart can help, starts the next attempt (whose
    # teardown removes this one's preflight Job); the failed pod stays for `kubectl logs`.
    p.cond(CondType.PREFLIGHT, False, outcome.failure.reason, outcome.message)
    _restart_or_fail(p, outcome.failure, None)
    return True


def _preflight_running(p: _Pass, message: str) -> None:
    p.cond(CondType.PREFLIGHT, False, Reason.PREFLIGHT_RUNNING, message)
    p.cond(CondType.RUNNING, False, Reason.PREFLIGHT_RUNNING, message)
    keep = Phase.RESTARTING if p.phase == Phase.RESTARTING else Phase.PENDING
    p.set_phase(keep, Reason.PREFLIGHT_RUNNING, message)


def _judge_attempt(p: _Pass) -> None:
    attempt = p.attempt
    job = p.obs.job(attempt)
    pods = p.obs.pods_of(attempt)
    if job.complete or (job.succeeded >= p.nodes and not job.failed_reason):
        return _succeeded(p, job)
    # Kueue's eviction first: suspending the Job makes the Job controller delete its pods, so a pass that
    # sees the suspension late also sees their SIGTERM exits (143), which are its consequence.
    if kueue.evicted(job, p.phase):
        failure = restart_policy.Failure(Reason.PREEMPTED, f"attempt {attempt} was evicted by Kueue (its Job suspended)")
        return _restart_or_fail(p, failure, job)
    failure = restart_policy.classify(job, pods, p.obs.missing_nodes)
    if failure is not None:
        return _restart_or_fail(p, failure, job)
    if kueue.is_queued(job):
        msg = f"waiting for admission by Kueue (queue {kueue.queue_name(p.meta) or '?'})"
        if p.obs.queue_message:
            msg += f": {p.obs.queue_message}"
        p.cond(CondType.RUNNING, False, Reason.QUEUED, msg)
        return p.set_phase(Phase.PENDING, Reason.QUEUED, msg)
    # A rank that already finished with exit 0 still counts: the Job is about to complete.
    running = [pd for pd in pods if (pd.running or pd.succeeded) and not pd.deleting]
    if len(running) >= p.nodes:
        return _running(p, attempt, len(running))
    if p.phase == Phase.RUNNING:
        # A gang that ran keeps its phase until a failure, a stall or success is seen: a pod that
        # just stopped running is about to be classified (its failure may not be visible yet).
        return None
    unsched = next((pd for pd in pods if pd.unschedulable), None)
    if unsched is not None:
        reason, msg = Reason.UNSCHEDULABLE, f"{unsched.label} cannot be scheduled: {unsched.unschedulable}"
    else:
        reason, msg = Reason.PODS_PENDING, f"{len(running)}/{p.nodes} pod(s) of attempt {attempt} running"
    p.cond(CondType.RUNNING, False, reason, msg)
    keep = Phase.RESTARTING if p.phase == Phase.RESTARTING else Phase.PENDING
    p.set_phase(keep, reason, msg, warning=reason == Reason.UNSCHEDULABLE)


def _succeeded(p: _Pass, job) -> None:
    msg = f"attempt {p.attempt} completed: {job.succeeded}/{p.nodes} node(s) succeeded"
    p.cond(CondType.SUCCEEDED, True, Reason.COMPLETED, msg)
    p.cond(CondType.RUNNING, False, Reason.COMPLETED, msg)
    p.cond(CondType.RESTARTING, False, Reason.COMPLETED, msg)
    p.st["completionTime"] = p.now_s
    p.set_phase(Phase.SUCCEEDED, Reason.COMPLETED, msg)


def _running(p: _Pass, attempt: int, n_running: int) -> None:
    msg = f"attempt {attempt}: {n_running}/{p.nodes} pod(s) running"
    if p.phase != Phase.RUNNING:
        p.res.became_running = True
    p.cond(CondType.RUNNING, True, Reason.PODS_RUNNING, msg)
    if get_condition(p.st.get("conditions"), CondType.RESTARTING) is not None:
        p.cond(CondType.RESTARTING, False, Reason.PODS_RUNNING, msg)
    p.set_phase(Phase.RUNNING, Reason.PODS_RUNNING, msg)
    _judge_stall(p, attempt)


def _judge_stall(p: _Pass, attempt: int) -> None:
    """The stall clock of a running gang, by the trainer's reported phase."""
    seen = stall.parse_seen(p.annotations.get(stall.ANNOTATION))
    step = p.progress.get("step")
    timeout = p.fp("stallTimeoutSeconds")
    check = stall.check(seen, attempt=attempt, step=step, now=p.now, timeout=timeout, phase=p.progress.get("phase"),
                        heartbeat=p.progress.get("heartbeatTime"), phase_timeouts=p.settings.phase_timeouts,
                        heartbeat_grace=p.settings.heartbeat_grace_seconds)
    if check.changed:
        p.res.annotations[stall.ANNOTATION] = json.dumps(check.seen, sort_keys=True)
        stalled_cond = get_condition(p.st.get("conditions"), CondType.STALLED)
        if stalled_cond is not None and stalled_cond.get("status") == "True" and seen is not None and seen.get("attempt") == attempt:
            p.cond(CondType.STALLED, False, Reason.NOT_STALLED, f"progress reported: phase {check.phase}, step {step}")
    if not check.stalled:
        p.wake(check.wake_in)
        return
    p.cond(CondType.STALLED, True, Reason.STALLED, check.message)
    failure = restart_policy.Failure(Reason.STALLED, f"attempt {attempt} stalled: {check.message}")
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
    cleaned = bool(p.annotations.get(ttl.CLEANED_ANNOTATION))
    if p.phase == Phase.FAILED:
        # A failure decided by the operator (deadline, stall budget, invalid spec) may leave pods running.
        for j in [j for j in p.obs.jobs if not j.finished and not j.deleting]:
            p.delete_attempt(j.attempt)
        # A preflight pod still checking goes too; a finished one stays for `kubectl logs`.
        busy = {pd.attempt for pd in p.obs.preflight_pods if not pd.terminal and not pd.deleting}
        p.delete_preflight([j for j in p.obs.preflight_jobs if j.attempt in busy and not j.finished and not j.deleting])
    limit = p.spec.get("ttlSecondsAfterFinished")
    left = ttl.seconds_left(p.st.get("completionTime"), limit, p.now, cleaned)
    if left is None or left > 0:
        p.wake(left)
        return
    attempts = set(range(1, p.attempt + 1)) | {j.attempt for j in p.obs.jobs if j.attempt}
    for a in sorted(attempts):
        p.delete_attempt(a)
    p.delete_preflight([j for j in p.obs.preflight_jobs if not j.deleting])
    sa = ch.trainer_sa_name(p.name)
    p.res.delete += [ChildRef("RoleBinding", sa), ChildRef("Role", sa), ChildRef("ServiceAccount", sa),
                     ChildRef("NetworkPolicy", ch.network_policy_name(p.name))]
    p.res.annotations[ttl.CLEANED_ANNOTATION] = p.now_s
    p.event("Normal", Reason.TTL_EXPIRED, f"ttlSecondsAfterFinished={limit} expired: children removed, status kept")


# -- a child the apiserver refused ---------------------------------------------------------------------


def child_create_failed(
    body: Mapping,
    obs: Observation,
    now: datetime,
    settings: OperatorSettings | None = None,
    *,
    kind: str,
    name: str,
    code: int,
    message: str,
) -> Result:
    """Record that the apiserver refused to create child `kind/name` (HTTP `code`, its `message`): the
    condition ChildCreateFailed carries the message, a Warning event says it once, and the next try
    waits out this job's exponential backoff (`policies/create_backoff.py`)."""
    p = _Pass(body, obs, now, settings or OperatorSettings(), None)
    rec = create_backoff.record(create_backoff.parse(p.annotations.get(create_backoff.ANNOTATION)), attempt=p.attempt, now=now)
    delay = create_backoff.delay(rec["failures"], p.settings.retry_base_seconds, p.settings.retry_max_seconds)
    msg = f"attempt {p.attempt}: the apiserver refused to create {kind} {name} (HTTP {code}): {message}"
    if p.cond(CondType.CHILD_CREATE_FAILED, True, Reason.FAILED_CREATE, msg):
        p.event("Warning", Reason.FAILED_CREATE, f"{msg}; retrying with exponential backoff (next in {delay:.0f}s)")
    p.res.annotations[create_backoff.ANNOTATION] = json.dumps(rec, sort_keys=True)
    p.wake(delay)
    return _result(p)


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
