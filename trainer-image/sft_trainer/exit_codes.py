"""Exit codes of the trainer entrypoint (``python -m sft_trainer``), shared with the operator.

Import-light on purpose (no torch): the operator imports this module to classify pod failures.

| code | name              | meaning                                                   | operator |
|------|-------------------|-----------------------------------------------------------|----------|
| 0    | SUCCESS           | training, evaluation and export finished                  | Succeeded |
| 1    | RETRYABLE         | any other failure (crash, OOM, lost peer, storage outage) | restart the gang |
| 64   | CONFIG_ERROR      | invalid spec or data: preflight failed, bad template, ... | Failed (DataError) |
| 65   | GOLDEN_REGRESSION | golden-set pass rate below ``minPassRate``                | Failed (GoldenSetRegression) |
| 66   | TOPOLOGY_MISMATCH | world size != nodes x processes per node                  | Failed (TopologyMismatch) |
| 75   | INTERRUPTED       | SIGTERM: checkpoint saved and committed, then exited      | restart (preemption) |
"""

from __future__ import annotations

SUCCESS = 0
RETRYABLE = 1
CONFIG_ERROR = 64  # EX_USAGE-adjacent; also data errors found by preflight
GOLDEN_REGRESSION = 65
TOPOLOGY_MISMATCH = 66
INTERRUPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM after committing a checkpoint

NON_RETRYABLE = frozenset({CONFIG_ERROR, GOLDEN_REGRESSION, TOPOLOGY_MISMATCH})

# Condition reasons (ARCHITECTURE §3 / sft_operator.conditions) for each non-zero code.
REASONS: dict[int, str] = {
    RETRYABLE: "PodFailed",
    CONFIG_ERROR: "DataError",
    GOLDEN_REGRESSION: "GoldenSetRegression",
    TOPOLOGY_MISMATCH: "TopologyMismatch",
    INTERRUPTED: "Interrupted",
}


def is_retryable(code: int) -> bool:
    """True for codes after which a restart from the latest committed checkpoint can succeed."""
    return code != SUCCESS and code not in NON_RETRYABLE


def reason_for(code: int) -> str | None:
    """The condition reason for an exit code (None for success)."""
    if code == SUCCESS:
        return None
    return REASONS.get(code, REASONS[RETRYABLE])


class TrainerError(Exception):
    """An error that ends the trainer with a specific exit code and a one-line message."""

    exit_code = RETRYABLE
    reason = "PodFailed"


class ConfigError(TrainerError):
    """Invalid spec, model, template or data; retrying cannot help."""

    exit_code = CONFIG_ERROR
    reason = "DataError"


class GoldenSetRegression(TrainerError):
    exit_code = GOLDEN_REGRESSION
    reason = "GoldenSetRegression"


class TopologyMismatch(TrainerError):
    exit_code = TOPOLOGY_MISMATCH
    reason = "TopologyMismatch"
