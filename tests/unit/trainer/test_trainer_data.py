"""Format conversion, task_type defaults, weighted mixing and split determinism."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pytest

from sft_trainer.data import (
    iter_rows,
    load_datasets,
    load_source,
    mix_by_weight,
    resolve_uri,
    split_examples,
    to_messages,
)
from sft_trainer.exit_codes import ConfigError


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_messages_format_passes_through():
    rec = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                        {"role": "assistant", "content": "a"}]}
    assert to_messages(rec, "messages") == rec["messages"]


def test_prompt_completion_strings_become_one_user_and_one_assistant_turn():
    assert to_messages({"prompt": "2+2", "completion": "4"}, "prompt-completion") == [
        {"role": "user", "content": "2+2"}, {"role": "assistant", "content": "4"}]


def test_prompt_completion_conversational_is_kept():
    rec = {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}]}
    assert to_messages(rec, "prompt-completion") == rec["prompt"] + rec["completion"]


def test_alpaca_joins_instruction_and_input():
    rec = {"instruction": "Translate", "input": "hallo", "output": "hello"}
    assert to_messages(rec, "alpaca") == [
        {"role": "user", "content": "Translate\n\nhallo"}, {"role": "assistant", "content": "hello"}]
    assert to_messages({"instruction": "Say hi", "input": "", "output": "hi"}, "alpaca")[0]["content"] == "Say hi"


@pytest.mark.parametrize("rec,fmt,reason", [
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages", "messages[0].role 'bot'"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages", "messages[0].content must be a string"),
    ({"messages": [{"role": "user", "content": "q"}]}, "messages", "no assistant turn"),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}, "messages",
     "last turn must be the assistant's"),
    ({"prompt": "x"}, "prompt-completion", "missing field 'completion'"),
    ({"instruction": "x"}, "alpaca", "missing field 'output'"),
    ([1, 2], "messages", "not a JSON object"),
])
def test_conversion_errors_name_the_problem(rec, fmt, reason):
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        to_messages(rec, fmt)


def test_load_source_reports_bad_rows_with_file_and_line(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "a", "completion": "b"},
        "{not json",
        {"prompt": "a"},
        "",
        {"prompt": "c", "completion": "d", "task_type": "mine"},
    ])
    src = load_source(SimpleNamespace(uri=str(f), format="prompt-completion", weight=1.0, task_type="dflt"))
    assert src.rows == 4  # the blank line is not a row
    assert [str(b) for b in src.bad_rows] == [
        f"{f}:2: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{f}:3: missing field 'completion'",
    ]
    assert [e["task_type"] for e in src.examples] == ["dflt", "mine"]  # the record's own task_type wins
    assert [e["source"] for e in src.examples] == [f"{f}:1", f"{f}:5"]


def test_parquet_and_file_uri(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "i", "input": "", "output": "o"}] * 3), path)
    rows = list(iter_rows(f"file://{path}"))
    assert [line for line, _ in rows] == [1, 2, 3]
    src = load_source(SimpleNamespace(uri=f"file://{path}", format="alpaca", weight=1.0, task_type=None))
    assert len(src.examples) == 3 and src.examples[0]["task_type"] == "default"


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        list(iter_rows(str(tmp_path / "nope.jsonl")))


def test_scheme_less_paths_resolve_against_the_job_directory(tmp_path):
    assert resolve_uri("data/x.jsonl", tmp_path) == str(tmp_path / "data/x.jsonl")
    assert resolve_uri("s3://b/x.jsonl", tmp_path) == "s3://b/x.jsonl"
    assert resolve_uri("/abs/x.jsonl", tmp_path) == "/abs/x.jsonl"


def _examples(n, task="t"):
    return [{"messages": [{"role": "user", "content": str(i)}, {"role": "assistant", "content": "a"}],
             "task_type": task, "source": f"f:{i}"} for i in range(n)]


def test_split_is_deterministic_disjoint_and_sized():
    ex = _examples(1000)
    a, b = split_examples(ex, 0.1, 0.05, seed=7), split_examples(ex, 0.1, 0.05, seed=7)
    assert a == b
    assert (len(a.train), len(a.validation), len(a.test)) == (850, 100, 50)
    keys = lambda part: {e["source"] for e in part}  # noqa: E731
    assert not (keys(a.train) & keys(a.validation)) and not (keys(a.train) & keys(a.test))
    assert keys(a.train) | keys(a.validation) | keys(a.test) == keys(ex)
    assert split_examples(ex, 0.1, 0.05, seed=8).test != a.test


def test_mix_follows_the_weights_and_is_deterministic():
    big, small = _examples(600, "big"), _examples(100, "small")
    mixed = mix_by_weight([(big, 1.0), (small, 1.0)], seed=1)
    c = Counter(e["task_type"] for e in mixed)
    # the mix is as large as both sources together; equal weights give equal shares
    assert c["big"] == c["small"] == 350
    assert mix_by_weight([(big, 1.0), (small, 1.0)], seed=1) == mixed
    mixed = mix_by_weight([(big, 3.0), (small, 1.0)], seed=1)
    c = Counter(e["task_type"] for e in mixed)
    assert c["big"] == 525 and c["small"] == 175
    mixed = mix_by_weight([(big, 1.0), (small, 6.0)], seed=1)
    c = Counter(e["task_type"] for e in mixed)
    assert c["small"] == 600 and c["big"] == 100
    # the big source is subsampled without repeats; the small one repeated whole
    assert len({e["source"] for e in mixed if e["task_type"] == "big"}) == 100
    assert Counter(e["source"] for e in mixed if e["task_type"] == "small") == {f"f:{i}": 6 for i in range(100)}
    assert mix_by_weight([(big, 1.0)], seed=1) != big and sorted(map(id, mix_by_weight([(big, 1.0)], 1))) == sorted(map(id, big))


def test_load_datasets_splits_each_source_and_mixes_training(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{i}", "completion": "x"} for i in range(200)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": f"b{i}", "output": "y"} for i in range(100)])
    spec = SimpleNamespace(
        datasets=[SimpleNamespace(uri="a.jsonl", format="prompt-completion", weight=1.0, task_type="A"),
                  SimpleNamespace(uri="b.jsonl", format="alpaca", weight=1.0, task_type="B")],
        split=SimpleNamespace(validation=0.1, test=0.1, seed=3), storage=None)
    splits, sources = load_datasets(spec, base_dir=tmp_path)
    assert [s.rows for s in sources] == [200, 100]
    assert Counter(e["task_type"] for e in splits.validation) == {"A": 20, "B": 10}
    assert Counter(e["task_type"] for e in splits.train) == {"A": 120, "B": 120}
    again, _ = load_datasets(spec, base_dir=tmp_path)
    assert again.train == splits.train and again.test == splits.test
