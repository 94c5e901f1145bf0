"""Data lineage: ``lineage.json`` beside the checkpoints and the exported model.

Which bytes trained this model: for every dataset its URI, the store's ETag and version (S3), its
sha256 and size, the rows read, kept and dropped (by reason class); the weights and task_type
counts of the mix; the split; the base model's URI, revision and file hashes; the golden set's
hashes; and the resolved spec. ``status.lineage`` and the local run's ``result.json`` hold the
manifest's URI and digest.

The digest is a sha256 over the manifest's canonical JSON without what changes from run to run with
the same inputs (``writtenAt``, ``run``, each object's ``etag``/``versionId``/``lastModified``, and
the full ``spec``, which counts through its training-relevant fields): the same dataset bytes, model
and training spec always give the same digest. Row counts come from what loading and preflight
already recorded (``SourceData``, the kept examples); nothing is parsed a second time.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from sft_api.training_identity import spec_hash, training_fields

from .config import ResolvedConfig
from .data import SourceData, mix_by_weight, resolve_uri, split_examples, storage_options_for
from .distributed import rank as _rank

log = logging.getLogger("sft_trainer")

LINEAGE_FILE = "lineage.json"
FORMAT = 1
VOLATILE_KEYS = frozenset({"writtenAt", "run", "etag", "versionId", "lastModified", "spec", "digest"})
_CHUNK = 4 * 1024 * 1024


# ------------------------------------------------------------------------------ objects
def object_facts(uri: str, storage: Any = None) -> dict[str, Any]:
    """sha256, byte size and (where the store has them) ETag, version and mtime of one object."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri, **storage_options_for(uri, storage))
    info = fs.info(path)
    h, size = hashlib.sha256(), 0
    with fs.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    facts: dict[str, Any] = {"uri": uri, "sha256": h.hexdigest(), "bytes": size}
    etag = info.get("ETag") or info.get("etag")
    if etag:
        facts["etag"] = str(etag).strip('"')
    version = info.get("VersionId") or info.get("version_id")
    if version and version != "null":
        facts["versionId"] = str(version)
    modified = info.get("LastModified") or info.get("mtime")
    if modified is not None:
        facts["lastModified"] = str(modified)
    return facts


