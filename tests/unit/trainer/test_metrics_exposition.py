"""Prometheus exposition of the trainer metrics: names, labels, help, values, MFU."""

from __future__ import annotations

import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from transformers import TrainerControl, TrainerState

from sft_trainer.callbacks import PrometheusMetricsCallback, eval_losses
from sft_trainer.metrics import (
    METRIC_DEFS,
    TrainerMetrics,
    flops_per_token,
    mfu,
    peak_flops_for,
)

# docs/monitoring.md: the public metric names and their extra labels
CONTRACT = {
    "sftjob_train_loss": set(),
    "sftjob_eval_loss": {"task_type"},
    "sftjob_learning_rate": set(),
    "sftjob_grad_norm": set(),
    "sftjob_tokens_per_second": set(),
    "sftjob_tokens_total": set(),
    "sftjob_step": set(),
    "sftjob_total_steps": set(),
    "sftjob_mfu_ratio": set(),
    "sftjob_gpu_memory_used_bytes": set(),
    "sftjob_checkpoint_last_step": set(),
    "sftjob_checkpoint_save_seconds": set(),
    "sftjob_golden_pass_ratio": {"task_type"},
}


def families(metrics: TrainerMetrics) -> dict:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_names_labels_and_help_match_the_contract():
    m = TrainerMetrics("team-a", "support-bot")
    m.set_eval_loss(1.25)
    m.set_eval_loss(0.5, "arith")
    m.set_golden(0.75, {"arith": 0.5, "json": 1.0})
    fams = families(m)
    assert set(fams) == set(CONTRACT) == set(METRIC_DEFS)
    golden = {s.labels["task_type"]: s.value for s in fams["sftjob_golden_pass_ratio"].samples}
    assert golden == {"all": 0.75, "arith": 0.5, "json": 1.0}
    for name, extra in CONTRACT.items():
        fam = fams[name]
        assert fam.type == "gauge"
        assert "namespace" in fam.documentation and "sftjob" in fam.documentation
        for label in extra:
            assert label in fam.documentation
        assert fam.samples, name
        for s in fam.samples:
            assert set(s.labels) == {"namespace", "sftjob"} | extra
            assert s.labels["namespace"] == "team-a" and s.labels["sftjob"] == "support-bot"
    evals = {s.labels["task_type"]: s.value for s in fams["sftjob_eval_loss"].samples}
    assert evals == {"all": 1.25, "arith": 0.5}


def test_callback_maps_trainer_logs_to_gauges():
    cb = PrometheusMetricsCallback("ns", "job", serve=False)
    args = SimpleNamespace(world_size=1, max_length=32)
    state = TrainerState()
    state.max_steps = 50
    control = TrainerControl()
    cb.on_train_begin(args, state, control)
    state.global_step = 3
    cb.on_step_end(args, state, control)
    cb.on_log(args, state, control, logs={"loss": 2.5, "learning_rate": 1e-3, "grad_norm": 0.7,
                                          "num_tokens": 1000.0})
    cb.on_log(args, state, control, logs={"loss": 2.0, "learning_rate": 9e-4, "grad_norm": 0.5,
                                          "num_tokens": 3000.0})
    cb.on_log(args, state, control, logs={"eval_loss": 1.9, "eval_upper_loss": 1.7,
                                          "eval_runtime": 0.1, "eval_num_tokens": 10.0})
    g = lambda name, **kw: cb.metrics.registry.get_sample_value(  # noqa: E731
        name, {"namespace": "ns", "sftjob": "job", **kw})
    assert g("sftjob_step") == 3
    assert g("sftjob_total_steps") == 50
    assert g("sftjob_train_loss") == 2.0
    assert g("sftjob_learning_rate") == 9e-4
    assert g("sftjob_grad_norm") == 0.5
    assert g("sftjob_tokens_total") == 3000
    assert g("sftjob_tokens_per_second") > 0
    assert g("sftjob_eval_loss", task_type="all") == 1.9
    assert g("sftjob_eval_loss", task_type="upper") == 1.7
    assert g("sftjob_eval_loss", task_type="runtime") is None
    assert g("sftjob_mfu_ratio") == 0  # no known peak on the CPU


def test_resumed_run_starts_with_its_checkpoint_step():
    cb = PrometheusMetricsCallback("ns", "job", serve=False)
    state = TrainerState()
    state.global_step, state.max_steps = 400, 1000
    cb.on_train_begin(SimpleNamespace(world_size=1), state, TrainerControl())
    labels = {"namespace": "ns", "sftjob": "job"}
    assert cb.metrics.registry.get_sample_value("sftjob_checkpoint_last_step", labels) == 400
    assert cb.metrics.registry.get_sample_value("sftjob_step", labels) == 400


