"""Response masking for any chat template that renders consistently: which tokens carry loss.

The model's own template renders each conversation once (the text the model trains on); the
trained spans are character ranges of that text, found by one of three strategies, chosen per
template by ``analyze_template``:

- ``markers``: the template wraps assistant output in ``{% generation %}`` blocks; their ranges.
- ``incremental``: the template is prefix-preserving. Assistant turn *k* is the text that
  ``render(messages[:k+1])`` adds after ``render(messages[:k], add_generation_prompt=True)``.
- ``per-turn``: the template re-renders earlier turns differently (drops reasoning, moves the
  system prompt, ends the final turn with another token). Each assistant turn is located in the
  full render itself: it starts where ``render(messages[:k], add_generation_prompt=True)`` ends
  when that is a prefix of the full render (else where a sentinel put before the content lands),
  and its content ends where a sentinel put after the content lands; a template that keeps or
  drops ``<think>`` reasoning inside the content keeps both places. As a last resort the content
  is replaced by the sentinel, and everything around it must be the full render's head and tail.

The ranges map to tokens through the fast tokenizer's offsets (the text is tokenized exactly as
``apply_chat_template`` does, without added special tokens). Each turn then ends on its
end-of-turn token, so that the model learns to stop: trailing whitespace after it is dropped,
and when the template puts it outside the turn (after the generation block, or at the start of
the next message) the token that follows the turn is added and counted (``eot_added``).

The masks go to TRL as the documented ``assistant_masks`` / ``completion_mask`` columns of a
pre-tokenized dataset; TRL builds the labels, truncates and packs them.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .exit_codes import ConfigError

MARKERS_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")
SENTINEL = "Zq7SFTSPANq7Z"  # letters only: survives trim/strip filters, never merges with jinja syntax
TEMPLATE_FIELD = "spec.model.chatTemplate"

PROBE_SYSTEM = {"role": "system", "content": "Sys0probe"}
PROBE = [
    {"role": "user", "content": "Usr1probe"},
    {"role": "assistant", "content": "Ast1probe"},
    {"role": "user", "content": "Usr2probe"},
    {"role": "assistant", "content": "Ast2probe"},
]


class MaskingError(ValueError):
    """One conversation cannot be masked (the reason is reported with its file:line)."""


@dataclass
class TemplateVerdict:
    strategy: str = ""  # markers | incremental | per-turn | none (lossOn all/completion need none)
    prefix_preserving: bool = True
    end_of_turn: list[str] = field(default_factory=list)  # the tokens that end an assistant turn
    eot_outside_turn: bool = False  # the template renders the end-of-turn token outside the turn
    supports_system: bool = True
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        eot = ", ".join(self.end_of_turn) or "none found"
        out = f"{self.strategy} (end-of-turn {eot})"
        if self.eot_outside_turn:
            out += "; the end-of-turn token is outside the template's turn: added to each trained span"
        return "; ".join([out, *self.notes])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "description": self.describe()}


@dataclass
class Encoded:
    input_ids: list[int]
    mask: list[int]  # 1 = carries loss
    text: str
    eot_added: int = 0  # turns whose end-of-turn token came from outside the template's turn
    turns_without_eot: int = 0  # turns with no end-of-turn token at all


# ------------------------------------------------------------------------------- rendering
def render(tok: Any, messages: list[dict[str, str]], gen_prompt: bool = False) -> str:
    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen_prompt)
    except Exception as e:  # noqa: BLE001 - jinja raises many types (raise_exception, TypeError, ...)
        raise MaskingError(f"the chat template fails to render this conversation: {e}") from e


class Renderer:
    """``render`` without apply_chat_template's per-call copying: the compiled template, called with
    the same variables. Used only when it renders the probe exactly as apply_chat_template does."""

    def __init__(self, tok: Any):
        self.tok = tok
        self.compiled = None
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            self.compiled = _compile_jinja_template(tok.chat_template)
            self.variables = dict(tok.special_tokens_map)
            same = [self._same(probe, gp) for probe in ([PROBE_SYSTEM, *PROBE], PROBE) for gp in (False, True)]
            if False in same or True not in same:
                self.compiled = None
        except Exception:  # noqa: BLE001 - any doubt: the public path
            self.compiled = None

    def _same(self, probe: list[dict[str, str]], gen_prompt: bool) -> bool | None:
        """Whether both paths render ``probe`` alike (None: the template rejects it)."""
        try:
            expect = render(self.tok, probe, gen_prompt)
        except MaskingError:
            return None
        return self._direct(probe, gen_prompt) == expect

    def _direct(self, messages: list[dict[str, str]], gen_prompt: bool) -> str:
        return self.compiled.render(messages=messages, tools=None, documents=None,
                                    add_generation_prompt=gen_prompt, **self.variables)

    def __call__(self, messages: list[dict[str, str]], gen_prompt: bool = False) -> str:
        if self.compiled is None:
            return render(self.tok, messages, gen_prompt)
        try:
            return self._direct(messages, gen_prompt)
        except Exception as e:  # noqa: BLE001 - jinja raises many types (raise_exception, TypeError, ...)
            raise MaskingError(f"the chat template fails to render this conversation: {e}") from e


def _marker_spans(tok: Any, messages: list[dict[str, str]], text: str) -> list[tuple[int, int]]:
    """Character ranges of the ``{% generation %}`` blocks, from the renderer apply_chat_template uses."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, indices = render_jinja_template(
        conversations=[messages], chat_template=tok.chat_template, return_assistant_tokens_mask=True,
        **tok.special_tokens_map)
    if rendered[0] != text:
        raise MaskingError("the {% generation %} render differs from the plain render")
    return [tuple(s) for s in indices[0]]


