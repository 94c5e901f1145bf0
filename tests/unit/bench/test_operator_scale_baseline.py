"""bench/operator_scale.py's job_controller_baseline: the plain Job is the operator's own rendered Job
for the same SFTJob (same pod template, parallelism = completions = nodes), minus what ties it to an
SFTJob; and the harness's Prometheus-text parsing that the per-job request figures come from."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from sft_operator.children import render
from sft_operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("operator_scale_bench", REPO / "bench" / "operator_scale.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def test_plain_job_has_the_operators_pod_template(bench):
    plain = bench.plain_job("plain-0007", 3, 2)
    body = {**bench.manifest("plain-0007", 3, 2), "metadata": {"name": "plain-0007", "namespace": "plain"}}
    [ours] = [o for o in render(body, attempt=1, settings=OperatorSettings()) if o["kind"] == "Job"]
    assert plain["spec"]["parallelism"] == plain["spec"]["completions"] == 3
    assert plain["spec"]["completionMode"] == "Indexed" and plain["spec"]["suspend"] is False
    got, want = plain["spec"]["template"]["spec"], ours["spec"]["template"]["spec"]
    assert got["containers"] == want["containers"]  # same image, command, env, resources (2 GPUs)
    assert got["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] in (2, "2")
    assert {k for k in got if got[k] != want.get(k)} == {"serviceAccountName"}  # "default": no per-job SA there
    assert plain["metadata"] == {"name": "plain-0007", "labels": {bench.PLAIN_LABEL: "plain-0007"}}
    assert "sft.dev/job-name" not in plain["spec"]["template"]["metadata"]["labels"]  # the operator ignores it


def test_request_counts_per_job(bench):
    before = "apiserver_request_total{code=\"201\",resource=\"pods\",subresource=\"\",verb=\"POST\"} 10\n"
    after = ("# HELP apiserver_request_total x\n"
             "apiserver_request_total{code=\"201\",resource=\"pods\",subresource=\"\",verb=\"POST\"} 30\n"
             "apiserver_request_total{code=\"409\",resource=\"pods\",subresource=\"\",verb=\"POST\"} 2\n"
             "apiserver_request_total_other{resource=\"pods\",verb=\"POST\"} 99\n")
    keys = ("verb", "resource", "subresource")
    delta = bench._delta(bench._samples(after, "apiserver_request_total", keys),
                         bench._samples(before, "apiserver_request_total", keys), 4)
    assert delta == {"POST pods ": 5.5}  # (30 + 2 - 10) / 4 jobs; another metric's prefix is not counted
