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