def test_eval_losses_parsing():
    assert eval_losses({"eval_loss": 1, "eval_a_b_loss": 2, "eval_runtime": 3, "loss": 4}) == {
        "all": 1.0, "a_b": 2.0
    }


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA L4", 121e12),
    ("NVIDIA L40S", 362e12),
    ("Some CPU", None),
    (None, None),
])
def test_peak_table(name, peak):
    assert peak_flops_for(name, env={}) == peak


def test_flops_count_zero3_partitioned_parameters():
    import torch

    from sft_trainer.metrics import model_flops_per_token

    model = torch.nn.Linear(10, 10)  # 110 parameters
    model.config = SimpleNamespace(num_hidden_layers=1, hidden_size=10)
    assert model_flops_per_token(model, seq_len=4) == 6 * 110 + 12 * 1 * 10 * 4
    for p in model.parameters():  # what ZeRO-3 leaves on each rank
        p.ds_numel = p.numel()
        p.data = torch.empty(0)
    assert model_flops_per_token(model, seq_len=4) == 6 * 110 + 12 * 1 * 10 * 4


def test_peak_override_and_mfu_formula():
    assert peak_flops_for(None, env={"SFT_PEAK_FLOPS": "1e12"}) == 1e12
    fpt = flops_per_token(1_000_000, n_layers=2, hidden=64, seq_len=128)
    assert fpt == 6e6 + 12 * 2 * 64 * 128
    # 1000 tok/s on 2 devices with a 1e10 FLOP/s peak each
    assert mfu(1000, fpt, 1e10, 2) == pytest.approx(1000 * fpt / 2e10)
    assert mfu(1000, fpt, None) == 0.0


def test_serve_on_a_free_port_exposes_metrics_over_http():
    m = TrainerMetrics("ns", "job")
    port = m.serve(0, addr="127.0.0.1")
    try:
        m.set("sftjob_train_loss", 1.5)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'sftjob_train_loss{namespace="ns",sftjob="job"} 1.5' in body
    finally:
        m.shutdown()


def test_busy_port_does_not_stop_training(caplog):
    first = TrainerMetrics("ns", "a")
    port = first.serve(0, addr="0.0.0.0")
    try:
        cb = PrometheusMetricsCallback("ns", "b", port)
        state = TrainerState()
        state.max_steps = 5
        cb.on_train_begin(SimpleNamespace(world_size=1), state, TrainerControl())
        assert cb.metrics.server is None and "cannot serve Prometheus metrics" in caplog.text
        cb.on_log(SimpleNamespace(), state, TrainerControl(), logs={"loss": 1.0})
    finally:
        first.shutdown()


# ---- flush: the run's last values reach a scraper before the process exits

def _scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _value(text: str, name: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                return s.value
    raise AssertionError(f"{name} not exposed")


@pytest.fixture
def served():
    """TrainerMetrics serving /metrics on a free local port; shut down afterwards."""
    m = TrainerMetrics("ns", "job")
    port = m.serve(0, addr="127.0.0.1")
    yield m, port
    m.shutdown()


def test_flush_returns_at_once_when_nothing_serves_or_nobody_scraped(served):
    m, _ = served
    t0 = time.monotonic()
    assert TrainerMetrics("ns", "job").flush(timeout=10) is False  # not served
    assert m.flush(timeout=10) is False  # served, but never scraped: sftctl run without Prometheus
    assert time.monotonic() - t0 < 2


def test_flush_waits_for_a_scrape_that_reads_the_final_values(served):
    m, port = served
    _scrape(port)  # a scraper is known to exist
    assert m.scrapes == 1
    m.observe_checkpoint(60, 1.5)  # the final commit, after that scrape
    seen: list[float] = []

    def scraper():
        time.sleep(0.5)
        seen.append(_value(_scrape(port), "sftjob_checkpoint_last_step"))

    t = threading.Thread(target=scraper)
    t.start()
    t0 = time.monotonic()
    assert m.flush(timeout=10) is True
    waited = time.monotonic() - t0
    t.join(5)
    assert seen == [60.0]
    assert 0.4 < waited < 5  # it waited for that scrape, and no longer


def test_flush_gives_up_after_its_timeout_when_the_scraper_is_gone(served):
    m, port = served
    _scrape(port)
    t0 = time.monotonic()
    assert m.flush(timeout=0.5) is False
    assert 0.4 < time.monotonic() - t0 < 3
