"""SIGKILL the operator at several points of a transition and restart it: no duplicate Jobs, no lost
or double-counted status. Also: jobs created while it was down are picked up on start."""

from __future__ import annotations

import time

from sft_e2e_helpers import cond, sftjob_manifest


def jobs_by_attempt(sft, name) -> dict[str, int]:
    out: dict[str, int] = {}
    for j in sft.jobs(name):
        a = j.metadata.labels["sft.dev/attempt"]
        out[a] = out.get(a, 0) + 1
    return out


def test_jobs_created_while_down_are_picked_up(operator, sft):
    operator.kill()
    try:
        for i in range(3):
            sft.apply(sftjob_manifest(f"offline-{i}", nodes=1, gpus=1))
        time.sleep(1)
        assert all(not sft.jobs(f"offline-{i}") for i in range(3))
    finally:
        operator.start()
    for i in range(3):
        sft.running_pods(f"offline-{i}", 1, 1)
        sft.wait_phase(f"offline-{i}", "Running")
        assert jobs_by_attempt(sft, f"offline-{i}") == {"1": 1}


def test_kill_during_creation(operator, sft):
    name = "crash-create"
    sft.apply(sftjob_manifest(name, nodes=2, gpus=1))
    time.sleep(0.3)  # somewhere inside the first pass: status written, children partly applied
    operator.kill()
    operator.start()
    sft.running_pods(name, 1, 2)
    st = sft.wait_phase(name, "Running")
    assert st["attempt"] == 1 and st["restarts"] == 0
    assert jobs_by_attempt(sft, name) == {"1": 1}


def test_kill_during_restart_counts_once(operator, sft, kwok_pods):
    name = "crash-restart"
    sft.apply(sftjob_manifest(name, nodes=2, gpus=1, failurePolicy={"maxRestarts": 10}))
    expected_restarts = 0
    for attempt, delay in enumerate((0.0, 0.2, 0.6, 1.5), start=1):
        pods = sft.running_pods(name, attempt, 2)
        sft.wait_phase(name, "Running")
        kwok_pods.fail(sft.ns, pods[0].metadata.name, exit_code=1, wait=False)
        time.sleep(delay)
        operator.kill()  # at a different point of the teardown each time
        time.sleep(0.5)
        operator.start()
        expected_restarts += 1
        st = sft.wait(name, lambda s: s.get("attempt") == attempt + 1, 30, f"attempt {attempt + 1}")
        sft.running_pods(name, attempt + 1, 2)
        st = sft.wait_phase(name, "Running")
        assert st["restarts"] == expected_restarts, st
        assert st["attempt"] == attempt + 1
        assert jobs_by_attempt(sft, name) == {str(attempt + 1): 1}
        assert cond(st, "Restarting")["status"] == "False"
