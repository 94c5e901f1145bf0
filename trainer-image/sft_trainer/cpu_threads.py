"""How many intra-op threads the built-in tiny model trains with on the CPU: what the machine offers now.

A fixed choice is wrong on one kind of machine or the other (measured on 2 cores with
``bench/trainer_throughput.py``; see docs/trainer.md):

- idle, 2 threads train about 1.4x the tokens/s of 1 (TRL's best configuration at torch's default
  threads and ours at 1 thread: 0.72x);
- with the cores busy elsewhere, a second thread's OpenMP spin-waits cost several times the work
  (2 threads 1,100 tokens/s against 2,390 with 1, one core busy).

So: the CPUs this process may run on (affinity and the cgroup's ``cpu.max`` quota: a pod's CPU
limit), of which as many as are idle now. "Idle now" is measured, not inferred: two reads of
``/proc/stat`` a quarter second apart, with this process's own CPU time in that window counted as
idle (it is ours to use). The 1-minute load average, used before, lags by a minute: on a quiet
2-core machine whose last minute had a build in it (load 1.2) it chose 1 thread, and ours ran 0.78x
TRL's best at each side's defaults. It stays as the fallback where ``/proc/stat`` is unreadable.
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
    """From the load average (the fallback): ``machine_cpus - load + 1`` (our own share of the load),
    rounded down, between 1 and ``available``."""
    idle = math.floor(machine_cpus - load_1m + 1.0)
    return max(1, min(available, idle))


# A thread needs most of a core: OpenMP's spin-waits make a second thread on a core that is busy
# elsewhere several times slower than one thread, so a core counts from 3/4 idle.
CORE_IDLE_SHARE = 0.75


def threads_for_idle(available: int, idle_cpus: float) -> int:
    """Threads for ``idle_cpus`` measured idle CPUs (ours included), between 1 and ``available``."""
    return max(1, min(available, math.floor(idle_cpus + (1.0 - CORE_IDLE_SHARE))))


def _cpu_jiffies(stat: Path) -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs from /proc/stat's first line (idle includes iowait)."""
    fields = stat.read_text().split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        raise ValueError(f"{stat}: no aggregate cpu line")
    values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return values[3] + values[4], sum(values)


def idle_cpus(machine_cpus: int, window: float = 0.25, stat: Path = Path("/proc/stat")) -> float:
    """CPUs idle over the next ``window`` seconds, counting the CPU time this process used in it as
    idle: ``machine_cpus x idle share + our CPU-seconds / window``."""
    import time

    idle0, total0 = _cpu_jiffies(stat)
    own0, wall0 = time.process_time(), time.monotonic()
    time.sleep(window)
    idle1, total1 = _cpu_jiffies(stat)
    own1, wall1 = time.process_time(), time.monotonic()
    if total1 <= total0:
        raise ValueError(f"{stat}: no CPU time passed in {window}s")
    share = (idle1 - idle0) / (total1 - total0)
    return min(float(machine_cpus), machine_cpus * share + (own1 - own0) / max(wall1 - wall0, 1e-6))


def set_torch_threads(torch_module) -> int:
    """Choose and set the intra-op threads now; returns the choice (logged with its inputs)."""
    available = available_cpus()
    machine = os.cpu_count() or available
    try:
        idle = idle_cpus(machine)
    except (OSError, ValueError) as exc:
        try:
            load_1m = os.getloadavg()[0]
        except OSError:  # no load average either: assume an idle machine
            load_1m = 0.0
        threads = choose_threads(available, load_1m, machine)
        log.info("CPU threads: %d (%d CPUs available, %d on the machine, load average %.1f; idle time "
                 "unreadable: %s); OMP_NUM_THREADS overrides", threads, available, machine, load_1m, exc)
    else:
        threads = threads_for_idle(available, idle)
        log.info("CPU threads: %d (%d CPUs available, %d on the machine, %.2f idle now); "
                 "OMP_NUM_THREADS overrides", threads, available, machine, idle)
    torch_module.set_num_threads(threads)
    return threads
