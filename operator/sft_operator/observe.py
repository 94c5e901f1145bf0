"""Turn the raw Jobs, pods and nodes that belong to one SFTJob into a small typed observation.

Everything the reconcile function looks at passes through here, so it can be unit-tested with
plain dicts (the same JSON the apiserver returns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Mapping

from .children import LABEL_ATTEMPT, LABEL_COMPONENT, LABEL_JOB, LABEL_SPEC_HASH, PREFLIGHT_COMPONENT

__all__ = ["PodObs", "JobObs", "Observation", "observe_pod", "observe_job", "observe", "observation", "parse_time",
           "fmt_time"]


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def fmt_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _preflight_hash(meta: Mapping) -> str | None:
    """The spec hash a preflight child checks; None for the gang's children."""
    lbls = meta.get("labels") or {}
    if lbls.get(LABEL_COMPONENT) != PREFLIGHT_COMPONENT:
        return None
    return lbls.get(LABEL_SPEC_HASH) or ""


def _attempt(meta: Mapping) -> int | None:
    raw = (meta.get("labels") or {}).get(LABEL_ATTEMPT)
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class PodObs:
    name: str
    attempt: int | None
    index: int | None = None
    phase: str = "Pending"
    node: str | None = None
    deleting: bool = False
    running: bool = False  # the trainer container is running
    exit_code: int | None = None
    term_reason: str | None = None  # container termination reason: OOMKilled, Error, Completed
    status_reason: str | None = None  # pod.status.reason, e.g. Evicted
    status_message: str | None = None
    disruption_reason: str | None = None  # DisruptionTarget=True reason
    disruption_message: str | None = None
    unschedulable: str | None = None  # PodScheduled=False message
    finished_at: str | None = None
    term_message: str | None = None  # the container's termination message (the trainer's last words)
    preflight_hash: str | None = None  # set on the preflight pod: the spec hash it checks

    @property
    def failed(self) -> bool:
        # With restartPolicy Never a non-zero exit is final even before the pod phase says so.
        return self.phase == "Failed" or (self.exit_code is not None and self.exit_code != 0)

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded" or (self.exit_code == 0 and self.term_reason is not None)

    @property
    def terminal(self) -> bool:
        """Nothing of this pod runs any more (it may still exist, e.g. behind a finalizer)."""
        return self.failed or self.succeeded

    @property
    def label(self) -> str:
        rank = f" (rank {self.index})" if self.index is not None else ""
        node = f" on node {self.node}" if self.node else ""
        return f"pod {self.name}{rank}{node}"


@dataclass(frozen=True)
class JobObs:
    name: str
    attempt: int | None
    suspended: bool = False
    active: int = 0
    ready: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False
    failed_reason: str | None = None  # Job condition Failed=True reason
    failed_message: str | None = None
    deleting: bool = False
    preflight_hash: str | None = None  # set on the preflight Job: the spec hash it checks

    @property
    def finished(self) -> bool:
        return self.complete or self.failed_reason is not None


@dataclass(frozen=True)
class Observation:
    jobs: tuple[JobObs, ...] = ()
    pods: tuple[PodObs, ...] = ()
    missing_nodes: frozenset[str] = field(default_factory=frozenset)
    # The preflight Job and pod, apart: the gang logic (stale attempts, teardown) never sees them.
    preflight_jobs: tuple[JobObs, ...] = ()
    preflight_pods: tuple[PodObs, ...] = ()
    # Job name -> the message of the Job controller's latest FailedCreate event: the apiserver refuses
    # that Job's pods (a quota, PodSecurity, a webhook). Looked up only for a Job without pods.
    pod_create_errors: Mapping[str, str] = field(default_factory=dict)
    # Kueue's message on the Workload of the current attempt's queued Job (why it is not admitted yet).
    queue_message: str | None = None

    def job(self, attempt: int) -> JobObs | None:
        for j in self.jobs:
            if j.attempt == attempt:
                return j
        return None

    def pods_of(self, attempt: int) -> list[PodObs]:
        return sorted((p for p in self.pods if p.attempt == attempt), key=lambda p: (p.index is None, p.index or 0, p.name))

    def stale(self, attempt: int) -> tuple[list[JobObs], list[PodObs]]:
        return [j for j in self.jobs if j.attempt != attempt], [p for p in self.pods if p.attempt != attempt]


