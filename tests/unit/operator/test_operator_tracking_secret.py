"""spec.tracking.mlflow.secretRef reaches the trainer pods' environment through envFrom, beside the
storage Secret; the CPU preflight pod (no tracking) gets only the storage Secret."""

from __future__ import annotations

from sftop_factories import sftjob

from sft_operator.children import render
from sft_operator.settings import OperatorSettings

S = OperatorSettings(trainer_image="trainer:default", master_port=29500, trainer_metrics_port=9400,
                     termination_grace_seconds=900, shm_size="8Gi", storage_endpoint="http://s3.default:8333")


def _trainer_container(body):
    job = next(o for o in render(body, settings=S) if o["kind"] == "Job")
    return job["spec"]["template"]["spec"]["containers"][0]


def test_the_tracking_secret_is_injected_beside_the_storage_secret():
    body = sftjob(extra_spec={"tracking": {"mlflow": {"trackingUri": "http://mlflow.mlops:5000",
                                                      "secretRef": "mlflow-credentials"}}})
    assert _trainer_container(body)["envFrom"] == [{"secretRef": {"name": "s3-credentials"}},
                                                   {"secretRef": {"name": "mlflow-credentials"}}]


def test_without_a_tracking_secret_only_the_storage_secret_is_injected():
    body = sftjob(extra_spec={"tracking": {"mlflow": {"trackingUri": "http://mlflow.mlops:5000"}}})
    assert _trainer_container(body)["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    body = sftjob(extra_spec={"storage": {"endpoint": "http://127.0.0.1:8333"},
                              "tracking": {"mlflow": {"trackingUri": "http://m:5000", "secretRef": "mlflow"}}})
    assert _trainer_container(body)["envFrom"] == [{"secretRef": {"name": "mlflow"}}]
