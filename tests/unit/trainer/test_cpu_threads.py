"""The tiny model's CPU thread choice: the available CPUs that the load average leaves idle."""

from __future__ import annotations

import pytest

from sft_trainer.cpu_threads import available_cpus, choose_threads


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
