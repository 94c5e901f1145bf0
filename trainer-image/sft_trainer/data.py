"""Training data: read sources through fsspec, convert three formats to one conversational form,
split deterministically and mix by weight.

The internal form of one example is ``{"messages": [{role, content}, ...], "task_type": str,
"source": "<file>:<line>"}``. Every reading or conversion problem is recorded as a
``BadRow(location, reason)`` instead of raised, so that preflight can report all of them with
``file:line`` and decide against the bad-row threshold.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .exit_codes import ConfigError

ROLES = ("system", "user", "assistant")
DEFAULT_TASK_TYPE = "default"


@dataclass(frozen=True)
class BadRow:
    location: str  # "<file>:<line>" (jsonl line or parquet row, 1-based)
    reason: str

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


@dataclass
class SourceData:
    uri: str
    weight: float
    examples: list[dict[str, Any]] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    rows: int = 0


@dataclass
class Splits:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]


# ------------------------------------------------------------------------------- storage
def storage_options_for(uri: str, storage: Any = None) -> dict[str, Any]:
    """fsspec options for ``uri`` from ``spec.storage`` (endpoint, region, anonymous).

    Credentials are not in the spec: s3fs reads AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the
    environment, where the operator injects ``storage.secretRef``.
    """
    if not uri.startswith("s3://") or storage is None:
        return {}
    opts: dict[str, Any] = {}
    if getattr(storage, "endpoint", None):
        opts["endpoint_url"] = storage.endpoint
    if getattr(storage, "region", None):
        opts["client_kwargs"] = {"region_name": storage.region}
    if getattr(storage, "anonymous", False):
        opts["anon"] = True
    return opts


def resolve_uri(uri: str, base_dir: Path | None) -> str:
    """Scheme-less paths are relative to ``base_dir`` (the SFTJob file's directory under sftctl run)."""
    if "://" in uri or base_dir is None or Path(uri).is_absolute():
        return uri
    return str((base_dir / uri).resolve())


def _display(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


# ------------------------------------------------------------------------------- reading
def iter_rows(uri: str, storage_options: dict[str, Any] | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, record or BadRow-reason string)`` for a .jsonl or .parquet file.

    A row that is not valid JSON yields its error message as a ``str`` in place of the record.
    """
    import fsspec

    kind = "parquet" if uri.split("?")[0].endswith((".parquet", ".pq")) else "jsonl"
    try:
        with fsspec.open(uri, "rb", **(storage_options or {})) as f:
            data = f.read()
    except FileNotFoundError as e:
        raise ConfigError(f"spec.datasets: {_display(uri)}: file not found") from e
    except (OSError, ValueError) as e:
        raise ConfigError(f"spec.datasets: {_display(uri)}: cannot read: {e}") from e
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types for corrupt files
            raise ConfigError(f"spec.datasets: {_display(uri)}: not a parquet file: {e}") from e
        for i, rec in enumerate(table.to_pylist(), start=1):
            yield i, rec
        return
    for i, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield i, json.loads(raw)
        except json.JSONDecodeError as e:
            yield i, f"invalid JSON: {e.msg} (column {e.colno})"


# ---------------------------------------------------------------------------- conversion
def _as_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _check_messages(messages: Any, what: str = "messages") -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"'{what}' must be a non-empty list of {{role, content}}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"{what}[{i}] must be an object with role and content")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"{what}[{i}].role {role!r} is not one of {', '.join(ROLES)}")
        out.append({"role": role, "content": _as_text(m.get("content"), f"{what}[{i}].content")})
    return out


def to_messages(record: Any, fmt: str) -> list[dict[str, str]]:
    """One record in ``fmt`` → a list of chat messages. Raises ValueError with the reason."""
    if not isinstance(record, dict):
        raise ValueError("row is not a JSON object")
    if fmt == "messages":
        if "messages" not in record:
            raise ValueError("missing field 'messages'")
        msgs = _check_messages(record["messages"])
    elif fmt == "prompt-completion":
        for k in ("prompt", "completion"):
            if k not in record:
                raise ValueError(f"missing field '{k}'")
        p, c = record["prompt"], record["completion"]
        prompt = _check_messages(p, "prompt") if isinstance(p, list) else [
            {"role": "user", "content": _as_text(p, "prompt")}]
        completion = _check_messages(c, "completion") if isinstance(c, list) else [
            {"role": "assistant", "content": _as_text(c, "completion")}]
        if record.get("system") and prompt[0]["role"] != "system":
            prompt.insert(0, {"role": "system", "content": _as_text(record["system"], "system")})
        msgs = prompt + completion
    elif fmt == "alpaca":
        for k in ("instruction", "output"):
            if k not in record:
                raise ValueError(f"missing field '{k}'")
        user = _as_text(record["instruction"], "instruction")
        extra = record.get("input")
        if extra:
            user = f"{user}\n\n{_as_text(extra, 'input')}"
        msgs = [{"role": "user", "content": user},
                {"role": "assistant", "content": _as_text(record["output"], "output")}]
        if record.get("system"):
            msgs.insert(0, {"role": "system", "content": _as_text(record["system"], "system")})
    else:
        raise ValueError(f"unknown format {fmt!r}")
    if not any(m["role"] == "assistant" for m in msgs):
        raise ValueError("no assistant turn to train on")
    if msgs[-1]["role"] != "assistant":
        raise ValueError("the last turn must be the assistant's")
    return msgs


def load_source(source: Any, *, base_dir: Path | None = None, storage: Any = None) -> SourceData:
    """Read and convert one ``spec.datasets[]`` entry."""
    uri = resolve_uri(source.uri, base_dir)
    fmt = getattr(source.format, "value", source.format)
    default_task = source.task_type or DEFAULT_TASK_TYPE
    out = SourceData(uri=uri, weight=float(source.weight))
    name = _display(uri)
    for line, rec in iter_rows(uri, storage_options_for(uri, storage)):
        out.rows += 1
        loc = f"{name}:{line}"
        if isinstance(rec, str):
            out.bad_rows.append(BadRow(loc, rec))
            continue
        try:
            msgs = to_messages(rec, fmt)
        except ValueError as e:
            out.bad_rows.append(BadRow(loc, str(e)))
            continue
        task = rec.get("task_type", default_task)
        if not isinstance(task, str) or not task:
            out.bad_rows.append(BadRow(loc, "task_type must be a non-empty string"))
            continue
        out.examples.append({"messages": msgs, "task_type": task, "source": loc})
    return out


# ------------------------------------------------------------------------ split and mix
def split_examples(examples: list[dict[str, Any]], validation: float, test: float, seed: int) -> Splits:
    """Shuffle with ``seed`` and cut test, then validation, off the front: the same data and seed
    always give the same split, independent of the number of processes."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n = len(order)
    n_test = int(round(n * test))
    n_val = int(round(n * validation))
    pick = lambda idx: [examples[i] for i in idx]  # noqa: E731
    return Splits(
        test=pick(order[:n_test]),
        validation=pick(order[n_test:n_test + n_val]),
        train=pick(order[n_test + n_val:]),
    )


def mix_by_weight(parts: list[tuple[list[dict[str, Any]], float]], seed: int) -> list[dict[str, Any]]:
    """Mix training sets so that source *i* makes up ``weight_i / sum(weights)`` of the result.

    The mix is as large as all sources together (an epoch keeps its size); a source whose share
    is below its size share is subsampled without repeats, one above it is repeated whole and
    topped up with a sample. Deterministic in ``seed``; a single source is only shuffled.
    """
    parts = [(ex, w) for ex, w in parts if ex]
    if not parts:
        return []
    mixed: list[dict[str, Any]] = []
    if len(parts) == 1:
        mixed = list(parts[0][0])
    else:
        total_w = sum(w for _, w in parts)
        size = sum(len(ex) for ex, _ in parts)
        rng = random.Random(seed)
        for ex, w in parts:
            want = int(round(size * w / total_w))
            reps, rest = divmod(want, len(ex))
            mixed.extend(ex * reps)
            mixed.extend(rng.sample(ex, rest))
    random.Random(seed).shuffle(mixed)
    return mixed


def load_datasets(spec: Any, *, base_dir: Path | None = None) -> tuple[Splits, list[SourceData]]:
    """Load every source, split each one deterministically, and mix the training parts by weight.

    Validation and test keep every source's held-out rows unweighted, so that per-task losses
    and exact match are measured on the data as it is.
    """
    sources = [load_source(s, base_dir=base_dir, storage=spec.storage) for s in spec.datasets]
    train_parts, val, test = [], [], []
    for i, src in enumerate(sources):
        sp = split_examples(src.examples, spec.split.validation, spec.split.test, spec.split.seed + i)
        train_parts.append((sp.train, src.weight))
        val.extend(sp.validation)
        test.extend(sp.test)
    return Splits(train=mix_by_weight(train_parts, spec.split.seed), validation=val, test=test), sources


def task_types(examples: Iterable[dict[str, Any]]) -> list[str]:
    return sorted({e["task_type"] for e in examples})


def to_trl_rows(examples: Iterable[dict[str, Any]], loss_on: str, tokenizer: Any = None) -> list[dict[str, Any]]:
    """Pre-tokenized rows in TRL's documented columns, with our masks (masking.py).

    ``assistant``: ``input_ids`` + ``assistant_masks``; ``completion``: ``input_ids`` +
    ``completion_mask`` (the last assistant turn); ``all``: ``input_ids`` alone. TRL builds the
    labels from the mask, truncates and packs. Preflight leaves each example's encoding on it;
    ``tokenizer`` encodes the examples that have none (a ValueError without one).
    """
    from .preflight import TOKENS_KEY

    examples = list(examples)
    missing = [e for e in examples if (e.get(TOKENS_KEY) or {}).get("loss_on") != loss_on]
    if missing:
        if tokenizer is None:
            raise ValueError(f"to_trl_rows: {len(missing)} examples are not tokenized for lossOn {loss_on}; "
                             "run the preflight first or pass the tokenizer")
        _encode_missing(missing, loss_on, tokenizer)
    column = {"assistant": "assistant_masks", "completion": "completion_mask"}.get(loss_on)
    rows = []
    for e in examples:
        tokens = e[TOKENS_KEY]
        row = {"input_ids": list(tokens["input_ids"])}
        if column:
            row[column] = list(tokens["mask"])
        rows.append(row)
    return rows


def _encode_missing(examples: list[dict[str, Any]], loss_on: str, tokenizer: Any) -> None:
    from . import masking
    from .preflight import TOKENS_KEY

    verdict = masking.analyze_template(tokenizer, loss_on)
    info = masking.TokenInfo(tokenizer, verdict.end_of_turn)
    for e in examples:
        try:
            enc = masking.encode(tokenizer, e["messages"], loss_on, verdict, info)
        except masking.MaskingError as err:
            raise ConfigError(f"spec.datasets: {e.get('source', '?')}: {err}") from err
        e[TOKENS_KEY] = {"loss_on": loss_on, "input_ids": enc.input_ids, "mask": enc.mask}  # plain lists
