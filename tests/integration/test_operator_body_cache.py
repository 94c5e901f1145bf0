"""A pass starts from the cached SFTJob body (no GET), and a stale cached body still cannot write: its
status write carries the stale resourceVersion, the real apiserver answers 409, and the pass is
recomputed from a fresh GET. Requests are counted with the operator's own counters."""

from __future__ import annotations

from sft_integration_helpers import create_sftjob

from sft_operator import handlers
from sft_operator.apply import KubeApi
from sft_operator.metrics import REGISTRY


def count(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def requests(verb: str, resource: str) -> float:
    return count("sftoperator_api_requests_total", verb=verb, resource=resource)


def test_pass_reads_the_cache_and_a_stale_body_conflicts(kube_api, namespace, sftjob_crd, monkeypatch):
    created = create_sftjob(kube_api, "cached", namespace, preflight={"enabled": False})
    monkeypatch.setattr(handlers.STATE, "_api", KubeApi(kube_api))
    monkeypatch.setattr(handlers.STATE, "bodies", handlers.BodyCache())
    key = (namespace, "cached")

    gets = requests("GET", "sftjobs")
    first = handlers.reconcile_job(*key)  # nothing cached yet: one GET, then the first status write
    assert first.status_patch and first.status["attempt"] == 1
    assert requests("GET", "sftjobs") == gets + 1
    cached = handlers.STATE.bodies.get(key)
    assert cached["status"]["attempt"] == 1  # the write's response, newer than the creation
    assert int(cached["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

    # The next pass starts from that response: no GET, nothing to write.
    gets, from_cache = requests("GET", "sftjobs"), count("sftoperator_sftjob_reads_total", source="cache")
    again = handlers.reconcile_job(*key)
    assert not again.status_patch
    assert requests("GET", "sftjobs") == gets
    assert count("sftoperator_sftjob_reads_total", source="cache") == from_cache + 1

    # A stale body (the one before the first write) would write the first pass's status again: the
    # apiserver refuses its resourceVersion, and the pass is recomputed from a fresh read.
    stale = handlers.BodyCache()
    stale.offer(key, created)
    monkeypatch.setattr(handlers.STATE, "bodies", stale)
    gets, writes = requests("GET", "sftjobs"), requests("PATCH", "sftjobs/status")
    unchanged_writes = count("sftoperator_unchanged_writes_total", resource="sftjobs/status")
    redo = handlers.reconcile_job(*key)
    assert requests("PATCH", "sftjobs/status") == writes + 1  # the refused write
    assert requests("GET", "sftjobs") == gets + 1  # the fresh read after the 409
    assert not redo.status_patch and redo.status["attempt"] == 1
    assert stale.get(key)["metadata"]["resourceVersion"] == cached["metadata"]["resourceVersion"]
    assert count("sftoperator_unchanged_writes_total", resource="sftjobs/status") == unchanged_writes
