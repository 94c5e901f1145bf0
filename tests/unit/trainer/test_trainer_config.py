"""Spec → SFTConfig / LoraConfig / DeepSpeed JSON mapping, topology from the rendezvous env."""

from __future__ import annotations

import pytest
from trainer_test_helpers import make_job

from sft_trainer.config import ResolvedConfig, Topology
from sft_trainer.exit_codes import ConfigError


def cfg_for(tmp_path, cuda=False, env=None, **spec):
    return ResolvedConfig.from_job(make_job(**spec), workdir=tmp_path, cuda=cuda, env=env or {})


def test_sft_config_follows_the_spec(tmp_path):
    c = cfg_for(tmp_path, training={"maxSteps": 30, "learningRate": 2e-3, "lrScheduler": "cosine",
                                    "warmupRatio": 0.1, "weightDecay": 0.01, "perDeviceBatchSize": 3,
                                    "gradientAccumulationSteps": 4, "maxSeqLength": 256, "packing": True,
                                    "lossOn": "assistant", "gradientCheckpointing": True, "precision": "bf16",
                                    "seed": 7, "loggingSteps": 5, "neftuneNoiseAlpha": 5.0},
                eval={"everySteps": 10, "earlyStoppingPatience": 2}, checkpoints={"everySteps": 15, "keep": 2})
    kw = c.sft_config_kwargs()
    expect = dict(max_steps=30, learning_rate=2e-3, lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.01,
                  per_device_train_batch_size=3, gradient_accumulation_steps=4, max_length=256, packing=True,
                  packing_strategy="bfd", assistant_only_loss=False, completion_only_loss=False,
                  activation_checkpointing=True, bf16=True, fp16=False, seed=7, data_seed=7, logging_steps=5,
                  neftune_noise_alpha=5.0, eval_strategy="steps", eval_steps=10, save_strategy="steps", save_steps=15,
                  metric_for_best_model="eval_loss", use_cpu=True, report_to=[])
    assert {k: kw[k] for k in expect} == expect
    assert "deepspeed" not in kw and "ddp_backend" not in kw and "num_train_epochs" not in kw
    assert c.early_stopping_patience == 2
    args = c.sft_config()  # TRL accepts it
    assert args.max_length == 256 and not args.assistant_only_loss and args.packing


@pytest.mark.parametrize("loss_on,assistant,completion", [
    # assistant masks arrive precomputed in the rows (masking.py), so TRL's own flag stays off
    ("assistant", False, False), ("completion", False, True), ("all", False, False)])
def test_loss_on_maps_to_trl_flags(tmp_path, loss_on, assistant, completion):
    kw = cfg_for(tmp_path, training={"lossOn": loss_on}).sft_config_kwargs()
    assert (kw["assistant_only_loss"], kw["completion_only_loss"]) == (assistant, completion)


def test_epochs_instead_of_steps_and_no_eval_split(tmp_path):
    kw = cfg_for(tmp_path, training={"maxSteps": None, "epochs": 2.5}).sft_config_kwargs(has_eval=False)
    assert kw["num_train_epochs"] == 2.5 and "max_steps" not in kw
    assert kw["eval_strategy"] == "no" and kw["metric_for_best_model"] is None


def test_cpu_only_methods_and_precisions_fail_with_the_field(tmp_path):
    # the spec asks for GPUs but the machine has none (sftctl run of a cluster spec)
    with pytest.raises(ConfigError, match="spec.method.type: qlora needs a CUDA GPU"):
        cfg_for(tmp_path, method={"type": "qlora"}, workers={"gpusPerNode": 1})
    with pytest.raises(ConfigError, match="spec.training.precision: fp16 needs a CUDA GPU"):
        cfg_for(tmp_path, training={"precision": "fp16"}, workers={"gpusPerNode": 1})
    c = cfg_for(tmp_path, training={"deepspeed": {"zeroStage": 2}, "useLigerKernel": True},
                workers={"gpusPerNode": 1})
    assert any("deepspeed is ignored on the CPU" in w for w in c.warnings)
    assert any("useLigerKernel is ignored" in w for w in c.warnings)
    assert "deepspeed" not in c.sft_config_kwargs()


