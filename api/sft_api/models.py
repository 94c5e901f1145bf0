"""The SFTJob API (sft.dev/v1alpha1) as pydantic models: the single source of truth.

The CRD (``crds/sftjob.yaml`` and the Helm chart's copy), ``docs/api.md`` and client-side validation
are all generated from these classes. Python attributes are snake_case; the wire names are the
camelCase aliases documented in docs/api.md.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, ClassVar, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from . import rules as _rules
from .contract import API_VERSION, CATEGORIES, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION, Phase

__all__ = ["API_VERSION", "CATEGORIES", "GROUP", "KIND", "PLURAL", "SHORT_NAMES", "SINGULAR", "VERSION", "Phase"]

# Model, dataset and artifact locations. A scheme-less path is resolved relative to the SFTJob
# file by `sftctl run` and to the working directory inside the trainer image.
URI_PATTERN = r"^((hf|s3|file|builtin)://[^\s]+|[^:\s]+)$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
RESUME_FROM_PATTERN = r"^(latest|(s3|file)://[^\s]+|[^:\s]+)$"

Uri = Annotated[str, Field(pattern=URI_PATTERN, min_length=1, max_length=2048)]
ShortStr = Annotated[str, Field(min_length=1, max_length=253)]
Quantity = Annotated[Union[int, Annotated[str, Field(pattern=QUANTITY, max_length=64)]], Field()]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        use_enum_values=True,
        validate_default=True,
    )
    # Dotted schema path of this model in an SFTJob, for attaching the rules of rules.py.
    schema_path: ClassVar[str | None] = None


# ---------------------------------------------------------------------------------------------- enums


class DatasetFormat(str, Enum):
    messages = "messages"
    prompt_completion = "prompt-completion"
    alpaca = "alpaca"


class MethodType(str, Enum):
    full = "full"
    lora = "lora"
    qlora = "qlora"


class Objective(str, Enum):
    sft = "sft"


class LrScheduler(str, Enum):
    linear = "linear"
    cosine = "cosine"
    cosine_with_restarts = "cosine_with_restarts"
    polynomial = "polynomial"
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"
    inverse_sqrt = "inverse_sqrt"


class LossOn(str, Enum):
    assistant = "assistant"
    completion = "completion"
    all = "all"


class Precision(str, Enum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class Offload(str, Enum):
    none = "none"
    optimizer = "optimizer"
    all = "all"


class ConditionStatus(str, Enum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class TolerationOperator(str, Enum):
    Exists = "Exists"
    Equal = "Equal"


class TaintEffect(str, Enum):
    NoSchedule = "NoSchedule"
    PreferNoSchedule = "PreferNoSchedule"
    NoExecute = "NoExecute"


# ----------------------------------------------------------------------------------------------- spec


class ModelSpec(_Model):
    """The base model to fine-tune."""

    uri: Uri = Field(
        description="Where the base model lives: hf://<repo>, s3://<bucket>/<path>, file://<path> (also a mounted "
        "PVC), or builtin://tiny-llama (a tiny Llama built from a config, for CPU smoke runs)."
    )
    revision: Optional[ShortStr] = Field(None, description="Hub revision (branch, tag or commit) for hf:// models.")
    chat_template: Optional[Annotated[str, Field(max_length=65536)]] = Field(
        None,
        description="Jinja chat template that overrides the tokenizer's. It must mark assistant tokens with "
        "{% generation %} for lossOn: assistant.",
    )


class DatasetSource(_Model):
    """One training data source; sources are mixed by weight."""

    uri: Uri = Field(description="A .jsonl or .parquet file (or hf:// dataset) with one record per row.")
    format: DatasetFormat = Field(
        DatasetFormat.messages,
        description="Record layout: messages ({messages: [{role, content}]}), prompt-completion "
        "({prompt, completion}) or alpaca ({instruction, input, output}).",
    )
    weight: float = Field(1.0, gt=0, le=1000, description="Relative sampling weight of this source in the mix.")
    task_type: Optional[Annotated[str, Field(max_length=63, pattern=r"^[A-Za-z0-9_.-]+$")]] = Field(
        None,
        description="Default task_type label for the records of this source (per-task eval loss). A record's own "
        "task_type field wins.",
    )


class SplitSpec(_Model):
    """Deterministic train/validation/test split of the mixed data."""

    schema_path: ClassVar[str] = "spec.split"
    validation: float = Field(0.1, ge=0, lt=0.5, description="Share of records held out for validation loss.")
    test: float = Field(0.05, ge=0, lt=0.5, description="Share of records held out for the final test evaluation.")
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Seed of the split and of the source mixing.")


class LoraSpec(_Model):
    """LoRA adapter settings (PEFT)."""

    r: int = Field(16, ge=1, le=1024, description="Adapter rank.")
    alpha: int = Field(32, ge=1, le=4096, description="LoRA scaling numerator (lora_alpha).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        max_length=64,
        description='Module names that get adapters, or ["all-linear"].',
    )


class MethodSpec(_Model):
    """How the weights are trained."""

    schema_path: ClassVar[str] = "spec.method"
    objective: Objective = Field(
        Objective.sft,
        description="What the weights learn from: sft (supervised fine-tuning on responses). Kept apart from "
        "type, which says which weights train.",
    )
    type: MethodType = Field(
        MethodType.lora,
        description="full (all weights), lora (PEFT adapters) or qlora (adapters on a 4-bit base; needs a GPU).",
    )
    lora: Optional[LoraSpec] = Field(None, description="Adapter settings; only for lora and qlora (defaults apply).")


class DeepSpeedSpec(_Model):
    """DeepSpeed ZeRO settings; the trainer generates the DeepSpeed JSON from them."""

    schema_path: ClassVar[str] = "spec.training.deepspeed"
    zero_stage: int = Field(2, ge=0, le=3, description="ZeRO stage 0-3 (0 disables sharding).")
    offload: Offload = Field(
        Offload.none, description="Offload to CPU memory: none, optimizer (stage >= 1) or all (stage 3)."
    )


class TrainingSpec(_Model):
    """Optimisation settings, mapped onto TRL's SFTConfig."""

    schema_path: ClassVar[str] = "spec.training"
    epochs: Optional[float] = Field(None, gt=0, le=1000, description="Passes over the training split (or maxSteps).")
    max_steps: Optional[int] = Field(None, ge=1, le=10_000_000, description="Optimizer steps to run (or epochs).")
    learning_rate: float = Field(2e-5, gt=0, le=1, description="Peak learning rate.")
    lr_scheduler: LrScheduler = Field(LrScheduler.cosine, description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of the steps spent in linear warmup.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, le=1000, description="Gradient clipping norm (0 disables clipping).")
    per_device_batch_size: int = Field(4, ge=1, le=4096, description="Sequences (packed rows) per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096, description="Micro-batches per optimizer step.")
    max_seq_length: int = Field(2048, ge=16, le=1_048_576, description="Tokens per sequence or packed row.")
    packing: bool = Field(True, description="Pack several examples per row (padding-free where supported).")
    loss_on: LossOn = Field(
        LossOn.assistant,
        description="Which tokens carry loss: assistant (every assistant turn and its end-of-turn token), "
        "completion (the completion of prompt-completion data) or all.",
    )
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward to save memory.")
    precision: Precision = Field(Precision.bf16, description="bf16, fp16 (GPU only) or fp32.")
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Training seed (initialisation, dropout, data order).")
    logging_steps: int = Field(10, ge=1, le=100_000, description="Steps between log lines and metric updates.")
    neftune_noise_alpha: Optional[float] = Field(None, gt=0, le=100, description="NEFTune embedding noise; off when unset.")
    use_liger_kernel: bool = Field(False, description="Use Liger fused kernels (GPU only; ignored on the CPU).")
    deepspeed: Optional[DeepSpeedSpec] = Field(None, description="DeepSpeed ZeRO sharding; off when unset.")


class GoldenOnRegression(str, Enum):
    fail = "fail"
    export_best = "exportBest"


class GoldenSetSpec(_Model):
    """Prompts with expected checks, generated and scored on the base model, at checkpoints and at the end."""

    uri: Uri = Field(description="A .jsonl file of {prompt or messages, checks: [{type, value}]} records.")
    min_pass_rate: float = Field(
        0.0, ge=0, le=1, description="The job fails with GoldenSetRegression below this pass rate."
    )
    max_new_tokens: int = Field(128, ge=1, le=32768, description="Generation length limit per golden prompt.")
    max_regression_vs_base: Optional[float] = Field(
        None, ge=0, le=1, description="The job fails with GoldenSetRegression when the final pass rate is lower than "
        "the base model's (scored before training) by more than this; unset: no base-model gate for the golden set."
    )
    every_checkpoints: Optional[int] = Field(
        None, ge=1, le=100_000, description="Score the golden set at every Nth checkpoint (1: each one); unset: "
        "only at the end of training."
    )
    max_drop: Optional[float] = Field(
        None, ge=0, le=1, description="With everyCheckpoints: stop training when a checkpoint's pass rate is lower "
        "than the best checkpoint's so far by more than this; then onRegression decides how the job ends."
    )
    on_regression: GoldenOnRegression = Field(
        GoldenOnRegression.fail, description="After a maxDrop stop: fail (Failed/GoldenSetRegression, exit 65) or "
        "exportBest (Succeeded, with the best checkpoint by golden pass rate exported to output.uri)."
    )
    min_pass_rate_by_task: dict[Annotated[str, Field(min_length=1, max_length=63)], Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, description="Final pass-rate floor per task_type of the golden set; below one the job "
        "fails with GoldenSetRegression."
    )


class RegressionSetSpec(_Model):
    """An extra scored set (safety, refusal, ...) that the fine-tuned model may not do worse on than the base model."""

    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)] = Field(description="Name in status and the report.")
    uri: Uri = Field(description="A .jsonl file of {prompt or messages, checks: [{type, value}]} records, as the golden set.")
    max_new_tokens: int = Field(128, ge=1, le=32768, description="Generation length limit per prompt.")
    max_regression_vs_base: float = Field(
        0.0, ge=0, le=1, description="The job fails with GoldenSetRegression when the final pass rate is lower than "
        "the base model's by more than this."
    )


