"""Checkpoints in object storage with an atomic commit marker.

Layout under ``<checkpoints.uri>``::

    checkpoint-<step>/<files written by the HF Trainer>
    checkpoint-<step>/_COMMITTED      # JSON manifest, written last

A checkpoint exists, as far as resume and retention are concerned, only when its ``_COMMITTED``
marker parses, names the right step and lists files that are all present with the recorded sizes.
Everything else is an *uncommitted* directory: the remains of an upload that was killed. Those are
reported and ignored, never resumed from.

The manifest also records who wrote the checkpoint (``identity``: the job's UID, the hash of the
training-relevant spec fields and the attempt; see ``sft_api.training_identity``). A store opened
with an ``owner`` applies retention only to that owner's checkpoints; which checkpoint a run may
resume is decided in ``resume.py``.

Object stores have no atomic directory rename, so atomicity comes from ordering instead: every file
is uploaded first, the marker last (a single PUT on S3, a rename on a local filesystem), and on
deletion the marker goes first. A crash at any point therefore leaves either a complete committed
checkpoint or an uncommitted directory, never a half checkpoint that looks committed.

``file://`` URIs, plain local paths and ``s3://`` (through s3fs, with endpoint and credentials in
``storage_options``) go through the same fsspec code path.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import fsspec
from fsspec.implementations.local import LocalFileSystem

from sft_api.training_identity import RunIdentity

log = logging.getLogger(__name__)

MARKER = "_COMMITTED"
MANIFEST_FORMAT = 2  # 2: adds "identity"; format-1 manifests read as written by an unknown run
CHECKPOINT_PREFIX = "checkpoint-"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
_CHUNK = 4 * 1024 * 1024

# Test-only hook: seconds to sleep after each uploaded file, so that integration tests can kill a
# trainer in the middle of an upload. Unset (or 0) in production.
TEST_DELAY_ENV = "SFT_TEST_COMMIT_DELAY_SECONDS"


class CheckpointError(Exception):
    """A checkpoint cannot be used: missing, corrupted or inconsistent with its manifest."""


def transient_storage_errors() -> tuple[type[BaseException], ...]:
    """Errors a retry can cure: the filesystem's, and botocore's, which s3fs lets through unwrapped
    (an S3 server restarting raises ``EndpointConnectionError``, neither an OSError nor ours)."""
    errors: list[type[BaseException]] = [OSError, CheckpointError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:  # no S3 support installed: only local and fsspec filesystems
        pass
    return tuple(errors)


class _Empty(Exception):
    """A checkpoint directory with no objects at all: not a checkpoint, not even a partial one."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint, as recorded in the manifest."""

    path: str  # relative to the checkpoint directory, '/'-separated
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class CommittedCheckpoint:
    step: int
    uri: str  # the checkpoint directory, with a trailing '/'
    manifest: dict[str, Any] = field(repr=False)

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics") or {})

    @property
    def committed_at(self) -> str | None:
        return self.manifest.get("committedAt")

    @property
    def identity(self) -> dict[str, Any] | None:
        """Who wrote it: ``{"jobUid", "specHash", "jobName", "attempt"}``, or None (format 1)."""
        ident = self.manifest.get("identity")
        return ident if isinstance(ident, dict) else None


