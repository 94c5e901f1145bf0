"""How many intra-op threads the built-in tiny model trains with on the CPU: what the machine offers now.

A fixed choice is wrong on one kind of machine or the other (measured on 2 cores with
``bench/trainer_throughput.py``; see docs/trainer.md):

- idle, 2 threads train about 1.4x the tokens/s of 1 (TRL's best configuration at torch's default
  threads and ours at 1 thread: 0.72x);
- with the cores busy elsewhere, a second thread's OpenMP spin-waits cost several times the work
  (2 threads 1,100 tokens/s against 2,390 with 1, one core busy).

So: the CPUs this process may run on (affinity and the cgroup's ``cpu.max`` quota: a pod's CPU
limit), less those that the 1-minute load average says are busy. The load average counts this
process too, which is running by the time the model loads, so one unit of it is ours.
``OMP_NUM_THREADS`` set by the user always wins (the caller does not come here then).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def choose_threads(available: int, load_1m: float, machine_cpus: int) -> int:
    """Threads = the available CPUs not busy with other work: ``machine_cpus - load + 1`` (our own
    share of the load), rounded down, between 1 and ``available``."""
    idle = math.floor(machine_cpus - load_1m + 1.0)
    return max(1, min(available, idle))


def set_torch_threads(torch_module) -> int:
    """Choose and set the intra-op threads now; returns the choice (logged with its inputs)."""
    available = available_cpus()
    try:
        load_1m = os.getloadavg()[0]
    except OSError:  # no load average: assume an idle machine
        load_1m = 0.0
    machine = os.cpu_count() or available
    threads = choose_threads(available, load_1m, machine)
    torch_module.set_num_threads(threads)
    log.info("CPU threads: %d (%d CPUs available, %d on the machine, load average %.1f); "
             "OMP_NUM_THREADS overrides", threads, available, machine, load_1m)
    return threads
