"""Packed training rows mix the tasks, even when an example's length gives its task away.

TRL's BFD packing sorts examples by length, so on the quickstart (task decides length) a row held
mostly one task and every optimizer step trained one task: held-out exact match 10.5%, against 74%
with rows mixed in data order (same time box, same row fill).
"""

from __future__ import annotations

import pytest
from trainer_test_helpers import make_job

# In tokens with the template: 4 special tokens + user + assistant characters.
SHORT = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "cd"}]  # 8 tokens
LONG = [{"role": "user", "content": "a" * 14}, {"role": "assistant", "content": "B" * 14}]  # 32 tokens


@pytest.fixture(scope="module")
def tiny():
    from sft_trainer.tiny_model import build_model, build_tokenizer

    tok = build_tokenizer()
    return tok, build_model(tok)


def packed_train_rows(tiny, tmp_path, conversations):
    """The training rows that train()'s trainer class packs for a 64-token packing spec."""
    from datasets import Dataset

    from sft_trainer.config import ResolvedConfig
    from sft_trainer.data import to_trl_rows
    from sft_trainer.methods.sft import task_eval_trainer_class as _trainer_class

    tok, model = tiny
    job = make_job(training={"packing": True, "maxSeqLength": 64, "perDeviceBatchSize": 1})
    cfg = ResolvedConfig.from_job(job, workdir=tmp_path, cuda=False, env={})
    examples = [{"messages": c, "task_type": "t"} for c in conversations]
    trainer = _trainer_class()(model=model, args=cfg.sft_config(has_eval=False),
                               train_dataset=Dataset.from_list(to_trl_rows(examples, "assistant", tok)),
                               processing_class=tok)
    return trainer


def test_rows_mix_short_and_long_examples(tiny, tmp_path):
    import random

    # a shuffled two-task set with as many tokens of each task; length-sorted BFD packs it into
    # rows of two long examples (64 tokens) and rows of eight short ones (64): no row with both
    data = [SHORT] * 64 + [LONG] * 16
    random.Random(0).shuffle(data)
    trainer = packed_train_rows(tiny, tmp_path, data)
    rows = trainer.train_dataset["seq_lengths"]
    assert sorted(n for row in rows for n in row) == [8] * 64 + [32] * 16  # every example, none cut
    assert all(sum(row) <= 64 for row in rows) and len(rows) == 16  # and the rows as full as BFD's
    mixed = [row for row in rows if 8 in row and 32 in row]
    assert len(mixed) >= len(rows) // 4, list(rows)


def test_packed_rows_keep_labels_and_restart_positions(tiny, tmp_path):
    from trainer_test_helpers import ids

    trainer = packed_train_rows(tiny, tmp_path, [SHORT, LONG])
    tok = tiny[0]
    batch = trainer.data_collator([trainer.train_dataset[0]])
    short = ids(tok, "<|user|>ab<|eot|><|assistant|>cd<|eot|>")
    long_ = ids(tok, "<|user|>" + "a" * 14 + "<|eot|><|assistant|>" + "B" * 14 + "<|eot|>")
    assert batch["input_ids"][0].tolist() == short + long_
    assert batch["labels"][0].tolist() == [-100] * 5 + short[5:] + [-100] * 17 + long_[17:]
    assert batch["position_ids"][0].tolist() == list(range(8)) + list(range(32))
    assert "attention_mask" not in batch  # padding-free: the mask comes from the position_ids


def test_best_fit_in_order_never_cuts_and_fills_the_tightest_row():
    from sft_trainer.packing import best_fit_in_order

    assert best_fit_in_order([8, 32, 8, 32, 8, 32, 8, 32], 64) == [[0, 1, 2, 4, 6], [3, 5], [7]]
    # 3 goes to the row with 4 free (not the one with 59), and 1 to the row then left with 1
    rows = best_fit_in_order([5, 60, 3, 0, 64, 1], 64)
    assert rows == [[0], [1, 2, 5], [4]]  # the empty example is dropped, as TRL does
    with pytest.raises(ValueError, match="more than max_length"):
        best_fit_in_order([65], 64)