class SanityCheckSpec(_Model):
    """A short overfit run before training: K examples for N steps from the base weights, then the base weights
    are restored and the full run starts as if it had not happened."""

    enabled: Optional[bool] = Field(
        None, description="Run the sanity check; unset: on when workers.gpusPerNode > 0, off on the CPU."
    )
    examples: int = Field(20, ge=1, le=10_000, description="Training examples it overfits (the first of the train split).")
    steps: int = Field(50, ge=2, le=10_000, description="Optimizer steps it trains.")
    min_loss_drop: float = Field(
        0.7, gt=0, le=1, description="Pass when the mean loss of the last steps is at most this factor times the loss "
        "of the first step (0.7: a 30% drop); a NaN or infinite loss, or no trained token, always fails "
        "(SanityCheckFailed, exit 67)."
    )


class EvalSpec(_Model):
    """Evaluation during and after training."""

    every_steps: int = Field(200, ge=1, le=10_000_000, description="Steps between validation-loss evaluations.")
    early_stopping_patience: Optional[int] = Field(
        None, ge=1, le=1000, description="Stop after this many evaluations without improvement; off when unset."
    )
    golden_set: Optional[GoldenSetSpec] = Field(None, description="Golden set scored on the base model, at checkpoints "
                                                "(everyCheckpoints) and at the end of training.")
    regression_sets: list[RegressionSetSpec] = Field(
        default_factory=list, max_length=16, description="Extra sets scored on the base model and at the end; each "
        "gates on its maxRegressionVsBase."
    )
    sanity_check: Optional[SanityCheckSpec] = Field(
        None, description="The overfit pre-run; unset: the defaults (on for GPU jobs)."
    )
    min_exact_match_by_task: dict[Annotated[str, Field(min_length=1, max_length=63)], Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, description="Held-out exact-match floor per task_type, measured at the end on the test "
        "split (up to 50 examples per task; the answer must match and end with end-of-turn); below one the job "
        "fails with GoldenSetRegression. Needs split.test > 0."
    )


