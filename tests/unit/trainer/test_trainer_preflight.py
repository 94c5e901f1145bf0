"""Preflight: malformed rows with file:line, threshold → exit 64, truncation, loss share, template."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from sft_trainer import exit_codes
from sft_trainer.data import load_datasets
from sft_trainer.exit_codes import ConfigError
from sft_trainer.preflight import check_template, run_preflight


@pytest.fixture(scope="module")
def tok():
    from sft_trainer.tiny_model import build_tokenizer

    return build_tokenizer()


def _spec(tmp_path, rows, fmt="messages"):
    (tmp_path / "d.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return SimpleNamespace(
        datasets=[SimpleNamespace(uri="d.jsonl", format=fmt, weight=1.0, task_type="t")],
        split=SimpleNamespace(validation=0.0, test=0.0, seed=1), storage=None)


def _good(i, answer="ok"):
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": answer}]}


def test_bad_rows_above_the_threshold_fail_with_file_and_line(tmp_path, tok):
    rows = [_good(i) for i in range(8)] + ["oops", {"messages": [{"role": "user", "content": "x"}]}]
    splits, sources = load_datasets(_spec(tmp_path, rows), base_dir=tmp_path)
    with pytest.raises(ConfigError) as e:
        run_preflight(splits, sources, tok, loss_on="assistant", max_seq_length=64, max_bad_row_ratio=0.1)
    msg = str(e.value)
    assert e.value.exit_code == exit_codes.CONFIG_ERROR == 64
    assert "2 of 10 rows are malformed (20.00% > spec.preflight.maxBadRowRatio 10.00%)" in msg
    assert f"{tmp_path / 'd.jsonl'}:9: invalid JSON" in msg
    assert f"{tmp_path / 'd.jsonl'}:10: no assistant turn to train on" in msg


def test_bad_rows_below_the_threshold_are_reported_not_fatal(tmp_path, tok):
    rows = [_good(i) for i in range(19)] + ["oops"]
    splits, sources = load_datasets(_spec(tmp_path, rows), base_dir=tmp_path)
    rep = run_preflight(splits, sources, tok, loss_on="assistant", max_seq_length=64, max_bad_row_ratio=0.1)
    assert (rep.rows, rep.bad_rows) == (20, 1)
    assert rep.bad_row_examples == [f"{tmp_path / 'd.jsonl'}:20: invalid JSON: Expecting value (column 1)"]
    assert any("malformed 1 (5.00%" in line for line in rep.lines())


def test_lengths_truncation_and_loss_share(tmp_path, tok):
    # "<|user|>qN<|eot|><|assistant|>" is 5 tokens, the answer plus end-of-turn len(answer)+1
    rows = [_good(i, answer="a" * 4) for i in range(5)] + [_good(i, answer="b" * 40) for i in range(5)]
    splits, sources = load_datasets(_spec(tmp_path, rows), base_dir=tmp_path)
    rep = run_preflight(splits, sources, tok, loss_on="assistant", max_seq_length=20, max_bad_row_ratio=0.0)
    assert rep.token_lengths["min"] == 10 and rep.token_lengths["max"] == 46
    assert rep.truncated_examples_ratio == 0.5
    kept = 5 * 10 + 5 * 20
    assert rep.truncated_tokens_ratio == pytest.approx((5 * 46 - 5 * 20) / (5 * 46 + 5 * 10))
    assert rep.loss_token_ratio == pytest.approx((5 * 5 + 5 * 15) / kept)
    assert any("truncates 50.0% of examples" in w for w in rep.warnings)


def test_empty_assistant_turns_are_counted(tmp_path, tok):
    rows = [_good(0), _good(1, answer=""), _good(2, answer="  ")]
    splits, sources = load_datasets(_spec(tmp_path, rows), base_dir=tmp_path)
    rep = run_preflight(splits, sources, tok, loss_on="assistant", max_seq_length=64, max_bad_row_ratio=0.0)
    assert rep.empty_assistant_turns == 2


def test_no_loss_token_left_after_truncation_is_an_error(tmp_path, tok):
    rows = [{"messages": [{"role": "user", "content": "x" * 50}, {"role": "assistant", "content": "y"}]}]
    splits, sources = load_datasets(_spec(tmp_path, rows), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="spec.training.maxSeqLength: no token carries loss"):
        run_preflight(splits, sources, tok, loss_on="assistant", max_seq_length=16, max_bad_row_ratio=0.0)


def test_template_without_generation_markers_is_masked_by_incremental_rendering(tok):
    from sft_trainer.tiny_model import build_tokenizer

    plain = build_tokenizer()
    plain.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot|>{% endfor %}"
                           "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    verdict = check_template(plain, "assistant")
    assert (verdict.strategy, verdict.end_of_turn, verdict.eot_outside_turn) == ("incremental", ["<|eot|>"], False)
    assert check_template(plain, "all").strategy == "none"
    assert check_template(tok, "assistant").strategy == "markers"


def test_missing_or_broken_template(tok):
    from sft_trainer.tiny_model import build_tokenizer

    t = build_tokenizer()
    t.chat_template = None
    with pytest.raises(ConfigError, match="has no chat template"):
        check_template(t, "assistant")
    t.chat_template = "{% for m in messages %}{{ m['content'] | nosuchfilter }}{% endfor %}"
    with pytest.raises(ConfigError, match="fails to render"):
        check_template(t, "all")


def test_a_known_model_template_is_used_as_it_is_not_patched():
    from sft_trainer.tiny_model import build_tokenizer

    qwen = __import__("trl.chat_template_utils", fromlist=["x"]).qwen2_5_chat_template
    t = build_tokenizer()
    t.chat_template = qwen
    assert check_template(t, "assistant").strategy == "incremental"
    assert t.chat_template == qwen  # training renders exactly what inference renders