def _reason_class(reason: str) -> str:
    """A bad row's reason without its row-specific detail (columns, list indices)."""
    reason = re.sub(r"\s*\(column \d+\)", "", reason)
    reason = re.sub(r"\[\d+\]", "[*]", reason)
    return reason.split(": ", 1)[0] if reason.startswith("invalid JSON") else reason


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------ datasets
def _unique(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[int, dict[str, Any]] = {}
    for e in examples:
        seen.setdefault(id(e), e)
    return list(seen.values())


def _has_empty_assistant(e: dict[str, Any]) -> bool:
    return any(m["role"] == "assistant" and not m["content"].strip() for m in e["messages"])


def _token_count(e: dict[str, Any]) -> int | None:
    tokens = e.get("tokens") or {}
    ids = tokens.get("input_ids")
    return len(ids) if ids is not None else None


def before_preflight(cfg: ResolvedConfig, sources: list[SourceData]) -> set[int]:
    """The examples ``data.load_datasets`` put into the splits, before preflight removed any: the
    same deterministic split and weighted mix, recomputed on the same example objects."""
    split = cfg.spec.split
    parts, ids = [], set()
    for i, src in enumerate(sources):
        sp = split_examples(src.examples, split.validation, split.test, split.seed + i)
        parts.append((sp.train, src.weight))
        ids |= {id(e) for e in sp.validation + sp.test}
    return ids | {id(e) for e in mix_by_weight(parts, split.seed)}


def dataset_entry(cfg: ResolvedConfig, index: int, src: SourceData, splits: Any, placed: set[int]) -> dict[str, Any]:
    """One source: its object facts and its rows read, kept and dropped by reason class.

    Dropped rows: malformed at reading (bad JSON, wrong shape) and rows the chat template could not
    render or mask (preflight drops them). Kept rows with an empty assistant turn or longer than
    ``maxSeqLength`` (the tail is not trained) are counted apart: they stay in training. A source
    that the weighted mix subsamples has train rows that were never placed (``rowsNotSampled``).
    """
    spec_source = cfg.spec.datasets[index]
    own = {id(e) for e in src.examples}
    kept = {name: [e for e in _unique(part) if id(e) in own]
            for name, part in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))}
    kept_ids = {id(e) for part in kept.values() for e in part}
    unmaskable = [e for e in src.examples if id(e) in placed and id(e) not in kept_ids]
    not_sampled = [e for e in src.examples if id(e) not in placed]
    every_kept = [e for part in kept.values() for e in part]
    lengths = [n for n in (_token_count(e) for e in every_kept) if n is not None]
    malformed = [_reason_class(b.reason) for b in src.bad_rows]
    entry = object_facts(src.uri, cfg.storage)
    entry.update({
        "format": getattr(spec_source.format, "value", spec_source.format),
        "weight": src.weight,
        "taskType": spec_source.task_type,
        "rowsRead": src.rows,
        "rowsKept": len(kept_ids),
        "rowsDropped": {"malformed": len(malformed), "unmaskable": len(unmaskable)},
        "droppedReasons": _count(malformed),
        "rowsNotSampled": len(not_sampled),
        "keptFlagged": {
            "emptyAssistantTurn": sum(1 for e in every_kept if _has_empty_assistant(e)),
            "truncated": sum(1 for n in lengths if n > cfg.max_seq_length),
        },
        "keptBySplit": {k: len(v) for k, v in kept.items()},
        "taskTypes": _count(e["task_type"] for e in src.examples),  # of the usable rows
        "taskTypesKept": _count(e["task_type"] for e in every_kept),
    })
    return entry


# ------------------------------------------------------------------------------ model
def _file_list(root: Path) -> list[dict[str, Any]]:
    from .checkpoint_store import scan_local_dir

    return [e.to_json() for _, e in scan_local_dir(root)]


def model_entry(cfg: ResolvedConfig, location: str, model: Any, tokenizer: Any) -> dict[str, Any]:
    """The base model: URI, revision and the sha256 of every file (for the builtin model: of what
    ``save_pretrained`` writes of the model just built)."""
    from .tiny_model import BUILTIN_TINY_LLAMA

    spec_model = cfg.spec.model
    entry: dict[str, Any] = {"uri": spec_model.uri, "revision": spec_model.revision}
    if location == BUILTIN_TINY_LLAMA:
        with tempfile.TemporaryDirectory(dir=cfg.workdir) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            entry["files"] = _file_list(Path(tmp))
        entry["filesFrom"] = "save_pretrained of the built model and tokenizer"
        return entry
    root = Path(location)
    if not root.is_dir():  # a hub id: its snapshot in the local cache (the revision resolved to a commit)
        from huggingface_hub import snapshot_download

        try:
            root = Path(snapshot_download(location, revision=spec_model.revision, local_files_only=True))
        except Exception as e:  # noqa: BLE001 - the model loaded; a manifest without its hashes says why
            log.error("lineage: cannot find the files of %s in the local hub cache: %s", location, e)
            return {**entry, "files": [], "filesError": f"{type(e).__name__}: {e}"}
        entry["resolvedRevision"] = root.name
    entry["files"] = _file_list(root)
    entry["filesFrom"] = str(root)
    return entry


