"""Runs ``train()`` on a job file and, optionally, sends itself a real SIGTERM at a given step.

    python trainer_sigterm_driver.py JOB.yaml WORKDIR [SIGTERM_AT_STEP]

Writes WORKDIR/driver-result.json (the TrainResult plus the per-step train losses) and exits with
the trainer's exit code.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from transformers import TrainerCallback

    from sft_api import load_sftjob
    from sft_trainer.train import train

    job_path, workdir = Path(sys.argv[1]), Path(sys.argv[2])
    at = int(sys.argv[3]) if len(sys.argv) > 3 else None
    losses: dict[int, float] = {}

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if at is not None and state.global_step == at:
                os.kill(os.getpid(), signal.SIGTERM)  # as the kubelet would

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses[state.global_step] = float(logs["loss"])

    result = train(load_sftjob(job_path), workdir=workdir, base_dir=job_path.parent, metrics_port=0,
                   extra_callbacks=[Record()])
    out = result.to_dict()
    out["losses"] = losses
    (workdir / "driver-result.json").write_text(json.dumps(out, default=str))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
