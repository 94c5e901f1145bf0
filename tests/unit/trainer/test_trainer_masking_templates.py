"""Trained positions pinned on real chat templates: those TRL ships in ``trl/chat_templates`` and
the families it lacks (Mistral/Mixtral ``[INST]``, ChatML, Zephyr: ``templates/``).

The expectation is computed independently of ``masking.py``: each assistant content is located
in the rendered text with ``str.find``, the template's end-of-turn string must follow it, and
those characters map to tokens through the offsets (one character is one token here). A token
is expected to be trained exactly when it covers one of those characters.
"""

from __future__ import annotations

from functools import lru_cache

import pytest
import template_tokenizers as tt

from sft_trainer import masking
from sft_trainer.exit_codes import ConfigError

# name: (where, family, strategy, end-of-turn after a turn, after the final turn, lead, system ok)
# ``lead`` is what the turn adds after the generation prompt before its content, one string or
# (earlier turns, final turn): Qwen3-8's generation prompt opens <think>, so its turns start by
# closing it; Qwen3 renders an empty think block into the final turn only; gpt-oss's turns start
# with the channel header; Mistral v0.3's with a space, unless the system prompt moved the render.
TEMPLATES = {
    "llama3": ("trl", "llama3", "incremental", "<|eot_id|>", None, "", True),
    "llama3_1": ("trl", "llama3", "incremental", "<|eot_id|>", None, "", True),
    "llama3_2": ("trl", "llama3", "incremental", "<|eot_id|>", None, "", True),
    "qwen2_5": ("trl", "qwen", "incremental", "<|im_end|>", None, "", True),
    "qwen3": ("trl", "qwen", "per-turn", "<|im_end|>", None, ("", "<think>\n\n</think>\n\n"), True),
    "qwen3_instruct_2507": ("trl", "qwen", "incremental", "<|im_end|>", None, "", True),
    "qwen3_5_nothink": ("trl", "qwen", "per-turn", "<|im_end|>", None, "", True),
    "qwen3_5_think": ("trl", "qwen", "per-turn", "<|im_end|>", None, ("", "\n</think>\n\n"), True),
    "qwen3_6": ("trl", "qwen", "per-turn", "<|im_end|>", None, ("", "\n</think>\n\n"), True),
    "qwen3_8": ("trl", "qwen", "incremental", "<|im_end|>", None, "\n</think>\n\n", True),
    "gemma": ("trl", "gemma", "incremental", "<end_of_turn>", None, "", False),
    "gemma3": ("trl", "gemma3", "incremental", "<end_of_turn>", None, "", True),
    "gemma4": ("trl", "gemma3", "incremental", "<turn|>", None, "", True),
    "phi3": ("trl", "phi3", "per-turn", "<|end|>", None, "", True),
    "phi3_5": ("trl", "phi3", "per-turn", "<|end|>", None, "", True),
    "deepseekv3": ("trl", "deepseek", "per-turn", "<｜end▁of▁sentence｜>", None, "", True),
    "deepseek_r1_distill": ("trl", "deepseek", "per-turn", "<｜end▁of▁sentence｜>", None, "", True),
    "gptoss": ("trl", "gptoss", "per-turn", "<|end|>", "<|return|>", "<|channel|>final<|message|>", True),
    "cohere": ("trl", "cohere", "incremental", "<|END_OF_TURN_TOKEN|>", None, "", True),
    "cohere2": ("trl", "cohere", "incremental", "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>", None, "", True),
    "lfm2": ("trl", "chatml", "incremental", "<|im_end|>", None, "", True),
    "nemotron_3_nano": ("trl", "chatml", "per-turn", "<|im_end|>", None, "", True),
    "llama3_training": ("trl", "llama3", "markers", "<|eot_id|>", None, "", True),
    "gemma3_training": ("trl", "gemma3", "markers", "<end_of_turn>", None, "", True),
    "qwen3_training": ("trl", "qwen", "markers", "<|im_end|>", None, "<think>\n\n</think>\n\n", True),
    "mistral_v0_3": ("local", "mistral", "per-turn", "</s>", None, "mistral", True),
    "mixtral": ("local", "mistral", "incremental", "</s>", None, "", False),
    "chatml": ("local", "chatml", "incremental", "<|im_end|>", None, "", True),
    "zephyr": ("local", "zephyr", "incremental", "</s>", None, "", True),
}

