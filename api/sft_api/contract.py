"""The contract between the operator and the trainer, written once.

Identity of the resource, the labels children carry, the phases and condition reasons of status, and
the trainer's exit codes with the reason each maps to and whether a restart can help. The operator and
the trainer both import this module; neither imports the other. Import-light on purpose (stdlib only).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# ------------------------------------------------------------------------------------------- identity
GROUP = "sft.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SFTJob"
PLURAL = "sftjobs"
SINGULAR = "sftjob"
SHORT_NAMES = ["sft"]
CATEGORIES = ["all", "ml"]

# ------------------------------------------------------------------------------------------- images
# The trainer image's user (trainer-image/Dockerfile's USER) and the trainer pods' runAsUser,
# runAsGroup and fsGroup: one number, so files the image owns and files the pod writes agree.
# At least 10000, clear of any host account (restricted pod security wants non-root).
TRAINER_UID = 10001

# --------------------------------------------------------------------------------------------- labels
LABEL_JOB = f"{GROUP}/job-name"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_COMPONENT = f"{GROUP}/component"  # "preflight" on the preflight Job and pod; absent on the gang
LABEL_SPEC_HASH = f"{GROUP}/spec-hash"  # the spec hash the preflight checks
PREFLIGHT_COMPONENT = "preflight"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"  # a Kueue WorkloadPriorityClass
TAS_ANNOTATION_PREFIX = "kueue.x-k8s.io/podset-"  # Kueue's topology-aware scheduling requests
FINALIZER = f"{GROUP}/operator"
TIME_BUDGET_ANNOTATION = f"{GROUP}/max-train-seconds"


class _Str(str, Enum):
    def __str__(self) -> str:  # so f-strings print the value, not the member name
        return self.value


class Phase(_Str):
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class CondType(_Str):
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STALLED = "Stalled"
    PREFLIGHT = "Preflight"  # the CPU-only data and template check before the gang
    SANITY_CHECK = "SanityCheck"  # the trainer's overfit pre-run (spec.eval.sanityCheck)
    TRACKING = "Tracking"  # the experiment trackers (spec.tracking) take the run's logs
    CHILD_CREATE_FAILED = "ChildCreateFailed"  # the apiserver refused a child (quota, admission, webhook)


class Reason(_Str):
    # pending / progress
    CREATED = "AttemptCreated"
    QUEUED = "Queued"
    UNSCHEDULABLE = "Unschedulable"
    PODS_PENDING = "PodsPending"
    PODS_RUNNING = "PodsRunning"
    TEARING_DOWN = "TearingDown"
    PROGRESSING = "Progressing"
    # preflight (condition Preflight)
    PREFLIGHT_RUNNING = "PreflightRunning"
    PREFLIGHT_PASSED = "PreflightPassed"
    PREFLIGHT_SKIPPED = "PreflightSkipped"
    # children the apiserver refused (condition ChildCreateFailed), and their recovery
    FAILED_CREATE = "FailedCreate"
    CHILDREN_CREATED = "ChildrenCreated"
    # retryable failures (count as restarts)
    POD_FAILED = "PodFailed"
    OOM_KILLED = "OOMKilled"
    STALLED = "Stalled"
    # disruptions (count as preemptions)
    PREEMPTED = "Preempted"
    EVICTED = "Evicted"
    NODE_LOST = "NodeLost"
    INTERRUPTED = "Interrupted"
    # terminal
    COMPLETED = "Completed"
    DATA_ERROR = "DataError"
    GOLDEN_SET_REGRESSION = "GoldenSetRegression"
    SANITY_CHECK_FAILED = "SanityCheckFailed"
    SANITY_CHECK_PASSED = "SanityCheckPassed"
    TRACKER_UNAVAILABLE = "TrackerUnavailable"
    TRACKER_HEALTHY = "TrackerHealthy"
    TOPOLOGY_MISMATCH = "TopologyMismatch"
    MAX_RESTARTS = "MaxRestartsExceeded"
    MAX_PREEMPTIONS = "MaxPreemptionsExceeded"
    DEADLINE = "DeadlineExceeded"
    INVALID_SPEC = "InvalidSpec"
    # lifecycle
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    TTL_EXPIRED = "TTLExpired"
    NOT_STALLED = "ProgressReported"


# Reasons an attempt is torn down and the next one created (the `reason` label of
# sftoperator_restarts_total); the disruptions among them count as preemptions, not restarts.
DISRUPTION_REASONS = frozenset({Reason.PREEMPTED, Reason.EVICTED, Reason.NODE_LOST, Reason.INTERRUPTED})
RESTART_REASONS = (Reason.POD_FAILED, Reason.OOM_KILLED, Reason.STALLED, Reason.PREEMPTED, Reason.EVICTED,
                   Reason.NODE_LOST, Reason.INTERRUPTED)


# ----------------------------------------------------------------------------------------- exit codes
@dataclass(frozen=True)
class ExitCode:
    code: int
    name: str
    reason: Reason | None  # None: success
    retryable: bool
    meaning: str


SUCCESS = 0
RETRYABLE = 1
CONFIG_ERROR = 64  # EX_USAGE-adjacent; also data errors found by preflight
GOLDEN_REGRESSION = 65
TOPOLOGY_MISMATCH = 66
SANITY_CHECK_FAILED = 67  # the overfit pre-run did not learn: diverging LR, broken mask, NaN
INTERRUPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM after committing a checkpoint

# The one table: code -> name, condition reason, retryable. The Job's podFailurePolicy, the operator's
# classification of a failed pod and the trainer's exits all read it.
EXIT_CODES: dict[int, ExitCode] = {
    e.code: e
    for e in (
        ExitCode(SUCCESS, "SUCCESS", None, False, "training, evaluation and export finished"),
        ExitCode(RETRYABLE, "RETRYABLE", Reason.POD_FAILED, True,
                 "any other failure (crash, OOM, lost peer, storage outage)"),
        ExitCode(CONFIG_ERROR, "CONFIG_ERROR", Reason.DATA_ERROR, False,
                 "invalid spec or data: preflight failed, bad template, ..."),
        ExitCode(GOLDEN_REGRESSION, "GOLDEN_REGRESSION", Reason.GOLDEN_SET_REGRESSION, False,
                 "an evaluation gate failed: golden-set pass rate below minPassRate, a drop at a checkpoint, "
                 "a regression against the base model"),
        ExitCode(TOPOLOGY_MISMATCH, "TOPOLOGY_MISMATCH", Reason.TOPOLOGY_MISMATCH, False,
                 "world size != nodes x processes per node"),
        ExitCode(SANITY_CHECK_FAILED, "SANITY_CHECK_FAILED", Reason.SANITY_CHECK_FAILED, False,
                 "the sanity pre-run's loss did not fall by eval.sanityCheck.minLossDrop (or was NaN)"),
        ExitCode(INTERRUPTED, "INTERRUPTED", Reason.INTERRUPTED, True,
                 "SIGTERM: checkpoint saved and committed, then exited"),
    )
}
NON_RETRYABLE = frozenset(c for c, e in EXIT_CODES.items() if c != SUCCESS and not e.retryable)
# Non-retryable codes and the terminal reason each fails the SFTJob with.
NON_RETRYABLE_REASONS: dict[int, Reason] = {c: EXIT_CODES[c].reason for c in sorted(NON_RETRYABLE)}


def is_retryable(code: int) -> bool:
    """True for codes after which a restart from the latest committed checkpoint can succeed."""
    return code != SUCCESS and code not in NON_RETRYABLE


def reason_for(code: int) -> Reason | None:
    """The condition reason for an exit code (None for success; unknown codes are retryable crashes)."""
    if code == SUCCESS:
        return None
    known = EXIT_CODES.get(code)
    return known.reason if known else Reason.POD_FAILED
