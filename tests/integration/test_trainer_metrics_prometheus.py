"""A real Prometheus scrapes the trainer's /metrics during a real training run."""

from __future__ import annotations

import os
import signal
import time

import pytest
from ckpt_trainer_harness import free_port, launch

pytestmark = pytest.mark.slow

JOB = "prom-test"


def test_prometheus_scrapes_training_metrics(prometheus, tmp_path):
    prom = prometheus()
    port = free_port()
    cfg = {"store_uri": f"file://{tmp_path}/ckpts", "output_dir": str(tmp_path / "out"),
           "max_steps": 40, "save_steps": 20, "eval_steps": 10, "step_sleep": 0.3,
           "metrics_port": port, "job": JOB, "result": str(tmp_path / "result.json")}
    log = tmp_path / "train.log"
    proc = launch(cfg, log)
    try:
        deadline = time.monotonic() + 180
        while "serving Prometheus metrics" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the trainer never served /metrics"
            time.sleep(0.2)
        target = f"127.0.0.1:{port}"
        prom.add_targets([target], job="sft-trainer")
        sel = f'namespace="test",sftjob="{JOB}"'

        loss = prom.wait_for(f"sftjob_train_loss{{{sel}}} > 0", timeout=60)
        assert loss[0]["metric"]["instance"] == target
        assert 0 < float(loss[0]["value"][1]) < 10
        total = prom.wait_for(f"sftjob_total_steps{{{sel}}}", timeout=30)
        assert float(total[0]["value"][1]) == 40
        evals = prom.wait_for(f'sftjob_eval_loss{{{sel},task_type="upper"}}', timeout=60)
        assert float(evals[0]["value"][1]) > 0
        assert prom.wait_for(f"sftjob_tokens_per_second{{{sel}}} > 0", timeout=30)
        ckpt = prom.wait_for(f"sftjob_checkpoint_last_step{{{sel}}} >= 20", timeout=60)
        assert float(ckpt[0]["value"][1]) == 20
        # the series is a trajectory: several distinct scraped loss values over the run
        series = prom.wait_for(f"count_over_time(sftjob_train_loss{{{sel}}}[5m]) >= 3", timeout=30)
        assert series
        step = prom.query(f"max_over_time(sftjob_step{{{sel}}}[5m])")
        assert float(step[0]["value"][1]) >= 20
        rc = proc.wait(120)
        assert rc == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
