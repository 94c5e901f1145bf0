"""Which committed checkpoint a run resumes from, and its one local copy per node.

The rule (docs/trainer.md, "Resume and checkpoint identity"):

1. The run's own checkpoints (manifest identity: same job UID and training spec hash, see
   ``sft_api.training_identity``) always win: the newest one is resumed. A run whose newest own
   checkpoint is at ``maxSteps`` trains no further step and finishes with the same result.
2. Without own checkpoints, ``spec.checkpoints.resumeFrom`` continues another run: ``latest`` (the
   newest committed checkpoint under ``checkpoints.uri``, whoever wrote it) or a URI.
3. Otherwise a committed checkpoint of another run under ``checkpoints.uri`` (another job, or this
   job with a changed training spec) fails the run before training with exit 64 (DataError): the
   user points ``spec.checkpoints.uri`` elsewhere or sets ``spec.checkpoints.resumeFrom``.
4. No checkpoint at all: a fresh start.

A foreign checkpoint newer than the run's own newest one means two runs write one prefix; that also
fails with exit 64 rather than interleave their checkpoints. ``SFT_RESUME`` (set by the operator)
is not consulted: resuming is decided by identity alone.

Each node downloads the chosen checkpoint once (local rank 0, node_cache.py), and only the files
its own ranks read: every shared file (weights, scheduler, trainer state, DeepSpeed's
``mp_rank_*_model_states.pt``) plus the per-rank files of the node's ranks (HF's
``rng_state_<rank>.pth``, DeepSpeed ZeRO's ``zero_pp_rank_<rank>_*_states.pt``). A checkpoint
written by another world size is downloaded whole: resharding it reads every shard.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from sft_api.training_identity import RunIdentity, describe_recorded, spec_hash

from .checkpoint_store import CHECKPOINT_PREFIX, CheckpointError, CheckpointStore, CommittedCheckpoint
from .exit_codes import ConfigError
from .node_cache import fetch_once

log = logging.getLogger(__name__)

LATEST = "latest"
_STEP_DIR = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
# Files that only one rank reads, by the rank in their name: HF's RNG state of each process, and
# DeepSpeed ZeRO's partitions of each data-parallel rank (optimizer states; at stage 3 also model
# states), bf16_ or not. DeepSpeed loads only its own partition unless zero_optimization.
# elastic_checkpoint is set, which the generated DeepSpeed config never does (modeling.py).
_RANK_FILE = re.compile(r"(?:^|/)(?:rng_state_(\d+)\.pth|(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_(?:optim|model)_states\.pt)$")


@dataclass(frozen=True)
class ResumeChoice:
    checkpoint: CommittedCheckpoint | None
    source: CheckpointStore | None  # the store the checkpoint is downloaded from
    why: str  # "own", "resumeFrom" or "fresh"


def run_identity(job: Any, env: Mapping[str, str] | None = None) -> RunIdentity:
    """This run's identity: ``metadata.uid`` (or ``SFT_JOB_UID``), the spec hash, ``SFT_ATTEMPT``."""
    env = os.environ if env is None else env
    meta = job.metadata
    uid = getattr(meta, "uid", None) or (getattr(meta, "model_extra", None) or {}).get("uid") \
        or env.get("SFT_JOB_UID") or None
    raw = (env.get("SFT_ATTEMPT") or "").strip()
    attempt = int(raw) if raw.isdigit() else None
    return RunIdentity(spec_hash=spec_hash(job.spec), job_uid=uid, job_name=meta.name, attempt=attempt)


def _foreign_error(store: CheckpointStore, ckpt: CommittedCheckpoint, me: RunIdentity, *, newer: bool) -> ConfigError:
    what = ("is newer than this run's own checkpoints: two runs are writing one prefix" if newer
            else "was written by another run")
    return ConfigError(
        f"spec.checkpoints.uri: committed checkpoint {ckpt.uri} {what} ({describe_recorded(ckpt.identity)}; "
        f"this run: {me.describe()}). A changed training spec or another job must not resume it silently: "
        f"point spec.checkpoints.uri at a new prefix, or set spec.checkpoints.resumeFrom (latest, or a "
        f"checkpoint URI) to continue from it."
    )