def sha256_file(path: str | os.PathLike[str]) -> tuple[int, str]:
    """Return (size, hex sha256) of a local file, streaming it."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def scan_local_dir(local_dir: str | os.PathLike[str]) -> list[tuple[Path, FileEntry]]:
    """List every regular file under ``local_dir`` (sorted) with its manifest entry."""
    root = Path(local_dir)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist")
    paths = [p for p in sorted(root.rglob("*"))
             if p.is_file() and p.relative_to(root).as_posix() != MARKER]  # never a stale marker
    # hashlib releases the GIL on large buffers: hash the shards of a big checkpoint in parallel
    with ThreadPoolExecutor(max_workers=min(8, len(paths) or 1)) as pool:
        digests = list(pool.map(sha256_file, paths))
    return [(p, FileEntry(p.relative_to(root).as_posix(), size, digest))
            for p, (size, digest) in zip(paths, digests)]


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class CheckpointStore:
    """Commit, list, verify, download and prune checkpoints under one fsspec URI."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None, *,
                 owner: RunIdentity | None = None):
        # owner: the run that commits here; its identity goes into each manifest and retention
        # deletes only its checkpoints (another run's, resumed through resumeFrom, stay)
        self.owner = owner
        if not uri:
            raise ValueError("checkpoints.uri: must not be empty")
        opts = dict(storage_options or {})
        if "://" not in uri:
            uri = "file://" + os.path.abspath(uri)
        self.fs, root = fsspec.core.url_to_fs(uri, **opts)
        self._local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")
        self.protocol = uri.split("://", 1)[0]
        self.uri = f"{self.protocol}://{self.root}/" if not self._local else f"file://{self.root}/"
        self.storage_options = opts

    # ------------------------------------------------------------------ paths
    def _dir(self, step: int) -> str:
        return f"{self.root}/{CHECKPOINT_PREFIX}{int(step)}"

    def checkpoint_uri(self, step: int) -> str:
        return f"{self.uri}{CHECKPOINT_PREFIX}{int(step)}/"

    def _uri_of(self, path: str) -> str:
        return f"{self.uri}{path[len(self.root) + 1:]}/"

    # ----------------------------------------------------------------- commit
    def begin(self, step: int) -> None:
        """Prepare ``checkpoint-<step>`` for a (re-)upload: drop its marker first, then old files.

        Removing the marker before anything else means a re-commit that crashes half-way leaves an
        uncommitted directory, not a committed one whose files no longer match.
        """
        d = self._dir(step)
        self.fs.invalidate_cache()
        if self.fs.exists(f"{d}/{MARKER}"):
            self.fs.rm(f"{d}/{MARKER}")
            log.info("re-committing step %d: removed the previous commit marker", step)
        if self.fs.exists(d):
            self.fs.rm(d, recursive=True)
        self.fs.invalidate_cache()

    def upload(self, local_dir: str | os.PathLike[str], step: int) -> list[FileEntry]:
        """Upload every file of ``local_dir`` into ``checkpoint-<step>/``; no marker."""
        d = self._dir(step)
        delay = float(os.environ.get(TEST_DELAY_ENV) or 0)
        entries: list[FileEntry] = []
        files = scan_local_dir(local_dir)
        if self._local:
            self.fs.makedirs(d, exist_ok=True)
        elif not delay and files:
            # object stores: one batched call uploads the files concurrently (multipart for big ones)
            self.fs.put([str(p) for p, _ in files], [f"{d}/{e.path}" for _, e in files])
            return [e for _, e in files]
        for local_path, entry in files:
            remote = f"{d}/{entry.path}"
            if self._local:
                self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(local_path), remote)
            entries.append(entry)
            if delay:
                time.sleep(delay)
        return entries

    def write_marker(
        self, step: int, files: Iterable[FileEntry], metrics: dict[str, Any] | None = None
    ) -> str:
        """Write the ``_COMMITTED`` manifest: the act that makes ``checkpoint-<step>`` exist."""
        entries = sorted({e.path: e for e in files}.values(), key=lambda e: e.path)
        manifest = {
            "format": MANIFEST_FORMAT,
            "step": int(step),
            "committedAt": _utcnow(),
            "identity": self.owner.to_manifest() if self.owner is not None else None,
            "metrics": _jsonable(metrics or {}),
            "totalBytes": sum(e.size for e in entries),
            "files": [e.to_json() for e in entries],
        }
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        marker = f"{self._dir(step)}/{MARKER}"
        if self._local:
            # rename is atomic on POSIX: readers never see a half-written marker
            tmp = f"{self._dir(step)}/.{MARKER}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, marker)
        else:
            self.fs.pipe_file(marker, data)  # one PUT: visible whole or not at all
        self.fs.invalidate_cache()
        return self.checkpoint_uri(step)

    def commit(
        self, local_dir: str | os.PathLike[str], step: int, metrics: dict[str, Any] | None = None
    ) -> str:
        """Upload ``local_dir`` as ``checkpoint-<step>/`` and write the marker last; return its URI."""
        self.begin(step)
        files = self.upload(local_dir, step)
        return self.write_marker(step, files, metrics)

    # --------------------------------------------------------------- discovery
    def _step_dirs(self) -> list[tuple[int, str]]:
        self.fs.invalidate_cache()
        try:
            listing = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for info in listing:
            if info.get("type") != "directory":
                continue
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            m = _CKPT_RE.match(name)
            if m:
                out.append((int(m.group(1)), info["name"].rstrip("/")))
        return sorted(out)

    def _validate(self, step: int, path: str) -> CommittedCheckpoint:
        """Return the checkpoint if its marker is valid and every listed file is present."""
        present = {
            info["name"][len(path) + 1:]: info.get("size")
            for info in self.fs.find(path, detail=True).values()
            if info.get("type") != "directory"
        }
        if not present:
            # Some S3 servers (SeaweedFS) keep an empty "directory" after its objects are deleted
            raise _Empty()
        if MARKER not in present:
            raise CheckpointError("no commit marker")
        try:
            manifest = json.loads(self.fs.cat_file(f"{path}/{MARKER}"))
        except FileNotFoundError:
            raise CheckpointError("no commit marker") from None
        except ValueError as e:
            raise CheckpointError(f"unreadable commit marker: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("step") != step:
            step_named = manifest.get("step") if isinstance(manifest, dict) else None
            raise CheckpointError(f"commit marker names step {step_named!r}")
        files = manifest.get("files")
        if not isinstance(files, list) or not files:
            raise CheckpointError("commit marker lists no files")
        for f in files:
            size = present.get(f.get("path"))
            if size is None:
                raise CheckpointError(f"missing file {f.get('path')}")
            if int(size) != int(f.get("size", -1)):
                raise CheckpointError(
                    f"file {f['path']} has {size} bytes, the manifest says {f.get('size')}"
                )
        return CommittedCheckpoint(step=step, uri=self._uri_of(path), manifest=manifest)

    def scan(self) -> tuple[list[CommittedCheckpoint], list[tuple[str, str]]]:
        """All checkpoints, oldest first: (committed, [(uncommitted uri, reason)])."""
        committed: list[CommittedCheckpoint] = []
        broken: list[tuple[str, str]] = []
        for step, path in self._step_dirs():
            try:
                committed.append(self._validate(step, path))
            except _Empty:
                continue
            except CheckpointError as e:
                broken.append((self._uri_of(path), str(e)))
        return committed, broken

    def committed(self) -> list[CommittedCheckpoint]:
        return self.scan()[0]

    def get(self, step: int) -> CommittedCheckpoint:
        """``checkpoint-<step>`` if it is committed; CheckpointError (with the reason) otherwise."""
        try:
            return self._validate(int(step), self._dir(step))
        except _Empty:
            raise CheckpointError(f"{self.checkpoint_uri(step)} does not exist") from None

    def latest_committed(self) -> CommittedCheckpoint | None:
        """The newest valid checkpoint, or None. Invalid directories are logged and skipped."""
        for step, path in reversed(self._step_dirs()):
            try:
                return self._validate(step, path)
            except _Empty:
                continue
            except CheckpointError as e:
                log.warning("ignoring uncommitted checkpoint %s: %s", self._uri_of(path), e)
        return None

    def uncommitted(self) -> list[str]:
        """URIs of checkpoint directories without a valid commit marker (reported, never used)."""
        return [uri for uri, _ in self.scan()[1]]

    # ---------------------------------------------------------------- download
    def download(self, ckpt: CommittedCheckpoint, local_dir: str | os.PathLike[str],
                 files: list[dict[str, Any]] | None = None) -> Path:
        """Download ``ckpt`` (or only ``files``, entries of its manifest) into ``local_dir``,
        verifying every file's size and sha256."""
        dest = Path(local_dir)
        dest.mkdir(parents=True, exist_ok=True)
        src = self._dir(ckpt.step)
        for f in ckpt.manifest["files"] if files is None else files:
            rel = f["path"]
            target = dest / rel
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                raise CheckpointError(f"{ckpt.uri}: manifest path {rel!r} escapes the checkpoint")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f"{src}/{rel}", str(target))
            size, digest = sha256_file(target)
            if size != f["size"] or digest != f["sha256"]:
                raise CheckpointError(
                    f"{ckpt.uri}{rel}: sha256 {digest[:12]}… ({size} bytes) does not match the "
                    f"manifest {f['sha256'][:12]}… ({f['size']} bytes)"
                )
        return dest

    # --------------------------------------------------------------- retention
    def delete(self, step: int) -> None:
        """Delete ``checkpoint-<step>``: the marker first, then the files."""
        d = self._dir(step)
        self.fs.invalidate_cache()
        if self.fs.exists(f"{d}/{MARKER}"):
            self.fs.rm(f"{d}/{MARKER}")
        if self.fs.exists(d):
            self.fs.rm(d, recursive=True)
        self.fs.invalidate_cache()

    def apply_retention(
        self, keep: int, best_metric: str = "eval_loss", greater_is_better: bool = False,
        keep_steps: Iterable[int] = (),
    ) -> list[int]:
        """Keep the last ``keep`` committed checkpoints plus the best by ``best_metric``, plus
        ``keep_steps`` (the best by golden pass rate, which is scored after the commit and so is not
        in the manifest: golden_checkpoints.py).

        Uncommitted directories older than the newest committed checkpoint are the remains of
        killed uploads (only rank 0 of the running job writes here), so they are removed too.
        ``keep <= 0`` keeps everything. Returns the deleted steps.
        """
        if keep <= 0:
            return []
        committed, broken = self.scan()
        if self.owner is not None:
            committed = [c for c in committed if self.owner.owns(c.identity)]
        if not committed:
            return []
        kept = {c.step for c in committed[-keep:]} | {int(s) for s in keep_steps}
        scored = [
            c for c in committed if isinstance(c.metrics.get(best_metric), (int, float))
        ]
        if scored:
            pick = max if greater_is_better else min
            # ties go to the newer checkpoint
            best = pick(scored, key=lambda c: (c.metrics[best_metric], c.step if greater_is_better else -c.step))
            kept.add(best.step)
        newest = committed[-1].step
        deleted = []
        for c in committed:
            if c.step not in kept:
                self.delete(c.step)
                deleted.append(c.step)
        for uri, _reason in broken:
            m = _CKPT_RE.match(uri.rstrip("/").rsplit("/", 1)[-1])
            if m and int(m.group(1)) < newest:
                self.delete(int(m.group(1)))
                deleted.append(int(m.group(1)))
        if deleted:
            log.info("retention: deleted checkpoints %s, kept %s", sorted(deleted), sorted(kept))
        return sorted(deleted)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[str(k)] = v
        elif hasattr(v, "item"):
            out[str(k)] = v.item()
        else:
            out[str(k)] = str(v)
    return out
