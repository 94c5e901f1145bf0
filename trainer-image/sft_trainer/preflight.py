"""Preflight: data and template checks that run before any accelerator time is spent.

Every example of every split is rendered with the model's chat template and masked exactly as
training will mask it (``masking.py``); the token ids and masks are kept on the examples, so that
``data.to_trl_rows`` hands TRL the same tokens. Reports malformed rows (``file:line: reason``, a
conversation the template cannot render or mask included), empty assistant turns, the
token-length distribution and how much ``maxSeqLength`` truncates, the share of tokens that carry
loss, and the template verdict (masking strategy, end-of-turn token). Fails with ``ConfigError``
(exit code 64) above the bad-row threshold (``spec.preflight.maxBadRowRatio``) or when the template
cannot support the requested ``lossOn``.

``python -m sft_trainer.preflight JOB.yaml [--examples N] [--json PATH]`` runs it alone (tokenizer
and data only, never the weights): ``sftctl preflight`` and the operator's CPU preflight pod.
"""

from __future__ import annotations

import math
import time
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any

from . import masking
from .data import BadRow, SourceData, Splits
from .exit_codes import ConfigError

SHOW_BAD_ROWS = 10
TOKENS_KEY = "tokens"  # where an example keeps its encoding: {"loss_on", "input_ids", "mask"}
ENCODE_BATCH = 512  # conversations tokenized per call (the fast tokenizer batches in Rust)


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
    sampled: int = 0  # training examples in the length and loss statistics (all of them)
    token_lengths: dict[str, float] = field(default_factory=dict)  # min/p50/p90/p99/max/mean
    max_seq_length: int = 0
    truncated_examples_ratio: float = 0.0
    truncated_tokens_ratio: float = 0.0
    truncated_in_trained_span: int = 0  # examples whose cut falls inside a trained span
    loss_token_ratio: float = 0.0
    loss_on: str = "assistant"
    template: str = ""  # the verdict in one line
    template_verdict: dict[str, Any] = field(default_factory=dict)
    eot_added_turns: int = 0  # turns whose end-of-turn token the template renders outside the turn
    turns_without_eot: int = 0
    eot_text_in_content: int = 0  # assistant contents that spell an end-of-turn token as text
    dropped_messages: int = 0  # messages whose content the template does not render
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    shown_examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for a pod's termination message (the operator's Preflight condition and Event)."""
        tl = self.token_lengths
        lengths = f"tokens p50 {tl['p50']:.0f} max {tl['max']:.0f}, " if tl else ""
        return (f"rows {self.rows}, malformed {self.bad_rows} ({self.bad_row_ratio:.2%}), train/validation/test "
                f"{self.examples.get('train', 0)}/{self.examples.get('validation', 0)}/{self.examples.get('test', 0)}, "
                f"{lengths}loss on {self.loss_token_ratio:.1%} of tokens (lossOn {self.loss_on}), chat template "
                f"{self.template_verdict.get('strategy', '?')} (end-of-turn "
                f"{', '.join(self.template_verdict.get('end_of_turn') or []) or 'none'}), {len(self.warnings)} warnings")

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
                f"tokens per example ({self.sampled} examples): min {tl['min']:.0f} p50 {tl['p50']:.0f} "
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
        out.append(f"preflight took {self.seconds:.1f}s")
        return out


def _percentile(sorted_vals: list[int], q: float) -> float:
    if not sorted_vals:
        return 0.0
    k = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return float(sorted_vals[k])


def check_template(tokenizer: Any, loss_on: str) -> masking.TemplateVerdict:
    """The template verdict for ``loss_on``: how assistant tokens are found (ConfigError if they cannot be)."""
    try:
        tokenizer.apply_chat_template(masking.PROBE, tokenize=False)
    except Exception as e:  # noqa: BLE001 - jinja errors come in many types
        if getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"{masking.TEMPLATE_FIELD}: the chat template fails to render: {e}") from e
    return masking.analyze_template(tokenizer, loss_on)


# ------------------------------------------------------------------------------ encoding
@dataclass
class _Tally:
    eot_added: int = 0
    without_eot: int = 0
    eot_text: int = 0
    dropped: int = 0


def _keep(e: dict[str, Any], enc: masking.Encoded, loss_on: str, verdict: masking.TemplateVerdict,
          tally: _Tally) -> None:
    # compact: 4 bytes a token id, 1 a mask bit (100k rows of 600 tokens: 0.3 GB, not 2 GB of lists)
    e[TOKENS_KEY] = {"loss_on": loss_on, "input_ids": array("i", enc.input_ids), "mask": bytes(enc.mask)}
    tally.eot_added += enc.eot_added
    tally.without_eot += enc.turns_without_eot
    for m in e["messages"]:
        content = m["content"].strip()
        if content and content not in enc.text:
            tally.dropped += 1
        if m["role"] == "assistant" and any(t in m["content"] for t in verdict.end_of_turn):
            tally.eot_text += 1


def encode_splits(splits: Splits, tokenizer: Any, loss_on: str, verdict: masking.TemplateVerdict
                  ) -> tuple[list[BadRow], _Tally]:
    """Encode every example once (the mix repeats some); drop those that cannot be masked."""
    info = masking.TokenInfo(tokenizer, verdict.end_of_turn)
    tally, bad, failed = _Tally(), [], set()
    unique = list({id(e): e for e in splits.train + splits.validation + splits.test}.values())
    for at in range(0, len(unique), ENCODE_BATCH):
        chunk = unique[at:at + ENCODE_BATCH]
        for e, enc in zip(chunk, masking.encode_batch(tokenizer, [e["messages"] for e in chunk], loss_on,
                                                      verdict, info)):
            if isinstance(enc, masking.MaskingError):
                bad.append(BadRow(e.get("source", "?"), str(enc)))
                failed.add(id(e))
            else:
                _keep(e, enc, loss_on, verdict, tally)
    if failed:
        for part in (splits.train, splits.validation, splits.test):
            part[:] = [e for e in part if id(e) not in failed]
    return bad, tally


# ------------------------------------------------------------------------------ report
def _bad_rows(rep: PreflightReport, bad: list[BadRow], max_bad_row_ratio: float) -> None:
    rep.bad_rows = len(bad)
    rep.bad_row_ratio = rep.bad_rows / rep.rows if rep.rows else 0.0
    rep.bad_row_examples = [str(b) for b in bad[:SHOW_BAD_ROWS]]
    if len(bad) > SHOW_BAD_ROWS:
        rep.bad_row_examples.append(f"... and {len(bad) - SHOW_BAD_ROWS} more")
    if rep.bad_row_ratio > max_bad_row_ratio:
        raise ConfigError(
            f"spec.datasets: {rep.bad_rows} of {rep.rows} rows are malformed ({rep.bad_row_ratio:.2%} > "
            f"spec.preflight.maxBadRowRatio {max_bad_row_ratio:.2%}):\n  " + "\n  ".join(rep.bad_row_examples)
        )


def _length_stats(rep: PreflightReport, train: list[dict[str, Any]], max_seq_length: int) -> None:
    lengths, total, kept, loss_kept, cut_in_span = [], 0, 0, 0, 0
    for e in train:
        ids, mask = e[TOKENS_KEY]["input_ids"], e[TOKENS_KEY]["mask"]
        n = len(ids)
        lengths.append(n)
        total += n
        kept += min(n, max_seq_length)
        loss_kept += sum(mask[:max_seq_length])
        cut_in_span += n > max_seq_length and mask[max_seq_length - 1] == 1 and mask[max_seq_length] == 1
    lengths.sort()
    rep.sampled = len(lengths)
    if not lengths:
        return
    rep.token_lengths = {
        "min": float(lengths[0]), "p50": _percentile(lengths, 0.5), "p90": _percentile(lengths, 0.9),
        "p99": _percentile(lengths, 0.99), "max": float(lengths[-1]), "mean": total / len(lengths),
    }
    rep.truncated_examples_ratio = sum(1 for n in lengths if n > max_seq_length) / len(lengths)
    rep.truncated_tokens_ratio = (total - kept) / total if total else 0.0
    rep.truncated_in_trained_span = cut_in_span
    rep.loss_token_ratio = loss_kept / kept if kept else 0.0
    if rep.truncated_examples_ratio > 0.05:
        rep.warnings.append(f"maxSeqLength {max_seq_length} truncates {rep.truncated_examples_ratio:.1%} of examples")
    if cut_in_span:
        rep.warnings.append(f"{cut_in_span} examples are cut inside a trained span by maxSeqLength {max_seq_length}: "
                            "their last trained turn has no end-of-turn token")
    if loss_kept == 0:
        raise ConfigError(
            f"spec.training.maxSeqLength: no token carries loss after truncation to {max_seq_length} "
            f"(lossOn {rep.loss_on}); raise maxSeqLength or check the data")


def _masking_warnings(rep: PreflightReport, tally: _Tally, verdict: masking.TemplateVerdict) -> None:
    rep.eot_added_turns, rep.turns_without_eot = tally.eot_added, tally.without_eot
    rep.eot_text_in_content, rep.dropped_messages = tally.eot_text, tally.dropped
    if tally.eot_added and verdict.strategy != "per-turn":
        rep.warnings.append(f"the template renders the end-of-turn token outside {tally.eot_added} assistant turns; "
                            "it was added to their trained spans so that the model learns to stop")
    if tally.without_eot:
        rep.warnings.append(f"{tally.without_eot} assistant turns end without an end-of-turn token")
    if tally.eot_text:
        rep.warnings.append(f"{tally.eot_text} assistant turns contain an end-of-turn string "
                            f"({', '.join(verdict.end_of_turn)}) as text; it is tokenized as the special token")
    if tally.dropped:
        rep.warnings.append(f"the chat template does not render the content of {tally.dropped} messages "
                            "(e.g. a system prompt it drops); the model never sees them")


def shown_example(tokenizer: Any, e: dict[str, Any], max_seq_length: int) -> dict[str, Any]:
    """One example for the report: its trained segments as training sees them (after truncation)."""
    ids = e[TOKENS_KEY]["input_ids"][:max_seq_length]
    mask = e[TOKENS_KEY]["mask"][:max_seq_length]
    enc = masking.Encoded(input_ids=list(ids), mask=list(mask), text="")
    return {"source": e.get("source", "?"), "task_type": e.get("task_type"), "messages": e["messages"],
            "tokens": len(ids), "trained_tokens": sum(mask),
            "trained_segments": masking.trained_segments(tokenizer, enc)}


def run_preflight(
    splits: Splits,
    sources: list[SourceData],
    tokenizer: Any,
    *,
    loss_on: str,
    max_seq_length: int,
    max_bad_row_ratio: float,
    show_examples: int = 0,
) -> PreflightReport:
    """All checks; raises ConfigError (exit 64) for what training cannot survive.

    Examples that the template cannot render or mask are dropped from ``splits`` (and counted as
    malformed rows); every kept example carries its token ids and mask for training.
    """
    t0 = time.monotonic()
    rep = PreflightReport(loss_on=loss_on, max_seq_length=max_seq_length, max_bad_row_ratio=max_bad_row_ratio)
    bad: list[BadRow] = [b for s in sources for b in s.bad_rows]
    rep.rows = sum(s.rows for s in sources)
    if rep.rows == 0:
        raise ConfigError("spec.datasets: no rows in any source")
    _bad_rows(rep, bad, max_bad_row_ratio)
    verdict = check_template(tokenizer, loss_on)
    rep.template, rep.template_verdict = verdict.describe(), verdict.to_dict()
    encode_bad, tally = encode_splits(splits, tokenizer, loss_on, verdict)
    _bad_rows(rep, bad + encode_bad, max_bad_row_ratio)
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
    _masking_warnings(rep, tally, verdict)
    _length_stats(rep, splits.train, max_seq_length)
    rep.shown_examples = [shown_example(tokenizer, e, max_seq_length) for e in splits.train[:show_examples]]
    rep.seconds = time.monotonic() - t0
    return rep


if __name__ == "__main__":  # python -m sft_trainer.preflight: see preflight_cli
    from sft_trainer.preflight_cli import main

    raise SystemExit(main())
