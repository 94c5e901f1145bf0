"""node_cache.fetch_once with several real processes of one node: one download by local rank 0,
an atomic rename that the other local ranks wait on, and a leader failure that they see at once."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from sft_trainer.node_cache import NodeFetchError, fetch_once

NPROC = 4


def _worker(local_rank: int, target: str, log: str, fail: bool, out: mp.Queue) -> None:
    def fetch(tmp: Path) -> None:
        with open(log, "a") as f:
            f.write(f"{local_rank}\n")
        time.sleep(1.0)  # long enough for every follower to be waiting
        (tmp / "config.json").write_text("{}")
        if fail:
            raise OSError("the bucket refused the download")
        (tmp / "model.safetensors").write_bytes(b"x" * 1000)

    t0 = time.monotonic()
    try:
        path = fetch_once(Path(target), fetch, what="base model", leader=local_rank == 0, timeout=60)
        out.put((local_rank, "ok", sorted(p.name for p in path.iterdir()), time.monotonic() - t0))
    except Exception as e:  # noqa: BLE001 - the test inspects what each process saw
        out.put((local_rank, type(e).__name__, str(e), time.monotonic() - t0))


def _run(tmp_path: Path, fail: bool = False) -> list[tuple]:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    target, log = tmp_path / "base-model", tmp_path / "fetches.log"
    # followers start first: they must wait for the leader, not fetch themselves
    procs = [ctx.Process(target=_worker, args=(r, str(target), str(log), fail, out)) for r in range(NPROC - 1, -1, -1)]
    for p in procs:
        p.start()
        time.sleep(0.05)
    results = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(10)
    return results


def test_one_download_per_node_shared_by_every_local_rank(tmp_path):
    results = _run(tmp_path)
    assert (tmp_path / "fetches.log").read_text() == "0\n"  # only local rank 0 fetched
    assert [r[:3] for r in results] == [(r, "ok", ["config.json", "model.safetensors"]) for r in range(NPROC)]
    # no temporary directory is left beside the target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base-model", "fetches.log"]
    # a later attempt on the same scratch volume reuses the complete copy without fetching
    again = fetch_once(tmp_path / "base-model", lambda tmp: pytest.fail("fetched again"), what="m", leader=True)
    assert again == tmp_path / "base-model"


def test_a_failed_leader_fails_its_followers_at_once_and_leaves_no_target(tmp_path):
    results = _run(tmp_path, fail=True)
    assert results[0][:3] == (0, "OSError", "the bucket refused the download")
    for rank, kind, msg, seconds in results[1:]:
        assert kind == NodeFetchError.__name__ and "the bucket refused the download" in msg, (rank, msg)
        assert seconds < 10  # not the 60 s timeout
    assert not (tmp_path / "base-model").exists()  # a partial copy never takes the final name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_stale_failure_note_of_an_earlier_attempt_is_ignored(tmp_path):
    note = tmp_path / "base-model.failed"
    note.write_text("OSError: last week's outage")
    old = time.time() - 3600
    os.utime(note, (old, old))
    results = _run(tmp_path)
    assert all(kind == "ok" for _, kind, _, _ in results), results


def test_a_follower_gives_up_after_its_timeout_naming_the_setting(tmp_path):
    with pytest.raises(NodeFetchError, match="SFT_NODE_FETCH_TIMEOUT_SECONDS"):
        fetch_once(tmp_path / "never", lambda tmp: None, what="checkpoint", leader=False, timeout=0.5)