class CheckpointSpec(_Model):
    """Checkpoints, committed atomically with a manifest; training resumes from the latest committed one."""

    uri: Optional[Uri] = Field(
        None,
        description="Checkpoint prefix (s3:// or file://). Unset: ./runs/<name>/checkpoints for sftctl run; "
        "in a cluster, no resume across restarts.",
    )
    every_steps: int = Field(500, ge=1, le=10_000_000, description="Steps between checkpoints (and one at the end).")
    keep: int = Field(3, ge=1, le=1000, description="Committed checkpoints kept, plus the best by eval loss.")
    resume_from: Optional[Annotated[str, Field(pattern=RESUME_FROM_PATTERN, min_length=1, max_length=2048)]] = Field(
        None,
        description="Continue from another run's committed checkpoint: latest (the newest committed checkpoint under "
        "uri, whoever wrote it) or the URI of a checkpoint-<step>/ directory or of a checkpoint prefix (its newest "
        "committed one). Unset: resume only this job's own checkpoints (same job UID and training spec hash); a "
        "foreign committed checkpoint under uri then fails the job before training (exit 64). The job's own "
        "checkpoints, once it has written one, always win over resumeFrom.",
    )


class ExportCheckpoint(str, Enum):
    last = "last"
    best_eval_loss = "bestEvalLoss"
    best_golden_pass_rate = "bestGoldenPassRate"