SINGLE = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}]
MULTI = SINGLE + [{"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "Six, of course."}]
SYSTEM = [{"role": "system", "content": "Answer briefly."}] + MULTI


def eot_as_text(eot: str):
    return SINGLE + [{"role": "user", "content": "Which token ends a turn?"},
                     {"role": "assistant", "content": f"The string {eot} ends it."}]


@lru_cache(maxsize=None)
def tokenizer(name: str):
    where, family = TEMPLATES[name][:2]
    template = tt.trl_template(name) if where == "trl" else tt.local_template(name)
    return tt.build(template, family)


def lead_of(lead, messages, final: bool) -> str:
    if lead == "mistral":
        return "" if messages[0]["role"] == "system" else " "
    return lead if isinstance(lead, str) else lead[final]


def expected_mask(tok, text: str, messages, eot: str, eot_final: str | None, lead) -> list[int]:
    """Independent of masking.py: content located by str.find, end-of-turn string right after it."""
    marked = [False] * len(text)
    pos = 0
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    for i, m in enumerate(messages):
        content = m["content"].strip()
        at = text.find(content, pos)
        if m["role"] == "system" and at < 0:
            continue  # a template may drop the system prompt (Mistral v0.3 does)
        assert at >= 0, f"{content!r} not rendered"
        pos = at + len(content)
        if m["role"] != "assistant":
            continue
        suffix = eot_final if (i == last and eot_final) else eot
        head = lead_of(lead, messages, i == last)
        assert text[at - len(head):at] == head, text
        assert text[pos:pos + len(suffix)] == suffix, (text[pos:pos + 30], suffix)
        for c in range(at - len(head), pos + len(suffix)):
            marked[c] = True
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [int(any(marked[s:e])) for s, e in offsets]


def encode(name: str, messages, loss_on: str = "assistant"):
    tok = tokenizer(name)
    verdict = masking.analyze_template(tok, loss_on)
    return tok, verdict, masking.encode(tok, messages, loss_on, verdict, masking.TokenInfo(tok, verdict.end_of_turn))


CASES = {"single": SINGLE, "multi": MULTI, "system": SYSTEM, "eot-as-text": None}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_trained_positions_are_the_assistant_turns_and_their_end_of_turn(name, case):
    _, _, strategy, eot, eot_final, lead, system_ok = TEMPLATES[name]
    if case == "system" and not system_ok:
        # The template itself refuses a system message: the row is reported as bad, never mis-masked.
        with pytest.raises(masking.MaskingError, match="the chat template fails to render this conversation"):
            encode(name, SYSTEM)
        return
    messages = CASES[case] or eot_as_text(eot.split(">")[0] + ">")
    tok, verdict, enc = encode(name, messages)
    assert verdict.strategy == strategy
    expect = expected_mask(tok, enc.text, messages, eot, eot_final, lead)
    assert enc.input_ids == tok(enc.text, add_special_tokens=False)["input_ids"]  # as apply_chat_template
    assert enc.mask == expect, masking.trained_segments(tok, enc)
    assert enc.turns_without_eot == 0


@pytest.mark.parametrize("name,injected", [
    ("llama3_1", "Today Date: 26 Jul 2024"),
    ("qwen2_5", "You are Qwen, created by Alibaba Cloud"),
    ("qwen3_8", "Reasoning effort is set to"),
])
def test_a_default_system_prompt_injected_by_the_template_is_not_trained(name, injected):
    tok, _, enc = encode(name, SINGLE)
    assert injected in enc.text
    trained = "".join(masking.trained_segments(tok, enc))
    assert injected not in trained and "It is 4." in trained
    at = enc.text.index(injected)
    offsets = tok(enc.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert not any(m for m, (s, e) in zip(enc.mask, offsets) if s < at + len(injected) and e > at)


def test_the_system_prompt_mistral_v0_3_drops_is_reported_by_preflight():
    """Mistral v0.3 renders the system prompt only into a final user message: never in training data."""
    tok, verdict, enc = encode("mistral_v0_3", SYSTEM)
    assert "Answer briefly." not in enc.text
    assert not verdict.prefix_preserving and verdict.strategy == "per-turn"
    assert masking.trained_segments(tok, enc) == ["It is 4.</s>", "Six, of course.</s>"]


def test_lossOn_completion_trains_only_the_last_assistant_turn():
    tok, _, enc = encode("llama3_1", MULTI, loss_on="completion")
    assert masking.trained_segments(tok, enc) == ["Six, of course.<|eot_id|>"]
    full = expected_mask(tok, enc.text, MULTI, "<|eot_id|>", None, "")
    first_end = enc.text.index("It is 4.<|eot_id|>") + len("It is 4.<|eot_id|>")
    offsets = tok(enc.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert enc.mask == [m if s >= first_end else 0 for m, (s, _) in zip(full, offsets)]


def test_lossOn_all_trains_every_token():
    tok, verdict, enc = encode("mistral_v0_3", MULTI, loss_on="all")
    assert verdict.strategy == "none" and enc.mask == [1] * len(enc.input_ids) and len(enc.input_ids) > 20


def test_end_of_turn_outside_the_generation_block_is_added_and_reported():
    from sft_trainer.tiny_model import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|>{% generation %}"
                         "{{ m['content'] }}{% endgeneration %}<|eot|>{% else %}<|user|>{{ m['content'] }}<|eot|>"
                         "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    verdict = masking.analyze_template(tok, "assistant")
    assert verdict.strategy == "markers" and verdict.eot_outside_turn
    assert "outside the template's turn" in verdict.describe()
    enc = masking.encode(tok, MULTI, "assistant", verdict, masking.TokenInfo(tok, verdict.end_of_turn))
    assert masking.trained_segments(tok, enc) == ["It is 4.<|eot|>", "Six, of course.<|eot|>"]
    assert enc.eot_added == 2


def test_a_template_without_an_end_of_turn_token_is_flagged():
    """GLM-4.5 ends a turn only by starting the next one: its final turn has nothing to stop on."""
    tok = tt.build(tt.trl_template("glm4moe"), "glm")
    verdict = masking.analyze_template(tok, "assistant")
    enc = masking.encode(tok, MULTI, "assistant", verdict, masking.TokenInfo(tok, verdict.end_of_turn))
    assert enc.turns_without_eot == 1
    assert any("may not learn to stop" in n for n in verdict.notes)


def test_a_template_whose_turns_cannot_be_located_fails_naming_the_field():
    from sft_trainer.tiny_model import build_tokenizer

    tok = build_tokenizer()
    # echoes the last message after the conversation: neither prefix-preserving nor locatable per turn
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot|>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}{{ messages[-1]['content'] }}")
    with pytest.raises(ConfigError, match=r"spec\.model\.chatTemplate: the chat template is not prefix-preserving"):
        masking.analyze_template(tok, "assistant")


def test_a_conversation_the_template_rejects_is_a_masking_error_with_the_templates_message():
    tok, verdict, _ = encode("gemma", SINGLE)
    with pytest.raises(masking.MaskingError, match="System role not supported"):
        masking.encode(tok, SYSTEM, "assistant", verdict, masking.TokenInfo(tok, verdict.end_of_turn))


@pytest.mark.parametrize("name,byte_level", [("llama3_1", True), ("mistral_v0_3", False), ("qwen3", True)])
def test_subword_tokens_that_straddle_a_span_boundary_are_trained_when_they_overlap_it(name, byte_level):
    """With merges, " It" is one token: it trains because it overlaps the content (a leading space)."""
    _, family, _, eot, eot_final, lead, _ = TEMPLATES[name]
    template = tt.trl_template(name) if TEMPLATES[name][0] == "trl" else tt.local_template(name)
    corpus = [m["content"] for m in SYSTEM] * 50 + ["It is 4. Six, of course. What is 2+2? And 3+3?"] * 50
    tok = tt.build_subword(template, family, corpus, byte_level=byte_level)
    verdict = masking.analyze_template(tok, "assistant")
    enc = masking.encode(tok, SYSTEM, "assistant", verdict, masking.TokenInfo(tok, verdict.end_of_turn))
    assert any(len(tok.decode([t]).strip()) > 2 for t in enc.input_ids)  # real multi-character tokens
    assert enc.mask == expected_mask(tok, enc.text, SYSTEM, eot, eot_final, lead)
    final = lead_of(lead, SYSTEM, True).lstrip()
    assert [s.strip() for s in masking.trained_segments(tok, enc)] == [f"It is 4.{eot}", f"{final}Six, of course.{eot}"]


REASONING = [{"role": "user", "content": "What is 2+2?"},
             {"role": "assistant", "content": "<think>2 and 2 make 4.</think>It is 4."},
             {"role": "user", "content": "And 3+3?"},
             {"role": "assistant", "content": "<think>3 and 3 make 6.</think>Six."}]


@pytest.mark.parametrize("name,final", [
    # Qwen3 keeps the reasoning of turns after the last user message only: it trains there
    ("qwen3", "<think>\n3 and 3 make 6.\n</think>\n\nSix.<|im_end|>"),
    # DeepSeek-R1-Distill drops every turn's reasoning; its generation prompt opens <think>
    ("deepseek_r1_distill", "Six.<｜end▁of▁sentence｜>"),
])
def test_templates_that_drop_earlier_reasoning_train_what_they_render(name, final):
    tok, verdict, enc = encode(name, REASONING)
    assert verdict.strategy == "per-turn" and not verdict.prefix_preserving
    assert "2 and 2 make 4." not in enc.text  # the earlier turn's reasoning is not rendered
    eot = TEMPLATES[name][3]
    assert masking.trained_segments(tok, enc) == [f"It is 4.{eot}", final]
