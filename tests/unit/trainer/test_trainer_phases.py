"""The trainer's phase and heartbeat (phases.py): status.progress.phase, phaseStartedAt and
heartbeatTime, through the real LogReporter (which merges patches as the status does), and
valid against the API model the operator reads."""

from __future__ import annotations

import time

import pytest

from sft_api.models import SFTJobStatus, TrainerPhase
from sft_trainer import phases
from sft_trainer.phases import PHASES, PhaseReporter
from sft_trainer.progress import LogReporter


def test_the_phases_are_the_api_enum():
    assert PHASES == ("downloading", "preflight", "training", "evaluating", "checkpointing", "exporting")
    assert PHASES == tuple(p.value for p in TrainerPhase)


def test_entering_a_phase_reports_it_with_its_start_and_a_heartbeat():
    rep = LogReporter()
    pr = PhaseReporter(rep, interval_s=0)
    pr.enter("downloading")
    p = rep.last["progress"]
    assert p["phase"] == "downloading" and p["phaseStartedAt"] == p["heartbeatTime"]
    started = p["phaseStartedAt"]
    time.sleep(1.1)
    pr.enter("downloading")  # the same phase again: its start stays
    assert rep.last["progress"]["phaseStartedAt"] == started
    pr.enter("training")
    assert rep.last["progress"]["phase"] == "training" and rep.last["progress"]["phaseStartedAt"] > started
    # the step reports of ProgressCallback merge with the phase instead of replacing it
    rep.report({"progress": {"step": 5, "totalSteps": 10}})
    merged = rep.last["progress"]
    assert merged["phase"] == "training" and merged["step"] == 5
    status = SFTJobStatus.model_validate({"progress": merged})  # the names the operator reads
    assert status.progress.phase == "training" and status.progress.heartbeat_time == merged["heartbeatTime"]


def test_the_heartbeat_keeps_beating_while_the_phase_lasts():
    rep = LogReporter()
    pr = PhaseReporter(rep, interval_s=0.1).start()
    try:
        pr.enter("evaluating")
        first = rep.last["progress"]["heartbeatTime"]
        time.sleep(2.2)  # timestamps have one-second resolution
        assert rep.last["progress"]["heartbeatTime"] > first
        assert rep.last["progress"]["phase"] == "evaluating"
    finally:
        pr.stop()
    stopped = rep.last["progress"]["heartbeatTime"]
    time.sleep(1.2)
    assert rep.last["progress"]["heartbeatTime"] == stopped  # a stopped trainer's heartbeat ages


def test_an_unknown_phase_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown trainer phase 'loading'; known: downloading, preflight"):
        PhaseReporter(LogReporter(), interval_s=0).enter("loading")


def test_enter_without_a_started_reporter_is_a_no_op_and_other_ranks_report_nothing():
    phases.stop()
    phases.enter("training")  # outside train(): nothing to report to, and no error
    rep = LogReporter()
    assert phases.start(rep, enabled=False, interval_s=0) is None  # rank > 0
    phases.enter("training")
    assert rep.last == {}
    try:
        assert phases.start(rep, enabled=True, interval_s=0) is not None
        phases.enter("exporting")
        assert rep.last["progress"]["phase"] == "exporting"
    finally:
        phases.stop()
