"""A real Prometheus scrapes the trainer's /metrics during a real training run of the trainer
entrypoint (`python -m sft_trainer`), and gets the loss series through its HTTP API."""

from __future__ import annotations

import os
import signal
import time

import pytest
from trainer_run_helpers import entrypoint_job, free_port, launch_entrypoint

pytestmark = pytest.mark.slow

JOB = "prom-test"


def test_prometheus_scrapes_training_metrics(prometheus, tmp_path):
    prom = prometheus()
    port = free_port()
    job = entrypoint_job(tmp_path, JOB, f"file://{tmp_path}/ckpts", max_steps=2000, every_steps=20,
                         validation=0.1, eval_every=10)
    log = tmp_path / "train.log"
    proc = launch_entrypoint(job, tmp_path / "work", log, {"SFT_METRICS_PORT": str(port)})
    try:
        deadline = time.monotonic() + 180
        while "serving Prometheus metrics" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the trainer never served /metrics"
            time.sleep(0.2)
        target = f"127.0.0.1:{port}"
        prom.add_targets([target], job="sft-trainer")
        sel = f'namespace="local",sftjob="{JOB}"'

        loss = prom.wait_for(f"sftjob_train_loss{{{sel}}} > 0", timeout=60)
        assert loss[0]["metric"]["instance"] == target
        assert 0 < float(loss[0]["value"][1]) < 10
        total = prom.wait_for(f"sftjob_total_steps{{{sel}}}", timeout=30)
        assert float(total[0]["value"][1]) == 2000
        overall = prom.wait_for(f'sftjob_eval_loss{{{sel},task_type="all"}}', timeout=90)
        assert float(overall[0]["value"][1]) > 0
        # per task_type: the quickstart data has four tasks
        per_task = prom.wait_for(f'count(sftjob_eval_loss{{{sel},task_type!="all"}}) >= 4',
                                 timeout=30)
        assert per_task
        assert prom.wait_for(f"sftjob_tokens_per_second{{{sel}}} > 0", timeout=30)
        assert prom.wait_for(f"sftjob_learning_rate{{{sel}}} > 0", timeout=30)
        ckpt = prom.wait_for(f"sftjob_checkpoint_last_step{{{sel}}} >= 20", timeout=90)
        assert float(ckpt[0]["value"][1]) % 20 == 0
        assert prom.query(f"sftjob_checkpoint_save_seconds{{{sel}}} > 0")
        # a trajectory, not one value: several scrapes with the loss going down overall
        assert prom.wait_for(f"count_over_time(sftjob_train_loss{{{sel}}}[5m]) >= 5", timeout=60)
        first = prom.query(f"min_over_time(sftjob_step{{{sel}}}[5m])")
        last = prom.query(f"max_over_time(sftjob_step{{{sel}}}[5m])")
        assert float(last[0]["value"][1]) > float(first[0]["value"][1])
        assert proc.poll() is None  # all of this was scraped while training ran
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
