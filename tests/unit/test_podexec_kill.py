"""The pod-spec executor kills a pod's container whole, as a kubelet does: its main process, its
process group and the descendants that started their own sessions (torch's elastic agent starts its
workers that way). Killing only the group left workers training beside the next attempt."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from sft_dev.podexec import _kill_container

# A "torchrun": starts a "worker" in its own session, prints its pid, then waits for ever.
LAUNCHER = (
    "import subprocess, sys, time\n"
    "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
    "print(w.pid, flush=True)\n"
    "time.sleep(600)\n"
)


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_kill_takes_workers_in_their_own_sessions():
    main = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    worker = int(main.stdout.readline())
    try:
        assert psutil.Process(worker).status() != psutil.STATUS_ZOMBIE
        assert os.getpgid(worker) != os.getpgid(main.pid)  # out of the group: killpg alone misses it
        _kill_container(main.pid)
        main.wait(10)
        assert _gone(worker), "the worker in its own session outlived its container"
    finally:
        for pid in (worker, main.pid):
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


def test_kill_of_a_process_already_gone_is_quiet():
    p = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    p.wait(10)
    _kill_container(p.pid)  # no exception: the pod's process ended by itself
