"""``builtin://tiny-llama``: a ~1M-parameter Llama built from a config, with a character-level
tokenizer built locally, so that CPU smoke runs and tests need no downloads.

The chat template marks each assistant turn with ``{% generation %}`` and puts the end-of-turn
token *inside* the block, so that TRL's assistant-only loss trains it and the model learns to stop.
"""

from __future__ import annotations

import string
from typing import Any

BUILTIN_TINY_LLAMA = "builtin://tiny-llama"

PAD, UNK, BOS, SYSTEM, USER, ASSISTANT, EOT = (
    "<pad>", "<unk>", "<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|eot|>",
)
SPECIAL_TOKENS = [PAD, UNK, BOS, SYSTEM, USER, ASSISTANT, EOT]
CHARS = sorted(set(string.ascii_letters + string.digits + string.punctuation + " \n"))

# One line of Jinja per role; no whitespace control surprises.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>{{ m['content'] }}<|eot|>"
    "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}<|eot|>"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{% generation %}{{ m['content'] }}<|eot|>{% endgeneration %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# Architecture of the tiny model (TRAINER-NOTES: learns the quickstart tasks in minutes on 2 cores).
TINY_LLAMA_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}


def build_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` (a BPE with no merges) with the chat template."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + CHARS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.decoder = decoders.Fuse()  # characters join without separators
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOT,
        model_max_length=TINY_LLAMA_CONFIG["max_position_embeddings"],
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_model(tokenizer, *, seed: int = 42, dtype: Any = None):
    """A freshly initialised tiny Llama; the same seed gives the same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TINY_LLAMA_CONFIG,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    if dtype is not None:
        model = model.to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
