"""Generation-based evaluation: held-out exact match per task_type, and the golden set.

Golden set rows (jsonl): ``{"messages": [...]} or {"prompt": "..."}``, ``"checks": [{"type":
"exact"|"contains"|"regex"|"json_schema", "value": ...}]`` and an optional ``task_type``. A row
passes when every check passes on the generated answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .data import _display, iter_rows, resolve_uri, storage_options_for
from .exit_codes import ConfigError

CHECK_TYPES = ("exact", "contains", "regex", "json_schema")


@dataclass
class GoldenItem:
    location: str
    messages: list[dict[str, str]]
    checks: list[dict[str, Any]]
    task_type: str = "default"


@dataclass
class GoldenResult:
    total: int = 0
    passed: int = 0
    pass_rate: float = 0.0
    by_task: dict[str, float] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)  # the first few, for the log

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------- golden file
def _validate_check(check: Any) -> str | None:
    if not isinstance(check, dict) or check.get("type") not in CHECK_TYPES:
        return f"each check needs a type in {', '.join(CHECK_TYPES)}"
    if "value" not in check:
        return f"check {check['type']!r} has no value"
    if check["type"] == "regex":
        try:
            re.compile(check["value"])
        except (re.error, TypeError) as e:
            return f"invalid regex: {e}"
    if check["type"] == "json_schema":
        import jsonschema

        try:
            jsonschema.validators.validator_for(check["value"]).check_schema(check["value"])
        except jsonschema.SchemaError as e:
            return f"invalid JSON schema: {e.message}"
    if check["type"] in ("exact", "contains") and not isinstance(check["value"], str):
        return f"check {check['type']!r} needs a string value"
    return None


def load_golden(uri: str, *, base_dir: Path | None = None, storage: Any = None,
                field: str = "spec.eval.goldenSet.uri") -> list[GoldenItem]:
    """Parse the golden set (or a regression set: ``field``); any malformed row is a config error
    naming the field and ``file:line``."""
    uri = resolve_uri(uri, base_dir)
    name = _display(uri)
    items, problems = [], []
    for line, rec in iter_rows(uri, storage_options_for(uri, storage)):
        loc = f"{name}:{line}"
        if isinstance(rec, str) or not isinstance(rec, dict):
            problems.append(f"{loc}: {rec if isinstance(rec, str) else 'row is not a JSON object'}")
            continue
        if isinstance(rec.get("messages"), list) and rec["messages"]:
            msgs = rec["messages"]
            if msgs[-1].get("role") == "assistant":  # an expected answer in the row is not part of the prompt
                msgs = msgs[:-1]
        elif isinstance(rec.get("prompt"), str):
            msgs = [{"role": "user", "content": rec["prompt"]}]
        else:
            problems.append(f"{loc}: needs 'messages' or a string 'prompt'")
            continue
        checks = rec.get("checks")
        if not isinstance(checks, list) or not checks:
            problems.append(f"{loc}: needs a non-empty 'checks' list")
            continue
        errs = [e for e in (_validate_check(c) for c in checks) if e]
        if errs:
            problems.append(f"{loc}: {errs[0]}")
            continue
        items.append(GoldenItem(loc, msgs, checks, str(rec.get("task_type") or "default")))
    if problems:
        raise ConfigError(f"{field}: malformed rows:\n  " + "\n  ".join(problems[:20]))
    if not items:
        raise ConfigError(f"{field}: {name} has no rows")
    return items


def run_check(check: dict[str, Any], text: str) -> bool:
    kind, value = check["type"], check["value"]
    if kind == "exact":
        return text.strip() == value.strip()
    if kind == "contains":
        return value in text
    if kind == "regex":
        return re.search(value, text.strip()) is not None
    if kind == "json_schema":
        import jsonschema

        try:
            jsonschema.validate(json.loads(text), value)
        except (ValueError, jsonschema.ValidationError):
            return False
        return True
    raise ValueError(kind)


# --------------------------------------------------------------------------------- generation
def generate(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], *, max_new_tokens: int,
             batch_size: int = 64, synced_gpus: bool = False) -> list[tuple[str, bool]]:
    """Greedy answers to chat prompts: ``(text up to end-of-turn, whether end-of-turn was emitted)``."""
    import torch

    eos = tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[tuple[str, bool]] = []
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                     for p in prompts[i:i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                gen = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                    pad_token_id=tokenizer.pad_token_id, use_cache=True, synced_gpus=synced_gpus,
                )
            for row in gen[:, enc["input_ids"].shape[1]:].tolist():
                stopped = eos in row
                if stopped:
                    row = row[:row.index(eos)]
                out.append((tokenizer.decode(row, skip_special_tokens=True), stopped))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def exact_match(model: Any, tokenizer: Any, examples: list[dict[str, Any]], *, per_task: int | None = 50,
                synced_gpus: bool = False) -> dict[str, float]:
    """Share of held-out examples whose generated answer equals the reference and ends with
    end-of-turn, per task_type and ``overall`` (the mean over tasks).

    At most ``per_task`` examples of each task (the first ones of the already shuffled split), each
    task generated with room for its longest reference plus end-of-turn: an untrained model never
    stops, so the budget bounds the cost of the "before" measurement.
    """
    by_task: dict[str, list[dict[str, Any]]] = {}
    for e in examples:
        bucket = by_task.setdefault(e["task_type"], [])
        if per_task is None or len(bucket) < per_task:
            bucket.append(e)
    res: dict[str, float] = {}
    for task, rows in sorted(by_task.items()):
        refs = [r["messages"][-1]["content"] for r in rows]
        budget = max(len(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in refs) + 2
        answers = generate(model, tokenizer, [r["messages"][:-1] for r in rows], max_new_tokens=budget,
                           synced_gpus=synced_gpus)
        res[task] = sum(stopped and text == ref for (text, stopped), ref in zip(answers, refs)) / len(rows)
    if res:
        res["overall"] = sum(res.values()) / len(res)
    return res


def score_golden(model: Any, tokenizer: Any, items: list[GoldenItem], *, max_new_tokens: int,
                 synced_gpus: bool = False) -> GoldenResult:
    answers = generate(model, tokenizer, [it.messages for it in items], max_new_tokens=max_new_tokens,
                       synced_gpus=synced_gpus)
    res = GoldenResult(total=len(items))
    by_task: dict[str, list[int]] = {}
    for it, (text, _stopped) in zip(items, answers):
        ok = all(run_check(c, text) for c in it.checks)
        res.passed += ok
        by_task.setdefault(it.task_type, []).append(int(ok))
        if not ok and len(res.failures) < 5:
            res.failures.append({"location": it.location, "answer": text[:200]})
    res.pass_rate = res.passed / res.total if res.total else 0.0
    res.by_task = {t: sum(v) / len(v) for t, v in sorted(by_task.items())}
    return res


# ------------------------------------------------------------------ the run's evaluation steps
def measure_untrained(cfg: Any, model: Any, inputs: Any, result: Any) -> None:
    """Held-out exact match and the golden set before training (the table's "before" column)."""
    result.exact_match_before = exact_match(model, inputs.tokenizer, inputs.splits.test)
    if inputs.golden is not None and result.golden_before is None:
        result.golden_before = score_golden(model, inputs.tokenizer, inputs.golden,
                                            max_new_tokens=cfg.golden_set.max_new_tokens).to_dict()


def final_evaluation(cfg: Any, trainer: Any, method: Any, inputs: Any, result: Any, *, rank: int, phase: Any) -> None:
    """Test loss on every rank; generation on rank 0 (on every rank under ZeRO-3, where it is collective):
    the held-out exact match of every run with a test split (``status.evaluation.exactMatch``, and what
    spec.eval.minExactMatchByTask gates on), and the golden set."""
    if inputs.splits.test:
        phase("evaluating the test split")
        test = trainer.evaluate(eval_dataset=method.test_dataset(cfg, inputs.splits.test), metric_key_prefix="test")
        result.test_loss = test.get("test_loss")
    if rank != 0 and not cfg.zero3:
        return
    phase("generating answers for the held-out and golden sets")
    # Measured on an empty test split too ({}): a minExactMatchByTask floor then names the missing task.
    result.exact_match_after = exact_match(trainer.model, inputs.tokenizer, inputs.splits.test,
                                           synced_gpus=cfg.zero3)
    if inputs.golden is not None:
        result.golden_after = (_scored_at_the_last_step(cfg, trainer, result) or
                               score_golden(trainer.model, inputs.tokenizer, inputs.golden,
                                            max_new_tokens=cfg.golden_set.max_new_tokens,
                                            synced_gpus=cfg.zero3).to_dict())


def _scored_at_the_last_step(cfg: Any, trainer: Any, result: Any) -> dict[str, Any] | None:
    """The golden score of the final checkpoint, when golden_checkpoints.py already generated it with these
    weights (not after exportBest put the best checkpoint's back; never under ZeRO-3, where every rank must
    take part in the generation)."""
    last = result.golden_checkpoints[-1] if result.golden_checkpoints else None
    stop = result.golden_stop
    exported = getattr(result, "exported", None)  # export_choice.py loaded another checkpoint's weights
    if (cfg.zero3 or last is None or "total" not in last or last["step"] != trainer.state.global_step
            or (stop is not None and stop["on_regression"] == "exportBest")
            or (exported is not None and exported["step"] != last["step"])):
        return None
    return {"total": last["total"], "passed": last["passed"], "pass_rate": last["pass_rate"],
            "by_task": dict(last["by_task"]), "failures": last.get("failures", []), "scored_at_checkpoint": last["step"]}