def _incremental_spans(rend: Renderer, messages: list[dict[str, str]], text: str,
                       turns: list[int]) -> list[tuple[int, int]] | None:
    """Spans from prefix renders, or None when this conversation is not prefix-preserving."""
    spans = []
    for k in turns:
        head = rend(messages[:k], gen_prompt=True) if k else ""
        whole = text if k == len(messages) - 1 else rend(messages[:k + 1])
        if not (whole.startswith(head) and text.startswith(whole)):
            return None
        spans.append((len(head), len(whole)))
    return spans


def _sentinel_split(rend: Renderer, messages: list[dict[str, str]], k: int, content: str) -> tuple[str, str] | None:
    """The render with ``messages[k]`` holding ``content``, split around the sentinel in it."""
    probe = [dict(m) for m in messages]
    probe[k]["content"] = content
    marked = rend(probe)
    if marked.count(SENTINEL) != 1:
        return None
    at = marked.find(SENTINEL)
    return marked[:at], marked[at + len(SENTINEL):]


def _turn_bounds(rend: Renderer, messages: list[dict[str, str]], text: str, k: int) -> tuple[int, int] | None:
    """Where assistant turn k starts (after its generation prompt) and where its content ends.

    The start is the prompt render's end when that is a prefix of the full render, else where a
    sentinel put before the content lands; the end is where a sentinel put after it lands. A template
    that keeps or drops reasoning inside the content (``<think>…</think>``) keeps both sentinels' places.
    """
    head = rend(messages[:k], gen_prompt=True) if k else ""
    start = len(head) if text.startswith(head) else None
    if start is None:
        cut = _sentinel_split(rend, messages, k, SENTINEL + messages[k]["content"])
        start = len(cut[0]) if cut and text.startswith(cut[0]) else None
    cut = _sentinel_split(rend, messages, k, messages[k]["content"] + SENTINEL)
    end = len(text) - len(cut[1]) if cut and text.endswith(cut[1]) else None
    if start is None or end is None or start > end:
        return None
    return start, end


def _per_turn_spans(rend: Renderer, messages: list[dict[str, str]], text: str,
                    turns: list[int]) -> list[tuple[int, int]]:
    spans = []
    for k in turns:
        bounds = _turn_bounds(rend, messages, text, k)
        if bounds is not None:
            spans.append(bounds)
            continue
        # last resort: the content replaced by the sentinel, everything around it unchanged
        cut = _sentinel_split(rend, messages, k, SENTINEL)
        if cut is None:
            raise MaskingError(f"the chat template does not render assistant turn {k} (messages[{k}]) once")
        before, after = cut
        if not (text.startswith(before) and text.endswith(after) and len(before) + len(after) <= len(text)):
            raise MaskingError(
                f"the chat template renders the text around assistant turn {k} (messages[{k}]) differently "
                "depending on its content, so its trained span cannot be located")
        spans.append((len(before), len(text) - len(after)))
    return spans


# ---------------------------------------------------------------------------- tokens
class TokenInfo:
    """Per-tokenizer facts, cached: which ids end a turn, which decode to whitespace only."""

    def __init__(self, tok: Any, end_of_turn: list[str]):
        self.tok = tok
        self.render = Renderer(tok)
        self.eot_ids = {i for i in tok.convert_tokens_to_ids(end_of_turn) if i is not None}
        if tok.eos_token_id is not None:
            self.eot_ids.add(tok.eos_token_id)
        self._ws: dict[int, bool] = {}

    def blank(self, token_id: int) -> bool:
        if token_id not in self._ws:
            self._ws[token_id] = token_id not in self.eot_ids and self.tok.decode([token_id]).strip() == ""
        return self._ws[token_id]


