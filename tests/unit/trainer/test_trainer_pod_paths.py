"""In a pod, the quickstart's relative paths: inputs stay relative to the working directory (the
trainer image's, which holds examples/data), outputs move under the writable work dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from sft_api import load_sftjob
from sft_trainer.__main__ import _outputs_under

ROOT = Path(__file__).resolve().parents[3]


def test_quickstart_outputs_go_under_the_work_dir_and_its_data_stays_relative(tmp_path):
    job = load_sftjob(ROOT / "examples" / "quickstart.yaml")
    _outputs_under(job, tmp_path / "work")
    assert job.spec.checkpoints.uri == str(tmp_path / "work" / "runs" / "quickstart" / "checkpoints")
    assert job.spec.output.uri == str(tmp_path / "work" / "runs" / "quickstart" / "model")
    assert job.spec.datasets[0].uri == "data/quickstart/train.jsonl"
    # the image's working directory has the data at those relative paths
    assert (ROOT / "examples" / job.spec.datasets[0].uri).is_file()
    assert (ROOT / "examples" / job.spec.eval.golden_set.uri).is_file()


@pytest.mark.parametrize("uri", ["s3://bucket/ckpt", "/data/ckpt", "file:///data/ckpt"])
def test_absolute_and_remote_outputs_are_left_alone(tmp_path, uri):
    job = load_sftjob(ROOT / "examples" / "quickstart.yaml")
    job.spec.checkpoints.uri = uri
    _outputs_under(job, tmp_path)
    assert job.spec.checkpoints.uri == uri
