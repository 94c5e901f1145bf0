"""Preemption policy: disruptions that are not the job's fault count as `preemptions`.

A pod is disrupted when it carries `DisruptionTarget=True` (scheduler preemption, the Eviction API,
taint-based eviction, pod GC after node loss), when the kubelet evicted it (`status.reason=Evicted`),
or when the node it ran on no longer exists.
"""

from __future__ import annotations

import re

from ..conditions import Reason
from ..observe import JobObs, PodObs

__all__ = ["disruption_of", "job_disruption", "DISRUPTION_TARGET_REASONS"]

# DisruptionTarget condition reasons (k8s.io/api/core/v1) → our reason.
DISRUPTION_TARGET_REASONS: dict[str, Reason] = {
    "PreemptionByScheduler": Reason.PREEMPTED,
    "PreemptionByKubeScheduler": Reason.PREEMPTED,
    "EvictionByEvictionAPI": Reason.EVICTED,
    "TerminationByKubelet": Reason.EVICTED,
    "DeletionByTaintManager": Reason.NODE_LOST,
    "DeletionByPodGC": Reason.NODE_LOST,
}


def disruption_of(pod: PodObs, missing_nodes: frozenset[str] | set[str] = frozenset()) -> tuple[Reason, str] | None:
    if pod.disruption_reason is not None:
        reason = DISRUPTION_TARGET_REASONS.get(pod.disruption_reason, Reason.PREEMPTED)
        detail = pod.disruption_message or pod.disruption_reason
        return reason, f"{pod.label} was disrupted ({pod.disruption_reason}): {detail}"
    if pod.node and pod.node in missing_nodes:
        return Reason.NODE_LOST, f"{pod.label}: node {pod.node} no longer exists"
    if pod.failed and pod.status_reason == "Evicted":
        return Reason.EVICTED, f"{pod.label} was evicted by the kubelet: {pod.status_message or 'no message'}"
    return None


_RULE = re.compile(r"matching FailJob rule at index (\d+)")


def job_disruption(job: JobObs) -> tuple[Reason, str] | None:
    """The Job failed through podFailurePolicy rule 1 (DisruptionTarget) but its pod is already gone."""
    if job.failed_reason != "PodFailurePolicy":
        return None
    m = _RULE.search(job.failed_message or "")
    if m and m.group(1) == "1":
        return Reason.PREEMPTED, f"Job {job.name}: {job.failed_message}"
    return None
