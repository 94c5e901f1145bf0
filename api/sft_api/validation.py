"""Loading and validating SFTJob documents with messages that name the field."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from . import rules
from .models import API_VERSION, KIND, SFTJob


class SFTJobLoadError(ValueError):
    """The file is not a single SFTJob document (one line, no traceback)."""


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SFTJobLoadError(f"{where}: not valid YAML: {problem}") from None
    if not docs:
        raise SFTJobLoadError(f"{source}: the file is empty; expected one SFTJob document")
    if len(docs) > 1:
        raise SFTJobLoadError(f"{source}: found {len(docs)} YAML documents; put one SFTJob per file")
    doc = docs[0]
    if not isinstance(doc, dict):
        raise SFTJobLoadError(f"{source}: expected a mapping with apiVersion, kind, metadata and spec")
    kind = doc.get("kind")
    if kind != KIND:
        raise SFTJobLoadError(f"{source}: kind is {kind!r}, not {KIND!r}; this file is not an SFTJob")
    if doc.get("apiVersion") != API_VERSION:
        raise SFTJobLoadError(f"{source}: apiVersion is {doc.get('apiVersion')!r}; SFTJob is served as {API_VERSION!r}")
    return doc


def _read(path_or_text: str | Path) -> tuple[str, str]:
    if isinstance(path_or_text, Path) or ("\n" not in str(path_or_text) and Path(str(path_or_text)).exists()):
        path = Path(path_or_text)
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise SFTJobLoadError(f"{path}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SFTJobLoadError(f"{path}: not a UTF-8 text file") from None
    if "\n" not in str(path_or_text) and not str(path_or_text).lstrip().startswith(("{", "apiVersion")):
        raise SFTJobLoadError(f"{path_or_text}: no such file")
    return str(path_or_text), "<input>"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that the error location points into (for listing allowed fields)."""
    model: Any = SFTJob
    for part in loc:
        if isinstance(part, int):
            continue
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        field = fields.get(part)
        if field is None:
            return model
        ann = field.annotation
        nxt = None
        for cand in [ann, *getattr(ann, "__args__", ())]:
            for inner in [cand, *getattr(cand, "__args__", ())]:
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    nxt = inner
        if nxt is None:
            return model
        model = nxt
    return model


def _friendly(err: dict[str, Any]) -> str:
    t, ctx, msg = err["type"], err.get("ctx") or {}, err["msg"]
    if t == "missing":
        return "required field is missing"
    if t == "extra_forbidden":
        owner = _model_at(tuple(err["loc"][:-1]))
        allowed = sorted((f.alias or n) for n, f in owner.model_fields.items()) if owner else []
        name = str(err["loc"][-1])
        close = difflib.get_close_matches(to_camel(name), allowed, n=1, cutoff=0.75)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown field; {hint}allowed: {', '.join(allowed)}"
    if t in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[t]
        val = next(iter(ctx.values()))
        return f"must be {op} {val} (got {err.get('input')!r})"
    if t == "enum":
        return f"must be one of: {ctx.get('expected', '').replace(' or ', ', ')} (got {err.get('input')!r})"
    if t == "string_pattern_mismatch":
        pattern = ctx.get("pattern", "")
        if "hf|s3|file|builtin" in pattern:
            return f"{err.get('input')!r} is not a supported URI (use hf://, s3://, file://, builtin:// or a relative path)"
        return f"{err.get('input')!r} does not match {pattern}"
    if t in ("too_short", "too_long"):
        return msg.replace("List", "list").replace("Value", "value")
    if t == "value_error":
        return msg.removeprefix("Value error, ")
    return msg[0].lower() + msg[1:] if msg else t


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate_document(doc: dict[str, Any]) -> list[Problem]:
    """Every problem of a parsed SFTJob document: schema errors and cross-field rules, with field paths."""
    problems: list[Problem] = []
    try:
        # Documents use the wire (camelCase) names only, exactly as the apiserver does.
        SFTJob.model_validate(doc, by_alias=True, by_name=False)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "union["))))
            # Rule failures surface below, one per rule, from the raw document.
            if err["type"] == "value_error" and loc == ("spec",):
                continue
            # A quantity is int-or-string: report one line for it, not one per union member.
            union_members = ("int", "str", "constrained-str")
            if any(isinstance(p, str) and p in union_members for p in loc):
                loc = tuple(p for p in loc if p not in union_members)
                msg = f"{err.get('input')!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)"
            else:
                msg = _friendly(err)
            problems.append(Problem(_loc(loc), msg))
    for path, message in rules.evaluate(doc):
        # A rule's message starts with the field it is about; that is the path users look for.
        field, _, text = message.partition(": ")
        problems.append(Problem(field or path, text or message))
    seen, unique = set(), []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            unique.append(p)
    return unique


def load_document(path_or_text: str | Path) -> tuple[dict[str, Any], str]:
    text, source = _read(path_or_text)
    return _parse(text, source), source


def load_sftjob(path_or_text: str | Path) -> SFTJob:
    """Parses and validates one SFTJob; raises SFTJobLoadError with every problem listed."""
    doc, source = load_document(path_or_text)
    problems = validate_document(doc)
    if problems:
        listing = "\n".join(f"  {p}" for p in problems)
        raise SFTJobLoadError(f"{source}: {len(problems)} problem(s):\n{listing}")
    return SFTJob.model_validate(doc, by_alias=True, by_name=False)
