"""Suspend policy: `spec.suspend: true` deletes the attempt's pods (Jobs) but keeps status and
checkpoints; clearing it starts a new attempt, which resumes from the latest committed checkpoint.
"""

from __future__ import annotations

from ..conditions import Phase

__all__ = ["action"]


def action(spec_suspend: bool, phase: str | None) -> str | None:
    """'suspend' (enter/stay suspended), 'resume' (leave Suspended) or None."""
    if phase in (Phase.SUCCEEDED, Phase.FAILED):
        return None
    if spec_suspend:
        return "suspend"
    if phase == Phase.SUSPENDED:
        return "resume"
    return None
