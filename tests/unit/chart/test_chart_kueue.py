"""The chart value trainer.defaultQueueName: the operator's default Kueue LocalQueue (under helm 3 and 4)."""

from __future__ import annotations

from pathlib import Path

from sft_operator.settings import OperatorSettings

CHART = Path(__file__).resolve().parents[3] / "charts" / "sft-operator"


def _env(docs):
    dep = next(d for d in docs if d and d.get("kind") == "Deployment")
    return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_default_queue_reaches_the_operator(render, monkeypatch):
    env = _env(render("--set", "trainer.defaultQueueName=gpu-queue"))
    assert env["SFT_DEFAULT_QUEUE_NAME"] == "gpu-queue"
    monkeypatch.setenv("SFT_DEFAULT_QUEUE_NAME", env["SFT_DEFAULT_QUEUE_NAME"])
    assert OperatorSettings.from_env().default_queue_name == "gpu-queue"


def test_no_default_queue_by_default(render):
    assert "SFT_DEFAULT_QUEUE_NAME" not in _env(render())


def test_the_schema_refuses_an_invalid_queue_name(run_helm):
    p = run_helm("template", "x", str(CHART), "--set", "trainer.defaultQueueName=Not_A_Name", check=False)
    assert p.returncode != 0 and "defaultQueueName" in p.stderr
