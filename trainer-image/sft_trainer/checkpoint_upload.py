"""Checkpoint uploads in the background, one at a time, while training continues.

``CheckpointCommitCallback`` (callbacks.py) decides *when* a checkpoint commits; this module holds
the two pieces it needs to do so off the training path:

- ``snapshot()`` hard-links the files the HF Trainer just wrote into a private directory. HF never
  rewrites a checkpoint's files once ``on_save`` runs, but its rotation (``save_total_limit``) and
  ``save_total_limit=1`` clean-up delete whole directories, which a hard link survives. Links cost
  microseconds per file, so the step that saves is blocked only for that, not for the upload.
- ``BackgroundJob`` runs one callable on a daemon thread and hands back ``(value, error)``. A
  daemon thread dies with the process: a crash or SIGKILL mid-upload leaves an uncommitted
  directory (no marker), exactly as a synchronous upload would, and never a committed half.

The ordering guarantees stay in the callback: at most one job in flight (the next save waits for
the previous commit), the marker only after every file of every rank, retention only after the
marker and never concurrently with an upload, and ``on_train_end`` (also the SIGTERM path) waits.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

SNAPSHOT_DIR = ".uploading"  # under output_dir; HF's rotation only globs checkpoint-*
MODE_ENV = "SFT_CHECKPOINT_UPLOAD"  # "background" (the default) or "sync"
MODES = ("background", "sync")


def upload_mode(env: dict[str, str] | None = None) -> str:
    """``background`` unless ``SFT_CHECKPOINT_UPLOAD=sync`` (an escape hatch and the benchmark's baseline)."""
    mode = (env if env is not None else os.environ).get(MODE_ENV, "").strip().lower() or "background"
    if mode not in MODES:
        log.warning("%s=%r is not one of %s; uploading in the background", MODE_ENV, mode, "/".join(MODES))
        return "background"
    return mode


def snapshot(local_dir: Path, dest: Path) -> Path:
    """Hard-link every file of ``local_dir`` into ``dest`` (a copy where a link fails); returns ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)  # a stale snapshot of an earlier attempt in the same workdir
    for src in sorted(local_dir.rglob("*")):
        if not src.is_file():
            continue
        target = dest / src.relative_to(local_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target)
        except OSError:  # another filesystem, or one without hard links
            shutil.copy2(src, target)
    dest.mkdir(parents=True, exist_ok=True)  # an empty checkpoint still uploads as one
    return dest


class BackgroundJob:
    """``fn(*args)`` on a daemon thread; ``wait()`` returns ``(its value, None)`` or ``(None, the error)``."""

    def __init__(self, name: str, fn: Callable[..., Any], *args: Any):
        self.name = name
        self.started = time.monotonic()
        self._out: tuple[Any, str | None] = (None, "did not finish")
        self._thread = threading.Thread(target=self._run, args=(fn, args), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._out = (fn(*args), None)
        except BaseException as e:  # noqa: BLE001 - handed to the training thread, which raises
            log.error("%s failed: %s: %s", self.name, type(e).__name__, e)
            self._out = (None, f"{type(e).__name__}: {e}")

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> tuple[Any, str | None]:
        self._thread.join()
        return self._out
