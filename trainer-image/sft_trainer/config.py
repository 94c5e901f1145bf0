"""The resolved trainer configuration: an SFTJob spec plus the machine it runs on, mapped onto
TRL's ``SFTConfig``, PEFT's ``LoraConfig`` and a generated DeepSpeed JSON.

Pure mapping, no training: everything here is unit-tested on the CPU. Heavy imports (torch, trl,
peft) happen inside the methods that need them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sft_api.contract import TIME_BUDGET_ANNOTATION  # noqa: F401 - re-exported

from .exit_codes import ConfigError

# Trainer-side defaults that are not (yet) SFTJob fields.
DEFAULT_EVAL_EVERY_STEPS = 200
# Wall-clock cap on training (then a final checkpoint, evaluation and export), for runs that must
# fit a time box such as the CPU quickstart; `sftctl run --time-budget` overrides it.
LOCAL_CHECKPOINTS_KEPT = 2  # HF rotation of the local copies; the store keeps `checkpoints.keep`


def _val(x: Any) -> Any:
    """Enum members → their value (the API models use use_enum_values, but be tolerant)."""
    return getattr(x, "value", x)


@dataclass
class Topology:
    """Where this process sits: from the rendezvous env that the operator (or torchrun) sets."""

    nnodes: int = 1
    node_rank: int = 0
    nproc_per_node: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def expected_world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @classmethod
    def from_env(cls, gpus_per_node: int, env: Mapping[str, str] | None = None) -> "Topology":
        env = os.environ if env is None else env

        def num(name: str, default: int) -> int:
            raw = env.get(name) or env.get(f"PET_{name}")
            if raw in (None, ""):
                return default
            try:
                return int(raw)
            except ValueError as e:
                raise ConfigError(f"environment {name}={raw!r} is not an integer") from e

        # gpusPerNode decides the processes per node; on the CPU (0 GPUs) the env may ask for more
        # (tests run 2 gloo processes), otherwise one.
        nproc = gpus_per_node if gpus_per_node > 0 else num("NPROC_PER_NODE", 1)
        return cls(
            nnodes=num("NNODES", 1),
            node_rank=num("NODE_RANK", 0),
            nproc_per_node=max(1, nproc),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=num("MASTER_PORT", 29500),
        )


@dataclass
class ResolvedConfig:
    """Everything the trainer needs, resolved from the spec; see ``from_job``."""

    job_name: str
    namespace: str
    spec: Any  # sft_api.SFTJobSpec
    workdir: Path
    base_dir: Path | None = None  # scheme-less input paths are relative to this
    cuda: bool = False
    topology: Topology = field(default_factory=Topology)
    checkpoints_uri: str | None = None
    output_uri: str | None = None
    max_train_seconds: float | None = None  # wall-clock guard (sftctl run --time-budget)
    job_uid: str | None = None  # metadata.uid (or SFT_JOB_UID); None under sftctl run
    warnings: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_job(
        cls,
        job: Any,
        *,
        workdir: str | os.PathLike[str],
        base_dir: Path | None = None,
        cuda: bool | None = None,
        env: Mapping[str, str] | None = None,
        max_train_seconds: float | None = None,
    ) -> "ResolvedConfig":
        spec = job.spec
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        if max_train_seconds is None:
            raw = (job.metadata.annotations or {}).get(TIME_BUDGET_ANNOTATION)
            if raw is not None:
                try:
                    max_train_seconds = float(raw)
                except ValueError as e:
                    raise ConfigError(f"metadata.annotations[{TIME_BUDGET_ANNOTATION}]: {raw!r} is not a number") from e
        cfg = cls(
            job_name=job.metadata.name,
            namespace=job.metadata.namespace or "local",
            spec=spec,
            workdir=Path(workdir),
            base_dir=base_dir,
            cuda=bool(cuda),
            topology=Topology.from_env(spec.workers.gpus_per_node, env),
            checkpoints_uri=spec.checkpoints.uri,
            output_uri=spec.output.uri if spec.output else None,
            max_train_seconds=max_train_seconds,
            job_uid=getattr(job.metadata, "uid", None) or (getattr(job.metadata, "model_extra", None) or {}).get("uid")
            or (env or {}).get("SFT_JOB_UID") or None,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Errors that no retry can fix, with the field they come from; warnings for what is ignored."""
        t, m = self.spec.training, self.spec.method
        if _val(m.type) == "qlora" and not self.cuda:
            raise ConfigError("spec.method.type: qlora needs a CUDA GPU (bitsandbytes 4-bit); use lora or full on the CPU")
        if _val(t.precision) == "fp16" and not self.cuda:
            raise ConfigError("spec.training.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
        if t.deepspeed is not None and not self.cuda:
            self.warnings.append("spec.training.deepspeed is ignored on the CPU (DeepSpeed needs CUDA)")
        if t.use_liger_kernel and not self.cuda:
            self.warnings.append("spec.training.useLigerKernel is ignored on the CPU (Liger kernels need CUDA)")
        if self.spec.workers.gpus_per_node > 0 and not self.cuda:
            self.warnings.append(
                f"spec.workers.gpusPerNode={self.spec.workers.gpus_per_node} but no CUDA device: running on the CPU")

    # ------------------------------------------------------------------ derived values
    @property
    def loss_on(self) -> str:
        return _val(self.spec.training.loss_on)

    @property
    def method(self) -> str:
        return _val(self.spec.method.type)

    @property
    def precision(self) -> str:
        return _val(self.spec.training.precision)

    @property
    def eval_every_steps(self) -> int:
        ev = self.spec.eval
        return ev.every_steps if ev is not None else DEFAULT_EVAL_EVERY_STEPS

    @property
    def early_stopping_patience(self) -> int | None:
        ev = self.spec.eval
        return ev.early_stopping_patience if ev is not None else None

    @property
    def hf_output_dir(self) -> Path:
        """Local directory where the HF Trainer writes checkpoints before they are committed."""
        return self.workdir / "hf-checkpoints"

    @property
    def use_deepspeed(self) -> bool:
        ds = self.spec.training.deepspeed
        return ds is not None and self.cuda

    @property
    def zero3(self) -> bool:
        """DeepSpeed ZeRO-3: parameters are sharded, so generation and saving are collective."""
        return self.use_deepspeed and self.spec.training.deepspeed.zero_stage == 3

    @property
    def objective(self) -> str:
        return _val(getattr(self.spec.method, "objective", None) or "sft")

    @property
    def nodes(self) -> int:
        return self.spec.workers.nodes

    @property
    def storage(self) -> Any:
        """``spec.storage``: credentials and endpoint for every s3:// URI of the job."""
        return self.spec.storage

    @property
    def data(self) -> Any:
        """What ``data.load_datasets`` reads: ``datasets``, ``split`` and ``storage``."""
        return self.spec

    @property
    def max_seq_length(self) -> int:
        return self.spec.training.max_seq_length

    @property
    def max_bad_row_ratio(self) -> float:
        return self.spec.preflight.max_bad_row_ratio

    @property
    def checkpoints_keep(self) -> int:
        return self.spec.checkpoints.keep

    @property
    def checkpoints_every_steps(self) -> int:
        return self.spec.checkpoints.every_steps

    @property
    def golden_set(self) -> Any:
        """``spec.eval.goldenSet``, or None."""
        return self.spec.eval.golden_set if self.spec.eval is not None else None

    @property
    def min_pass_rate(self) -> float | None:
        return self.golden_set.min_pass_rate if self.golden_set is not None else None

    @property
    def learning_rate(self) -> float:
        return self.spec.training.learning_rate

    @property
    def sanity_check(self) -> Any:
        """``spec.eval.sanityCheck`` with its defaults, or None when the check is off (the default on the
        CPU, ``workers.gpusPerNode: 0``; on for GPU jobs)."""
        from sft_api.models import SanityCheckSpec

        ev = self.spec.eval
        sc = (ev.sanity_check if ev is not None else None) or SanityCheckSpec()
        enabled = sc.enabled if sc.enabled is not None else self.spec.workers.gpus_per_node > 0
        return sc if enabled else None

    @property
    def regression_sets(self) -> list[Any]:
        """``spec.eval.regressionSets``: extra sets gated against the base model."""
        ev = self.spec.eval
        return list(ev.regression_sets) if ev is not None else []

    @property
    def golden_every_checkpoints(self) -> int | None:
        return self.golden_set.every_checkpoints if self.golden_set is not None else None

    @property
    def golden_max_drop(self) -> float | None:
        return self.golden_set.max_drop if self.golden_set is not None else None

    @property
    def golden_on_regression(self) -> str:
        return _val(self.golden_set.on_regression) if self.golden_set is not None else "fail"

    @property
    def golden_max_regression_vs_base(self) -> float | None:
        return self.golden_set.max_regression_vs_base if self.golden_set is not None else None

    @property
    def min_pass_rate_by_task(self) -> dict[str, float]:
        return dict(self.golden_set.min_pass_rate_by_task) if self.golden_set is not None else {}

    @property
    def min_exact_match_by_task(self) -> dict[str, float]:
        ev = self.spec.eval
        return dict(ev.min_exact_match_by_task) if ev is not None else {}

    @property
    def needs_base_scores(self) -> bool:
        """Whether the base model must be scored before training: a gate compares against it."""
        return bool(self.regression_sets) or self.golden_max_regression_vs_base is not None

    @property
    def tracking(self) -> Any:
        """``spec.tracking`` (MLflow, TensorBoard), or None."""
        return getattr(self.spec, "tracking", None)

    @property
    def tracking_params(self) -> dict[str, Any]:
        """The training-relevant spec fields, flat, as an experiment tracker's params."""
        from sft_api.models import LoraSpec

        t, m = self.spec.training, self.spec.method
        params: dict[str, Any] = {
            "method": self.method, "objective": self.objective, "model_uri": self.spec.model.uri,
            "model_revision": self.spec.model.revision, "datasets": [d.uri for d in self.spec.datasets],
            "learning_rate": t.learning_rate, "lr_scheduler": _val(t.lr_scheduler), "warmup_ratio": t.warmup_ratio,
            "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm, "epochs": t.epochs,
            "max_steps": t.max_steps, "per_device_batch_size": t.per_device_batch_size,
            "gradient_accumulation_steps": t.gradient_accumulation_steps, "max_seq_length": t.max_seq_length,
            "packing": t.packing, "loss_on": self.loss_on, "precision": self.precision, "seed": t.seed,
            "gradient_checkpointing": t.gradient_checkpointing, "neftune_noise_alpha": t.neftune_noise_alpha,
            "deepspeed_stage": t.deepspeed.zero_stage if t.deepspeed is not None else None,
            "deepspeed_offload": _val(t.deepspeed.offload) if t.deepspeed is not None else None,
            "nodes": self.nodes, "gpus_per_node": self.spec.workers.gpus_per_node,
            "split_seed": self.spec.split.seed, "split_validation": self.spec.split.validation,
            "split_test": self.spec.split.test,
        }
        if self.method != "full":
            lora = m.lora or LoraSpec()
            params.update(lora_r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules))
        return {k: v for k, v in params.items() if v is not None}

    @property
    def export_checkpoint(self) -> str:
        """``spec.output.checkpoint``: last (the default), bestEvalLoss or bestGoldenPassRate (export_choice.py)."""
        return _val(self.spec.output.checkpoint) if self.spec.output is not None else "last"

    @property
    def merge_adapters(self) -> bool:
        return bool(self.spec.output and self.spec.output.merge_adapters) and self.method != "full"

    # ------------------------------------------------------------------ TRL / PEFT / DeepSpeed
    def deepspeed_config(self) -> dict[str, Any] | None:
        """The DeepSpeed JSON for ``spec.training.deepspeed``, consistent with the HF arguments.

        Batch sizes, accumulation and clipping are written out (not "auto") so that the config is
        self-describing; HF checks that they match its own arguments.
        """
        ds = self.spec.training.deepspeed
        if ds is None:
            return None
        t = self.spec.training
        stage, offload = int(ds.zero_stage), _val(ds.offload)
        if offload == "all" and stage != 3:
            raise ConfigError("spec.training.deepspeed.offload: 'all' (parameters too) needs zeroStage 3")
        if offload == "optimizer" and stage == 0:
            raise ConfigError("spec.training.deepspeed.offload: 'optimizer' needs zeroStage >= 1")
        world = self.topology.expected_world_size
        zero: dict[str, Any] = {"stage": stage}
        if stage >= 1:
            zero.update({"overlap_comm": True, "contiguous_gradients": True,
                         "reduce_bucket_size": "auto"})
        if stage == 2:
            zero.update({"allgather_partitions": True, "reduce_scatter": True})
        if stage == 3:
            zero.update({
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                # a consolidated 16-bit state dict on save, so exports and merges need no zero_to_fp32
                "stage3_gather_16bit_weights_on_model_save": True,
            })
        if offload in ("optimizer", "all"):
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if offload == "all":
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        cfg: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": t.per_device_batch_size,
            "gradient_accumulation_steps": t.gradient_accumulation_steps,
            "train_batch_size": t.per_device_batch_size * t.gradient_accumulation_steps * world,
            "gradient_clipping": t.max_grad_norm,
            "bf16": {"enabled": self.precision == "bf16"},
            "fp16": {"enabled": self.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                     "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
            "zero_optimization": zero,
            "steps_per_print": 10**9,  # the trainer logs; keep DeepSpeed quiet
            "wall_clock_breakdown": False,
        }
        if offload in ("optimizer", "all"):
            # ZeRO-Offload needs DeepSpeed's CPU Adam; HF fills the hyper-parameters in from its args
            cfg["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                            "weight_decay": "auto"}}
        return cfg

    def lora_config(self):
        """PEFT ``LoraConfig`` for lora/qlora, None for full fine-tuning."""
        if self.method == "full":
            return None
        from peft import LoraConfig

        from sft_api.models import LoraSpec

        lora = self.spec.method.lora or LoraSpec()
        targets: Any = list(lora.target_modules)
        if targets == ["all-linear"]:
            targets = "all-linear"
        return LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=targets, task_type="CAUSAL_LM", bias="none",
        )

    def quantization_config(self):
        """bitsandbytes 4-bit NF4 for qlora (GPU only), else None."""
        if self.method != "qlora":
            return None
        import torch
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if self.precision == "bf16" else torch.float16
        if self.precision == "fp32":
            compute = torch.float32
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )

    def sft_config_kwargs(self, *, has_eval: bool = True) -> dict[str, Any]:
        """Keyword arguments of TRL's ``SFTConfig`` (a plain dict, so tests can inspect it)."""
        t = self.spec.training
        ckpt = self.spec.checkpoints
        kw: dict[str, Any] = dict(
            output_dir=str(self.hf_output_dir),
            learning_rate=t.learning_rate,
            lr_scheduler_type=_val(t.lr_scheduler),
            warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of the total steps
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            per_device_train_batch_size=t.per_device_batch_size,
            per_device_eval_batch_size=t.per_device_batch_size,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            max_length=t.max_seq_length,
            packing=t.packing,
            # BFD packing never cuts an example and turns padding-free (position_ids) on
            packing_strategy="bfd",
            # the rows arrive tokenized with our masks (masking.py): TRL's assistant_only_loss would
            # re-render them and needs {% generation %} markers that most real templates lack
            assistant_only_loss=False,
            completion_only_loss=self.loss_on == "completion",
            # TRL turns activation checkpointing on by default; follow the spec instead
            activation_checkpointing=t.gradient_checkpointing,
            # TRL defaults bf16 on; set both explicitly from the spec
            bf16=self.precision == "bf16",
            fp16=self.precision == "fp16",
            seed=t.seed,
            data_seed=t.seed,
            logging_steps=t.logging_steps,
            logging_first_step=True,
            save_strategy="steps",
            save_steps=ckpt.every_steps,
            save_total_limit=LOCAL_CHECKPOINTS_KEPT,
            eval_strategy="steps" if has_eval else "no",
            eval_steps=self.eval_every_steps if has_eval else None,
            metric_for_best_model="eval_loss" if has_eval else None,
            greater_is_better=False if has_eval else None,
            report_to=[],
            disable_tqdm=True,  # the console shows a rich progress bar instead
            dataloader_num_workers=0,
            ddp_find_unused_parameters=False,
            use_cpu=not self.cuda,
        )
        if t.max_steps is not None:
            kw["max_steps"] = t.max_steps
        else:
            kw["num_train_epochs"] = t.epochs
        if t.neftune_noise_alpha is not None:
            kw["neftune_noise_alpha"] = t.neftune_noise_alpha
        if t.use_liger_kernel and self.cuda:
            kw["use_liger_kernel"] = True
        if not self.cuda and self.topology.expected_world_size > 1:
            kw["ddp_backend"] = "gloo"
        if self.use_deepspeed:
            kw["deepspeed"] = self.deepspeed_config()
        if t.gradient_checkpointing:
            kw["activation_checkpointing_kwargs"] = {"use_reentrant": False}
        return kw

    def sft_config(self, *, has_eval: bool = True):
        from trl import SFTConfig

        return SFTConfig(**self.sft_config_kwargs(has_eval=has_eval))
