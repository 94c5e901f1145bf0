"""lineage.py without training: the digest's stability, the reason classes and the per-source counts
(malformed, unmaskable, not sampled by the weighted mix) on real files read by data.py."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest

from sft_api.models import SFTJob
from sft_trainer.config import ResolvedConfig
from sft_trainer.data import load_datasets
from sft_trainer.lineage import before_preflight, counts_match_preflight, dataset_entry, digest, object_facts, _reason_class


def _row(task: str, i: int) -> str:
    return json.dumps({"task_type": task, "messages": [{"role": "user", "content": f"q{i}"},
                                                       {"role": "assistant", "content": f"a{i}"}]})


def _cfg(tmp_path, datasets, split=None) -> ResolvedConfig:
    job = SFTJob.model_validate({
        "apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "lin"},
        "spec": {"model": {"uri": "builtin://tiny-llama"}, "datasets": datasets,
                 "split": split or {"validation": 0.1, "test": 0.1, "seed": 3},
                 "training": {"maxSteps": 1, "maxSeqLength": 32}, "workers": {"gpusPerNode": 0}}})
    return ResolvedConfig.from_job(job, workdir=tmp_path / "w", base_dir=tmp_path, cuda=False)


MANIFEST = {"format": 1, "writtenAt": "2026-12-01T00:00:00Z", "run": {"job": "a"},
            "datasets": [{"uri": "s3://b/k", "sha256": "ab", "bytes": 3, "etag": "e1", "versionId": "v1",
                          "lastModified": "t1", "rowsRead": 3}],
            "trainingFields": {"training": {"maxSteps": 1}}, "spec": {"checkpoints": {"uri": "/x"}}}


@pytest.mark.parametrize("change, same", [
    pytest.param(lambda m: m.update(writtenAt="2027-01-01T00:00:00Z"), True, id="another write time keeps the digest"),
    pytest.param(lambda m: m["datasets"][0].update(etag="e2", versionId="v2", lastModified="t2"), True,
                 id="a re-upload of the same bytes (new etag, version, time) keeps the digest"),
    pytest.param(lambda m: m["spec"]["checkpoints"].update(uri="/y"), True,
                 id="another checkpoints location keeps the digest"),
    pytest.param(lambda m: m["datasets"][0].update(sha256="cd"), False, id="other bytes change the digest"),
    pytest.param(lambda m: m["datasets"][0].update(rowsRead=4), False, id="other counts change the digest"),
    pytest.param(lambda m: m["trainingFields"]["training"].update(maxSteps=2), False,
                 id="another training spec changes the digest"),
])
def test_digest_covers_what_trains_the_model(change, same):
    other = copy.deepcopy(MANIFEST)
    change(other)
    assert digest(MANIFEST).startswith("sha256:") and len(digest(MANIFEST)) == 71
    assert (digest(other) == digest(MANIFEST)) is same


@pytest.mark.parametrize("reason, cls", [
    ("invalid JSON: Expecting ',' delimiter (column 20)", "invalid JSON"),
    ("messages[3].role 'bot' is not one of system, user, assistant", "messages[*].role 'bot' is not one of system, user, assistant"),
    ("no assistant turn to train on", "no assistant turn to train on"),
])
def test_reason_classes_drop_row_specific_detail(reason, cls):
    assert _reason_class(reason) == cls


def test_object_facts_hash_the_bytes(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"a": 1}\n')
    facts = object_facts(str(p))
    assert facts["sha256"] == hashlib.sha256(b'{"a": 1}\n').hexdigest() and facts["bytes"] == 9
    assert "etag" not in facts


def test_counts_per_source_with_malformed_unmaskable_and_unsampled_rows(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text("\n".join([_row("x", i) for i in range(40)] + ["{bad", '{"messages": []}']) + "\n")
    b = tmp_path / "b.jsonl"
    b.write_text("".join(_row("y", i) + "\n" for i in range(20)))
    cfg = _cfg(tmp_path, [{"uri": "a.jsonl", "weight": 1}, {"uri": "b.jsonl", "weight": 3}])
    splits, sources = load_datasets(cfg.data, base_dir=cfg.base_dir)
    placed = before_preflight(cfg, sources)
    # preflight drops an example it cannot mask from every split: do the same to one of a's
    victim = splits.validation[0] if splits.validation[0]["source"].startswith(str(a)) else splits.test[0]
    for part in (splits.train, splits.validation, splits.test):
        part[:] = [e for e in part if e is not victim]
    ea = dataset_entry(cfg, 0, sources[0], splits, placed)
    eb = dataset_entry(cfg, 1, sources[1], splits, placed)
    assert ea["rowsRead"] == 42 and ea["rowsDropped"] == {"malformed": 2, "unmaskable": 1}
    assert sum(ea["droppedReasons"].values()) == 2
    # weight 1 of 4 of 32 + 16 train rows: a's 32 train rows are subsampled to 12
    assert ea["rowsNotSampled"] == 32 - 12
    assert ea["rowsKept"] + ea["rowsNotSampled"] + 1 == 40 and eb["rowsNotSampled"] == 0
    assert eb["rowsKept"] == 20 and eb["taskTypes"] == {"y": 20}
    report = {"rows": 62, "bad_rows": 3}
    assert counts_match_preflight([ea, eb], report)
    assert not counts_match_preflight([ea, eb], {"rows": 62, "bad_rows": 2})


def test_a_hub_model_missing_from_the_cache_is_recorded_not_fatal(tmp_path, monkeypatch):
    from sft_trainer.lineage import model_entry

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _cfg(tmp_path, [{"uri": "a.jsonl"}])
    entry = model_entry(cfg, "org/not-cached", None, None)
    assert entry["files"] == [] and "filesError" in entry and entry["uri"] == "builtin://tiny-llama"


def test_a_local_model_directory_is_hashed_file_by_file(tmp_path):
    from sft_trainer.lineage import model_entry

    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "sub" / "w.bin").write_bytes(b"\x00" * 10)
    entry = model_entry(_cfg(tmp_path, [{"uri": "a.jsonl"}]), str(d), None, None)
    assert {f["path"]: f["sha256"] for f in entry["files"]} == {
        "config.json": hashlib.sha256(b"{}").hexdigest(), "sub/w.bin": hashlib.sha256(b"\x00" * 10).hexdigest()}