# ------------------------------------------------------------------------------ manifest
def build_manifest(cfg: ResolvedConfig, inputs: Any, model: Any, result: Any) -> dict[str, Any]:
    splits = inputs.splits
    placed = before_preflight(cfg, inputs.sources)
    datasets = [dataset_entry(cfg, i, src, splits, placed) for i, src in enumerate(inputs.sources)]
    golden = None
    if cfg.golden_set is not None:
        golden = object_facts(resolve_uri(cfg.golden_set.uri, cfg.base_dir), cfg.storage)
        golden["rows"] = len(inputs.golden or [])
    split = cfg.spec.split
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "writtenAt": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run": {"job": cfg.job_name, "namespace": cfg.namespace, "specHash": spec_hash(cfg.spec)},
        "datasets": datasets,
        "countsMatchPreflight": counts_match_preflight(datasets, result.preflight),
        "mix": {
            "weights": {d["uri"]: d["weight"] for d in datasets},
            "trainRows": len(splits.train),  # with the weighted mix's repeats
            "taskTypes": {name: _count(e["task_type"] for e in part)
                          for name, part in (("train", splits.train), ("validation", splits.validation),
                                             ("test", splits.test))},
        },
        "split": {"seed": split.seed, "validation": split.validation, "test": split.test,
                  "sizes": {"train": len(splits.train), "validation": len(splits.validation),
                            "test": len(splits.test)}},
        "model": model_entry(cfg, inputs.location, model, inputs.tokenizer),
        "goldenSet": golden,
        "trainingFields": training_fields(cfg.spec),
        "spec": cfg.spec.model_dump(by_alias=True, mode="json", exclude_none=True),
    }
    manifest["digest"] = digest(manifest)
    return manifest


def counts_match_preflight(datasets: list[dict[str, Any]], report: dict[str, Any]) -> bool:
    """The per-source counts must add up to preflight's totals; a mismatch means this module no
    longer mirrors ``load_datasets`` and the manifest misstates the data (logged as an error and
    recorded in the manifest, not fatal to the run)."""
    dropped = sum(d["rowsDropped"]["malformed"] + d["rowsDropped"]["unmaskable"] for d in datasets)
    rows = sum(d["rowsRead"] for d in datasets)
    ok = report.get("bad_rows") == dropped and report.get("rows") == rows
    if not ok:
        log.error("lineage: per-source counts (rows %d, dropped %d) disagree with the preflight report "
                  "(rows %s, bad rows %s)", rows, dropped, report.get("rows"), report.get("bad_rows"))
    return ok


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def digest(manifest: dict[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical JSON of the manifest without its volatile keys."""
    text = json.dumps(_strip(manifest), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------ writing
def _join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def _put(uri: str, text: str, storage: Any) -> None:
    import fsspec

    if "://" not in uri:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    with fsspec.open(uri, "w", auto_mkdir=True, **storage_options_for(uri, storage)) as f:
        f.write(text)


def write_lineage(cfg: ResolvedConfig, inputs: Any, model: Any, result: Any, *, rank: int | None = None) -> None:
    """Rank 0: build the manifest and write it beside the checkpoints (the work directory without
    a checkpoints URI); ``result.lineage`` gets its URI and digest. Runs before training, so that a
    run stopped or preempted later still has one."""
    if (_rank() if rank is None else rank) != 0:
        return
    manifest = build_manifest(cfg, inputs, model, result)
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    (cfg.workdir / LINEAGE_FILE).write_text(text)
    uri = _join(cfg.checkpoints_uri, LINEAGE_FILE) if cfg.checkpoints_uri else str(cfg.workdir / LINEAGE_FILE)
    _put(uri, text, cfg.storage)
    result.lineage = {"uri": uri, "digest": manifest["digest"]}
    log.info("lineage: %s (%s)", uri, manifest["digest"])


def write_beside_model(cfg: ResolvedConfig, result: Any) -> None:
    """Rank 0: the same manifest beside the exported model (``<output.uri>/lineage.json``)."""
    if _rank() != 0 or not result.output_uri or not (cfg.workdir / LINEAGE_FILE).is_file():
        return
    uri = _join(result.output_uri, LINEAGE_FILE)
    _put(uri, (cfg.workdir / LINEAGE_FILE).read_text(), cfg.storage)
    result.lineage = {**(result.lineage or {}), "modelUri": uri}