def test_qlora_config_validates_on_cpu(tmp_path):
    # the GPU run itself is tests/gpu; here: the 4-bit and adapter configs it would use
    import torch

    c = cfg_for(tmp_path, cuda=True, workers={"gpusPerNode": 1}, training={"precision": "bf16"},
                method={"type": "qlora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                                                                        "targetModules": ["all-linear"]}})
    q = c.quantization_config()
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_compute_dtype == torch.bfloat16
    lora = c.lora_config()
    assert (lora.r, lora.lora_alpha, lora.target_modules) == (8, 16, "all-linear")


def test_lora_defaults_and_full(tmp_path):
    lora = cfg_for(tmp_path, method={"type": "lora"}).lora_config()
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (16, 32, 0.05)
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert cfg_for(tmp_path).lora_config() is None
    assert cfg_for(tmp_path).quantization_config() is None


def ds(tmp_path, stage, offload="none", precision="bf16", env=None, **training):
    c = cfg_for(tmp_path, cuda=True, env=env,
                training={"precision": precision, "perDeviceBatchSize": 2, "gradientAccumulationSteps": 8,
                          "maxGradNorm": 0.5, "deepspeed": {"zeroStage": stage, "offload": offload}, **training},
                workers={"nodes": 2, "gpusPerNode": 4})
    return c, c.deepspeed_config()


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config_is_consistent_with_the_spec(tmp_path, stage):
    c, cfg = ds(tmp_path, stage, env={"NNODES": "2"})
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["train_micro_batch_size_per_gpu"] == 2
    assert cfg["gradient_accumulation_steps"] == 8
    assert cfg["train_batch_size"] == 2 * 8 * 2 * 4  # micro batch x accumulation x world size
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"]["enabled"] is False
    assert "offload_optimizer" not in cfg["zero_optimization"] and "optimizer" not in cfg
    assert cfg["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save", False) is (stage == 3)
    kw = c.sft_config_kwargs()
    assert kw["deepspeed"] == cfg and "ddp_backend" not in kw and kw["use_cpu"] is False
    assert (kw["per_device_train_batch_size"], kw["gradient_accumulation_steps"], kw["max_grad_norm"]) == (2, 8, 0.5)


def test_deepspeed_offload_and_fp16(tmp_path):
    _, cfg = ds(tmp_path, 2, offload="optimizer", precision="fp16")
    assert cfg["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert "offload_param" not in cfg["zero_optimization"]
    assert cfg["optimizer"]["type"] == "AdamW" and cfg["optimizer"]["params"]["lr"] == "auto"
    assert cfg["fp16"]["enabled"] is True and cfg["bf16"] == {"enabled": False}
    _, cfg = ds(tmp_path, 3, offload="all")
    assert cfg["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}


def test_deepspeed_offload_needs_the_right_stage(tmp_path):
    from pydantic import ValidationError

    # the API rejects these before the trainer sees them; the trainer re-checks for specs built in code
    with pytest.raises(ValidationError, match="offload: 'all' .* needs zeroStage 3"):
        ds(tmp_path, 2, offload="all")
    c, _ = ds(tmp_path, 3, offload="all")
    c.spec.training.deepspeed.zero_stage = 2
    with pytest.raises(ConfigError, match="offload: 'all' .* needs zeroStage 3"):
        c.deepspeed_config()


def test_topology_from_env():
    t = Topology.from_env(8, {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "job-0.svc", "MASTER_PORT": "29400"})
    assert (t.nnodes, t.node_rank, t.nproc_per_node, t.master_addr, t.master_port) == (2, 1, 8, "job-0.svc", 29400)
    assert t.expected_world_size == 16
    # on the CPU the env decides the process count (tests run two gloo processes)
    assert Topology.from_env(0, {"NPROC_PER_NODE": "2"}).nproc_per_node == 2
    assert Topology.from_env(0, {}).nproc_per_node == 1
    assert Topology.from_env(0, {"PET_NNODES": "3"}).nnodes == 3
    with pytest.raises(ConfigError, match="NNODES='x' is not an integer"):
        Topology.from_env(1, {"NNODES": "x"})


def test_cpu_gang_uses_gloo(tmp_path):
    kw = cfg_for(tmp_path, env={"NPROC_PER_NODE": "2"}).sft_config_kwargs()
    assert kw["ddp_backend"] == "gloo"


def test_time_budget_annotation(tmp_path):
    from sft_trainer.config import TIME_BUDGET_ANNOTATION

    job = make_job()
    job.metadata.annotations[TIME_BUDGET_ANNOTATION] = "240"
    assert ResolvedConfig.from_job(job, workdir=tmp_path, cuda=False, env={}).max_train_seconds == 240.0
    assert ResolvedConfig.from_job(job, workdir=tmp_path, cuda=False, env={},
                                   max_train_seconds=10).max_train_seconds == 10  # the CLI flag wins
    job.metadata.annotations[TIME_BUDGET_ANNOTATION] = "soon"
    with pytest.raises(ConfigError, match="max-train-seconds.*'soon' is not a number"):
        ResolvedConfig.from_job(job, workdir=tmp_path, cuda=False, env={})
