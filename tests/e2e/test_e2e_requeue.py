"""The clocks run on each pass's own requeue_after, not on the resync timer: with the resync timer
at 10 minutes, a stall, a deadline and a create backoff still act on time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sft_e2e_helpers import OperatorProcess, cond, sftjob_manifest
from test_e2e_child_faults import forbid_jobs, refusals


@pytest.fixture(scope="module")
def slow_resync_operator(dev_cluster, sftjob_crd, tmp_path_factory):
    # Its own operator (this module never uses the shared `operator` fixture, so only one acts).
    op = OperatorProcess(Path(dev_cluster.kubeconfig), tmp_path_factory.mktemp("operator-slow-resync"),
                         extra_env={"SFT_RESYNC_SECONDS": "600", "SFT_HEARTBEAT_GRACE_SECONDS": "0"})
    op.start()
    try:
        yield op
    finally:
        op.stop()


def test_stall_fires_on_time_without_the_resync_timer(slow_resync_operator, sft):
    name = "stall-requeue"
    sft.apply(sftjob_manifest(name, nodes=1, gpus=1, failurePolicy={"stallTimeoutSeconds": 4, "maxRestarts": 5}))
    sft.running_pods(name, 1, 1)
    sft.wait_phase(name, "Running")
    sft.report_progress(name, {"progress": {"phase": "training", "step": 1}})
    started = time.monotonic()
    st = sft.wait(name, lambda s: cond(s, "Stalled").get("status") == "True", 20, "Stalled")
    took = time.monotonic() - started
    assert "in phase training" in cond(st, "Stalled")["message"]
    assert took < 10, took  # 4 s of stall clock plus one pass; the resync timer would take 600 s


def test_deadline_and_backoff_fire_on_time_without_the_resync_timer(slow_resync_operator, sft):
    name = "deadline-requeue"
    forbid_jobs(sft)
    started = time.monotonic()
    sft.apply(sftjob_manifest(name, nodes=1, gpus=1, activeDeadlineSeconds=8))
    sft.wait(name, lambda s: cond(s, "ChildCreateFailed").get("status") == "True", 20, "ChildCreateFailed")
    sft.wait(name, lambda _: refusals(sft, name) >= 3, 15, "third refusal after 2 s and 4 s of backoff")
    st = sft.wait_phase(name, "Failed", 20)
    took = time.monotonic() - started
    assert cond(st, "Failed")["reason"] == "DeadlineExceeded" and took < 14, took


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_live_download_is_not_a_stall_a_silent_one_is(slow_resync_operator, sft):
    """The trainer reports phase downloading and a heartbeat: no step for twice stallTimeoutSeconds
    is fine while the heartbeat is fresh; when it stops, Stalled names the phase."""
    name = "download-stall"
    sft.apply(sftjob_manifest(name, nodes=1, gpus=1, failurePolicy={"stallTimeoutSeconds": 4, "maxRestarts": 5}))
    sft.running_pods(name, 1, 1)
    sft.wait_phase(name, "Running")
    live_until = time.monotonic() + 10
    while time.monotonic() < live_until:
        sft.report_progress(name, {"progress": {"phase": "downloading", "heartbeatTime": _now()}})
        time.sleep(1)
    st = sft.status(name)
    assert st["phase"] == "Running" and cond(st, "Stalled").get("status") != "True", st
    silent = time.monotonic()
    st = sft.wait(name, lambda s: cond(s, "Stalled").get("status") == "True", 20, "Stalled after the heartbeat stops")
    assert "in phase downloading" in cond(st, "Stalled")["message"] and "no heartbeat" in cond(st, "Stalled")["message"]
    assert time.monotonic() - silent < 10
