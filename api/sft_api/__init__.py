"""SFTJob API types (sft.dev/v1alpha1)."""

from .models import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Condition,
    ConditionStatus,
    Phase,
    SFTJob,
    SFTJobSpec,
    SFTJobStatus,
)
from .validation import Problem, SFTJobLoadError, load_document, load_sftjob, validate_document

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Condition",
    "ConditionStatus",
    "Phase",
    "Problem",
    "SFTJob",
    "SFTJobLoadError",
    "SFTJobSpec",
    "SFTJobStatus",
    "load_document",
    "load_sftjob",
    "validate_document",
]
