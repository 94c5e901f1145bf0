"""The tiny model's CPU thread choice: the available CPUs measured idle now (the load average as the
fallback)."""

from __future__ import annotations

import pytest

from sft_trainer.cpu_threads import available_cpus, choose_threads, idle_cpus, threads_for_idle


@pytest.mark.parametrize("available, load, machine, threads", [
    pytest.param(2, 0.2, 2, 2, id="idle-2-cores-uses-both"),
    pytest.param(2, 1.0, 2, 2, id="our-own-process-is-the-only-load"),
    pytest.param(2, 1.3, 2, 1, id="one-core-busy-elsewhere-uses-one"),
    pytest.param(2, 15.0, 2, 1, id="a-saturated-machine-never-goes-below-one"),
    pytest.param(4, 3.0, 64, 4, id="a-pod-limit-caps-an-idle-big-node"),
    pytest.param(64, 60.5, 64, 4, id="a-busy-big-node-leaves-a-few"),
])
def test_choose_threads(available, load, machine, threads):
    assert choose_threads(available, load, machine) == threads


@pytest.mark.parametrize("cpu_max, cap", [
    pytest.param("max 100000\n", None, id="no-quota"),
    pytest.param("150000 100000\n", 2, id="a-1.5-cpu-limit-rounds-up"),
    pytest.param("50000 100000\n", 1, id="half-a-cpu-is-one"),
    pytest.param("garbage", None, id="unreadable-is-no-quota"),
])
def test_available_cpus_reads_the_cgroup_quota(tmp_path, cpu_max, cap):
    import os

    f = tmp_path / "cpu.max"
    f.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(f) == (affinity if cap is None else min(affinity, cap))
    assert available_cpus(tmp_path / "missing") == affinity


@pytest.mark.parametrize("available, idle, threads", [
    pytest.param(2, 1.95, 2, id="idle-2-cores-uses-both"),
    pytest.param(2, 1.8, 2, id="a-little-noise-still-both"),
    pytest.param(2, 1.5, 1, id="half-a-core-busy-elsewhere-uses-one"),
    pytest.param(2, 0.1, 1, id="a-saturated-machine-never-goes-below-one"),
    pytest.param(4, 63.0, 4, id="a-pod-limit-caps-an-idle-big-node"),
    pytest.param(64, 6.9, 7, id="a-busy-big-node-leaves-a-few"),
])
def test_threads_for_idle(available, idle, threads):
    assert threads_for_idle(available, idle) == threads


def _stat(tmp_path, idle, total):
    """A /proc/stat whose aggregate line has these idle and total jiffies (iowait 0)."""
    f = tmp_path / "stat"
    f.write_text(f"cpu  {total - idle} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    return f


def test_idle_cpus_reads_the_idle_share_of_proc_stat(tmp_path, monkeypatch):
    import time

    stat = _stat(tmp_path, 1000, 2000)
    real_sleep = time.sleep

    def advance(seconds):  # 100 jiffies pass in the window, 60 of them idle
        stat.write_text(stat.read_text().replace("cpu  1000 0 0 1000", "cpu  1040 0 0 1060"))
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", advance)
    got = idle_cpus(4, window=0.05, stat=stat)
    assert 2.4 <= got <= 2.4 + 0.5, got  # 4 x 0.6, plus whatever CPU this process spent in the window
    with pytest.raises(ValueError):
        idle_cpus(4, window=0.0, stat=tmp_path / "stat")  # no time passed in the file: no answer


def test_idle_cpus_on_this_machine_is_between_0_and_its_cpus():
    import os

    got = idle_cpus(os.cpu_count(), window=0.1)
    assert 0.0 <= got <= os.cpu_count()


def test_a_busy_core_is_not_counted_idle():
    """A spinning child process takes about one core: measured idle drops by about one."""
    import os
    import subprocess
    import sys

    machine = os.cpu_count()
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time
        time.sleep(0.3)
        busy = idle_cpus(machine, window=0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy <= machine - 0.7, busy