def special_ids(tok: Any) -> set[int]:
    ids = set(tok.all_special_ids)
    ids |= {i for i, t in getattr(tok, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    return ids


def _token_range(starts: list[int], ends: list[int], span: tuple[int, int]) -> tuple[int, int]:
    """Tokens [a, b) whose characters overlap ``span`` (a == b when none do); offsets are sorted."""
    a = bisect.bisect_right(ends, span[0])  # the first token ending after the span starts
    b = bisect.bisect_left(starts, span[1], lo=a)  # the first token starting at or after its end
    return (a, b) if a < b else (a, a)


def _close_turn(ids: list[int], a: int, b: int, info: TokenInfo) -> tuple[int, str]:
    """End the turn [a, b) on its end-of-turn token: (new end, "" | "added" | "missing").

    A turn that ends on one drops the whitespace after it; otherwise the end-of-turn token that
    follows (after whitespace) is added. An end-of-turn string *inside* the content (spelled as
    text) does not end the turn: only the last non-blank token counts.
    """
    last = next((i for i in range(b - 1, a - 1, -1) if not info.blank(ids[i])), None)
    if last is not None and ids[last] in info.eot_ids:
        return last + 1, ""
    j = b
    while j < len(ids) and info.blank(ids[j]):
        j += 1
    if j < len(ids) and ids[j] in info.eot_ids:
        return j + 1, "added"
    if any(ids[i] in info.eot_ids for i in range(a, b)):
        return b, ""
    return b, "missing"


def spans_to_mask(ids: list[int], offsets: list[tuple[int, int]], text: str, spans: list[tuple[int, int]],
                  info: TokenInfo) -> Encoded:
    out = Encoded(input_ids=list(ids), mask=[0] * len(ids), text=text)
    starts, ends = [o[0] for o in offsets], [o[1] for o in offsets]
    for span in spans:
        a, b = _token_range(starts, ends, span)
        b, how = _close_turn(ids, a, b, info)
        out.eot_added += how == "added"
        out.turns_without_eot += how == "missing"
        for i in range(a, b):
            out.mask[i] = 1
    return out


# ---------------------------------------------------------------------------- encoding
def assistant_turns(messages: list[dict[str, str]], loss_on: str) -> list[int]:
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    return turns[-1:] if loss_on == "completion" else turns


def conversation_spans(tok: Any, messages: list[dict[str, str]], loss_on: str, verdict: TemplateVerdict,
                       info: TokenInfo) -> tuple[str, list[tuple[int, int]] | None]:
    """The rendered text and its trained character spans (None: every token, for lossOn all)."""
    text = info.render(messages)
    if loss_on == "all":
        return text, None
    turns = assistant_turns(messages, loss_on)
    if verdict.strategy == "markers":
        spans = _marker_spans(tok, messages, text)
        return text, spans[-1:] if loss_on == "completion" else spans
    spans = None
    if verdict.strategy == "incremental":
        spans = _incremental_spans(info.render, messages, text, turns)
    # per-turn templates, and the conversations of an incremental one that re-render earlier turns
    return text, spans if spans is not None else _per_turn_spans(info.render, messages, text, turns)


def encode_batch(tok: Any, conversations: list[list[dict[str, str]]], loss_on: str, verdict: TemplateVerdict,
                 info: TokenInfo) -> list[Encoded | MaskingError]:
    """Encode many conversations, tokenized in one batch call; a failure is returned, not raised."""
    planned: list[tuple[int, str, Any]] = []
    out: list[Encoded | MaskingError] = [MaskingError("not encoded")] * len(conversations)
    for n, messages in enumerate(conversations):
        try:
            planned.append((n, *conversation_spans(tok, messages, loss_on, verdict, info)))
        except MaskingError as e:
            out[n] = e
    if not planned:
        return out
    batch = tok([text for _, text, _ in planned], add_special_tokens=False, return_offsets_mapping=True)
    for (n, text, spans), ids, offsets in zip(planned, batch["input_ids"], batch["offset_mapping"]):
        if spans is None:
            out[n] = Encoded(input_ids=list(ids), mask=[1] * len(ids), text=text)
            continue
        enc = spans_to_mask(ids, offsets, text, spans, info)
        out[n] = enc if any(enc.mask) else MaskingError("no token of any assistant turn is marked for loss")
    return out


def encode(tok: Any, messages: list[dict[str, str]], loss_on: str, verdict: TemplateVerdict,
           info: TokenInfo) -> Encoded:
    """Token ids and loss mask of one conversation; raises MaskingError with the reason."""
    enc = encode_batch(tok, [messages], loss_on, verdict, info)[0]
    if isinstance(enc, MaskingError):
        raise enc
    return enc


# ---------------------------------------------------------------------------- template
def _probe(tok: Any) -> tuple[list[dict[str, str]], bool]:
    """The probe conversation, with a system message when the template accepts one."""
    try:
        render(tok, [PROBE_SYSTEM, *PROBE])
        return [PROBE_SYSTEM, *PROBE], True
    except MaskingError:
        render(tok, PROBE)  # raises with the template's own message
        return list(PROBE), False


def _end_of_turn_tokens(tok: Any, probe: list[dict[str, str]], text: str) -> list[str]:
    """The first special token after each assistant content of the probe: what ends a turn."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets, specials = enc["input_ids"], enc["offset_mapping"], special_ids(tok)
    found: list[str] = []
    for m in probe:
        at = text.find(m["content"]) if m["role"] == "assistant" else -1
        if at < 0:
            continue
        end = at + len(m["content"])
        nxt = next((i for i, (ts, _) in enumerate(offsets) if ts >= end and ids[i] in specials), None)
        if nxt is not None and tok.convert_ids_to_tokens(ids[nxt]) not in found:
            found.append(tok.convert_ids_to_tokens(ids[nxt]))
    return found


def analyze_template(tok: Any, loss_on: str) -> TemplateVerdict:
    """Choose the masking strategy for this tokenizer's template; ConfigError naming the field."""
    if not getattr(tok, "chat_template", None):
        raise ConfigError(f"{TEMPLATE_FIELD}: the tokenizer has no chat template; set one")
    try:
        probe, with_system = _probe(tok)
    except MaskingError as e:
        raise ConfigError(f"{TEMPLATE_FIELD}: {e}") from e
    text = render(tok, probe)
    verdict = TemplateVerdict(supports_system=with_system, end_of_turn=_end_of_turn_tokens(tok, probe, text))
    if not with_system:
        verdict.notes.append("the template rejects system messages")
    if loss_on == "all":
        verdict.strategy = "none"
        return verdict
    turns = assistant_turns(probe, "assistant")
    rend = Renderer(tok)
    if MARKERS_RE.search(tok.chat_template):
        verdict.strategy = "markers"
    elif _incremental_spans(rend, probe, text, turns) is not None:
        verdict.strategy = "incremental"
    else:
        verdict.prefix_preserving = False
        try:
            _per_turn_spans(rend, probe, text, turns)
        except MaskingError as e:
            raise ConfigError(
                f"{TEMPLATE_FIELD}: the chat template is not prefix-preserving (a longer conversation re-renders "
                f"its earlier turns) and {e}; set {TEMPLATE_FIELD} to a template that renders each turn the same "
                "way, or use lossOn: all") from e
        verdict.strategy = "per-turn"
        verdict.notes.append("not prefix-preserving: earlier turns render differently once the conversation "
                             "goes on, so each assistant turn is located in the full render")
    return _check_probe_mask(tok, probe, verdict)


def _check_probe_mask(tok: Any, probe: list[dict[str, str]], verdict: TemplateVerdict) -> TemplateVerdict:
    info = TokenInfo(tok, verdict.end_of_turn)
    try:
        enc = encode(tok, probe, "assistant", verdict, info)
    except MaskingError as e:
        raise ConfigError(f"{TEMPLATE_FIELD}: {e}") from e
    # per-turn spans are the content alone by construction: their end-of-turn token is always added
    verdict.eot_outside_turn = enc.eot_added > 0 and verdict.strategy != "per-turn"
    if not verdict.end_of_turn or enc.turns_without_eot:
        verdict.notes.append("WARNING: no end-of-turn token follows an assistant turn, so the model may not "
                             "learn to stop")
    # by characters, not decoded text: a tokenizer may lack a character of the probe
    offsets = tok(enc.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    covered = {c for (s, e), m in zip(offsets, enc.mask) if m for c in range(s, e)}
    for m in probe:
        at = enc.text.find(m["content"])
        chars = set(range(at, at + len(m["content"]))) if at >= 0 else set()
        if (m["role"] == "assistant") != (bool(chars) and chars <= covered) or (
                m["role"] != "assistant" and chars & covered):
            trained = "".join(segment for segment in trained_segments(tok, enc))
            raise ConfigError(f"{TEMPLATE_FIELD}: masking the probe conversation trains {trained!r}, not exactly "
                              "the assistant turns")
    return verdict


def trained_segments(tok: Any, enc: Encoded) -> list[str]:
    """The decoded text of each contiguous trained span, in order."""
    out, cur = [], []
    for t, m in zip(enc.input_ids + [None], enc.mask + [0]):
        if m:
            cur.append(t)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    return out
