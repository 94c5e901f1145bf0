"""Operator metrics (docs/monitoring.md), on their own registry so tests can read them directly.

- sftoperator_jobs{phase}: SFTJobs by phase (Pending, Running, Restarting, Suspended, Succeeded, Failed)
- sftoperator_reconcile_duration_seconds: one reconcile pass (read, compute, write)
- sftoperator_restarts_total{namespace, sftjob, reason}: restarts and preemptions started, by SFTJob
  and condition reason (PodFailed, OOMKilled, Stalled, Preempted, Evicted, NodeLost); the per-job
  labels feed the dashboard's per-job restart panels, and the series go when the job is deleted
- sftoperator_reconcile_errors_total: reconcile passes that raised (kopf retries them)
- sftoperator_time_to_running_seconds: SFTJob creation to all pods of the first attempt running
- sftoperator_build_info{version}: always 1
- sftoperator_api_requests_total{verb, resource}: the reconcile passes' own requests to the apiserver
- sftoperator_sftjob_reads_total{source}: pass bodies from the cache (watch events, write responses) or a GET
- sftoperator_skipped_applies_total{kind}: child applies not sent (the live object matches, or its Job is on the way)
- sftoperator_unchanged_writes_total{resource}: status writes the apiserver took without a change
"""

from __future__ import annotations

import threading
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from sft_api.contract import RESTART_REASONS as _RESTART_REASONS

from .conditions import Phase

__all__ = ["REGISTRY", "JOBS", "RECONCILE_SECONDS", "RECONCILE_ERRORS", "RESTARTS", "TIME_TO_RUNNING", "BUILD_INFO", "serve",
           "PhaseTracker", "forget_job"]

REGISTRY = CollectorRegistry(auto_describe=True)


class PhaseTracker:
    """Remembers each SFTJob's phase and reports the count per phase at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}

    def set(self, key: tuple[str, str], phase: str | None) -> None:
        with self._lock:
            self._phases[key] = phase or str(Phase.PENDING)

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._phases.pop(key, None)

    def counts(self) -> dict[str, int]:
        out = {str(p): 0 for p in Phase}
        with self._lock:
            for phase in self._phases.values():
                out[phase] = out.get(phase, 0) + 1
        return out

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily("sftoperator_jobs", "SFTJobs by phase", labels=["phase"])]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        fam = GaugeMetricFamily(
            "sftoperator_jobs",
            "SFTJobs by phase (Pending, Running, Restarting, Suspended, Succeeded, Failed)",
            labels=["phase"],
        )
        for phase, n in sorted(self.counts().items()):
            fam.add_metric([phase], n)
        yield fam


JOBS = PhaseTracker()
REGISTRY.register(JOBS)
RECONCILE_SECONDS = Histogram(
    "sftoperator_reconcile_duration_seconds",
    "Duration of one reconcile pass of an SFTJob (read, compute, write)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "sftoperator_reconcile_errors_total",
    "Reconcile passes of an SFTJob that failed with an error (kopf retries them)",
    registry=REGISTRY,
)
RESTART_REASONS = tuple(str(r) for r in _RESTART_REASONS)
RESTARTS = Counter(
    "sftoperator_restarts_total",
    "Attempts torn down and restarted, by SFTJob (namespace, sftjob) and reason "
    "(PodFailed, OOMKilled, Stalled, Preempted, Evicted, NodeLost, Interrupted)",
    labelnames=["namespace", "sftjob", "reason"],
    registry=REGISTRY,
)
TIME_TO_RUNNING = Histogram(
    "sftoperator_time_to_running_seconds",
    "Seconds from SFTJob creation until every pod of its first attempt runs",
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
API_RESOURCES = ("sftjobs", "sftjobs/status", "jobs", "pods", "services", "configmaps", "serviceaccounts", "roles",
                 "rolebindings", "networkpolicies", "events", "other")
API_REQUESTS = Counter(
    "sftoperator_api_requests_total",
    "Requests the operator's reconcile passes sent to the apiserver, by verb (GET, POST, PATCH, DELETE) and "
    "resource (" + ", ".join(API_RESOURCES) + "); the watches of kopf are not counted",
    labelnames=["verb", "resource"],
    registry=REGISTRY,
)
SKIPPED_APPLIES = Counter(
    "sftoperator_skipped_applies_total",
    "Child applies not sent: a per-job ServiceAccount, Role or RoleBinding whose live object already holds the "
    "rendered content, or the children of an attempt whose Job an earlier pass created and kopf's index lacks yet",
    labelnames=["kind"],
    registry=REGISTRY,
)
UNCHANGED_WRITES = Counter(
    "sftoperator_unchanged_writes_total",
    "SFTJob status writes the apiserver accepted without a change (the same resourceVersion came back)",
    labelnames=["resource"],
    registry=REGISTRY,
)
SFTJOB_READS = Counter(
    "sftoperator_sftjob_reads_total",
    "Where a reconcile pass got its SFTJob body: cache (the newest watch event or write response) or "
    "get (a fresh read: nothing cached, or a write conflicted)",
    labelnames=["source"],
    registry=REGISTRY,
)
BUILD_INFO = Gauge("sftoperator_build_info", "Build information; always 1", labelnames=["version"], registry=REGISTRY)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("sft-operator")
    except Exception:  # not installed as a distribution (source checkout)
        return "0.0.0+unknown"


BUILD_INFO.labels(version=_version()).set(1)


def forget_job(key: tuple[str, str]) -> None:
    """Drop a deleted SFTJob's series, so that per-job labels do not accumulate."""
    JOBS.forget(key)
    for reason in RESTART_REASONS:
        try:
            RESTARTS.remove(key[0], key[1], reason)
        except KeyError:
            pass


def serve(port: int, addr: str = "0.0.0.0"):
    """Start the /metrics endpoint in a daemon thread; returns (server, thread)."""
    return start_http_server(port, addr=addr, registry=REGISTRY)
