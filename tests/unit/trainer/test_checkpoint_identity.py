"""Checkpoint identity: the training spec hash, the manifest's identity, and which committed
checkpoint a run may resume (resume.py), against real checkpoint directories on the local disk."""

from __future__ import annotations

import copy
import json

import pytest

from sft_api.training_identity import TRAINING_FIELDS, RunIdentity, spec_hash, training_fields
from sft_trainer.checkpoint_store import MARKER, CheckpointStore
from sft_trainer.exit_codes import CONFIG_ERROR, ConfigError
from sft_trainer.resume import choose

BASE = {
    "model": {"uri": "builtin://tiny-llama"},
    "datasets": [{"uri": "train.jsonl"}],
    "training": {"maxSteps": 100, "learningRate": 2e-3},
}


def _with(path: str, value):
    spec = copy.deepcopy(BASE)
    node = spec
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return spec


def test_training_fields_are_the_documented_list():
    assert [name for name, _ in TRAINING_FIELDS] == ["model", "datasets", "split", "method", "training", "workers"]
    assert dict(TRAINING_FIELDS)["workers"] == ("nodes", "gpusPerNode")


@pytest.mark.parametrize("path,value", [
    pytest.param("training.learningRate", 1e-4, id="learning-rate"),
    pytest.param("training.maxSteps", 200, id="max-steps"),
    pytest.param("training.seed", 7, id="seed"),
    pytest.param("model.uri", "hf://org/other", id="model"),
    pytest.param("model.chatTemplate", "{{ x }}", id="chat-template"),
    pytest.param("datasets", [{"uri": "other.jsonl"}], id="datasets"),
    pytest.param("split.seed", 1, id="split-seed"),
    pytest.param("method.lora", {"r": 8}, id="lora-rank"),
    pytest.param("method.type", "full", id="method"),
    pytest.param("workers.nodes", 2, id="nodes"),
    pytest.param("workers.gpusPerNode", 8, id="gpus-per-node"),
])
def test_a_training_change_changes_the_hash(path, value):
    assert spec_hash(_with(path, value)) != spec_hash(BASE)


@pytest.mark.parametrize("path,value", [
    pytest.param("suspend", True, id="suspend"),
    pytest.param("ttlSecondsAfterFinished", 5, id="ttl"),
    pytest.param("activeDeadlineSeconds", 60, id="deadline"),
    pytest.param("workers.image", "trainer:v2", id="image"),
    pytest.param("workers.resources", {"requests": {"cpu": "8"}}, id="resources"),
    pytest.param("workers.env", [{"name": "X", "value": "1"}], id="env"),
    pytest.param("failurePolicy", {"maxRestarts": 9}, id="failure-policy"),
    pytest.param("checkpoints", {"uri": "file:///ckpt/x", "everySteps": 7, "keep": 1, "resumeFrom": "latest"},
                 id="checkpoints"),
    pytest.param("eval", {"everySteps": 3}, id="eval"),
    pytest.param("output", {"uri": "file:///out"}, id="output"),
    pytest.param("storage", {"endpoint": "http://s3:9000", "secretRef": "s3"}, id="storage"),
    pytest.param("training.learningRate", 2e-3, id="same-value-spelled-again"),
    pytest.param("split", {"validation": 0.1, "test": 0.05, "seed": 42}, id="defaults-spelled-out"),
])
def test_an_operational_change_keeps_the_hash(path, value):
    assert spec_hash(_with(path, value)) == spec_hash(BASE)


def test_hash_of_the_model_equals_the_hash_of_its_mapping():
    from sft_api.models import SFTJobSpec

    spec = SFTJobSpec.model_validate(BASE)
    assert spec_hash(spec) == spec_hash(BASE)
    assert training_fields(spec)["training"] == {"maxSteps": 100, "learningRate": 2e-3}
    assert len(spec_hash(spec)) == 64


# ------------------------------------------------------------------------------------- resume choice
ME = RunIdentity(spec_hash="a" * 64, job_uid="uid-1", job_name="job", attempt=2)
OTHER_SPEC = RunIdentity(spec_hash="b" * 64, job_uid="uid-1", job_name="job", attempt=1)
OTHER_JOB = RunIdentity(spec_hash="a" * 64, job_uid="uid-2", job_name="job", attempt=1)


def _commit(root, step: int, owner: RunIdentity | None, tmp_path):
    src = tmp_path / f"src-{step}-{owner.job_uid if owner else 'none'}"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"w" * step)
    CheckpointStore(str(root), owner=owner).commit(src, step)


def test_manifest_records_the_identity_and_attempt(tmp_path):
    root = tmp_path / "ckpt"
    _commit(root, 5, ME, tmp_path)
    manifest = json.loads((root / "checkpoint-5" / MARKER).read_text())
    assert manifest["identity"] == {"jobUid": "uid-1", "specHash": "a" * 64, "jobName": "job", "attempt": 2}
    assert manifest["format"] == 2


def test_own_checkpoint_is_resumed(tmp_path):
    root = tmp_path / "ckpt"
    _commit(root, 5, ME, tmp_path)
    _commit(root, 10, ME, tmp_path)
    choice = choose(CheckpointStore(str(root), owner=ME), ME, None)
    assert (choice.why, choice.checkpoint.step) == ("own", 10)


