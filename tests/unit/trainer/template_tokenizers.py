"""Tokenizers for real chat templates, built locally: a character-level vocabulary plus the model
family's special tokens, wrapped as ``PreTrainedTokenizerFast``. No downloads, no weights.

One character is one token, so a character offset maps to a token directly, which keeps the
tests' expectations independent of the masking code. The special tokens of a template are the
``<|...|>``-style strings it contains (and the family's named ones), each one added token.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

TEMPLATES_DIR = Path(__file__).parent / "templates"  # the families TRL does not ship

_SPECIAL_RE = re.compile(r"<[|｜][^<>\s'\"]{1,40}?[|｜]>|<\|[a-z_]+>|<[a-z_]+\|>|\[/?(?:INST|SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_RESULTS)\]"
                         r"|</?(?:start_of_turn|end_of_turn|bos|eos|think|tool_call|tool_response)>")

# family: (bos, eos, pad, extra special tokens not spelled out literally in the template)
FAMILIES: dict[str, tuple[str | None, str, str | None, list[str]]] = {
    "llama3": ("<|begin_of_text|>", "<|eot_id|>", None, ["<|end_of_text|>"]),
    "qwen": (None, "<|im_end|>", "<|endoftext|>", []),
    "gemma": ("<bos>", "<eos>", "<pad>", []),
    "gemma3": ("<bos>", "<end_of_turn>", "<pad>", []),
    "phi3": ("<s>", "<|endoftext|>", None, []),
    "deepseek": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", None, []),
    "gptoss": (None, "<|return|>", "<|endoftext|>", ["<|endoftext|>"]),
    "cohere": ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", "<PAD>", []),
    "mistral": ("<s>", "</s>", None, []),
    "glm": ("[gMASK]", "<|endoftext|>", None, []),
    "chatml": (None, "<|im_end|>", "<|endoftext|>", []),
    "zephyr": ("<s>", "</s>", None, []),
}


def trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


def local_template(name: str) -> str:
    return (TEMPLATES_DIR / f"{name}.jinja").read_text(encoding="utf-8")


def build(template: str, family: str):
    """A char-level fast tokenizer with ``template`` and the family's special tokens."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    bos, eos, pad, extra = FAMILIES[family]
    specials = ["<unk>"] + [t for t in (bos, eos, pad) if t] + extra + _SPECIAL_RE.findall(template)
    specials = list(dict.fromkeys(specials))
    chars = sorted(set(string.printable) | {c for c in template if c.isprintable()} | set("▁｜é"))
    vocab = {t: i for i, t in enumerate(specials + [c for c in chars if c not in specials])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(specials)
    tok.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token=bos, eos_token=eos,
                                 pad_token=pad or eos)
    hf.chat_template = template
    return hf


def save(tok, path: Path) -> Path:
    """A model directory with only the tokenizer files, as ``spec.model.uri`` points at it."""
    tok.save_pretrained(str(path))
    return path


def build_subword(template: str, family: str, corpus: list[str], *, byte_level: bool):
    """A BPE trained here on ``corpus`` (ByteLevel like Llama 3, or Metaspace like SentencePiece
    Mistral), so that tokens span several characters and a leading space joins the next word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bos, eos, pad, extra = FAMILIES[family]
    specials = list(dict.fromkeys(["<unk>"] + [t for t in (bos, eos, pad) if t] + extra + _SPECIAL_RE.findall(template)))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if byte_level:
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        alphabet = sorted(set("".join(corpus)) | set("▁"))
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token=bos, eos_token=eos,
                                 pad_token=pad or eos)
    hf.chat_template = template
    return hf
