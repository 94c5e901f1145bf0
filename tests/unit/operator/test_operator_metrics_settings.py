"""metrics.py names and labels (docs/monitoring.md) and settings.py env parsing."""

import pytest
from prometheus_client import generate_latest

from sft_operator import metrics
from sft_operator.run_operator import main as run_main
from sft_operator.settings import OperatorSettings


def test_metric_names_and_phase_counts(monkeypatch):
    # the tracker is process-wide: other tests' reconcile passes record jobs of their own in it
    monkeypatch.setattr(metrics.JOBS, "_phases", {})
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


def test_retry_preflight_and_phase_settings_from_env(monkeypatch):
    monkeypatch.setenv("SFT_RETRY_BASE_SECONDS", "0.5")
    monkeypatch.setenv("SFT_RETRY_MAX_SECONDS", "60")
    monkeypatch.setenv("SFT_PREFLIGHT_RESOURCES", '{"requests": {"cpu": "2"}}')
    monkeypatch.setenv("SFT_PREFLIGHT_TIMEOUT_SECONDS", "900")
    monkeypatch.setenv("SFT_PHASE_TIMEOUTS", '{"downloading": 600}')
    s = OperatorSettings.from_env()
    assert (s.retry_base_seconds, s.retry_max_seconds, s.preflight_timeout_seconds) == (0.5, 60.0, 900)
    assert s.preflight_resources == {"requests": {"cpu": "2"}} and s.phase_timeouts == {"downloading": 600}
    d = OperatorSettings()
    assert d.retry_base_seconds == 2.0 and d.retry_max_seconds == 300.0
    assert "nvidia.com/gpu" not in str(d.preflight_resources)


@pytest.mark.parametrize("name, value", [
    pytest.param("SFT_MASTER_PORT", "abc", id="a port that is not a number"),
    pytest.param("SFT_DEFAULT_RESOURCES", "[1]", id="resources that are not an object"),
    pytest.param("SFT_DEFAULT_RESOURCES", "{bad", id="resources that are not JSON"),
    pytest.param("SFT_PHASE_TIMEOUTS", "[1]", id="phase timeouts that are not an object"),
])
def test_bad_settings_name_the_variable(monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        OperatorSettings.from_env()
    assert run_main(["--standalone"]) == 2
    assert name in capsys.readouterr().err
