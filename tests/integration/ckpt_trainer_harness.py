"""A minimal real SFT run (TRL SFTTrainer, tiny Llama, local char tokenizer) with the trainer's
checkpoint/metrics/progress/SIGTERM callbacks, for the checkpoint, crash/resume, torchrun and
Prometheus integration tests.

It exercises exactly the pieces under test (CheckpointStore resume discovery + download, the
callbacks) around the real HF/TRL save and resume machinery, without depending on the full
trainer entrypoint's config and data pipeline. Run: ``python ckpt_trainer_harness.py '<json>'``.
Writes a JSON result (final step, log history, world size, what it resumed from) to ``result``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import tempfile
from pathlib import Path

SIGTERM_EXIT = 75  # retryable


def launch(cfg: dict, log_path: Path, env: dict | None = None, torchrun_nproc: int = 0):
    """Start this harness in a subprocess (its own session, so that tests can signal it)."""
    import subprocess

    argv = [sys.executable, str(Path(__file__).resolve()), json.dumps(cfg)]
    if torchrun_nproc:
        argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={torchrun_nproc}",
                "--nnodes=1", "--master-addr=127.0.0.1", f"--master-port={free_port()}",
                *argv[1:]]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=True)
    finally:
        log.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_losses(result: dict) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in result["log_history"] if "loss" in h}


def build_tokenizer():
    import string

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.ascii_letters + string.digits + string.punctuation + " "))
    specials = ["<pad>", "<unk>", "<s>", "<|user|>", "<|assistant|>", "<|eot|>"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(specials)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
        eos_token="<|eot|>",
    )
    # end-of-turn inside the generation block: trained, so the model learns to stop
    hf.chat_template = (
        "{% for m in messages %}"
        "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}<|eot|>"
        "{% else %}<|assistant|>{% generation %}{{ m['content'] }}<|eot|>{% endgeneration %}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return hf


def build_dataset(n: int, seed: int = 0):
    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8)))
        rows.append({"messages": [
            {"role": "user", "content": f"upper {word}"},
            {"role": "assistant", "content": word.upper()},
        ]})
    return Dataset.from_list(rows)


def main(cfg: dict) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from sft_trainer.callbacks import SigtermCallback, build_callbacks
    from sft_trainer.checkpoint_store import CheckpointStore
    from sft_trainer.plots import write_loss_curve

    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(cfg.get("seed", 7))
    store = CheckpointStore(cfg["store_uri"], cfg.get("storage_options") or {})
    out_dir = Path(cfg["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)

    resume_dir = None
    resumed_from = None
    uncommitted = store.uncommitted()
    if uncommitted and rank == 0:
        logging.warning("ignoring uncommitted checkpoints: %s", uncommitted)
    latest = store.latest_committed()
    if latest is not None:
        # every process downloads into its own dir: no shared filesystem is assumed
        resume_dir = store.download(latest, tempfile.mkdtemp(prefix=f"resume-{rank}-"))
        resumed_from = latest.step

    tok = build_tokenizer()
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    ))
    args = SFTConfig(
        output_dir=str(out_dir),
        max_steps=cfg["max_steps"],
        save_strategy="steps",
        save_steps=cfg["save_steps"],
        logging_steps=1,
        eval_strategy="steps" if cfg.get("eval_steps") else "no",
        eval_steps=cfg.get("eval_steps"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=3e-3,
        lr_scheduler_type="linear",
        warmup_steps=2,
        max_length=64,
        packing=False,
        assistant_only_loss=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        use_cpu=True,
        seed=cfg.get("seed", 7),
        data_seed=cfg.get("seed", 7),
        dataloader_num_workers=0,
        disable_tqdm=True,
        save_total_limit=2,
        ddp_find_unused_parameters=False,
    )
    eval_ds = None
    if cfg.get("eval_steps"):
        eval_ds = {"upper": build_dataset(16, seed=99)}
    callbacks = build_callbacks(
        store=store, keep=cfg.get("keep", 2), metrics_port=cfg.get("metrics_port", 0),
        namespace="test", job=cfg.get("job", "harness"),
        progress_interval_s=cfg.get("progress_interval_s", 1.0),
    )
    if cfg.get("step_sleep"):
        import time

        from transformers import TrainerCallback

        class Slow(TrainerCallback):  # stretches the run so that tests can act in the middle
            def on_step_end(self, *a, **kw):
                time.sleep(cfg["step_sleep"])

        callbacks.append(Slow())
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=build_dataset(cfg.get("n_rows", 400)),
        eval_dataset=eval_ds, processing_class=tok, callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
    sigterm = next(c for c in callbacks if isinstance(c, SigtermCallback))
    if rank == 0:
        state = trainer.state
        if cfg.get("loss_png"):
            write_loss_curve(state.log_history, cfg["loss_png"],
                             storage_options=cfg.get("storage_options") or {})
        result = {
            "global_step": state.global_step,
            "log_history": state.log_history,
            "world_size": trainer.args.world_size,
            "backend": (torch.distributed.get_backend()
                        if torch.distributed.is_initialized() else None),
            "resumed_from": resumed_from,
            "uncommitted_seen": uncommitted,
            "sigterm": sigterm.received,
        }
        Path(cfg["result"]).write_text(json.dumps(result))
    return SIGTERM_EXIT if sigterm.received else 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