def _trainer_status(pod_status: Mapping) -> Mapping:
    statuses = list(pod_status.get("containerStatuses") or [])
    for cs in statuses:
        if cs.get("name") == "trainer":
            return cs
    return statuses[0] if statuses else {}


def observe_pod(pod: Mapping) -> PodObs:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    st = pod.get("status") or {}
    ann = meta.get("annotations") or {}
    index = ann.get("batch.kubernetes.io/job-completion-index")
    cs = _trainer_status(st)
    state = cs.get("state") or {}
    terminated = state.get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
    disruption = unsched = None
    for cond in st.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            disruption = cond
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            unsched = cond.get("message") or "unschedulable"
    return PodObs(
        name=meta.get("name", ""),
        attempt=_attempt(meta),
        index=int(index) if str(index).isdigit() else None,
        phase=st.get("phase") or "Pending",
        node=spec.get("nodeName"),
        deleting=bool(meta.get("deletionTimestamp")),
        running=bool(state.get("running")) and st.get("phase") == "Running",
        exit_code=terminated.get("exitCode"),
        term_reason=terminated.get("reason"),
        status_reason=st.get("reason"),
        status_message=st.get("message"),
        disruption_reason=(disruption or {}).get("reason") if disruption else None,
        disruption_message=(disruption or {}).get("message") if disruption else None,
        unschedulable=unsched,
        finished_at=terminated.get("finishedAt"),
        term_message=terminated.get("message"),
        preflight_hash=_preflight_hash(meta),
    )


def observe_job(job: Mapping) -> JobObs:
    meta = job.get("metadata") or {}
    spec = job.get("spec") or {}
    st = job.get("status") or {}
    complete = False
    failed_reason = failed_message = None
    for cond in st.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            complete = True
        elif cond.get("type") == "Failed":
            failed_reason, failed_message = cond.get("reason") or "Failed", cond.get("message") or ""
    return JobObs(
        name=meta.get("name", ""),
        attempt=_attempt(meta),
        suspended=bool(spec.get("suspend")),
        active=int(st.get("active") or 0),
        ready=int(st.get("ready") or 0),
        succeeded=int(st.get("succeeded") or 0),
        failed=int(st.get("failed") or 0),
        complete=complete,
        failed_reason=failed_reason,
        failed_message=failed_message,
        deleting=bool(meta.get("deletionTimestamp")),
        preflight_hash=_preflight_hash(meta),
    )


def observation(jobs: Iterable[JobObs], pods: Iterable[PodObs], missing_nodes: frozenset[str] = frozenset()) -> Observation:
    """An Observation of one SFTJob's observed children, the preflight ones set apart."""
    jobs, pods = tuple(jobs), tuple(pods)
    return Observation(
        jobs=tuple(j for j in jobs if j.preflight_hash is None),
        pods=tuple(p for p in pods if p.preflight_hash is None),
        missing_nodes=missing_nodes,
        preflight_jobs=tuple(j for j in jobs if j.preflight_hash is not None),
        preflight_pods=tuple(p for p in pods if p.preflight_hash is not None),
    )


def observe(name: str, jobs: Iterable[Mapping], pods: Iterable[Mapping], node_names: Iterable[str] | None) -> Observation:
    """`node_names` is the set of existing nodes; None means "not looked up" (no node-loss detection)."""
    jobs_o = tuple(observe_job(j) for j in jobs if ((j.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB) == name)
    pods_o = tuple(observe_pod(p) for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB) == name)
    missing: frozenset[str] = frozenset()
    if node_names is not None:
        existing = set(node_names)
        missing = frozenset(p.node for p in pods_o if p.node and p.node not in existing)
    return observation(jobs_o, pods_o, missing)
