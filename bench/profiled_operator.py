"""Run the operator (`sft_operator.run_operator`) with cProfile in every thread; a bench helper, not a test.

    SFT_BENCH_PROFILE=/tmp/op.pstats python bench/profiled_operator.py --standalone

cProfile only sees the thread that enables it: kopf's asyncio loop runs on the main thread, the
reconcile passes on the work queue's threads. ``threading.setprofile`` starts a profiler in each
new thread; at exit (SIGTERM: kopf stops, ``main`` returns) all of them are merged into one pstats
file, and a JSON summary (the top functions by own time and by cumulative time, per thread kind)
is written beside it (<name>.summary.json).
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_PROFILES: list[tuple[str, cProfile.Profile]] = []
_LOCK = threading.Lock()


def _start_in_thread(*_args) -> None:
    sys.setprofile(None)  # this hook only starts the thread's own profiler
    prof = cProfile.Profile()
    with _LOCK:
        _PROFILES.append((threading.current_thread().name, prof))
    prof.enable()


def _top(stats: pstats.Stats, key: str, n: int = 30) -> list[dict]:
    rows = []
    for (file, line, fn), (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(file).name}:{line}({fn})", "calls": nc, "tottime_s": round(tt, 3),
                     "cumtime_s": round(ct, 3)})
    return sorted(rows, key=lambda r: -r[key])[:n]


def _dump(out: Path) -> None:
    groups: dict[str, list[cProfile.Profile]] = {}
    for name, prof in _PROFILES:
        prof.disable()
        kind = "main (kopf, asyncio)" if name == "MainThread" else name.rstrip("0123456789-")
        groups.setdefault(kind, []).append(prof)
    summary = {}
    everything = None
    for kind, profs in groups.items():
        st = pstats.Stats(*profs)
        everything = st if everything is None else everything.add(*profs)
        summary[kind] = {"threads": len(profs), "total_s": round(st.total_tt, 2),  # type: ignore[attr-defined]
                         "by_tottime": _top(st, "tottime_s"), "by_cumtime": _top(st, "cumtime_s")}
    if everything is not None:
        everything.dump_stats(str(out))
    out.with_name(out.stem + ".summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def main() -> int:
    out = Path(os.environ.get("SFT_BENCH_PROFILE") or "operator.pstats")
    sys.path[:0] = [str(REPO / "operator"), str(REPO / "api")]
    threading.setprofile(_start_in_thread)
    main_prof = cProfile.Profile()
    _PROFILES.append(("MainThread", main_prof))
    from sft_operator.run_operator import main as run

    main_prof.enable()
    try:
        return run(sys.argv[1:])
    finally:
        _dump(out)


if __name__ == "__main__":
    sys.exit(main())
