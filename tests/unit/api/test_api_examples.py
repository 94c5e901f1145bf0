"""Every example is a valid SFTJob, and the rendered children are well-formed."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sft_api import SFTJob, load_sftjob
from sft_operator.cli import app

EXAMPLES = sorted((Path(__file__).parents[3] / "examples").glob("*.yaml"))


def test_examples_cover_the_documented_scenarios():
    names = {p.stem for p in EXAMPLES}
    assert "quickstart" in names
    jobs = [load_sftjob(p) for p in EXAMPLES]
    assert any(j.spec.method.type == "qlora" for j in jobs)
    assert any(j.spec.method.type == "full" and j.spec.training.deepspeed and j.spec.training.deepspeed.zero_stage == 3 for j in jobs)
    assert any(
        j.spec.method.type == "lora" and j.spec.workers.nodes == 2 and j.spec.workers.gpus_per_node == 8
        and j.spec.training.deepspeed and j.spec.training.deepspeed.zero_stage == 2
        for j in jobs
    )
    assert any("kueue.x-k8s.io/queue-name" in j.metadata.labels for j in jobs)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_validates(path: Path):
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "valid SFTJob" in result.output


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_renders_children(path: Path):
    result = CliRunner().invoke(app, ["render", str(path)])
    assert result.exit_code == 0, result.output
    objects = list(yaml.safe_load_all(result.stdout))
    kinds = [o["kind"] for o in objects]
    assert "Job" in kinds and "Service" in kinds and "ConfigMap" in kinds
    job = SFTJob.model_validate(yaml.safe_load(path.read_text()))
    (batch,) = [o for o in objects if o["kind"] == "Job"]
    assert batch["spec"]["parallelism"] == batch["spec"]["completions"] == job.spec.workers.nodes
    assert batch["spec"]["completionMode"] == "Indexed"
    per_job = {"ServiceAccount", "Role", "RoleBinding"}  # shared by every attempt: no attempt label
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["sft.dev/job-name"] == job.metadata.name
        if obj["kind"] in per_job:
            assert "sft.dev/attempt" not in labels, obj["kind"]
        else:
            assert labels["sft.dev/attempt"] == "1", obj["kind"]
    assert per_job <= set(kinds)


def test_round_trip_keeps_wire_names():
    job = load_sftjob(EXAMPLES[0])
    manifest = job.to_manifest()
    assert SFTJob.model_validate(manifest, by_alias=True, by_name=False) == job
    assert "maxSeqLength" in manifest["spec"]["training"]
