"""imagePullSecrets of trainer and preflight pods: the spec's list wins, else the operator's default."""

import pytest
from sftop_factories import sftjob

from sft_api.models import SFTJob
from sft_operator.children import render, render_preflight
from sft_operator.settings import OperatorSettings

DEFAULT = OperatorSettings(trainer_image="t:1", image_pull_secrets=[{"name": "chart-regcred"}])


def pull_secrets(objs):
    [job] = [o for o in objs if o["kind"] == "Job"]
    return job["spec"]["template"]["spec"].get("imagePullSecrets")


def with_secrets(secrets, **kw):
    body = sftjob(**kw)
    if secrets is not None:
        body["spec"]["workers"]["imagePullSecrets"] = secrets
    return body


@pytest.mark.parametrize("spec, settings, expected", [
    pytest.param(None, DEFAULT, [{"name": "chart-regcred"}], id="unset spec uses the chart default"),
    pytest.param([{"name": "team-regcred"}], DEFAULT, [{"name": "team-regcred"}], id="the spec's list wins"),
    pytest.param([], DEFAULT, None, id="an empty spec list means none"),
    pytest.param(None, OperatorSettings(trainer_image="t:1"), None, id="neither set renders no field"),
])
def test_precedence(spec, settings, expected):
    assert pull_secrets(render(with_secrets(spec), settings=settings)) == expected


def test_preflight_pod_pulls_the_same_image_with_the_same_secrets():
    body = with_secrets([{"name": "team-regcred"}], preflight=True)
    assert pull_secrets(render_preflight(body, attempt=1, spec_hash="h", settings=DEFAULT)) == [{"name": "team-regcred"}]
    assert pull_secrets(render_preflight(sftjob(preflight=True), attempt=1, spec_hash="h", settings=DEFAULT)) == [
        {"name": "chart-regcred"}]


def test_the_model_validates_the_field():
    body = with_secrets([{"name": "regcred"}])
    job = SFTJob.model_validate(body)
    assert job.spec.workers.image_pull_secrets[0].name == "regcred"
    assert SFTJob.model_validate(sftjob()).spec.workers.image_pull_secrets is None
    with pytest.raises(ValueError, match="imagePullSecrets.0.name"):
        SFTJob.model_validate(with_secrets([{"name": "Not_A_Name"}]))
    with pytest.raises(ValueError, match="imagePullSecrets.0.secret"):
        SFTJob.model_validate(with_secrets([{"name": "a", "secret": "b"}]))


@pytest.mark.parametrize("raw, expected", [
    pytest.param('[{"name": "a"}, {"name": "b"}]', [{"name": "a"}, {"name": "b"}], id="references"),
    pytest.param('["a"]', [{"name": "a"}], id="plain names"),
    pytest.param("", [], id="unset"),
])
def test_setting_from_env(monkeypatch, raw, expected):
    monkeypatch.setenv("SFT_IMAGE_PULL_SECRETS", raw)
    assert OperatorSettings.from_env().image_pull_secrets == expected


def test_bad_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("SFT_IMAGE_PULL_SECRETS", '[{"nam": "a"}]')
    with pytest.raises(ValueError, match="SFT_IMAGE_PULL_SECRETS"):
        OperatorSettings.from_env()
