"""Kueue policy: with the queue-name label the child Job is created suspended and carries the
label; Kueue admits it by unsuspending it. Until then the SFTJob is Pending with reason Queued.
The operator never re-applies an existing Job, so it cannot undo an admission.

A gang that ran and whose Job Kueue suspends again was evicted (priority preemption, a reclaimed
quota): that is a preemption, counted apart from restarts; the next attempt queues again and resumes
from the latest committed checkpoint once Kueue readmits it.
"""

from __future__ import annotations

from typing import Mapping

from ..children import QUEUE_LABEL
from ..conditions import Phase
from ..observe import JobObs

__all__ = ["queue_name", "is_queued", "evicted", "admission_message"]


def queue_name(metadata: Mapping) -> str | None:
    return (metadata.get("labels") or {}).get(QUEUE_LABEL) or None


def is_queued(job: JobObs | None) -> bool:
    return job is not None and job.suspended and not job.finished


def evicted(job: JobObs | None, phase: str | None) -> bool:
    """Kueue suspended the Job of a gang that was running."""
    return is_queued(job) and phase == Phase.RUNNING


_ADMISSION_CONDITIONS = ("QuotaReserved", "Admitted")


def admission_message(workloads: list[Mapping], job_name: str) -> str | None:
    """The message of the first admission condition that is not True on ``job_name``'s Workload."""
    for wl in workloads:
        owners = (wl.get("metadata") or {}).get("ownerReferences") or []
        if not any(o.get("kind") == "Job" and o.get("name") == job_name for o in owners):
            continue
        conds = {c.get("type"): c for c in (wl.get("status") or {}).get("conditions") or []}
        for ctype in _ADMISSION_CONDITIONS:
            c = conds.get(ctype)
            if c is not None and c.get("status") != "True" and c.get("message"):
                return str(c["message"])
    return None