@pytest.mark.parametrize("writer", [pytest.param(OTHER_SPEC, id="changed-spec"),
                                    pytest.param(OTHER_JOB, id="other-job-uid"),
                                    pytest.param(None, id="no-identity")])
def test_foreign_checkpoint_fails_before_training_naming_the_fields(tmp_path, writer):
    root = tmp_path / "ckpt"
    _commit(root, 100, writer, tmp_path)
    with pytest.raises(ConfigError) as e:
        choose(CheckpointStore(str(root), owner=ME), ME, None)
    msg = str(e.value)
    assert e.value.exit_code == CONFIG_ERROR == 64
    assert "spec.checkpoints.uri" in msg and "spec.checkpoints.resumeFrom" in msg
    assert "checkpoint-100" in msg


def test_resume_from_latest_continues_another_run(tmp_path):
    root = tmp_path / "ckpt"
    _commit(root, 100, OTHER_SPEC, tmp_path)
    choice = choose(CheckpointStore(str(root), owner=ME), ME, "latest", max_steps=200)
    assert (choice.why, choice.checkpoint.step) == ("resumeFrom", 100)


def test_resume_from_a_checkpoint_uri_elsewhere(tmp_path):
    other = tmp_path / "other"
    _commit(other, 40, OTHER_JOB, tmp_path)
    _commit(other, 80, OTHER_JOB, tmp_path)
    mine = CheckpointStore(str(tmp_path / "mine"), owner=ME)
    choice = choose(mine, ME, f"file://{other}/checkpoint-40/", max_steps=200)
    assert choice.checkpoint.step == 40 and choice.source.root == str(other)
    assert choose(mine, ME, str(other), max_steps=200).checkpoint.step == 80  # a prefix: its newest


@pytest.mark.parametrize("resume_from,needle", [
    pytest.param("latest", "no committed checkpoint under spec.checkpoints.uri", id="latest-empty"),
    pytest.param("{other}/checkpoint-7", "not a committed checkpoint", id="missing-step"),
    pytest.param("{other}/nothing-here", "no committed checkpoint under", id="empty-prefix"),
])
def test_bad_resume_from_names_the_field(tmp_path, resume_from, needle):
    other = tmp_path / "other"
    _commit(other, 40, OTHER_JOB, tmp_path)
    with pytest.raises(ConfigError) as e:
        choose(CheckpointStore(str(tmp_path / "mine"), owner=ME), ME, resume_from.format(other=other))
    assert "spec.checkpoints.resumeFrom" in str(e.value) and needle in str(e.value)


def test_resume_from_at_or_past_max_steps_is_refused(tmp_path):
    root = tmp_path / "ckpt"
    _commit(root, 100, OTHER_SPEC, tmp_path)
    with pytest.raises(ConfigError, match=r"spec.training.maxSteps: 100 is not beyond step 100"):
        choose(CheckpointStore(str(root), owner=ME), ME, "latest", max_steps=100)


def test_own_checkpoints_win_over_resume_from(tmp_path):
    root = tmp_path / "ckpt"
    _commit(root, 100, OTHER_SPEC, tmp_path)
    _commit(root, 150, ME, tmp_path)
    choice = choose(CheckpointStore(str(root), owner=ME), ME, "latest", max_steps=200)
    assert (choice.why, choice.checkpoint.step) == ("own", 150)


def test_a_newer_foreign_checkpoint_means_two_writers(tmp_path):
    root = tmp_path / "ckpt"
    _commit(root, 50, ME, tmp_path)
    _commit(root, 60, OTHER_JOB, tmp_path)
    with pytest.raises(ConfigError, match="two runs are writing one prefix"):
        choose(CheckpointStore(str(root), owner=ME), ME, None)


def test_retention_deletes_only_the_owners_checkpoints(tmp_path):
    root = tmp_path / "ckpt"
    _commit(root, 10, OTHER_SPEC, tmp_path)
    for step in (20, 30, 40):
        _commit(root, step, ME, tmp_path)
    store = CheckpointStore(str(root), owner=ME)
    assert store.apply_retention(keep=1) == [20, 30]
    assert [c.step for c in store.committed()] == [10, 40]


def test_run_identity_reads_the_uid_the_attempt_and_the_spec():
    from sft_api.models import SFTJob
    from sft_trainer.resume import run_identity

    job = SFTJob.model_validate({"apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob",
                                 "metadata": {"name": "j", "uid": "0b7c-uid"}, "spec": BASE})
    me = run_identity(job, {"SFT_ATTEMPT": "3"})
    assert (me.job_uid, me.attempt, me.job_name, me.spec_hash) == ("0b7c-uid", 3, "j", spec_hash(BASE))
    # no metadata.uid (a ConfigMap without it): SFT_JOB_UID, else none, as under sftctl run
    job = SFTJob.model_validate({"apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob",
                                 "metadata": {"name": "j"}, "spec": BASE})
    assert run_identity(job, {"SFT_JOB_UID": "env-uid"}).job_uid == "env-uid"
    assert run_identity(job, {}).job_uid is None and run_identity(job, {}).attempt is None
