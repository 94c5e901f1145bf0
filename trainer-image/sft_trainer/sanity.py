"""The sanity pre-run (``spec.eval.sanityCheck``): before the full run, in the same processes, overfit
the first K training examples for N steps from the base weights and require the loss to fall.

It catches, in seconds instead of hours: a learning rate that diverges (the loss rises or turns NaN),
a broken mask (no trained token, or nothing the model can learn), and NaNs from the data or the
precision. The job then fails with ``SanityCheckFailed`` (exit 67, non-retryable) and the figures.

The base weights are restored afterwards, so that the full run is the run it would have been
without the check (tests/unit/trainer/test_sanity_check.py proves it step by step):

- full fine-tuning: a CPU copy of the state dict before, ``load_state_dict`` after;
- lora/qlora: the base weights are frozen; the sanity run's adapters are removed (``unload``), and
  the full run gets fresh ones;
- the RNG states (torch, CUDA, numpy, random) are restored too: PEFT initialises adapters from them.

The verdict: pass when the mean loss of the last steps (the last tenth, 1 to 5 steps) is at most
``minLossDrop`` (default 0.7) times the loss of the first step. The default allows for the noise of a
few examples per step while a healthy run on 20 examples typically ends far below half its first loss.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

from .exit_codes import SanityCheckFailed

log = logging.getLogger("sft_trainer")


@dataclass
class SanityVerdict:
    passed: bool
    message: str
    losses: list[float] = field(default_factory=list)
    first_loss: float | None = None
    final_loss: float | None = None
    min_loss_drop: float = 0.7
    steps: int = 0
    examples: int = 0
    trained_tokens: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def status(self) -> dict[str, Any]:
        """``status.evaluation.sanityCheck`` (JSON has no NaN: non-finite losses are null)."""
        def num(x: float | None) -> float | None:
            return round(x, 5) if x is not None and math.isfinite(x) else None

        return {"passed": self.passed, "firstLoss": num(self.first_loss), "finalLoss": num(self.final_loss),
                "minLossDrop": self.min_loss_drop, "steps": self.steps, "seconds": round(self.seconds, 2),
                "losses": [num(x) for x in self.losses], "message": self.message[:1000]}


def _tail(n: int) -> int:
    """How many of the last steps make the final loss: a tenth of them, 1 to 5."""
    return max(1, min(5, n // 10))


def judge(losses: list[float], *, factor: float, steps: int, examples: int, trained_tokens: int,
          hint: str = "") -> SanityVerdict:
    """The verdict on a sanity run's per-step losses, with the figures in the message."""
    v = SanityVerdict(False, "", list(losses), min_loss_drop=factor, steps=steps, examples=examples,
                      trained_tokens=trained_tokens)
    what = f"the sanity pre-run on {examples} examples"
    if trained_tokens == 0:
        v.message = (f"SanityCheckFailed: {what} has no trained token: every label is masked "
                     f"(check spec.training.lossOn and the chat template's assistant turns)")
        return v
    if not losses:
        v.message = f"SanityCheckFailed: {what} logged no loss in {steps} steps"
        return v
    v.first_loss = losses[0]
    bad = next((i for i, x in enumerate(losses) if not math.isfinite(x)), None)
    if bad is not None:
        v.final_loss = losses[bad]
        v.message = (f"SanityCheckFailed: {what}: the loss is {losses[bad]} at step {bad + 1} of {steps} "
                     f"(first loss {losses[0]:.4f}){hint}")
        return v
    k = _tail(len(losses))
    v.final_loss = sum(losses[-k:]) / k
    limit = v.first_loss * factor
    v.passed = v.final_loss <= limit
    span = f"step {len(losses)}" if k == 1 else f"the mean of steps {len(losses) - k + 1}-{len(losses)}"
    figures = (f"the loss went from {v.first_loss:.4f} (step 1) to {v.final_loss:.4f} ({span}) in "
               f"{len(losses)} steps; spec.eval.sanityCheck.minLossDrop {factor} needs <= {limit:.4f}")
    v.message = (f"sanity check passed: {figures}" if v.passed
                 else f"SanityCheckFailed: {what}: {figures}{hint}")
    return v


def trained_tokens(examples: list[dict[str, Any]], cfg: Any, tokenizer: Any) -> int:
    """Positions that carry loss in ``examples``, after truncation to maxSeqLength."""
    from .data import to_trl_rows

    n = 0
    for r in to_trl_rows(examples, cfg.loss_on, tokenizer):
        mask = r.get("assistant_masks", r.get("completion_mask"))
        if mask is None:  # lossOn: all; the first token is never a label
            n += max(0, len(r["input_ids"][:cfg.max_seq_length]) - 1)
        else:
            n += sum(mask[:cfg.max_seq_length])
    return n


