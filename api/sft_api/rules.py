"""Cross-field and immutability rules of the SFTJob API.

Each rule exists once, here, in two executable forms that must agree: a CEL expression that the
generated CRD hands to the kube-apiserver (``x-kubernetes-validations``), and a Python predicate
that ``sftctl validate`` and the trainer run on the same camelCase document. The integration tests
feed the invalid-spec corpus to both and require the same message from each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

Node = dict[str, Any]

S3 = "s3://"


@dataclass(frozen=True)
class Rule:
    """A validation rule attached to the schema node at ``path`` (dotted, from the object root)."""

    path: str
    cel: str
    message: str
    check: Callable[[Node], bool]
    # JSONPath (relative to the node) of the field the message is about; the apiserver reports it.
    field_path: str | None = None
    # Transition rules compare with oldSelf and run on updates only.
    transition: bool = False


def _get(node: Node, dotted: str, default: Any = None) -> Any:
    cur: Any = node
    for part in dotted.split(".") if dotted else []:
        if not isinstance(cur, dict) or part not in cur or cur[part] is None:
            return default
        cur = cur[part]
    return cur


def _spec_uses_s3(spec: Node) -> bool:
    uris = [_get(spec, "model.uri", "")]
    uris += [d.get("uri", "") for d in spec.get("datasets") or [] if isinstance(d, dict)]
    uris += [_get(spec, "eval.goldenSet.uri", ""), _get(spec, "checkpoints.uri", ""), _get(spec, "output.uri", "")]
    uris += [r.get("uri", "") for r in _get(spec, "eval.regressionSets", []) or [] if isinstance(r, dict)]
    return any(isinstance(u, str) and u.startswith(S3) for u in uris)


def _storage_ok(spec: Node) -> bool:
    storage = spec.get("storage") or {}
    return bool(storage.get("secretRef")) or (bool(storage.get("endpoint")) and storage.get("anonymous") is True)


_S3_CEL = (
    "self.model.uri.startsWith('s3://')"
    " || self.datasets.exists(d, d.uri.startsWith('s3://'))"
    " || (has(self.eval) && has(self.eval.goldenSet) && self.eval.goldenSet.uri.startsWith('s3://'))"
    " || (has(self.eval) && has(self.eval.regressionSets) && self.eval.regressionSets.exists(r, r.uri.startsWith('s3://')))"
    " || (has(self.checkpoints) && has(self.checkpoints.uri) && self.checkpoints.uri.startsWith('s3://'))"
    " || (has(self.output) && has(self.output.uri) && self.output.uri.startsWith('s3://'))"
)

_GPU_CEL = "(has(self.workers) && has(self.workers.gpusPerNode) ? self.workers.gpusPerNode : 1)"


def _gpus(spec: Node) -> int:
    return int(_get(spec, "workers.gpusPerNode", 1))


RULES: list[Rule] = [
    Rule(
        path="",
        cel="self.metadata.name.size() <= 50",
        message="metadata.name: must be at most 50 characters (child Job and pod hostnames are derived from it)",
        check=lambda d: len(_get(d, "metadata.name", "")) <= 50,
        field_path=".metadata.name",
    ),
    Rule(
        path="spec.training",
        cel="has(self.epochs) != has(self.maxSteps)",
        message="spec.training: set exactly one of epochs or maxSteps",
        check=lambda t: (t.get("epochs") is not None) != (t.get("maxSteps") is not None),
    ),
    Rule(
        path="spec.method",
        cel="!has(self.lora) || self.type in ['lora', 'qlora']",
        message="spec.method.lora: only allowed when spec.method.type is lora or qlora",
        check=lambda m: m.get("lora") is None or m.get("type", "lora") in ("lora", "qlora"),
        field_path=".lora",
    ),
    Rule(
        path="spec.split",
        cel="(has(self.validation) ? self.validation : 0.1) + (has(self.test) ? self.test : 0.05) < 0.5",
        message="spec.split: validation + test must be less than 0.5",
        check=lambda s: float(s.get("validation", 0.1)) + float(s.get("test", 0.05)) < 0.5,
    ),
    Rule(
        path="spec.training.deepspeed",
        cel="!has(self.offload) || self.offload != 'all' || self.zeroStage == 3",
        message="spec.training.deepspeed.offload: 'all' (parameter offload) needs zeroStage 3",
        check=lambda d: d.get("offload", "none") != "all" or d.get("zeroStage", 2) == 3,
        field_path=".offload",
    ),
    Rule(
        path="spec.training.deepspeed",
        cel="!has(self.offload) || self.offload != 'optimizer' || self.zeroStage >= 1",
        message="spec.training.deepspeed.offload: 'optimizer' offload needs zeroStage 1, 2 or 3",
        check=lambda d: d.get("offload", "none") != "optimizer" or d.get("zeroStage", 2) >= 1,
        field_path=".offload",
    ),
    Rule(
        path="spec",
        cel=f"self.method.type != 'qlora' || {_GPU_CEL} > 0",
        message="spec.method.type: qlora needs a GPU (set spec.workers.gpusPerNode > 0)",
        check=lambda s: _get(s, "method.type", "lora") != "qlora" or _gpus(s) > 0,
        field_path=".method.type",
    ),
    Rule(
        path="spec",
        cel=f"!has(self.training.precision) || self.training.precision != 'fp16' || {_GPU_CEL} > 0",
        message="spec.training.precision: fp16 needs a GPU (use bf16 or fp32 on the CPU)",
        check=lambda s: _get(s, "training.precision", "bf16") != "fp16" or _gpus(s) > 0,
        field_path=".training.precision",
    ),
    Rule(
        path="spec",
        cel=f"!has(self.training.deepspeed) || self.training.deepspeed.zeroStage == 0 || {_GPU_CEL} > 0",
        message="spec.training.deepspeed.zeroStage: DeepSpeed ZeRO needs a GPU (set zeroStage 0 or spec.workers.gpusPerNode > 0)",
        check=lambda s: _get(s, "training.deepspeed") is None
        or _get(s, "training.deepspeed.zeroStage", 2) == 0
        or _gpus(s) > 0,
        field_path=".training.deepspeed.zeroStage",
    ),
    Rule(
        path="spec",
        cel="!has(self.output) || !has(self.output.mergeAdapters) || !self.output.mergeAdapters"
        " || self.method.type in ['lora', 'qlora']",
        message="spec.output.mergeAdapters: only meaningful for method lora or qlora",
        check=lambda s: not _get(s, "output.mergeAdapters", False) or _get(s, "method.type", "lora") in ("lora", "qlora"),
        field_path=".output.mergeAdapters",
    ),
    Rule(
        path="spec",
        cel="!has(self.eval) || !has(self.eval.earlyStoppingPatience)"
        " || (has(self.split) && has(self.split.validation) ? self.split.validation : 0.1) > 0.0",
        message="spec.eval.earlyStoppingPatience: needs a validation split (spec.split.validation > 0)",
        check=lambda s: _get(s, "eval.earlyStoppingPatience") is None or float(_get(s, "split.validation", 0.1)) > 0,
        field_path=".eval.earlyStoppingPatience",
    ),
    Rule(
        path="spec",
        cel="!has(self.output) || !has(self.output.checkpoint) || self.output.checkpoint != 'bestGoldenPassRate'"
        " || (has(self.eval) && has(self.eval.goldenSet) && has(self.eval.goldenSet.everyCheckpoints))",
        message="spec.output.checkpoint: bestGoldenPassRate needs the golden set scored at checkpoints "
        "(spec.eval.goldenSet.everyCheckpoints)",
        check=lambda s: _get(s, "output.checkpoint", "last") != "bestGoldenPassRate"
        or _get(s, "eval.goldenSet.everyCheckpoints") is not None,
        field_path=".output.checkpoint",
    ),
    Rule(
        path="spec",
        cel="!has(self.output) || !has(self.output.checkpoint) || self.output.checkpoint != 'bestEvalLoss'"
        " || (has(self.split) && has(self.split.validation) ? self.split.validation : 0.1) > 0.0",
        message="spec.output.checkpoint: bestEvalLoss needs a validation split (spec.split.validation > 0)",
        check=lambda s: _get(s, "output.checkpoint", "last") != "bestEvalLoss"
        or float(_get(s, "split.validation", 0.1)) > 0,
        field_path=".output.checkpoint",
    ),
    Rule(
        path="spec",
        cel=f"!({_S3_CEL}) || (has(self.storage) && (has(self.storage.secretRef)"
        " || (has(self.storage.endpoint) && has(self.storage.anonymous) && self.storage.anonymous)))",
        message="spec.storage.secretRef: s3:// URIs need storage.secretRef, or storage.endpoint with anonymous: true",
        check=lambda s: not _spec_uses_s3(s) or _storage_ok(s),
        field_path=".storage",
    ),
]

# Fields that may change after creation; every other field of spec is immutable.
MUTABLE_SPEC_FIELDS = ("suspend", "ttlSecondsAfterFinished", "activeDeadlineSeconds")


def immutability_rules(spec_fields: dict[str, bool], workers_fields: list[str]) -> list[Rule]:
    """Transition rules on ``spec`` for every immutable field (``spec_fields`` maps alias → required).

    ``workers`` is compared field by field, leaving out the free-form ``affinity``: CEL cannot bound
    the cost of comparing an unstructured object, and the apiserver rejects rules it cannot bound.
    """

    def same(expr: str, old: str, name: str, required: bool) -> str:
        if required:
            return f"{expr}.{name} == {old}.{name}"
        return f"has({expr}.{name}) == has({old}.{name}) && (!has({expr}.{name}) || {expr}.{name} == {old}.{name})"

    mutable = ", ".join(MUTABLE_SPEC_FIELDS)
    out = []
    for name, required in spec_fields.items():
        if name in MUTABLE_SPEC_FIELDS:
            continue
        if name == "workers":
            for wf in workers_fields:
                if wf == "affinity":
                    continue
                out.append(
                    Rule(
                        path="spec",
                        cel=same("self.workers", "oldSelf.workers", wf, False),
                        message=f"spec.workers.{wf}: is immutable after creation (only {mutable} may change)",
                        check=lambda _s: True,
                        field_path=f".workers.{wf}",
                        transition=True,
                    )
                )
            continue
        out.append(
            Rule(
                path="spec",
                cel=same("self", "oldSelf", name, required),
                message=f"spec.{name}: is immutable after creation (only {mutable} may change)",
                check=lambda _s: True,  # needs the old object: see check_update()
                field_path=f".{name}",
                transition=True,
            )
        )
    return out


def check_update(old_spec: Node, new_spec: Node) -> list[str]:
    """The Python form of the immutability rules, for clients that hold both versions."""
    names = (set(old_spec) | set(new_spec)) - set(MUTABLE_SPEC_FIELDS)
    return [
        f"spec.{n}: is immutable after creation (only {', '.join(MUTABLE_SPEC_FIELDS)} may change)"
        for n in sorted(names)
        if old_spec.get(n) != new_spec.get(n)
    ]


def evaluate(document: Node) -> list[tuple[str, str]]:
    """Runs every Python predicate on a camelCase SFTJob document; returns (path, message) for failures.

    A predicate whose node is missing or malformed is skipped: the schema errors already cover it.
    """
    failures = []
    for rule in RULES:
        node = _get(document, rule.path)
        if not isinstance(node, dict):
            continue
        try:
            ok = rule.check(node)
        except (TypeError, ValueError, AttributeError):
            continue
        if not ok:
            failures.append(((rule.path + (rule.field_path or "")).lstrip("."), rule.message))
    return failures