def choose(store: CheckpointStore, me: RunIdentity, resume_from: str | None, *,
           storage_options: dict[str, Any] | None = None, max_steps: int | None = None) -> ResumeChoice:
    """Apply the rule of this module's docstring to the committed checkpoints under ``store``."""
    committed = store.committed()
    own = [c for c in committed if me.owns(c.identity)]
    foreign = [c for c in committed if not me.owns(c.identity)]
    if own:
        newer = [c for c in foreign if c.step > own[-1].step]
        if newer:
            raise _foreign_error(store, newer[-1], me, newer=True)
        return ResumeChoice(own[-1], store, "own")
    if resume_from:
        source, ckpt = resolve_resume_from(resume_from, store, storage_options or {})
        if max_steps is not None and ckpt.step >= max_steps:
            raise ConfigError(
                f"spec.training.maxSteps: {max_steps} is not beyond step {ckpt.step} of "
                f"spec.checkpoints.resumeFrom ({ckpt.uri}); nothing would train. Raise maxSteps.")
        return ResumeChoice(ckpt, source, "resumeFrom")
    if foreign:
        raise _foreign_error(store, foreign[-1], me, newer=False)
    return ResumeChoice(None, None, "fresh")


def resolve_resume_from(resume_from: str, store: CheckpointStore,
                        storage_options: dict[str, Any]) -> tuple[CheckpointStore, CommittedCheckpoint]:
    """``latest`` or a URI (a ``checkpoint-<step>/`` directory or a prefix) → its committed checkpoint."""
    field = "spec.checkpoints.resumeFrom"
    if resume_from == LATEST:
        latest = store.latest_committed()
        if latest is None:
            raise ConfigError(f"{field}: latest, but there is no committed checkpoint under "
                              f"spec.checkpoints.uri {store.uri}")
        return store, latest
    uri = resume_from.rstrip("/")
    head, _, name = uri.rpartition("/")
    m = _STEP_DIR.match(name)
    try:
        if m:
            source = CheckpointStore(head or ".", storage_options)
            return source, source.get(int(m.group(1)))
        source = CheckpointStore(uri, storage_options)
    except (CheckpointError, OSError, ValueError) as e:
        raise ConfigError(f"{field}: {resume_from} is not a committed checkpoint: {e}") from e
    latest = source.latest_committed()
    if latest is None:
        raise ConfigError(f"{field}: no committed checkpoint under {resume_from}")
    return source, latest


@dataclass(frozen=True)
class NodeRanks:
    """The global ranks of this node's processes: ``first`` .. ``first + count - 1`` of ``world``."""

    first: int
    count: int
    world: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "NodeRanks":
        """From torchrun's env (a node's ranks are contiguous); one process of one when unset."""
        env = os.environ if env is None else env
        num = lambda k, d: int(env.get(k) or d)  # noqa: E731
        rank, local = num("RANK", 0), num("LOCAL_RANK", 0)
        return cls(first=rank - local, count=num("LOCAL_WORLD_SIZE", 1), world=num("WORLD_SIZE", 1))

    def __contains__(self, rank: object) -> bool:
        return isinstance(rank, int) and self.first <= rank < self.first + self.count

    def describe(self) -> str:
        last = self.first + self.count - 1
        ranks = f"rank {self.first}" if last == self.first else f"ranks {self.first}-{last}"
        return f"{ranks} of {self.world}"


def rank_of(path: str) -> int | None:
    """The rank a per-rank checkpoint file belongs to, or None for a file every rank reads."""
    m = _RANK_FILE.search(path)
    return None if m is None else int(m.group(1) or m.group(2))


