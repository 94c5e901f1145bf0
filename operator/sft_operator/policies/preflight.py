"""Preflight policy: before the first GPU of an attempt is requested, the trainer's data and template
checks run in one CPU-only pod; a data or template error fails the SFTJob without a GPU ever held.

- It runs once per SFTJob: `status.preflight` records the spec hash (and generation) it passed for,
  and later attempts skip it while the hash is the same. A changed spec checks again.
- The hash covers what the checks read: everything in the spec except the fields that only steer
  the lifecycle (suspend, deadline, TTL, failure policy), the experiment tracker, or the gang's shape
  (nodes, GPUs, placement).
  The trainer image is part of it: a new image may fix a template.
- `spec.preflight.enabled: false` skips it (for example when the data is only readable from GPU nodes).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Mapping

from ..conditions import Reason
from ..observe import JobObs, PodObs
from .restart_policy import Failure, pod_failure

__all__ = ["enabled", "spec_hash", "passed_for", "Outcome", "judge"]

# Spec fields that do not change what the preflight checks: the lifecycle, and where metrics go.
_LIFECYCLE_FIELDS = ("suspend", "activeDeadlineSeconds", "ttlSecondsAfterFinished", "failurePolicy", "tracking")


def enabled(spec: Mapping) -> bool:
    return bool((spec.get("preflight") or {}).get("enabled", True))


def spec_hash(spec: Mapping) -> str:
    """16 hex digits over the fields the preflight reads (fits a label value)."""
    checked = {k: v for k, v in spec.items() if k not in _LIFECYCLE_FIELDS and k != "workers"}
    checked["image"] = (spec.get("workers") or {}).get("image")
    checked["env"] = (spec.get("workers") or {}).get("env")
    raw = json.dumps(checked, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def passed_for(status_preflight: Mapping | None, digest: str) -> bool:
    return bool(status_preflight) and status_preflight.get("specHash") == digest and status_preflight.get("passed") is True


@dataclass(frozen=True)
class Outcome:
    state: str  # "running" | "passed" | "failed"
    message: str
    failure: Failure | None = None


TAIL = 600  # characters of the termination message kept: its end, where the error line is


def _said(pod: PodObs) -> str:
    """The pod's termination message on one line: the trainer's own, or its last log lines (the error,
    naming the file:line of a bad row, comes last, so a long message keeps its end)."""
    said = " ".join((pod.term_message or "").split())
    return said if len(said) <= TAIL else "..." + said[-TAIL:]


def judge(job: JobObs | None, pods: Iterable[PodObs]) -> Outcome:
    """What the preflight of one spec hash says so far."""
    pods = list(pods)
    done = next((p for p in pods if p.succeeded), None)
    if done is not None or (job is not None and job.complete):
        said = _said(done) if done else ""
        return Outcome("passed", f"preflight passed{': ' + said if said else ''}")
    for pod in pods:
        failure = pod_failure(pod)
        if failure is not None:
            said = _said(pod)
            message = f"preflight {failure.message}{': ' + said if said else ''}"
            return Outcome("failed", message, Failure(failure.reason, message, failure.pod, failure.node, failure.exit_code))
    if job is not None and job.failed_reason:
        message = f"preflight Job {job.name} failed ({job.failed_reason}): {job.failed_message}"
        return Outcome("failed", message, Failure(Reason.POD_FAILED, message))
    running = next((p for p in pods if p.running), None)
    where = f"{running.label} is checking" if running else "its pod is starting"
    return Outcome("running", f"{where} the data and chat template before any GPU is requested")
