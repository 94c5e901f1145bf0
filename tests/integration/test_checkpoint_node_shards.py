"""Two nodes of two processes each resume one committed checkpoint with a DeepSpeed-ZeRO-like
layout (per-rank optimizer partitions and RNG states, shared weights) from a real SeaweedFS and
from a local directory. Each node's local rank 0 downloads once, and only the shared files plus
its own two ranks' files; every rank then finds its own partition in its node's copy.

The shard files are written by the test, not by DeepSpeed (no GPU here), with DeepSpeed's names
and distinct contents per rank; the download path is the trainer's own (resume.download_for_node).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest

from sft_trainer.checkpoint_store import CheckpointStore
from sft_trainer.resume import download_for_node, rank_of

NODES, PER_NODE = 2, 2
WORLD = NODES * PER_NODE
SHARD = "global_step10/zero_pp_rank_{r}_mp_rank_00_optim_states.pt"


def _write_checkpoint(d: Path) -> None:
    (d / "global_step10").mkdir(parents=True)
    (d / "model.safetensors").write_bytes(os.urandom(40_000))
    (d / "trainer_state.json").write_text('{"global_step": 10}')
    (d / "scheduler.pt").write_bytes(os.urandom(1_000))
    (d / "latest").write_text("global_step10")
    (d / "global_step10" / "mp_rank_00_model_states.pt").write_bytes(os.urandom(8_000))
    for r in range(WORLD):
        (d / SHARD.format(r=r)).write_bytes(bytes([r]) * 30_000)
        (d / f"rng_state_{r}.pth").write_bytes(bytes([100 + r]) * 500)


def _rank(rank: int, uri: str, opts: dict, workdir: str, out: mp.Queue) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank % PER_NODE), "LOCAL_WORLD_SIZE": str(PER_NODE),
                       "WORLD_SIZE": str(WORLD)})
    try:
        store = CheckpointStore(uri, opts)
        copy = download_for_node(store, store.get(10), Path(workdir))
        own = (copy / SHARD.format(r=rank)).read_bytes()  # what DeepSpeed would load on this rank
        out.put((rank, str(copy), own == bytes([rank]) * 30_000))
    except Exception as e:  # noqa: BLE001 - reported to the test
        out.put((rank, f"{type(e).__name__}: {e}", False))


@pytest.fixture(params=["file", "s3"])
def committed(request, tmp_path):
    if request.param == "file":
        uri, opts = f"file://{tmp_path}/ckpts", {}
    else:
        s3, bucket = request.getfixturevalue("s3"), request.getfixturevalue("s3_bucket")
        uri, opts = f"s3://{bucket}/ckpts", s3.storage_options()
    _write_checkpoint(tmp_path / "local")
    CheckpointStore(uri, opts).commit(tmp_path / "local", 10)
    return uri, opts


def test_each_node_downloads_only_its_ranks_shards(committed, tmp_path):
    uri, opts = committed
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    workdirs = [tmp_path / f"node{n}" for n in range(NODES)]
    procs = [ctx.Process(target=_rank, args=(r, uri, opts, str(workdirs[r // PER_NODE]), out)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    assert [ok for _, _, ok in results] == [True] * WORLD, results

    manifest = CheckpointStore(uri, opts).get(10).manifest["files"]
    shared = {f["path"] for f in manifest if rank_of(f["path"]) is None}
    whole = sum(f["size"] for f in manifest)
    for n, work in enumerate(workdirs):
        copies = list((work / "resume").iterdir())
        assert len(copies) == 1, copies  # one download per node, shared by its two ranks
        assert {r[1] for r in results if r[0] // PER_NODE == n} == {str(copies[0])}
        got = {p.relative_to(copies[0]).as_posix(): p.stat().st_size for p in copies[0].rglob("*") if p.is_file()}
        ranks = {n * PER_NODE + i for i in range(PER_NODE)}
        assert set(got) == shared | {SHARD.format(r=r) for r in ranks} | {f"rng_state_{r}.pth" for r in ranks}
        # files and bytes this node downloaded against the whole checkpoint
        assert (len(got), len(manifest)) == (len(shared) + 2 * PER_NODE, len(shared) + 2 * WORLD)
        assert sum(got.values()) == whole - (WORLD - PER_NODE) * (30_000 + 500)
        assert not [p.name for p in (work / "resume").iterdir() if ".tmp-" in p.name]
