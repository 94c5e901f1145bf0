"""Restart policy: classify what failed in the current attempt and decide restart or fail.

Priority when several pods fail together (peers of a dead rank usually crash too):
non-retryable trainer exit code > disruption (preemption) > OOMKilled > other exit codes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from ..conditions import DISRUPTION_REASONS, INTERRUPTED_EXIT_CODE, NON_RETRYABLE_EXIT_CODES, Reason
from ..observe import JobObs, PodObs
from .preemption import disruption_of, job_disruption

__all__ = ["Failure", "Decision", "pod_failure", "classify", "decide"]


@dataclass(frozen=True)
class Failure:
    reason: Reason
    message: str
    pod: str | None = None
    node: str | None = None
    exit_code: int | None = None

    def info(self) -> dict:
        """`status.lastFailure`: which pod or node failed, and why."""
        out = {"reason": str(self.reason), "message": self.message, "pod": self.pod, "node": self.node, "exitCode": self.exit_code}
        return {k: v for k, v in out.items() if v is not None}

    @property
    def disruption(self) -> bool:
        return self.reason in DISRUPTION_REASONS

    @property
    def retryable(self) -> bool:
        return self.reason not in NON_RETRYABLE_EXIT_CODES.values()

    @property
    def rank(self) -> int:
        if not self.retryable:
            return 0
        if self.disruption:
            return 1
        if self.reason == Reason.OOM_KILLED:
            return 2
        return 3


@dataclass(frozen=True)
class Decision:
    restart: bool  # False: the job fails now
    reason: Reason  # condition reason for the Restarting or Failed condition
    message: str
    counts_as: str | None  # "restarts" | "preemptions" | None (fails)
    failure: Failure


def pod_failure(pod: PodObs, missing_nodes: frozenset[str] | set[str] = frozenset()) -> Failure | None:
    disrupted = disruption_of(pod, missing_nodes)
    if disrupted is not None:
        return Failure(disrupted[0], disrupted[1], pod.name, pod.node, pod.exit_code)
    if not pod.failed:
        return None
    code = pod.exit_code
    coded = _trainer_exit(code, pod.label, pod.name, pod.node)
    if coded is not None:
        return coded
    if pod.term_reason == "OOMKilled":
        return Failure(Reason.OOM_KILLED, f"{pod.label} was OOMKilled (exit code {code})", pod.name, pod.node, code)
    if code is not None:
        return Failure(Reason.POD_FAILED, f"{pod.label} exited with code {code}", pod.name, pod.node, code)
    why = pod.status_reason or "unknown reason"
    return Failure(Reason.POD_FAILED, f"{pod.label} failed: {why} {pod.status_message or ''}".strip(), pod.name, pod.node)


def _trainer_exit(code: int | None, who: str, pod: str | None, node: str | None) -> Failure | None:
    """The failures an exit code of the trainer names by itself: a non-retryable one, or 75 (stopped on
    SIGTERM after committing a checkpoint)."""
    if code in NON_RETRYABLE_EXIT_CODES:
        reason = NON_RETRYABLE_EXIT_CODES[code]
        return Failure(reason, f"{who} exited with code {code} ({reason})", pod, node, code)
    if code == INTERRUPTED_EXIT_CODE:
        return Failure(Reason.INTERRUPTED, f"{who} stopped on SIGTERM after committing a checkpoint (exit code {code})", pod, node, code)
    return None


_EXIT = re.compile(r"(?:for pod [^/\s]+/(?P<pod>\S+) )?failed with exit code (?P<code>\d+)")


def _job_failure(job: JobObs) -> Failure | None:
    """Fallback when the Job failed but the failed pod is no longer visible (a deleted pod goes once
    the Job controller has counted it): the Job's podFailurePolicy message names the pod and the exit
    code of the rule it matched."""
    if job.failed_reason is None:
        return None
    disrupted = job_disruption(job)
    if disrupted is not None:
        return Failure(disrupted[0], disrupted[1])
    m = _EXIT.search(job.failed_message or "")
    if m is None:
        return Failure(Reason.POD_FAILED, f"Job {job.name} failed ({job.failed_reason}): {job.failed_message}")
    code, pod = int(m.group("code")), m.group("pod")
    coded = _trainer_exit(code, f"pod {pod} of Job {job.name}" if pod else f"Job {job.name}", pod, None)
    if coded is not None:
        return coded
    return Failure(Reason.POD_FAILED, f"Job {job.name} failed ({job.failed_reason}): {job.failed_message}", pod, exit_code=code)


def classify(job: JobObs | None, pods: Iterable[PodObs], missing_nodes: frozenset[str] | set[str] = frozenset()) -> Failure | None:
    failures = [f for f in (pod_failure(p, missing_nodes) for p in pods) if f is not None]
    if failures:
        return min(failures, key=lambda f: (f.rank, f.pod or ""))
    return _job_failure(job) if job is not None else None


def decide(failure: Failure, *, restarts: int, preemptions: int, max_restarts: int, max_preemptions: int) -> Decision:
    if not failure.retryable:
        return Decision(False, failure.reason, failure.message, None, failure)
    if failure.disruption:
        if preemptions >= max_preemptions:
            msg = f"preemptions exhausted ({preemptions}/{max_preemptions}); last: {failure.message}"
            return Decision(False, Reason.MAX_PREEMPTIONS, msg, None, failure)
        return Decision(True, failure.reason, failure.message, "preemptions", failure)
    if restarts >= max_restarts:
        msg = f"restarts exhausted ({restarts}/{max_restarts}); last failure: {failure.message}"
        return Decision(False, Reason.MAX_RESTARTS, msg, None, failure)
    return Decision(True, failure.reason, failure.message, "restarts", failure)
