"""Preflight: data and template checks that run before any accelerator time is spent.

Reports malformed rows (``file:line: reason``), empty assistant turns, the token-length
distribution and how much ``maxSeqLength`` truncates, the share of tokens that carry loss, and
whether the chat template can mark assistant tokens. Fails with ``ConfigError`` (exit code 64)
above the bad-row threshold (``spec.preflight.maxBadRowRatio``) or when the template cannot
support the requested ``lossOn``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .data import BadRow, SourceData, Splits
from .exit_codes import ConfigError

SAMPLE_LIMIT = 2000  # examples tokenized for the length and loss-share statistics
SHOW_BAD_ROWS = 10
PROBE = [
    {"role": "system", "content": "s"},
    {"role": "user", "content": "u1"},
    {"role": "assistant", "content": "a1"},
    {"role": "user", "content": "u2"},
    {"role": "assistant", "content": "a2"},
]


@dataclass
class PreflightReport:
    rows: int = 0
    bad_rows: int = 0
    bad_row_ratio: float = 0.0
    max_bad_row_ratio: float = 0.0
    bad_row_examples: list[str] = field(default_factory=list)
    examples: dict[str, int] = field(default_factory=dict)  # train/validation/test sizes
    task_types: dict[str, int] = field(default_factory=dict)  # training examples per task_type
    empty_assistant_turns: int = 0
    sampled: int = 0
    token_lengths: dict[str, float] = field(default_factory=dict)  # min/p50/p90/p99/max/mean
    max_seq_length: int = 0
    truncated_examples_ratio: float = 0.0
    truncated_tokens_ratio: float = 0.0
    loss_token_ratio: float = 0.0
    loss_on: str = "assistant"
    template: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        tl = self.token_lengths
        out = [
            f"rows {self.rows}, malformed {self.bad_rows} ({self.bad_row_ratio:.2%}; limit "
            f"{self.max_bad_row_ratio:.2%}), empty assistant turns {self.empty_assistant_turns}",
            "split " + ", ".join(f"{k} {v}" for k, v in self.examples.items()),
            "task_type " + ", ".join(f"{k} {v}" for k, v in self.task_types.items()),
        ]
        if tl:
            out.append(
                f"tokens per example (sample of {self.sampled}): min {tl['min']:.0f} p50 {tl['p50']:.0f} "
                f"p90 {tl['p90']:.0f} p99 {tl['p99']:.0f} max {tl['max']:.0f}"
            )
            out.append(
                f"maxSeqLength {self.max_seq_length}: truncates {self.truncated_examples_ratio:.2%} of examples, "
                f"{self.truncated_tokens_ratio:.2%} of tokens"
            )
            out.append(f"tokens with loss (lossOn {self.loss_on}): {self.loss_token_ratio:.2%}")
        out.append(f"chat template: {self.template}")
        out.extend(f"bad row {b}" for b in self.bad_row_examples)
        out.extend(f"warning: {w}" for w in self.warnings)
        return out


def _percentile(sorted_vals: list[int], q: float) -> float:
    if not sorted_vals:
        return 0.0
    k = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return float(sorted_vals[k])


def check_template(tokenizer: Any, loss_on: str) -> str:
    """Make sure the template can do what ``loss_on`` needs; returns a description.

    For ``assistant`` the template must mark assistant tokens with ``{% generation %}``; when it
    does not, TRL's known training template for the model is used if there is one (TRL applies
    the same patch in SFTTrainer), otherwise this is a config error.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "spec.model.chatTemplate: the tokenizer has no chat template; set one (with {% generation %} "
            "markers around assistant turns for lossOn: assistant)"
        )
    try:
        tokenizer.apply_chat_template(PROBE, tokenize=False)
    except Exception as e:  # noqa: BLE001 - jinja errors come in many types
        raise ConfigError(f"spec.model.chatTemplate: the chat template fails to render: {e}") from e
    if loss_on != "assistant":
        return f"ok (lossOn {loss_on} needs no assistant markers)"
    from trl.chat_template_utils import get_training_chat_template, is_chat_template_stop_token_trained

    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError as e:
        raise ConfigError(
            "spec.model.chatTemplate: the chat template cannot mark assistant tokens (no {% generation %} markers) "
            "and TRL has no training template for it; set spec.model.chatTemplate to a template that wraps each "
            "assistant turn, end-of-turn token included, in {% generation %}...{% endgeneration %}, or use "
            "lossOn: all"
        ) from e
    desc = "ok ({% generation %} markers)"
    if patched is not None:
        tokenizer.chat_template = patched
        desc = "patched: using TRL's training template for this model"
    mask = tokenizer.apply_chat_template(PROBE, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    if not any(mask["assistant_masks"]):
        raise ConfigError("spec.model.chatTemplate: the {% generation %} blocks mark no tokens")
    if not is_chat_template_stop_token_trained(tokenizer):
        desc += "; WARNING: the end-of-turn token is outside {% generation %}, so the model may not learn to stop"
    return desc


def _loss_tokens(tokenizer: Any, messages: list[dict[str, str]], loss_on: str, ids_len: int) -> int:
    if loss_on == "all":
        return ids_len
    if loss_on == "completion":
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
        return max(0, ids_len - len(prompt))
    raise AssertionError(loss_on)


def run_preflight(
    splits: Splits,
    sources: list[SourceData],
    tokenizer: Any,
    *,
    loss_on: str,
    max_seq_length: int,
    max_bad_row_ratio: float,
) -> PreflightReport:
    """All checks; raises ConfigError (exit 64) for what training cannot survive."""
    rep = PreflightReport(loss_on=loss_on, max_seq_length=max_seq_length, max_bad_row_ratio=max_bad_row_ratio)
    bad: list[BadRow] = [b for s in sources for b in s.bad_rows]
    rep.rows = sum(s.rows for s in sources)
    rep.bad_rows = len(bad)
    rep.bad_row_ratio = rep.bad_rows / rep.rows if rep.rows else 0.0
    rep.bad_row_examples = [str(b) for b in bad[:SHOW_BAD_ROWS]]
    if len(bad) > SHOW_BAD_ROWS:
        rep.bad_row_examples.append(f"... and {len(bad) - SHOW_BAD_ROWS} more")
    if rep.rows == 0:
        raise ConfigError("spec.datasets: no rows in any source")
    if rep.bad_row_ratio > max_bad_row_ratio:
        raise ConfigError(
            f"spec.datasets: {rep.bad_rows} of {rep.rows} rows are malformed ({rep.bad_row_ratio:.2%} > "
            f"spec.preflight.maxBadRowRatio {max_bad_row_ratio:.2%}):\n  " + "\n  ".join(rep.bad_row_examples)
        )
    rep.examples = {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)}
    if not splits.train:
        raise ConfigError("spec.split: no training examples left after the validation/test split")
    counts: dict[str, int] = {}
    for e in splits.train:
        counts[e["task_type"]] = counts.get(e["task_type"], 0) + 1
    rep.task_types = dict(sorted(counts.items()))
    every = splits.train + splits.validation + splits.test
    rep.empty_assistant_turns = sum(
        1 for e in every for m in e["messages"] if m["role"] == "assistant" and not m["content"].strip()
    )
    if rep.empty_assistant_turns:
        rep.warnings.append(f"{rep.empty_assistant_turns} assistant turns are empty (only end-of-turn is trained)")

    rep.template = check_template(tokenizer, loss_on)

    sample = splits.train[:SAMPLE_LIMIT]  # the training split is already shuffled by seed
    rep.sampled = len(sample)
    lengths, total, kept, loss, loss_kept = [], 0, 0, 0, 0
    for e in sample:
        enc = tokenizer.apply_chat_template(
            e["messages"], tokenize=True, return_dict=True,
            return_assistant_tokens_mask=loss_on == "assistant",
        )
        ids = enc["input_ids"]
        n = len(ids)
        lengths.append(n)
        total += n
        kept += min(n, max_seq_length)
        if loss_on == "assistant":
            m = enc["assistant_masks"]
            loss += sum(m)
            loss_kept += sum(m[:max_seq_length])
        else:
            lt = _loss_tokens(tokenizer, e["messages"], loss_on, n)
            loss += lt
            loss_kept += max(0, lt - max(0, n - max_seq_length))
    lengths.sort()
    if lengths:
        rep.token_lengths = {
            "min": float(lengths[0]), "p50": _percentile(lengths, 0.5), "p90": _percentile(lengths, 0.9),
            "p99": _percentile(lengths, 0.99), "max": float(lengths[-1]), "mean": total / len(lengths),
        }
        rep.truncated_examples_ratio = sum(1 for n in lengths if n > max_seq_length) / len(lengths)
        rep.truncated_tokens_ratio = (total - kept) / total if total else 0.0
        rep.loss_token_ratio = loss_kept / kept if kept else 0.0
        if rep.truncated_examples_ratio > 0.05:
            rep.warnings.append(
                f"maxSeqLength {max_seq_length} truncates {rep.truncated_examples_ratio:.1%} of examples")
        if loss_kept == 0:
            raise ConfigError(
                f"spec.training.maxSeqLength: no token carries loss after truncation to {max_seq_length} "
                f"(lossOn {loss_on}); raise maxSeqLength or check the data")
    return rep
