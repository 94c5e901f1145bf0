"""Kueue policy: with the queue-name label the child Job is created suspended and carries the
label; Kueue admits it by unsuspending it. Until then the SFTJob is Pending with reason Queued.
The operator never re-applies an existing Job, so it cannot undo an admission.
"""

from __future__ import annotations

from typing import Mapping

from ..children import QUEUE_LABEL
from ..observe import JobObs

__all__ = ["queue_name", "is_queued"]


def queue_name(metadata: Mapping) -> str | None:
    return (metadata.get("labels") or {}).get(QUEUE_LABEL) or None


def is_queued(job: JobObs | None) -> bool:
    return job is not None and job.suspended and not job.finished