class OutputSpec(_Model):
    """Where the final model goes, and which checkpoint it is."""

    uri: Optional[Uri] = Field(None, description="Final model (or adapter) location; unset keeps only checkpoints.")
    merge_adapters: bool = Field(False, description="Merge LoRA adapters into the base weights before export.")
    checkpoint: ExportCheckpoint = Field(
        ExportCheckpoint.last, description="Which checkpoint is exported, evaluated at the end and gated: last (the "
        "weights at the end of training), bestEvalLoss (the committed checkpoint with the lowest validation loss; "
        "needs split.validation > 0) or bestGoldenPassRate (the scored checkpoint with the highest golden pass "
        "rate; needs eval.goldenSet.everyCheckpoints). A maxDrop stop with onRegression: exportBest exports the "
        "best by golden pass rate whatever this says. status.evaluation.exportedCheckpoint says which step and why."
    )


class StorageSpec(_Model):
    """Credentials and endpoint for every s3:// URI of the job."""

    secret_ref: Optional[Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]] = Field(
        None, description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, injected into the trainer pods."
    )
    endpoint: Optional[Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)]] = Field(
        None, description="S3-compatible endpoint URL (MinIO, SeaweedFS, Ceph); unset means AWS."
    )
    region: Optional[Annotated[str, Field(max_length=64)]] = Field(None, description="S3 region.")
    anonymous: bool = Field(False, description="Allow s3:// access without credentials (public or test buckets).")


class MlflowSpec(_Model):
    """An MLflow tracking server: rank 0 logs the run's params, step metrics and evaluation to it."""

    schema_path: ClassVar[str] = "spec.tracking.mlflow"
    tracking_uri: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)] = Field(
        description="The tracking server, e.g. http://mlflow.mlops:5000."
    )
    experiment_name: Optional[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        None, description="Experiment the run is logged under (created when missing); unset: the job's name."
    )
    secret_ref: Optional[Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]] = Field(
        None, description="Secret injected into the trainer pods' environment (envFrom): MLFLOW_TRACKING_USERNAME "
        "and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN."
    )


class TensorBoardSpec(_Model):
    """TensorBoard event files, written by rank 0."""

    enabled: bool = Field(True, description="Write event files under <checkpoints.uri>/tensorboard/.")


class TrackingSpec(_Model):
    """Experiment tracking. A tracker that is down never fails training: it is retried and reported in
    status.tracking."""

    mlflow: Optional[MlflowSpec] = Field(None, description="Log to an MLflow tracking server.")
    tensorboard: Optional[TensorBoardSpec] = Field(None, description="Write TensorBoard event files.")


class ResourceRequirements(_Model):
    """Container resources of each node pod, besides the GPUs."""

    requests: dict[str, Quantity] = Field(default_factory=dict, description="Resource requests, e.g. cpu, memory.")
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Resource limits.")


class Toleration(_Model):
    """A Kubernetes toleration."""

    key: Optional[Annotated[str, Field(max_length=317)]] = None
    operator: TolerationOperator = TolerationOperator.Equal
    value: Optional[Annotated[str, Field(max_length=63)]] = None
    effect: Optional[TaintEffect] = None
    toleration_seconds: Optional[int] = Field(None, ge=0)


