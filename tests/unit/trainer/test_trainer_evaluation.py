"""Golden-set checks and file parsing, held-out exact match, exit-code table."""

from __future__ import annotations

import json

import pytest

from sft_trainer import exit_codes
from sft_trainer.evaluation import exact_match, generate, load_golden, run_check, score_golden
from sft_trainer.exit_codes import ConfigError


@pytest.mark.parametrize("check,text,ok", [
    ({"type": "exact", "value": "42"}, " 42\n", True),
    ({"type": "exact", "value": "42"}, "420", False),
    ({"type": "contains", "value": "bob"}, '{"name": "bob"}', True),
    ({"type": "contains", "value": "bob"}, "BOB", False),
    ({"type": "regex", "value": "^[A-Z]+$"}, "HELLO", True),
    ({"type": "regex", "value": "^[A-Z]+$"}, "Hello", False),
    ({"type": "json_schema", "value": {"type": "object", "required": ["a"]}}, '{"a": 1}', True),
    ({"type": "json_schema", "value": {"type": "object", "required": ["a"]}}, '{"b": 1}', False),
    ({"type": "json_schema", "value": {"type": "object"}}, "not json", False),
])
def test_checks(check, text, ok):
    assert run_check(check, text) is ok


def test_golden_file_errors_name_file_and_line(tmp_path):
    f = tmp_path / "g.jsonl"
    f.write_text("\n".join([
        json.dumps({"prompt": "p", "checks": [{"type": "exact", "value": "x"}]}),
        json.dumps({"prompt": "p"}),
        json.dumps({"prompt": "p", "checks": [{"type": "fuzzy", "value": "x"}]}),
        json.dumps({"prompt": "p", "checks": [{"type": "regex", "value": "("}]}),
        json.dumps({"prompt": "p", "checks": [{"type": "json_schema", "value": {"type": 5}}]}),
        "{broken",
    ]) + "\n")
    with pytest.raises(ConfigError) as e:
        load_golden(str(f))
    msg = str(e.value)
    assert msg.startswith("spec.eval.goldenSet.uri: malformed rows")
    for line, reason in [(2, "non-empty 'checks'"), (3, "each check needs a type"), (4, "invalid regex"),
                         (5, "invalid JSON schema"), (6, "invalid JSON")]:
        assert f"{f}:{line}: " in msg and reason in msg


def test_golden_rows_accept_messages_and_drop_a_reference_answer(tmp_path):
    f = tmp_path / "g.jsonl"
    f.write_text(json.dumps({"task_type": "t", "checks": [{"type": "exact", "value": "A"}], "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}]}) + "\n")
    (item,) = load_golden("g.jsonl", base_dir=tmp_path)
    assert item.messages == [{"role": "user", "content": "q"}] and item.task_type == "t"


@pytest.fixture(scope="module")
def tiny():
    from sft_trainer.tiny_model import build_model, build_tokenizer

    tok = build_tokenizer()
    return tok, build_model(tok)


def test_generation_is_greedy_bounded_and_batched_consistently(tiny):
    tok, model = tiny
    prompts = [[{"role": "user", "content": "upper: abc"}], [{"role": "user", "content": "1+1"}]]
    one = [generate(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    both = generate(model, tok, prompts, max_new_tokens=6)
    assert both == one  # left padding does not change greedy answers
    assert all(len(text) <= 6 for text, _ in both)
    assert tok.padding_side == "right"  # restored


def test_exact_match_and_golden_score_an_untrained_model_at_zero(tiny, tmp_path):
    tok, model = tiny
    examples = [{"task_type": t, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                for t, q, a in [("add", "1+1", "2"), ("add", "2+2", "4"), ("up", "upper: ab", "AB")]]
    res = exact_match(model, tok, examples)
    assert res == {"add": 0.0, "up": 0.0, "overall": 0.0}
    f = tmp_path / "g.jsonl"
    f.write_text(json.dumps({"prompt": "1+1", "checks": [{"type": "exact", "value": "2"}]}) + "\n")
    g = score_golden(model, tok, load_golden(str(f)), max_new_tokens=4)
    assert (g.total, g.passed, g.pass_rate) == (1, 0, 0.0) and g.failures[0]["location"].endswith("g.jsonl:1")


def test_exit_code_table():
    assert (exit_codes.SUCCESS, exit_codes.CONFIG_ERROR, exit_codes.GOLDEN_REGRESSION,
            exit_codes.TOPOLOGY_MISMATCH, exit_codes.INTERRUPTED) == (0, 64, 65, 66, 75)
    assert not exit_codes.is_retryable(64) and not exit_codes.is_retryable(65) and not exit_codes.is_retryable(66)
    assert exit_codes.is_retryable(1) and exit_codes.is_retryable(75) and exit_codes.is_retryable(137)
    assert exit_codes.reason_for(66) == "TopologyMismatch" and exit_codes.reason_for(0) is None
    assert exit_codes.SANITY_CHECK_FAILED == 67 and not exit_codes.is_retryable(67)
    assert exit_codes.reason_for(67) == "SanityCheckFailed" == exit_codes.SanityCheckFailed.reason
    # the operator's table agrees
    from sft_operator.conditions import NON_RETRYABLE_EXIT_CODES

    assert {c: str(r) for c, r in NON_RETRYABLE_EXIT_CODES.items()} == {
        c: exit_codes.reason_for(c) for c in exit_codes.NON_RETRYABLE}


def test_exit_codes_module_is_import_light():
    import subprocess
    import sys

    code = "import sys, sft_trainer.exit_codes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
