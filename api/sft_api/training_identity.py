"""Which run a checkpoint belongs to: the job's UID and a hash of the spec fields that change training.

A checkpoint is resumed only by the run that wrote it (docs/trainer.md, "Resume and checkpoint
identity"). Its commit manifest records ``jobUid`` (``metadata.uid``; none under ``sftctl run``) and
``specHash``, the hash of ``TRAINING_FIELDS``. Two specs with the same hash train the same steps from
the same state; any other difference (suspend, TTL, deadline, image, resources, eval cadence,
checkpoint and output locations, storage) leaves the hash alone, so such edits keep resuming.

The hash is taken over the fields as set, with defaults left out (pydantic ``exclude_defaults``): a
spec that spells out a default hashes the same as one that omits it, and a new API field with a
default does not change the hash of existing jobs. Stdlib and pydantic only: the operator and the
trainer both import it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

HASH_VERSION = 1  # bump when TRAINING_FIELDS changes meaning: old checkpoints then read as foreign

# The spec fields that change what a training step computes, as (field, sub-fields or None for all).
# workers: nodes x gpusPerNode is the data-parallel size, which sets the global batch and data order.
TRAINING_FIELDS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("model", None),
    ("datasets", None),
    ("split", None),
    ("method", None),
    ("training", None),
    ("workers", ("nodes", "gpusPerNode")),
)


def training_fields(spec: Any) -> dict[str, Any]:
    """The canonical training-relevant part of a spec (an ``SFTJobSpec`` or its camelCase mapping)."""
    from .models import SFTJobSpec

    if isinstance(spec, Mapping):
        spec = SFTJobSpec.model_validate(dict(spec))
    if not isinstance(spec, SFTJobSpec):
        raise TypeError(f"expected an SFTJobSpec or a mapping, got {type(spec).__name__}")
    dumped = spec.model_dump(by_alias=True, mode="json", exclude_defaults=True)
    out: dict[str, Any] = {}
    for name, sub in TRAINING_FIELDS:
        value = dumped.get(name)
        if sub is not None and isinstance(value, dict):
            value = {k: value[k] for k in sub if k in value}
        if value not in (None, {}, []):
            out[name] = value
    return out


def spec_hash(spec: Any) -> str:
    """Hex sha256 of the canonical JSON of ``training_fields(spec)`` (with ``HASH_VERSION``)."""
    payload = {"v": HASH_VERSION, "fields": training_fields(spec)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class RunIdentity:
    """Who writes (and may resume) checkpoints: ``job_uid`` is None under ``sftctl run``."""

    spec_hash: str
    job_uid: str | None = None
    job_name: str | None = None
    attempt: int | None = None

    def to_manifest(self) -> dict[str, Any]:
        return {"jobUid": self.job_uid, "specHash": self.spec_hash, "jobName": self.job_name,
                "attempt": self.attempt}

    def owns(self, recorded: Mapping[str, Any] | None) -> bool:
        """True if a manifest's ``identity`` names this run: same spec hash and same job UID."""
        if not isinstance(recorded, Mapping):
            return False  # written before identities existed: unknown owner
        return recorded.get("specHash") == self.spec_hash and recorded.get("jobUid") == self.job_uid

    def describe(self) -> str:
        uid = self.job_uid or "none (sftctl run)"
        return f"job UID {uid}, spec hash {self.spec_hash[:12]}"


def describe_recorded(recorded: Mapping[str, Any] | None) -> str:
    """How a manifest's identity reads in an error message."""
    if not isinstance(recorded, Mapping):
        return "no recorded identity (written before checkpoint identities)"
    uid = recorded.get("jobUid") or "none (sftctl run)"
    h = str(recorded.get("specHash") or "?")
    name = recorded.get("jobName")
    return f"job {name!r}, job UID {uid}, spec hash {h[:12]}" if name else f"job UID {uid}, spec hash {h[:12]}"