def node_files(files: list[dict[str, Any]], node: NodeRanks) -> list[dict[str, Any]]:
    """The manifest entries the node's ranks read: every shared file and its own ranks' files.

    Every file when the checkpoint's per-rank files are not those of ``node.world`` ranks (another
    world size: DeepSpeed and HF then need the other ranks' files, or warn without them).
    """
    ranks = {r for f in files if (r := rank_of(f["path"])) is not None}
    if not ranks or ranks != set(range(node.world)):
        return list(files)
    return [f for f in files if (r := rank_of(f["path"])) is None or r in node]


def download_for_node(source: CheckpointStore, ckpt: CommittedCheckpoint, workdir: Path,
                      node: NodeRanks | None = None) -> Path:
    """The checkpoint's one local copy on this node (node_cache.py): the files of ``node_files``,
    verified file by file.

    The directory name carries a digest of the manifest and of the files chosen, so a re-committed
    step, another run's checkpoint at the same step or another node's choice never reuses a copy.
    """
    node = NodeRanks.from_env() if node is None else node
    files = node_files(ckpt.manifest["files"], node)
    digest = hashlib.sha256(repr((sorted((f["path"], f["sha256"]) for f in ckpt.manifest["files"]),
                                  sorted(f["path"] for f in files))).encode())
    target = Path(workdir) / "resume" / f"{CHECKPOINT_PREFIX}{ckpt.step}-{digest.hexdigest()[:12]}"

    def fetch(tmp: Path) -> None:
        total = sum(int(f["size"]) for f in ckpt.manifest["files"])
        log.info("checkpoint %d: this node (%s) downloads %d of the checkpoint's %d files, %d of %d bytes",
                 ckpt.step, node.describe(), len(files), len(ckpt.manifest["files"]),
                 sum(int(f["size"]) for f in files), total)
        source.download(ckpt, tmp, files=files)

    return fetch_once(target, fetch, what=f"checkpoint {ckpt.uri}")


def resume_point(cfg: Any, result: Any, *, rank: int, phase: Any, job: Any,
                 env: Mapping[str, str] | None = None) -> tuple[CheckpointStore | None, Path | None]:
    """The run's checkpoint store (owned by this run's identity) and the local copy to resume from.

    Raises ConfigError (exit 64) for a foreign checkpoint under ``checkpoints.uri`` or a bad
    ``resumeFrom``; sets ``result.resumed_from`` and ``result.uncommitted_ignored``.
    """
    from .data import storage_options_for

    if not cfg.checkpoints_uri:
        return None, None
    me = run_identity(job, env)
    if rank == 0:
        log.info("attempt %s, %s", me.attempt if me.attempt is not None else "-", me.describe())
    store = CheckpointStore(cfg.checkpoints_uri, storage_options_for(cfg.checkpoints_uri, cfg.spec.storage), owner=me)
    result.uncommitted_ignored = store.uncommitted()
    if result.uncommitted_ignored and rank == 0:
        log.warning("ignoring uncommitted checkpoint directories: %s", ", ".join(result.uncommitted_ignored))
    resume_from = cfg.spec.checkpoints.resume_from
    choice = choose(store, me, resume_from, max_steps=cfg.spec.training.max_steps,
                    storage_options=storage_options_for(resume_from or "", cfg.spec.storage))
    if choice.checkpoint is None:
        return store, None
    from . import phases

    phases.enter("downloading")
    resume_dir = download_for_node(choice.source, choice.checkpoint, cfg.workdir)
    phases.enter("preflight")  # loading and checking the model before training
    result.resumed_from = choice.checkpoint.step
    origin = "its own" if choice.why == "own" else "spec.checkpoints.resumeFrom's"
    phase(f"resuming from committed checkpoint {choice.checkpoint.step} ({origin}: {choice.checkpoint.uri})")
    return store, resume_dir
