"""Which files of a committed checkpoint a node downloads: the shared ones and its own ranks'."""

from __future__ import annotations

import pytest

from sft_trainer.resume import NodeRanks, node_files, rank_of


def _layout(world: int, zero: bool = True) -> list[dict]:
    names = ["model.safetensors", "scheduler.pt", "trainer_state.json", "training_args.bin", "latest",
             "global_step10/mp_rank_00_model_states.pt"]
    for r in range(world):
        names.append(f"rng_state_{r}.pth")
        if zero:
            names += [f"global_step10/zero_pp_rank_{r}_mp_rank_00_optim_states.pt",
                      f"global_step10/bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt",
                      f"global_step10/zero_pp_rank_{r}_mp_rank_00_model_states.pt"]
    return [{"path": n, "size": 10, "sha256": "0"} for n in names]


@pytest.mark.parametrize("path, rank", [
    ("rng_state_3.pth", 3), ("rng_state.pth", None), ("global_step5/zero_pp_rank_12_mp_rank_00_optim_states.pt", 12),
    ("global_step5/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", 0),
    ("global_step5/zero_pp_rank_7_mp_rank_00_model_states.pt", 7),
    ("global_step5/mp_rank_00_model_states.pt", None), ("model.safetensors", None),
    ("optimizer_0/__1_0.distcp", None),  # torch.distributed.checkpoint: any rank may read any file
    ("notes/rng_state_1.pth.bak", None),
])
def test_rank_of(path, rank):
    assert rank_of(path) == rank


def test_node_ranks_from_torchrun_env():
    node = NodeRanks.from_env({"RANK": "5", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8"})
    assert node == NodeRanks(first=4, count=4, world=8)
    assert [r for r in range(8) if r in node] == [4, 5, 6, 7]
    assert NodeRanks.from_env({}) == NodeRanks(0, 1, 1)


def test_a_node_gets_the_shared_files_and_only_its_ranks_shards():
    files = _layout(4)
    second = {f["path"] for f in node_files(files, NodeRanks(first=2, count=2, world=4))}
    assert {rank_of(p) for p in second} == {None, 2, 3}
    assert {p for p in second if rank_of(p) is None} == {f["path"] for f in files if rank_of(f["path"]) is None}
    assert len(second) == 6 + 2 * 4 and len(files) == 6 + 4 * 4
    # the two nodes together download every file exactly once per node's share
    first = {f["path"] for f in node_files(files, NodeRanks(first=0, count=2, world=4))}
    assert first | second == {f["path"] for f in files}
    assert {p for p in first & second} == {f["path"] for f in files if rank_of(f["path"]) is None}


@pytest.mark.parametrize("world", [2, 8])
def test_another_world_size_downloads_every_shard(world):
    files = _layout(4)  # written by 4 ranks: resharding to `world` reads every partition
    assert node_files(files, NodeRanks(first=0, count=1, world=world)) == files


def test_one_process_checkpoint_is_downloaded_whole():
    files = [{"path": p, "size": 1, "sha256": "0"} for p in ("model.safetensors", "rng_state.pth", "optimizer.pt")]
    assert node_files(files, NodeRanks(0, 1, 1)) == files
