"""Every invalid SFTJob in invalid/ is rejected by sftctl with the message its header expects."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sft_api import load_document, validate_document
from sft_operator.cli import app

HERE = Path(__file__).parent
CASES = sorted((HERE / "invalid").glob("*.yaml"))
NOT_SFTJOB = {
    "empty.yaml": "the file is empty; expected one SFTJob document",
    "comments-only.yaml": "the file is empty; expected one SFTJob document",
    "configmap.yaml": "kind is 'ConfigMap', not 'SFTJob'; this file is not an SFTJob",
    "wrong-apiversion.yaml": "apiVersion is 'sft.dev/v1beta9'; SFTJob is served as 'sft.dev/v1alpha1'",
    "two-docs.yaml": "found 2 YAML documents; put one SFTJob per file",
    "broken-yaml.yaml": "not valid YAML",
    "list.yaml": "expected a mapping with apiVersion, kind, metadata and spec",
}


def header(path: Path, key: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"# {key}: "):
            return line.split(": ", 1)[1]
    raise AssertionError(f"{path.name} has no '# {key}:' header")


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_invalid_spec_is_rejected_with_its_message(path: Path):
    doc, _ = load_document(path)
    problems = [str(p) for p in validate_document(doc)]
    expect = header(path, "expect")
    assert any(expect in p for p in problems), f"expected {expect!r} in {problems}"
    # The message names the field, as the apiserver must too.
    field = header(path, "field")
    assert any(p.startswith(field.split("[")[0].rsplit(".", 1)[0]) for p in problems), problems


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_cli_validate_fails_without_traceback(path: Path):
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert header(path, "expect") in result.output


@pytest.mark.parametrize("name,message", sorted(NOT_SFTJOB.items()))
def test_not_an_sftjob_gets_one_clear_line(name: str, message: str):
    path = HERE / "not_sftjob" / name
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert message in lines[0] and str(path) in lines[0]


def test_missing_file_is_one_clear_line():
    result = CliRunner().invoke(app, ["validate", "no/such/job.yaml"])
    assert result.exit_code == 1
    assert "no/such/job.yaml: cannot read: No such file or directory" in result.output


def test_every_problem_is_reported_at_once():
    doc, _ = load_document(HERE / "invalid" / "zero-learning-rate.yaml")
    doc["spec"]["training"]["precision"] = "int8"
    doc["spec"]["workers"]["nodes"] = 0
    doc["spec"]["split"] = {"validation": 0.4, "test": 0.4}
    paths = {p.path for p in validate_document(doc)}
    assert {"spec.training.learningRate", "spec.training.precision", "spec.workers.nodes", "spec.split"} <= paths
