"""spec.tracking against a real MLflow tracking server (the `mlflow_server` fixture, MLflow 3.17.2 from
its own tool venv) and TensorBoard's own event reader: what the trainer logs is read back from both.
A tracker that is down never fails the training, is reported (status.tracking.healthy false, a
warning) and its logs are retried until the server takes them."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from trainer_job_factory import job_doc, run_entrypoint, trainer_env, write_data, write_golden, write_job

from sft_dev.tracking_servers import read_tensorboard_scalars

pytestmark = pytest.mark.slow

LORA = {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]}}


def _job(tmp: Path, tracking: dict, name: str) -> Path:
    write_data(tmp / "train.jsonl", n=80)
    write_golden(tmp / "golden.jsonl")
    doc = job_doc(tmp, name=name, method=LORA, tracking=tracking,
                  training={"maxSteps": 4, "loggingSteps": 1},
                  eval={"everySteps": 2, "goldenSet": {"uri": "golden.jsonl", "maxNewTokens": 4}},
                  checkpoints={"uri": str(tmp / "ckpt"), "everySteps": 2, "keep": 1})
    return write_job(tmp, doc, f"{name}.yaml")


def _history(server, run_id: str, key: str) -> list[tuple[int, float]]:
    h = server.api("GET", "metrics/get-history", query=f"run_id={run_id}&metric_key={key}")
    return sorted((m["step"], m["value"]) for m in h.get("metrics", []))


def test_mlflow_and_tensorboard_receive_params_and_step_metrics(mlflow_server, tmp_path):
    job = _job(tmp_path, {"mlflow": {"trackingUri": mlflow_server.url, "experimentName": "issue-13",
                                     "secretRef": "mlflow-credentials"},
                          "tensorboard": {"enabled": True}}, "tracked")
    # what the operator injects from the Secret (this server has no auth and ignores it)
    env = trainer_env(MLFLOW_TRACKING_USERNAME="sft", MLFLOW_TRACKING_PASSWORD="secret")
    res = run_entrypoint(job, tmp_path / "work", env=env)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    result = json.loads((tmp_path / "work" / "result.json").read_text())
    tracking = result["tracking"]
    assert tracking["healthy"] is True and tracking["message"] is None, tracking
    run_id = tracking["mlflowRunId"]
    assert tracking["mlflowRunUrl"] == (f"{mlflow_server.url}/#/experiments/{tracking['mlflowExperimentId']}"
                                        f"/runs/{run_id}")

    run = mlflow_server.api("GET", "runs/get", query=f"run_id={run_id}")["run"]
    exp = mlflow_server.api("GET", "experiments/get-by-name", query="experiment_name=issue-13")["experiment"]
    assert run["info"]["experiment_id"] == exp["experiment_id"] == tracking["mlflowExperimentId"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    print("MLflow params:", sorted(params))
    assert {k: params[k] for k in ("method", "lora_r", "lora_alpha", "lora_dropout", "target_modules",
                                   "learning_rate", "max_steps", "max_seq_length", "packing", "loss_on",
                                   "world_size", "objective")} == {
        "method": "lora", "lora_r": "4", "lora_alpha": "8", "lora_dropout": "0.0", "target_modules": "q_proj,v_proj",
        "learning_rate": "0.002", "max_steps": "4", "max_seq_length": "64", "packing": "False",
        "loss_on": "assistant", "world_size": "1", "objective": "sft"}
    assert params["lineage_digest"] == result["lineage"]["digest"]
    metrics = {m["key"] for m in run["data"]["metrics"]}
    print("MLflow metrics:", sorted(metrics))
    assert {"loss", "learning_rate", "grad_norm", "eval_loss", "test_loss", "golden_pass_rate"} <= metrics
    assert any(k.startswith("eval_") and k.endswith("_loss") and k != "eval_loss" for k in metrics)  # per task_type
    loss = _history(mlflow_server, run_id, "loss")
    assert [s for s, _ in loss] == [1, 2, 3, 4]  # one point per logging step
    assert [s for s, _ in _history(mlflow_server, run_id, "eval_loss")] == [2, 4]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["sft.dev/job"] == "tracked" and tags["mlflow.runName"] == "tracked"

    # TensorBoard's own reader sees the same loss curve in the event files under the checkpoints URI
    assert tracking["tensorboardUri"] == str(tmp_path / "ckpt") + "/tensorboard/"
    scalars = read_tensorboard_scalars(tmp_path / "ckpt" / "tensorboard")
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3, 4]
    for (_, tb), (_, ml) in zip(scalars["loss"], loss):
        assert tb == pytest.approx(ml, rel=1e-6)  # float32 in the event file
    assert [s for s, _ in scalars["eval_loss"]] == [2, 4] and "golden_pass_rate" in scalars


class _Gate:
    """A TCP port that refuses connections until opened, then forwards to the real server."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()  # nothing listens: connection refused
        self.sock: socket.socket | None = None

    def open(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def test_logs_made_while_the_tracker_is_down_are_retried_until_it_takes_them(mlflow_server):
    from sft_trainer.tracking import MlflowRest, MlflowTracker

    host, port = mlflow_server.url[len("http://"):].split(":")
    gate = _Gate((host, int(port)))
    health: list[tuple[bool, str | None]] = []
    tracker = MlflowTracker(MlflowRest(f"http://127.0.0.1:{gate.port}", {}), "retries", "retry-run", "ns/retry/uid-1",
                            {}, on_health=lambda ok, msg: health.append((ok, msg)), retry_seconds=0.2,
                            max_retry_seconds=1.0)
    try:
        tracker.log_params({"lora_r": 16})
        for step in range(1, 6):
            tracker.log_metrics({"loss": 5.0 - step}, step)
        deadline = time.monotonic() + 30
        while not health and time.monotonic() < deadline:
            time.sleep(0.1)
        assert health and health[0][0] is False, health
        assert "Connection refused" in health[0][1] and "logs wait for a retry" in health[0][1]
        assert tracker.run_id is None and not tracker.flush(0.5)
        gate.open()  # the server is back
        for step in range(6, 8):
            tracker.log_metrics({"loss": 5.0 - step}, step)
        assert tracker.flush(30), tracker.last_error
        assert health[-1] == (True, None) and tracker.healthy is True
        tracker.set_status("FINISHED")
        assert tracker.close(30)
    finally:
        gate.close()
    run = mlflow_server.api("GET", "runs/get", query=f"run_id={tracker.run_id}")["run"]
    assert {p["key"]: p["value"] for p in run["data"]["params"]} == {"lora_r": "16"}
    assert run["info"]["status"] == "FINISHED"
    assert _history(mlflow_server, tracker.run_id, "loss") == [(s, 5.0 - s) for s in range(1, 8)]


def test_a_tracker_that_is_down_does_not_fail_the_training(tmp_path):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    job = _job(tmp_path, {"mlflow": {"trackingUri": f"http://127.0.0.1:{port}"}}, "untracked")
    res = run_entrypoint(job, tmp_path / "work", env=trainer_env())
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    result = json.loads((tmp_path / "work" / "result.json").read_text())
    assert result["global_step"] == 4 and result["test_loss"] is not None
    tracking = result["tracking"]
    assert tracking["healthy"] is False and "Connection refused" in tracking["message"], tracking
    assert "mlflowRunId" not in tracking
    assert "training goes on, the logs are retried" in out