class EnvVar(_Model):
    """An extra environment variable for the trainer container."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256)]
    value: Optional[Annotated[str, Field(max_length=4096)]] = None


class LocalObjectReference(_Model):
    """A Secret in the SFTJob's namespace, by name."""

    name: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)] = Field(description="Name of the Secret.")


class WorkersSpec(_Model):
    """The gang of node pods: one pod per node, gpusPerNode processes per pod."""

    nodes: int = Field(1, ge=1, le=1024, description="Number of nodes (pods) in the gang.")
    gpus_per_node: int = Field(1, ge=0, le=16, description="GPUs (and trainer processes) per node; 0 runs on the CPU.")
    image: Optional[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        None, description="Trainer image; unset uses the operator's default."
    )
    resources: Optional[ResourceRequirements] = Field(None, description="CPU and memory; unset uses the operator's default.")
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, description="Node labels the pods must match."
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64, description="Pod tolerations.")
    affinity: Optional[dict[str, Any]] = Field(None, description="Pod affinity (core/v1 Affinity), passed through.")
    priority_class_name: Optional[Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]] = Field(
        None, description="PriorityClass of the pods."
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=64, description="Extra trainer environment variables.")
    image_pull_secrets: Optional[list[LocalObjectReference]] = Field(
        None, max_length=16, description="Secrets (kubernetes.io/dockerconfigjson) for pulling the trainer image from a "
        "private registry; unset uses the operator's default (the chart's trainer.imagePullSecrets), [] uses none."
    )


class FailurePolicy(_Model):
    """Whole-gang restarts from the latest committed checkpoint."""

    max_restarts: int = Field(3, ge=0, le=1000, description="Restarts after pod failures before the job fails.")
    max_preemptions: int = Field(
        20, ge=0, le=10000, description="Restarts after preemption, eviction or node loss (counted apart)."
    )
    stall_timeout_seconds: int = Field(
        1800, ge=1, le=604800, description="Restart when no training progress is reported for this long."
    )


class PreflightSpec(_Model):
    """Data checks that run before training."""

    enabled: bool = Field(
        True,
        description="Run the data and chat-template checks in one CPU-only pod before any GPU pod of the job is "
        "created; a data error then fails the job (DataError) without holding a GPU. It runs once per spec, not "
        "per restart. false skips it, e.g. when the data is readable only from the GPU nodes; the trainer still "
        "runs the same checks itself.",
    )
    max_bad_row_ratio: float = Field(
        0.01, ge=0, le=1, description="Fail (exit code 64, DataError) when more than this share of rows is malformed."
    )