# ------------------------------------------------------------------------------ restoring
def _rng_states() -> dict[str, Any]:
    import numpy as np
    import torch

    states = {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(states["random"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def base_weights_kept(model: Any, *, adapters: bool) -> Iterator[dict[str, Any]]:
    """Whatever trains inside, ``model`` leaves with its base weights, no gradients and the RNG as it was.

    ``holder["trainer"]`` is the sanity run's trainer: with adapters, its PEFT model is unloaded.
    """
    import torch

    rng = _rng_states()
    snapshot = None
    if not adapters:  # full fine-tuning trains the base weights themselves
        with torch.no_grad():
            snapshot = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    holder: dict[str, Any] = {}
    try:
        yield holder
    finally:
        trainer = holder.pop("trainer", None)
        if adapters and trainer is not None and hasattr(trainer.model, "unload"):
            trainer.model.unload()  # removes the sanity run's LoRA layers from the base model, in place
        if snapshot is not None:
            model.load_state_dict(snapshot)
        model.zero_grad(set_to_none=True)
        model.train()
        del trainer
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _set_rng_states(rng)


# ------------------------------------------------------------------------------ the run
def _losses_callback(holder: list[float]):
    from transformers import TrainerCallback

    class SanityLosses(TrainerCallback):
        """Records each step's loss and stops at the first non-finite one: no need to go on."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                holder.append(float(logs["loss"]))
                if not math.isfinite(holder[-1]):
                    control.should_training_stop = True
            return control

    return SanityLosses()


def _overfit(cfg: Any, method: Any, inputs: Any, model: Any, examples: list[dict[str, Any]], sc: Any,
             holder: dict[str, Any]) -> list[float]:
    """N steps of the job's own trainer and optimiser settings on ``examples``; the per-step losses."""
    from trl import SFTConfig
    from transformers.trainer_callback import PrinterCallback

    from .data import Splits

    train_set, _ = method.datasets(cfg, Splits(train=examples, validation=[], test=[]))
    kw = cfg.sft_config_kwargs(has_eval=False)
    kw.pop("num_train_epochs", None)
    kw.update(output_dir=str(cfg.workdir / "sanity-check"), max_steps=sc.steps, save_strategy="no",
              logging_steps=1, logging_first_step=True, eval_strategy="no", eval_steps=None)
    losses: list[float] = []
    trainer = method.trainer_class()(model=model, args=SFTConfig(**kw), train_dataset=train_set,
                                     processing_class=inputs.tokenizer, peft_config=cfg.lora_config(),
                                     callbacks=[_losses_callback(losses)])
    holder["trainer"] = trainer
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return losses


def sanity_check(cfg: Any, method: Any, inputs: Any, model: Any, result: Any, *, rank: int,
                 phase: Callable[[str], None], resume_dir: Any = None, reporter: Any = None) -> None:
    """The sanity pre-run step of ``train()``: a no-op when it is off or when the run resumes (an earlier
    attempt of this run passed it); raises ``SanityCheckFailed`` on every rank when it fails."""
    sc = cfg.sanity_check
    if sc is None:
        return
    if resume_dir is not None:
        log.info("sanity check skipped: resuming from a committed checkpoint of this run")
        return
    if cfg.use_deepspeed:
        log.warning("spec.eval.sanityCheck is not supported under DeepSpeed yet: skipped")
        return
    examples = inputs.splits.train[:sc.examples]
    phase(f"sanity check: {sc.steps} steps on {len(examples)} examples")
    t0 = time.monotonic()
    tokens = trained_tokens(examples, cfg, inputs.tokenizer)
    losses: list[float] = []
    if tokens > 0:
        with base_weights_kept(model, adapters=cfg.method != "full") as holder:
            losses = _overfit(cfg, method, inputs, model, examples, sc, holder)
    hint = f" (spec.training.learningRate {cfg.learning_rate:g})"
    verdict = judge(losses, factor=sc.min_loss_drop, steps=sc.steps, examples=len(examples),
                    trained_tokens=tokens, hint=hint)
    verdict.seconds = time.monotonic() - t0
    result.sanity_check = verdict.to_dict()
    if rank == 0:
        (cfg.workdir / "sanity-check.json").write_text(json.dumps(verdict.to_dict(), indent=2))
        log.info("%s (%.1fs)", verdict.message, verdict.seconds)
        if reporter is not None:
            reporter.report({"evaluation": {"sanityCheck": verdict.status()}})
    if not verdict.passed:
        raise SanityCheckFailed(verdict.message)
