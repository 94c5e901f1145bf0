"""Kueue's labels on the child Job: the queue name and the WorkloadPriorityClass pass through from the
SFTJob; the operator's default queue (chart value trainer.defaultQueueName) applies to unlabelled jobs."""

from __future__ import annotations

import dataclasses

import pytest
from sftop_factories import sftjob

from sft_operator.children import render
from sft_operator.settings import OperatorSettings

S = OperatorSettings(trainer_image="trainer:default", storage_endpoint="http://s3.default:8333")
Q, P = "kueue.x-k8s.io/queue-name", "kueue.x-k8s.io/priority-class"


def _job(labels, settings=S):
    return next(o for o in render(sftjob(labels=labels), settings=settings) if o["kind"] == "Job")


@pytest.mark.parametrize("labels, default, want, suspended", [
    pytest.param({Q: "team-a", P: "high"}, None, {Q: "team-a", P: "high"}, True, id="queue and priority class pass through"),
    pytest.param({}, "shared", {Q: "shared"}, True, id="an unlabelled job goes to the default queue"),
    pytest.param({Q: "team-a"}, "shared", {Q: "team-a"}, True, id="the job's own queue wins over the default"),
    pytest.param({P: "high"}, None, {P: "high"}, False, id="a priority class alone does not queue the job"),
    pytest.param({}, None, {}, False, id="no queue: not suspended, no Kueue labels"),
])
def test_kueue_labels_reach_the_job(labels, default, want, suspended):
    job = _job(labels, dataclasses.replace(S, default_queue_name=default))
    got = {k: v for k, v in job["metadata"]["labels"].items() if k.startswith("kueue.x-k8s.io/")}
    assert got == want
    assert job["spec"]["suspend"] is suspended


def test_default_queue_from_the_environment(monkeypatch):
    monkeypatch.setenv("SFT_DEFAULT_QUEUE_NAME", "shared")
    assert OperatorSettings.from_env().default_queue_name == "shared"
    monkeypatch.setenv("SFT_DEFAULT_QUEUE_NAME", "")
    assert OperatorSettings.from_env().default_queue_name is None


def test_topology_annotations_reach_the_gangs_pod_template():
    body = sftjob(annotations={"kueue.x-k8s.io/podset-required-topology": "cloud.provider.com/topology-rack",
                               "sft.dev/max-train-seconds": "60"})
    job = next(o for o in render(body, settings=S) if o["kind"] == "Job")
    assert job["spec"]["template"]["metadata"]["annotations"] == {
        "kueue.x-k8s.io/podset-required-topology": "cloud.provider.com/topology-rack"}
    plain = next(o for o in render(sftjob(), settings=S) if o["kind"] == "Job")
    assert "annotations" not in plain["spec"]["template"]["metadata"]
