"""Our masks through TRL's SFTTrainer on real templates: the labels of collated batches, truncated
at maxSeqLength inside an assistant turn, and packed rows (TRL's BFD and our in-order packing).

Expected labels come from the independent character-level expectation of
``test_trainer_masking_templates`` (contents located by ``str.find``), not from masking.py.
"""

from __future__ import annotations

import pytest
from test_trainer_masking_templates import MULTI, SINGLE, SYSTEM, TEMPLATES, expected_mask, tokenizer
from trainer_test_helpers import make_job

M = -100


def expected(name: str, messages) -> tuple[list[int], list[int]]:
    _, _, _, eot, eot_final, lead, _ = TEMPLATES[name]
    tok = tokenizer(name)
    text = tok.apply_chat_template(messages, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    mask = expected_mask(tok, text, messages, eot, eot_final, lead)
    return ids, [t if m else M for t, m in zip(ids, mask)]


def prepared(tmp_path, name: str, conversations, *, max_len: int, packing: bool):
    from datasets import Dataset
    from trl import SFTTrainer

    from sft_trainer.config import ResolvedConfig
    from sft_trainer.data import to_trl_rows
    from sft_trainer.tiny_model import build_model

    tok = tokenizer(name)
    job = make_job(training={"lossOn": "assistant", "packing": packing, "maxSeqLength": max_len})
    cfg = ResolvedConfig.from_job(job, workdir=tmp_path, cuda=False, env={})
    examples = [{"messages": c, "task_type": "t"} for c in conversations]
    return SFTTrainer(model=build_model(tok), args=cfg.sft_config(has_eval=False),
                      train_dataset=Dataset.from_list(to_trl_rows(examples, "assistant", tok)), processing_class=tok)


@pytest.mark.parametrize("name", ["llama3_1", "mistral_v0_3", "qwen3", "gptoss"])
def test_truncation_inside_an_assistant_turn_keeps_the_trained_prefix(tmp_path, name):
    ids, labels = expected(name, MULTI)
    # cut in the middle of the last assistant content ("Six, of course."): 5 characters into it
    text = tokenizer(name).apply_chat_template(MULTI, tokenize=False)
    cut_char = text.rindex("Six, of course.") + 5
    offsets = tokenizer(name)(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    cut = next(i for i, (s, _) in enumerate(offsets) if s >= cut_char)
    trainer = prepared(tmp_path, name, [MULTI, SINGLE], max_len=cut, packing=False)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    row = batch["input_ids"][0].tolist()
    assert row == ids[:cut]
    assert batch["labels"][0].tolist() == labels[:cut]
    assert labels[cut - 1] != M  # the cut is inside a trained span


@pytest.mark.parametrize("name", ["llama3_1", "mistral_v0_3", "gemma3", "phi3"])
def test_packed_rows_keep_every_span_exactly(tmp_path, name):
    from sft_trainer.packing import pack_mixed

    # three different renders (Mistral v0.3 drops a system prompt: SYSTEM would render as MULTI)
    system = [SYSTEM[0], {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    convs = [SINGLE, MULTI, system if TEMPLATES[name][6] else system[1:]]
    want = {tuple(expected(name, c)[0]): expected(name, c)[1] for c in convs}
    # TRL's BFD packing (evaluation sets) through the padding-free collator
    trainer = prepared(tmp_path, name, convs, max_len=1024, packing=True)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    row, lab, pos = (batch[k][0].tolist() for k in ("input_ids", "labels", "position_ids"))
    starts = [i for i, p in enumerate(pos) if p == 0] + [len(row)]
    segments = [(tuple(row[a:b]), lab[a:b]) for a, b in zip(starts, starts[1:])]
    assert len(segments) == len(convs)
    for seg_ids, seg_labels in segments:
        assert want[seg_ids] == seg_labels
    # our in-order packing (training sets) on TRL's prepared, unpacked rows
    unpacked = prepared(tmp_path, name, convs, max_len=1024, packing=False).train_dataset
    packed = pack_mixed(unpacked, 1024)
    assert packed["labels"][0] == [t for c in convs for t in expected(name, c)[1]]
    assert packed["seq_lengths"][0] == [len(expected(name, c)[0]) for c in convs]