class SFTJobSpec(_Model):
    """Desired state of an SFT run."""

    schema_path: ClassVar[str] = "spec"
    model: ModelSpec = Field(description="The base model.")
    datasets: list[DatasetSource] = Field(min_length=1, max_length=64, description="Training data, mixed by weight.")
    split: SplitSpec = Field(default_factory=SplitSpec, description="Train/validation/test split.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="full, lora or qlora.")
    training: TrainingSpec = Field(description="Optimisation settings (epochs or maxSteps is required).")
    eval: Optional[EvalSpec] = Field(None, description="Evaluation; unset evaluates every 200 steps.")
    preflight: PreflightSpec = Field(default_factory=PreflightSpec, description="Data checks before training.")
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoint location and cadence.")
    output: Optional[OutputSpec] = Field(None, description="Final model export.")
    storage: Optional[StorageSpec] = Field(None, description="Credentials and endpoint for s3:// URIs.")
    tracking: Optional[TrackingSpec] = Field(None, description="Experiment tracking (MLflow, TensorBoard).")
    workers: WorkersSpec = Field(default_factory=WorkersSpec, description="Nodes, GPUs and pod settings.")
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy, description="Restart limits and stall detection.")
    suspend: bool = Field(False, description="Stop the pods, keep status and checkpoints; unsuspend resumes.")
    active_deadline_seconds: Optional[int] = Field(
        None, ge=1, le=31_536_000, description="Fail with DeadlineExceeded after this long since start."
    )
    ttl_seconds_after_finished: Optional[int] = Field(
        86400, ge=0, le=31_536_000, description="Delete the child objects this long after the job finishes."
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> "SFTJobSpec":
        failures = _rules.evaluate({"spec": self.model_dump(by_alias=True, exclude_none=True)})
        if failures:
            raise ValueError("; ".join(message for _, message in failures))
        return self


# --------------------------------------------------------------------------------------------- status


class Condition(_Model):
    """A typed condition; reasons are listed in sft_operator.conditions."""

    type: Annotated[str, Field(max_length=64)]
    status: ConditionStatus
    reason: Annotated[str, Field(max_length=128)] = ""
    message: Annotated[str, Field(max_length=32768)] = ""
    last_transition_time: Optional[str] = None
    observed_generation: Optional[int] = None


class TrainerPhase(str, Enum):
    """What the trainer is doing: status.progress.phase."""

    downloading = "downloading"
    preflight = "preflight"
    training = "training"
    evaluating = "evaluating"
    checkpointing = "checkpointing"
    exporting = "exporting"


class Progress(_Model):
    step: int = Field(0, ge=0)
    total_steps: Optional[int] = Field(None, ge=0)
    epoch: Optional[float] = None
    percent: Optional[float] = Field(None, ge=0, le=100)
    eta_seconds: Optional[float] = Field(None, ge=0)
    updated_at: Optional[str] = Field(None, description="When the trainer last reported progress.")
    phase: Optional[TrainerPhase] = Field(
        None,
        description="The trainer's phase: downloading, preflight, training, evaluating, checkpointing or exporting.",
    )
    phase_started_at: Optional[str] = Field(None, description="When the trainer entered the current phase.")
    heartbeat_time: Optional[str] = Field(
        None,
        description="Written every heartbeat interval while the trainer process is alive, in every phase: a live "
        "but slow phase keeps it fresh, a hung or dead process lets it age.",
    )


class TrainMetrics(_Model):
    train_loss: Optional[float] = None
    eval_loss: Optional[float] = None
    learning_rate: Optional[float] = None
    grad_norm: Optional[float] = None
    tokens_per_second: Optional[float] = None
    mfu: Optional[float] = None


class CheckpointStatus(_Model):
    step: int = Field(ge=0)
    uri: str
    saved_at: Optional[str] = None


class SanityCheckStatus(_Model):
    passed: bool
    first_loss: Optional[float] = None
    final_loss: Optional[float] = None
    min_loss_drop: Optional[float] = None
    steps: Optional[int] = None
    seconds: Optional[float] = None
    losses: list[Optional[float]] = Field(default_factory=list, description="The loss of each step.")
    message: Optional[str] = None


class ScoredSetStatus(_Model):
    """One scored set (golden or regression) on the base model and on the final model."""

    base: Optional[float] = Field(None, ge=0, le=1)
    final: Optional[float] = Field(None, ge=0, le=1)
    delta: Optional[float] = None
    base_by_task: dict[str, float] = Field(default_factory=dict)
    final_by_task: dict[str, float] = Field(default_factory=dict)


class GoldenCheckpointStatus(_Model):
    step: int = Field(ge=0)
    pass_rate: float = Field(ge=0, le=1)
    by_task: dict[str, float] = Field(default_factory=dict)


class ExportedCheckpointStatus(_Model):
    """The checkpoint whose weights went to output.uri (and that the final evaluation scored)."""

    step: int = Field(ge=0)
    criterion: str = Field(description="The rule that chose it: last, bestEvalLoss or bestGoldenPassRate.")
    reason: str = Field(description="Why this step: the criterion's figure, or why it fell back to the last one.")
    checkpoint_uri: Optional[str] = Field(None, description="The committed checkpoint the weights were loaded from; "
                                          "unset when they are the weights at the end of training.")


class EvaluationStatus(_Model):
    golden_set_pass_rate: Optional[float] = Field(None, ge=0, le=1)
    exact_match: Optional[float] = Field(
        None, ge=0, le=1, description="Held-out exact match at the end: the mean over task_types of the share of "
        "test-split examples (up to 50 per task) whose generated answer equals the reference and ends with "
        "end-of-turn; unset without a test split.")
    exact_match_by_task: dict[str, float] = Field(
        default_factory=dict, description="The held-out exact match of each task_type (what "
        "spec.eval.minExactMatchByTask gates on).")
    test_loss: Optional[float] = None
    eval_loss_by_task: dict[str, float] = Field(default_factory=dict)
    sanity_check: Optional[SanityCheckStatus] = None
    golden_set_by_task: dict[str, float] = Field(default_factory=dict)
    golden_checkpoints: list[GoldenCheckpointStatus] = Field(default_factory=list)
    best_golden_step: Optional[int] = None
    exported_checkpoint: Optional[ExportedCheckpointStatus] = None
    sets: dict[str, ScoredSetStatus] = Field(
        default_factory=dict, description="Base-model and final pass rates of the golden set ('golden') and of "
        "each regression set.")


class FailureInfo(_Model):
    """Which pod or node failed last, and why."""

    pod: Optional[str] = None
    node: Optional[str] = None
    exit_code: Optional[int] = None
    reason: Optional[str] = None
    message: Optional[str] = None


class PreflightStatus(_Model):
    """The last preflight the operator ran: the spec it checked and what it found."""

    spec_hash: Optional[str] = Field(None, description="Hash of the spec fields the preflight checked.")
    generation: Optional[int] = Field(None, description="metadata.generation of the spec it checked.")
    passed: Optional[bool] = Field(None, description="True: later attempts of this spec skip the preflight.")
    message: Optional[str] = Field(None, description="The preflight's summary, or the error naming file:line.")
    finished_at: Optional[str] = None


class LineageStatus(_Model):
    """Where the run's data-lineage manifest is, and its digest (the same inputs give the same digest)."""

    uri: str = Field(description="lineage.json beside the checkpoints.")
    digest: str = Field(description="sha256 of the manifest without its volatile fields (time, object versions).")


class TrackingStatus(_Model):
    """The run in the experiment trackers; healthy false while a tracker is unreachable (training goes on)."""

    mlflow_run_id: Optional[str] = None
    mlflow_run_url: Optional[str] = Field(None, description="The run's page on the MLflow server.")
    mlflow_experiment_id: Optional[str] = None
    tensorboard_uri: Optional[str] = Field(None, description="Where the TensorBoard event files are written.")
    healthy: Optional[bool] = Field(None, description="False while a tracker rejects or cannot be reached.")
    message: Optional[str] = Field(None, description="The tracker's last error, with how many logs wait for a retry.")


class SFTJobStatus(_Model):
    """Observed state, written by the operator (phase, conditions, counters) and by the trainer's rank 0
    (progress, metrics, checkpoint, evaluation, worldSize, lineage, tracking)."""

    phase: Optional[Phase] = None
    conditions: list[Condition] = Field(default_factory=list)
    attempt: int = Field(0, ge=0)
    restarts: int = Field(0, ge=0)
    preemptions: int = Field(0, ge=0)
    world_size: Optional[int] = Field(None, ge=0)
    start_time: Optional[str] = None
    completion_time: Optional[str] = None
    progress: Optional[Progress] = None
    metrics: Optional[TrainMetrics] = None
    checkpoint: Optional[CheckpointStatus] = None
    evaluation: Optional[EvaluationStatus] = None
    last_failure: Optional[FailureInfo] = None
    preflight: Optional[PreflightStatus] = None
    lineage: Optional[LineageStatus] = None
    tracking: Optional[TrackingStatus] = None
    observed_generation: Optional[int] = None


# --------------------------------------------------------------------------------------------- object


class ObjectMeta(BaseModel):
    """The subset of metadata that the API relies on; everything else passes through untouched."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=50)]
    namespace: Optional[str] = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class SFTJob(_Model):
    """A supervised fine-tuning run."""

    api_version: Annotated[str, Field(pattern=rf"^{GROUP}/{VERSION}$")] = Field(API_VERSION, alias="apiVersion")
    kind: Annotated[str, Field(pattern=rf"^{KIND}$")] = KIND
    metadata: ObjectMeta
    spec: SFTJobSpec
    status: Optional[SFTJobStatus] = None

    def to_manifest(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# Models that carry rules, by their schema path (the CRD generator attaches CEL at that node).
MODELS_BY_PATH: dict[str, type[_Model]] = {
    m.schema_path: m for m in (SFTJobSpec, SplitSpec, MethodSpec, DeepSpeedSpec, TrainingSpec) if m.schema_path
}
