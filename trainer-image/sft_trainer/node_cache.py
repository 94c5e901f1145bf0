"""One copy per node of what every rank on the node reads: the base model and the resume checkpoint.

The node's local rank 0 fetches into a temporary directory beside the target and renames it into
place; the rename is atomic, so the target exists only when it is complete, on every later attempt
too. The other local ranks wait for the target to appear. No process group is needed (this runs
before torch.distributed is initialised): the shared work directory is the rendezvous.

If the leader fails, it leaves a ``<target>.failed`` note with the error and the followers raise
at once instead of waiting out their timeout.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Mapping

log = logging.getLogger(__name__)

WAIT_ENV = "SFT_NODE_FETCH_TIMEOUT_SECONDS"  # how long local ranks > 0 wait for local rank 0
DEFAULT_WAIT_SECONDS = 6 * 3600.0
_POLL_SECONDS = 0.2
# A .failed note older than this (before the follower started) is a previous attempt's.
_STALE_SLACK_SECONDS = 5.0


class NodeFetchError(RuntimeError):
    """The node's local rank 0 could not fetch the shared copy (its error is in the message)."""


def local_rank(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    return int(env.get("LOCAL_RANK", "0") or 0)


def _failed_note(target: Path) -> Path:
    return target.with_name(target.name + ".failed")


def fetch_once(target: Path, fetch: Callable[[Path], None], *, what: str, leader: bool | None = None,
               timeout: float | None = None) -> Path:
    """Return ``target``, fetched by ``fetch(tmp_dir)`` on the node's local rank 0 only.

    ``fetch`` fills an empty directory; the leader renames it to ``target``. A ``target`` that
    already exists is complete (it only ever appears through the rename) and is reused.
    """
    target = Path(target)
    leader = local_rank() == 0 if leader is None else leader
    if target.is_dir():
        log.info("%s: reusing the node's copy in %s", what, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if leader:
        return _lead(target, fetch, what)
    return _follow(target, what, timeout)


def _lead(target: Path, fetch: Callable[[Path], None], what: str) -> Path:
    note = _failed_note(target)
    note.unlink(missing_ok=True)
    for old in target.parent.glob(f".{target.name}.tmp-*"):  # a killed leader's remains
        shutil.rmtree(old, ignore_errors=True)
    tmp = target.with_name(f".{target.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    tmp.mkdir()
    log.info("%s: downloading once for this node into %s", what, target)
    try:
        fetch(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not another node's leader on a shared volume winning the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        note.write_text(f"{type(e).__name__}: {e}")
        raise
    return target


def _follow(target: Path, what: str, timeout: float | None) -> Path:
    started = time.time()
    wait = timeout if timeout is not None else float(os.environ.get(WAIT_ENV) or DEFAULT_WAIT_SECONDS)
    deadline = time.monotonic() + wait
    note = _failed_note(target)
    while not target.is_dir():
        try:
            if note.stat().st_mtime >= started - _STALE_SLACK_SECONDS:
                raise NodeFetchError(f"{what}: local rank 0 failed to download it: {note.read_text()}")
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise NodeFetchError(f"{what}: local rank 0 did not finish downloading it into {target} "
                                 f"within {wait:.0f}s ({WAIT_ENV})")
        time.sleep(_POLL_SECONDS)
    return target
