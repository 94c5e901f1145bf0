"""Loss masking pinned to exact label positions, through our spec → SFTConfig mapping, our masks
(masking.py, fed as TRL's ``assistant_masks`` / ``completion_mask`` columns) and TRL's label
building and collator, packing on and off.

Labels are unshifted (the model shifts them): a trained position carries its own token id,
every other position -100.
"""

from __future__ import annotations

import pytest
from trainer_test_helpers import ids, make_job

M = -100

SINGLE = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "XY"}]
MULTI = [
    {"role": "user", "content": "ab"}, {"role": "assistant", "content": "XY"},
    {"role": "user", "content": "c"}, {"role": "assistant", "content": "Z"},
]
SYSTEM = [{"role": "system", "content": "S"}] + SINGLE


@pytest.fixture(scope="module")
def tiny():
    from sft_trainer.tiny_model import build_model, build_tokenizer

    tok = build_tokenizer()
    return tok, build_model(tok)


def collate(tiny, tmp_path, conversations, *, loss_on, packing):
    """Labels of one collated batch, as SFTTrainer prepares them for this spec."""
    from datasets import Dataset
    from trl import SFTTrainer

    from sft_trainer.config import ResolvedConfig
    from sft_trainer.data import to_trl_rows

    tok, model = tiny
    job = make_job(training={"lossOn": loss_on, "packing": packing, "maxSeqLength": 64})
    cfg = ResolvedConfig.from_job(job, workdir=tmp_path, cuda=False, env={})
    examples = [{"messages": c, "task_type": "t"} for c in conversations]
    trainer = SFTTrainer(model=model, args=cfg.sft_config(has_eval=False),
                         train_dataset=Dataset.from_list(to_trl_rows(examples, loss_on, tok)), processing_class=tok)
    ds = trainer.train_dataset
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    return tok, batch


def test_single_turn_trains_the_answer_and_its_end_of_turn(tiny, tmp_path):
    tok, batch = collate(tiny, tmp_path, [SINGLE], loss_on="assistant", packing=False)
    prompt = ids(tok, "<|user|>ab<|eot|><|assistant|>")
    answer = ids(tok, "XY<|eot|>")
    assert batch["input_ids"][0].tolist() == prompt + answer
    assert batch["labels"][0].tolist() == [M] * len(prompt) + answer


def test_multi_turn_trains_every_assistant_turn_and_no_user_turn(tiny, tmp_path):
    tok, batch = collate(tiny, tmp_path, [MULTI], loss_on="assistant", packing=False)
    u1, a1 = ids(tok, "<|user|>ab<|eot|><|assistant|>"), ids(tok, "XY<|eot|>")
    u2, a2 = ids(tok, "<|user|>c<|eot|><|assistant|>"), ids(tok, "Z<|eot|>")
    assert batch["input_ids"][0].tolist() == u1 + a1 + u2 + a2
    assert batch["labels"][0].tolist() == [M] * len(u1) + a1 + [M] * len(u2) + a2
    # each end-of-turn of an assistant turn is trained (the model learns to stop), no other
    eot = tok.convert_tokens_to_ids("<|eot|>")
    trained_eot = [i for i, (t, l) in enumerate(zip(batch["input_ids"][0].tolist(), batch["labels"][0].tolist()))
                   if t == eot and l != M]
    assert trained_eot == [len(u1) + len(a1) - 1, len(u1) + len(a1) + len(u2) + len(a2) - 1]


def test_system_prompt_is_not_trained(tiny, tmp_path):
    tok, batch = collate(tiny, tmp_path, [SYSTEM], loss_on="assistant", packing=False)
    prompt = ids(tok, "<|system|>S<|eot|><|user|>ab<|eot|><|assistant|>")
    answer = ids(tok, "XY<|eot|>")
    assert batch["labels"][0].tolist() == [M] * len(prompt) + answer


def test_prompt_completion_trains_only_the_completion(tiny, tmp_path):
    # lossOn completion: the last assistant turn is the completion; earlier turns are prompt
    tok, batch = collate(tiny, tmp_path, [MULTI], loss_on="completion", packing=False)
    prompt = ids(tok, "<|user|>ab<|eot|><|assistant|>XY<|eot|><|user|>c<|eot|><|assistant|>")
    answer = ids(tok, "Z<|eot|>")
    assert batch["input_ids"][0].tolist() == prompt + answer
    assert batch["labels"][0].tolist() == [M] * len(prompt) + answer


def test_loss_on_all_trains_every_token(tiny, tmp_path):
    tok, batch = collate(tiny, tmp_path, [SYSTEM], loss_on="all", packing=False)
    assert batch["labels"][0].tolist() == batch["input_ids"][0].tolist()


def test_padding_without_packing_masks_pad(tiny, tmp_path):
    tok, batch = collate(tiny, tmp_path, [MULTI, SINGLE], loss_on="assistant", packing=False)
    short = ids(tok, "<|user|>ab<|eot|><|assistant|>XY<|eot|>")
    width = batch["input_ids"].shape[1]
    pad = width - len(short)
    assert pad > 0
    assert batch["input_ids"][1].tolist() == short + [tok.pad_token_id] * pad
    assert batch["labels"][1].tolist() == [M] * 5 + ids(tok, "XY<|eot|>") + [M] * pad
    assert batch["attention_mask"][1].tolist() == [1] * len(short) + [0] * pad


def test_packing_keeps_the_assistant_mask_and_resets_positions(tiny, tmp_path):
    tok, batch = collate(tiny, tmp_path, [MULTI, SYSTEM], loss_on="assistant", packing=True)
    # BFD packing: one padding-free row, no attention mask, position_ids restart per example
    assert batch["input_ids"].shape[0] == 1
    assert "attention_mask" not in batch
    row, labels, pos = (batch[k][0].tolist() for k in ("input_ids", "labels", "position_ids"))
    multi = ids(tok, "<|user|>ab<|eot|><|assistant|>XY<|eot|><|user|>c<|eot|><|assistant|>Z<|eot|>")
    system = ids(tok, "<|system|>S<|eot|><|user|>ab<|eot|><|assistant|>XY<|eot|>")
    # BFD places the longer example first
    assert row == multi + system
    assert pos == list(range(len(multi))) + list(range(len(system)))
    u1, u2 = ids(tok, "<|user|>ab<|eot|><|assistant|>"), ids(tok, "<|user|>c<|eot|><|assistant|>")
    sys_prompt = ids(tok, "<|system|>S<|eot|><|user|>ab<|eot|><|assistant|>")
    expect_multi = [M] * len(u1) + ids(tok, "XY<|eot|>") + [M] * len(u2) + ids(tok, "Z<|eot|>")
    expect_system = [M] * len(sys_prompt) + ids(tok, "XY<|eot|>")
    assert labels == expect_multi + expect_system


def test_packing_with_prompt_completion(tiny, tmp_path):
    tok, batch = collate(tiny, tmp_path, [MULTI, SINGLE], loss_on="completion", packing=True)
    row, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    multi_prompt = ids(tok, "<|user|>ab<|eot|><|assistant|>XY<|eot|><|user|>c<|eot|><|assistant|>")
    single_prompt = ids(tok, "<|user|>ab<|eot|><|assistant|>")
    assert row == multi_prompt + ids(tok, "Z<|eot|>") + single_prompt + ids(tok, "XY<|eot|>")
    assert labels == [M] * len(multi_prompt) + ids(tok, "Z<|eot|>") + [M] * len(single_prompt) + ids(tok, "XY<|eot|>")
