"""metrics.py names and labels (docs/monitoring.md) and settings.py env parsing."""

import pytest
from prometheus_client import generate_latest

from sft_operator import metrics
from sft_operator.run_operator import main as run_main
from sft_operator.settings import OperatorSettings


def test_metric_names_and_phase_counts():
    metrics.JOBS.set(("ns", "a"), "Running")
    metrics.JOBS.set(("ns", "b"), "Running")
    metrics.JOBS.set(("ns", "c"), None)
    metrics.RESTARTS.labels(namespace="ns", sftjob="a", reason="PodFailed").inc()
    metrics.RECONCILE_SECONDS.observe(0.01)
    metrics.TIME_TO_RUNNING.observe(3)
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'sftoperator_jobs{phase="Running"} 2.0' in text
    assert 'sftoperator_jobs{phase="Pending"} 1.0' in text
    assert 'sftoperator_jobs{phase="Failed"} 0.0' in text  # every phase is always reported
    assert 'sftoperator_restarts_total{namespace="ns",reason="PodFailed",sftjob="a"} 1.0' in text
    assert "sftoperator_reconcile_duration_seconds_bucket" in text
    assert "sftoperator_time_to_running_seconds_count 1.0" in text
    assert "sftoperator_build_info{version=" in text and "} 1.0" in text
    metrics.forget_job(("ns", "a"))  # a deleted job's series go
    assert metrics.JOBS.counts()["Running"] == 1
    assert 'sftjob="a"' not in generate_latest(metrics.REGISTRY).decode()


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("SFT_TRAINER_IMAGE", "reg/trainer:2")
    monkeypatch.setenv("SFT_DEFAULT_RESOURCES", '{"requests": {"cpu": "4"}}')
    monkeypatch.setenv("SFT_RESYNC_SECONDS", "2.5")
    s = OperatorSettings.from_env()
    assert s.trainer_image == "reg/trainer:2" and s.default_resources == {"requests": {"cpu": "4"}}
    assert s.resync_seconds == 2.5 and s.master_port == 29500


@pytest.mark.parametrize("name, value", [("SFT_MASTER_PORT", "abc"), ("SFT_DEFAULT_RESOURCES", "[1]"), ("SFT_DEFAULT_RESOURCES", "{bad")])
def test_bad_settings_name_the_variable(monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        OperatorSettings.from_env()
    assert run_main(["--standalone"]) == 2
    assert name in capsys.readouterr().err
