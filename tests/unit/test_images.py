"""The images and the pods agree: one uid, a read-only root filesystem with every write under the
pods' emptyDirs, the base image as a build argument, the entry points the operator and the chart use.
(The images themselves are built and run on the real node by tests/e2e/test_e2e_realnode.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from sft_api.contract import TRAINER_UID

ROOT = Path(__file__).resolve().parents[2]
TRAINER = (ROOT / "trainer-image" / "Dockerfile").read_text()
OPERATOR = (ROOT / "operator" / "Dockerfile").read_text()
VALUES = yaml.safe_load((ROOT / "charts" / "sft-operator" / "values.yaml").read_text())


def _env(dockerfile: str) -> dict[str, str]:
    block = re.search(r"^ENV (.+?)(?:\n\n|\n[A-Z]+ )", dockerfile, re.M | re.S).group(1)
    return dict(re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " ")))


def _sftjob():
    from sft_api.models import SFTJob

    return SFTJob.model_validate({
        "apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "demo", "namespace": "ml"},
        "spec": {"model": {"uri": "builtin://tiny-llama"}, "datasets": [{"uri": "data/train.jsonl"}],
                 "training": {"maxSteps": 4}, "workers": {"nodes": 1, "gpusPerNode": 0}}})


def test_trainer_image_user_is_the_pods_run_as_user():
    from sft_operator.children import render
    from sft_operator.settings import OperatorSettings

    assert TRAINER_UID >= 10000
    assert re.findall(r"^USER (\S+)$", TRAINER, re.M) == [str(TRAINER_UID)]
    assert re.findall(r"^ARG SFT_UID=(\d+)$", TRAINER, re.M) == [str(TRAINER_UID)]
    assert OperatorSettings().run_as_user == TRAINER_UID
    (job,) = [o for o in render(_sftjob(), settings=OperatorSettings()) if o["kind"] == "Job"]
    sc = job["spec"]["template"]["spec"]["securityContext"]
    assert sc["runAsUser"] == sc["runAsGroup"] == sc["fsGroup"] == TRAINER_UID


@pytest.mark.parametrize("which", ["trainer", "preflight"])
def test_trainer_pods_have_a_read_only_root_and_write_only_under_tmp(which):
    from sft_operator.children import render, render_preflight
    from sft_operator.settings import OperatorSettings

    objs = (render(_sftjob(), settings=OperatorSettings()) if which == "trainer"
            else render_preflight(_sftjob(), attempt=1, spec_hash="x", settings=OperatorSettings()))
    (job,) = [o for o in objs if o["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    scratch = {m["mountPath"] for m in c["volumeMounts"] if m["name"] == "scratch"}
    assert scratch == {"/tmp"} and {"name": "scratch", "emptyDir": {}} in pod["volumes"]
    env = _env(TRAINER)
    for key in ("HOME", "HF_HOME", "MPLCONFIGDIR", "TRITON_CACHE_DIR", "SFT_WORKDIR"):
        assert env[key] == "/tmp" or env[key].startswith("/tmp/"), f"{key}={env[key]} is not on the emptyDir"
    # the working directory is read-only: it holds the examples' data, which scheme-less input paths
    # resolve against; the trainer moves to SFT_WORKDIR for scheme-less outputs (sft_trainer.__main__)
    assert re.findall(r"^WORKDIR (\S+)$", TRAINER, re.M)[-1] == "/opt/sft-operator/examples"
    assert "COPY examples/data/ /opt/sft-operator/examples/data/" in TRAINER


def test_operator_image_user_is_the_charts_run_as_user():
    psc = VALUES["operator"]["podSecurityContext"]
    assert VALUES["operator"]["securityContext"]["readOnlyRootFilesystem"] is True
    assert re.findall(r"^USER (\S+)$", OPERATOR, re.M) == [f"{psc['runAsUser']}:{psc['runAsGroup']}"]
    assert re.findall(r"^ARG SFT_UID=(\d+)$", OPERATOR, re.M) == [str(psc["runAsUser"])]
    assert _env(OPERATOR)["HOME"] == "/tmp"  # the chart's only writable mount
    assert re.findall(r"^WORKDIR (\S+)$", OPERATOR, re.M)[-1] == "/tmp"


def test_entry_points_are_what_the_chart_and_the_operator_run():
    from sft_operator.children import TRAINER_COMMAND

    chart = (ROOT / "charts" / "sft-operator" / "templates" / "operator" / "deployment.yaml").read_text()
    assert 'command: ["python", "-m", "sft_operator.run_operator"]' in chart
    assert re.findall(r"^ENTRYPOINT (.+)$", OPERATOR, re.M) == ['["python", "-m", "sft_operator.run_operator"]']
    assert TRAINER_COMMAND[:3] == ["python", "-m", "sft_trainer"]


@pytest.mark.parametrize("dockerfile", [TRAINER, OPERATOR], ids=["trainer", "operator"])
def test_base_image_is_a_build_argument(dockerfile):
    (base,) = re.findall(r"^FROM (\S+)$", dockerfile, re.M)
    assert base == "${BASE_IMAGE}"
    assert re.search(r"^ARG BASE_IMAGE=\S+$", dockerfile[: dockerfile.index("FROM ")], re.M)
    # an offline wheelhouse is optional: without it pip uses the index
    assert '${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"}' in dockerfile


def test_each_image_copies_only_its_own_package():
    assert "COPY operator/" in OPERATOR and "COPY trainer-image/" not in OPERATOR
    assert "COPY trainer-image/" in TRAINER and "COPY operator/" not in TRAINER


def test_image_cache_key_follows_the_inputs(tmp_path):
    from sft_dev import images

    spec = images.IMAGES["operator"]
    base = tmp_path / "wheels-a"
    a = images.input_digest(spec, "localhost/sft-base:x", base)
    assert a == images.input_digest(spec, "localhost/sft-base:x", base)
    assert a != images.input_digest(spec, "localhost/sft-base:y", base)
    assert a != images.input_digest(spec, "localhost/sft-base:x", tmp_path / "wheels-b")
    other = images.ImageSpec(**{**spec.__dict__, "build_args": (("EXTRAS", "x"),)})
    assert a != images.input_digest(other, "localhost/sft-base:x", base)
    assert images.IMAGES["trainer"].build_args == (("EXTRAS", "trainer"),)  # the CPU variant
