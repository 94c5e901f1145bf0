"""bench/chaos.py's duplicate-gang detector (Watch._duplicates), fed pod timelines as the pod
executor's polls deliver them: real V1Pod objects, and attempts whose processes are real
processes. Two attempts of one job live at once is one duplicate gang; a clean hand-over is none."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes.client import V1ObjectMeta, V1Pod, V1PodSpec, V1PodStatus

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def chaos():
    spec = importlib.util.spec_from_file_location("chaos_bench", REPO / "bench" / "chaos.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def pod(job: str, attempt: int, rank: int, phase: str, node: str = "kwok-0") -> V1Pod:
    return V1Pod(metadata=V1ObjectMeta(name=f"{job}-a{attempt}-{rank}",
                                       labels={"sft.dev/job-name": job, "sft.dev/attempt": str(attempt)}),
                 spec=V1PodSpec(containers=[], node_name=node), status=V1PodStatus(phase=phase))


class Processes:
    """The executor's live attempts, with real processes behind them."""

    def __init__(self):
        self.attempts = []

    def start(self, job: str, attempt: int):
        from sft_dev.podexec import Attempt, Proc

        popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        a = Attempt(job, attempt, time.time(), [Proc(f"{job}-{attempt}", 0, "kwok-0", popen, Path("/dev/null"),
                                                      Path("/tmp"), time.time())])
        self.attempts.append(a)
        return a

    def end(self, a) -> None:
        a.procs[0].popen.kill()
        a.procs[0].popen.wait(10)

    def live_attempts(self):
        return [a for a in self.attempts if a.alive()]

    def close(self):
        for a in self.attempts:
            if a.alive():
                self.end(a)


@pytest.fixture
def watch(chaos):
    w = chaos.Watch(world=None)
    w.executor = Processes()
    yield w
    w.executor.close()


NODES = {"kwok-0", "kwok-1"}


def test_two_attempts_pods_running_at_once_are_one_duplicate_gang(watch):
    timeline = [
        [pod("j", 1, 0, "Running"), pod("j", 1, 1, "Running"), pod("k", 1, 0, "Running")],
        # attempt 2's pods are created while attempt 1's still run
        [pod("j", 1, 0, "Running"), pod("j", 1, 1, "Failed"), pod("j", 2, 0, "Pending"), pod("k", 1, 0, "Running")],
        [pod("j", 1, 0, "Running"), pod("j", 2, 0, "Running"), pod("j", 2, 1, "Running")],  # the same pair again
        [pod("j", 1, 0, "Failed"), pod("j", 2, 0, "Running"), pod("j", 2, 1, "Running")],
    ]
    for pods in timeline:
        watch._duplicates(pods, NODES)
    assert len(watch.duplicates) == 1  # counted once however many polls see it
    assert watch.duplicate_detail == ["j: attempts [1, 2] with live pods at once"]


def test_a_clean_hand_over_counts_none(watch):
    timeline = [
        [pod("j", 1, 0, "Running"), pod("j", 1, 1, "Running")],
        [pod("j", 1, 0, "Failed"), pod("j", 1, 1, "Succeeded")],
        [pod("j", 1, 0, "Failed"), pod("j", 2, 0, "Pending"), pod("j", 2, 1, "Pending")],
        [pod("j", 2, 0, "Running"), pod("j", 2, 1, "Running"), pod("k", 1, 0, "Running")],
        # a lost node's pod still reads Running on the apiserver; its node is gone, so it is not live
        [pod("j", 2, 0, "Running", node="kwok-9"), pod("j", 3, 0, "Pending"), pod("j", 3, 1, "Pending")],
    ]
    for pods in timeline:
        watch._duplicates(pods, NODES)
    assert len(watch.duplicates) == 0 and watch.duplicate_detail == []


def test_two_attempts_processes_alive_at_once_count_too(watch):
    first = watch.executor.start("j", 1)
    watch._duplicates([], NODES)
    second = watch.executor.start("j", 2)  # attempt 1's trainer has not exited yet
    watch._duplicates([], NODES)
    watch.executor.end(first)
    watch._duplicates([], NODES)
    assert watch.duplicate_detail == ["j: attempts [1, 2] with live processes at once"]
    watch.executor.end(second)
    watch.executor.start("j", 3)  # after attempt 2 exited: no overlap
    watch._duplicates([], NODES)
    assert len(watch.duplicates) == 1


def test_each_restart_is_checked_against_its_jobs_lost_steps_bound(chaos):
    every = 5
    restarts = [  # (job, class, reached, resumed from)
        ("bg", "trainer_sigkill", 19, 10),  # a kill while checkpoint 15 uploaded: 9 <= 2 x 5
        ("bg", "sigterm", 21, 10),  # 11 > 10
        ("sync", "trainer_sigkill", 15, 10),  # 5 <= 5
        ("sync", "node_loss", 17, 10),  # 7 > 5
    ]
    result = {
        "every_steps": every, "config": {"classes": list(chaos.CLASSES), "nodes": 1},
        "faults": [{"class": c, "sub": c, "jobs": [j]} for j, c, _, _ in restarts],
        "jobs": {"outcomes": {"bg": "correct", "sync": "correct"},
                 "kinds": {"bg": {"upload": "background", "nodes": 2}, "sync": {"upload": "sync", "nodes": 1}}},
        "upload_lag_steps": {"background": [1, 2, 4], "sync": [0, 0]},
        "restarts": [{"job": j, "class": c, "lost_steps": r - f, "resume_checked": "committed",
                      "next_attempt_s": 1.0, "training_again_s": 2.0} for j, c, r, f in restarts],
    }
    chaos.summarize(result)
    assert (result["max_lost_steps"], result["max_lost_steps_bound"], result["lost_steps_over_bound"]) == (11, 10, 2)
    bg, sync = result["by_upload_mode"]["background"], result["by_upload_mode"]["sync"]
    assert (bg["max_lost_steps"], bg["max_lost_steps_bound"], bg["lost_steps_over_bound"], bg["two_node_jobs"]) == (11, 10, 1, 1)
    assert (sync["max_lost_steps"], sync["max_lost_steps_bound"], sync["lost_steps_over_bound"]) == (7, 5, 1)
    assert bg["upload_lag_steps"] == {"n": 3, "p50": 2, "max": 4}
    assert [result["by_class"][c]["lost_steps_over_bound"] for c in ("trainer_sigkill", "sigterm", "node_loss")] == [0, 1, 1]
    assert "| sync | 1 (0) / 1 | 2 |" in chaos.markdown(result)
