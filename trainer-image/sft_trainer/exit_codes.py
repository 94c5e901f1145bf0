"""Exit codes of the trainer entrypoint (``python -m sft_trainer``) and the errors that carry them.

The codes, their condition reasons and whether a restart can help are one table in
``sft_api.contract.EXIT_CODES`` (see docs/trainer.md); this module re-exports it for the trainer.
"""

from __future__ import annotations

from sft_api.contract import (  # noqa: F401 - re-exported
    CONFIG_ERROR,
    EXIT_CODES,
    GOLDEN_REGRESSION,
    INTERRUPTED,
    NON_RETRYABLE,
    RETRYABLE,
    SANITY_CHECK_FAILED,
    SUCCESS,
    TOPOLOGY_MISMATCH,
    Reason,
    is_retryable,
    reason_for,
)


class TrainerError(Exception):
    """An error that ends the trainer with a specific exit code and a one-line message."""

    exit_code = RETRYABLE
    reason = Reason.POD_FAILED


class ConfigError(TrainerError):
    """Invalid spec, model, template or data; retrying cannot help."""

    exit_code = CONFIG_ERROR
    reason = Reason.DATA_ERROR


class GoldenSetRegression(TrainerError):
    exit_code = GOLDEN_REGRESSION
    reason = Reason.GOLDEN_SET_REGRESSION


class TopologyMismatch(TrainerError):
    exit_code = TOPOLOGY_MISMATCH
    reason = Reason.TOPOLOGY_MISMATCH


class SanityCheckFailed(TrainerError):
    """The sanity pre-run did not learn (loss did not fall, NaN, nothing to train on); retrying cannot help."""

    exit_code = SANITY_CHECK_FAILED
    reason = Reason.SANITY_CHECK_FAILED
