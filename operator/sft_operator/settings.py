"""Operator settings, read once from the environment (the Helm chart sets these as container env).

Every field has a default that works for a plain `kopf run`; tests shorten the timers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from sft_api.contract import TRAINER_UID

__all__ = ["OperatorSettings", "load_settings"]


def _env(name: str, default: Any, cast=str) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"environment variable {name}={raw!r} is invalid: {exc}") from None


def _json_dict(raw: str) -> dict:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def _json_list(raw: str) -> list:
    value = json.loads(raw)
    if not isinstance(value, list):
        raise ValueError("expected a JSON array")
    return value


def _pull_secrets(raw: str) -> list:
    """A JSON array of LocalObjectReferences (`[{"name": "regcred"}]`) or of plain names."""
    out = []
    for item in _json_list(raw):
        name = item.get("name") if isinstance(item, dict) else item
        if not isinstance(name, str) or not name:
            raise ValueError(f"expected {{\"name\": ...}} or a name, got {item!r}")
        out.append({"name": name})
    return out


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise ValueError("expected true or false")
    return value in ("true", "1")


@dataclass(frozen=True)
class OperatorSettings:
    # -- image used when spec.workers.image is empty
    trainer_image: str = "ghcr.io/sft-operator/trainer:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    # -- resources merged under the user's workers.resources (user values win)
    default_resources: dict = field(default_factory=dict)
    # -- S3 endpoint used when spec.storage.endpoint is null (e.g. an in-cluster SeaweedFS/MinIO)
    storage_endpoint: str | None = None
    # -- torch.distributed rendezvous port on rank 0
    master_port: int = 29500
    # -- port of the trainer's Prometheus endpoint (named container port `metrics`)
    trainer_metrics_port: int = 9400
    # -- seconds a trainer pod gets after SIGTERM to save and commit a checkpoint
    termination_grace_seconds: int = 600
    # -- size limit of the memory-backed /dev/shm
    shm_size: str = "16Gi"
    # -- preemption cap when spec.failurePolicy has none (preemptions are not the job's fault)
    max_preemptions: int = 20
    # -- how often every SFTJob is reconciled even without events: a safety net only (the stall, deadline
    # and TTL clocks requeue their own passes); at 1000 jobs a 15 s resync alone was 67 passes a second
    resync_seconds: float = 120.0
    # -- reconcile worker threads (passes of different SFTJobs run in parallel; each mostly waits on the apiserver)
    workers: int = 16
    # -- seconds a child's or a progress event waits for the next ones of the same SFTJob, so that a burst
    # (a gang's pods scheduled, started, their Job's status) is one pass; a new SFTJob is not delayed
    coalesce_seconds: float = 0.25
    # -- seconds between the metadata-only lists of nodes that tell a pod on a vanished node (NodeLost)
    node_poll_seconds: float = 5.0
    # -- operator metrics port (/metrics)
    metrics_port: int = 8080
    # -- liveness/readiness endpoint for kopf (`/healthz`)
    health_port: int = 8081
    # -- seconds after which a silent peer counts as dead (failover time of an HA pair)
    peering_lifetime_seconds: int = 60
    # -- run as the trainer pods' user (restricted PSS needs a non-root uid)
    run_as_user: int = TRAINER_UID
    # -- resources of the CPU-only preflight pod (never a GPU)
    preflight_resources: dict = field(default_factory=lambda: {"requests": {"cpu": "1", "memory": "2Gi"},
                                                               "limits": {"memory": "8Gi"}})
    # -- seconds the preflight Job may run (its activeDeadlineSeconds)
    preflight_timeout_seconds: int = 3600
    # -- first delay of a retry (a failed pass, a child the apiserver refused); it doubles per failure
    retry_base_seconds: float = 2.0
    # -- the longest delay between retries
    retry_max_seconds: float = 300.0
    # -- seconds each non-training trainer phase may last, overriding the stall policy's defaults
    phase_timeouts: dict = field(default_factory=dict)
    # -- the shortest heartbeat silence that counts as hung (the trainer beats every 30 s)
    heartbeat_grace_seconds: float = 90.0
    # -- Kueue LocalQueue for SFTJobs without a kueue.x-k8s.io/queue-name label (unset: those are not queued)
    default_queue_name: str | None = None
    # -- pull secrets of trainer pods when spec.workers.imagePullSecrets is unset ([{"name": ...}])
    image_pull_secrets: list = field(default_factory=list)
    # -- render a per-job NetworkPolicy: ingress only from the job's own pods, plus metrics_from
    network_policy: bool = True
    # -- NetworkPolicyPeers that may reach the trainer's metrics port (empty: only the job's pods)
    metrics_from: list = field(default_factory=list)

    @classmethod
    def from_env(cls) -> "OperatorSettings":
        d = cls()
        return cls(
            trainer_image=_env("SFT_TRAINER_IMAGE", d.trainer_image),
            image_pull_policy=_env("SFT_IMAGE_PULL_POLICY", d.image_pull_policy),
            default_resources=_env("SFT_DEFAULT_RESOURCES", {}, _json_dict),
            storage_endpoint=_env("SFT_STORAGE_ENDPOINT", None),
            master_port=_env("SFT_MASTER_PORT", d.master_port, int),
            trainer_metrics_port=_env("SFT_TRAINER_METRICS_PORT", d.trainer_metrics_port, int),
            termination_grace_seconds=_env("SFT_TERMINATION_GRACE_SECONDS", d.termination_grace_seconds, int),
            shm_size=_env("SFT_SHM_SIZE", d.shm_size),
            max_preemptions=_env("SFT_MAX_PREEMPTIONS", d.max_preemptions, int),
            resync_seconds=_env("SFT_RESYNC_SECONDS", d.resync_seconds, float),
            workers=_env("SFT_WORKERS", d.workers, int),
            coalesce_seconds=_env("SFT_COALESCE_SECONDS", d.coalesce_seconds, float),
            node_poll_seconds=_env("SFT_NODE_POLL_SECONDS", d.node_poll_seconds, float),
            metrics_port=_env("SFT_OPERATOR_METRICS_PORT", d.metrics_port, int),
            health_port=_env("SFT_OPERATOR_HEALTH_PORT", d.health_port, int),
            run_as_user=_env("SFT_RUN_AS_USER", d.run_as_user, int),
            peering_lifetime_seconds=_env("SFT_PEERING_LIFETIME_SECONDS", d.peering_lifetime_seconds, int),
            preflight_resources=_env("SFT_PREFLIGHT_RESOURCES", d.preflight_resources, _json_dict),
            preflight_timeout_seconds=_env("SFT_PREFLIGHT_TIMEOUT_SECONDS", d.preflight_timeout_seconds, int),
            retry_base_seconds=_env("SFT_RETRY_BASE_SECONDS", d.retry_base_seconds, float),
            retry_max_seconds=_env("SFT_RETRY_MAX_SECONDS", d.retry_max_seconds, float),
            phase_timeouts=_env("SFT_PHASE_TIMEOUTS", {}, _json_dict),
            heartbeat_grace_seconds=_env("SFT_HEARTBEAT_GRACE_SECONDS", d.heartbeat_grace_seconds, float),
            default_queue_name=_env("SFT_DEFAULT_QUEUE_NAME", None) or None,
            image_pull_secrets=_env("SFT_IMAGE_PULL_SECRETS", [], _pull_secrets),
            network_policy=_env("SFT_NETWORK_POLICY", d.network_policy, _bool),
            metrics_from=_env("SFT_METRICS_FROM", [], _json_list),
        )

    def describe(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def load_settings() -> OperatorSettings:
    return OperatorSettings.from_env()
