"""Builders of apiserver-shaped dicts (SFTJob, Job, Pod) for the operator's unit tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sft_operator.children import (LABEL_ATTEMPT, LABEL_COMPONENT, LABEL_JOB, LABEL_SPEC_HASH, PREFLIGHT_COMPONENT,
                                   job_name, preflight_job_name)
from sft_operator.observe import fmt_time, observe

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def sftjob(name="demo", *, nodes=2, gpus=8, status=None, suspend=False, labels=None, annotations=None,
           max_restarts=3, stall=None, deadline=None, ttl=None, generation=1, deleting=False, extra_spec=None,
           preflight=False):
    """`preflight=False` skips the preflight pod (spec.preflight.enabled: false), so the gang comes first."""
    spec = {
        "model": {"uri": "file:///models/tiny"},
        "datasets": [{"uri": "file:///data/train.jsonl", "format": "messages"}],
        "training": {"maxSteps": 100},
        "checkpoints": {"uri": "s3://ckpt/demo/"},
        "output": {"uri": "s3://out/demo/"},
        "storage": {"secretRef": "s3-credentials", "endpoint": "http://127.0.0.1:8333"},
        "workers": {"nodes": nodes, "gpusPerNode": gpus, "image": "trainer:test",
                    "resources": {"requests": {"cpu": "4", "memory": "16Gi"}}},
        "failurePolicy": {"maxRestarts": max_restarts, "stallTimeoutSeconds": stall},
        "suspend": suspend,
        "activeDeadlineSeconds": deadline,
        "ttlSecondsAfterFinished": ttl,
        "preflight": {"enabled": bool(preflight)},
    }
    spec["failurePolicy"] = {k: v for k, v in spec["failurePolicy"].items() if v is not None}
    spec = {k: v for k, v in spec.items() if v is not None}
    spec.update(extra_spec or {})
    meta = {"name": name, "namespace": "ns", "uid": "uid-1", "generation": generation,
            "creationTimestamp": fmt_time(T0), "labels": dict(labels or {}), "annotations": dict(annotations or {})}
    if deleting:
        meta["deletionTimestamp"] = fmt_time(T0)
    body = {"apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": meta, "spec": spec}
    if status is not None:
        body["status"] = status
    return body


def kjob(name="demo", attempt=1, *, suspended=False, active=0, succeeded=0, failed=0, complete=False,
         failed_reason=None, failed_message="", deleting=False):
    conds = []
    if complete:
        conds.append({"type": "Complete", "status": "True"})
    if failed_reason:
        conds.append({"type": "Failed", "status": "True", "reason": failed_reason, "message": failed_message})
    meta = {"name": job_name(name, attempt), "labels": {LABEL_JOB: name, LABEL_ATTEMPT: str(attempt)}}
    if deleting:
        meta["deletionTimestamp"] = fmt_time(T0)
    return {"metadata": meta, "spec": {"suspend": suspended},
            "status": {"active": active, "succeeded": succeeded, "failed": failed, "conditions": conds}}


def pod(name="demo", attempt=1, index=0, *, phase="Running", node="gpu-0", exit_code=None, term_reason=None,
        status_reason=None, disruption=None, unschedulable=None, deleting=False):
    cs = {"name": "trainer"}
    if phase == "Running":
        cs["state"] = {"running": {"startedAt": fmt_time(T0)}}
    elif exit_code is not None:
        cs["state"] = {"terminated": {"exitCode": exit_code, "reason": term_reason or ("Completed" if exit_code == 0 else "Error"),
                                      "finishedAt": fmt_time(T0)}}
    else:
        cs["state"] = {"waiting": {"reason": "ContainerCreating"}}
    conds = []
    if disruption:
        conds.append({"type": "DisruptionTarget", "status": "True", "reason": disruption, "message": f"{disruption} happened"})
    if unschedulable:
        conds.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable})
    meta = {"name": f"{job_name(name, attempt)}-{index}-x", "labels": {LABEL_JOB: name, LABEL_ATTEMPT: str(attempt)},
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}}
    if deleting:
        meta["deletionTimestamp"] = fmt_time(T0)
    st = {"phase": phase, "containerStatuses": [cs], "conditions": conds}
    if status_reason:
        st["reason"] = status_reason
        st["message"] = f"{status_reason} message"
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}, "status": st}


def with_message(raw_pod, message):
    """The pod's container terminated with this termination message."""
    raw_pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = message
    return raw_pod


def _preflight(raw, digest, name):
    raw["metadata"]["labels"].update({LABEL_COMPONENT: PREFLIGHT_COMPONENT, LABEL_SPEC_HASH: digest})
    return raw


def preflight_job(digest, name="demo", attempt=1, **kw):
    """The preflight Job of `attempt` that checks spec hash `digest` (kjob()'s keywords)."""
    raw = _preflight(kjob(name, attempt, **kw), digest, name)
    raw["metadata"]["name"] = preflight_job_name(name, attempt)
    return raw


def preflight_pod(digest, name="demo", attempt=1, message=None, **kw):
    """Its pod (pod()'s keywords); `message` is the container's termination message."""
    raw = _preflight(pod(name, attempt, **kw), digest, name)
    raw["metadata"]["name"] = f"{preflight_job_name(name, attempt)}-x"
    raw["metadata"]["annotations"] = {}
    return with_message(raw, message) if message is not None else raw


def obs(jobs=(), pods=(), nodes=None, name="demo"):
    return observe(name, list(jobs), list(pods), nodes)
