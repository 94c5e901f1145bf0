"""lineage.json through the real entrypoint on SeaweedFS: a dataset in S3 and one on disk, checkpoints
and the export in S3. The manifest's hashes, ETags and row counts are checked against an independent
reading of the files (hashlib, boto3's head_object and a count written here), and the digest against
reruns: the same bytes give the same digest, one changed byte another."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from trainer_job_factory import run_entrypoint, trainer_env, write_golden, write_job

pytestmark = pytest.mark.slow

MAX_SEQ = 64


def s3_rows(n: int, seed: int) -> list[str]:
    """``n`` short conversations, plus malformed rows, an empty assistant turn, long ones and a blank line."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        w = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
        task = "upper" if i % 3 else "reverse"
        lines.append(json.dumps({"task_type": task, "messages": [
            {"role": "user", "content": f"{task}: {w}"},
            {"role": "assistant", "content": w.upper() if task == "upper" else w[::-1]}]}))
    lines.insert(5, '{"messages": [{"role": "user", "content": "q"}')  # invalid JSON
    lines.insert(9, '{"messages": [{"role": "user", "content": "no answer"}]}')  # no assistant turn
    lines.insert(12, json.dumps({"messages": "oops"}))  # not a list
    lines.insert(15, json.dumps({"task_type": "upper", "messages": [
        {"role": "user", "content": "upper: x"}, {"role": "assistant", "content": "  "}]}))  # empty assistant
    for j in range(2):  # character tokens: far longer than maxSeqLength
        lines.insert(20 + j, json.dumps({"task_type": "upper", "messages": [
            {"role": "user", "content": "upper: " + "ab" * 60}, {"role": "assistant", "content": "AB" * 60}]}))
    lines.insert(25, "")
    return lines


def independent_count(text: str) -> dict:
    """Rows, malformed rows, empty assistant turns, over-long rows and task types, counted here."""
    rows = malformed = empty = long = 0
    tasks: dict[str, int] = {}
    for raw in text.splitlines():
        if not raw.strip():
            continue
        rows += 1
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            malformed += 1
            continue
        msgs = rec.get("messages")
        if (not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs)
                or msgs[-1].get("role") != "assistant"):
            malformed += 1
            continue
        empty += any(m["role"] == "assistant" and not m["content"].strip() for m in msgs)
        long += sum(len(m["content"]) for m in msgs) > MAX_SEQ
        task = rec.get("task_type", "default")
        tasks[task] = tasks.get(task, 0) + 1
    return {"rows": rows, "malformed": malformed, "empty": empty, "long": long, "tasks": tasks}


def read_s3(client, uri: str) -> bytes:
    bucket, key = uri[len("s3://"):].split("/", 1)
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def test_lineage_manifest_on_seaweedfs_matches_an_independent_count(s3, s3_bucket, tmp_path):
    c = s3.client()
    s3_text = "\n".join(s3_rows(70, seed=3)) + "\n"
    c.put_object(Bucket=s3_bucket, Key="data/train.jsonl", Body=s3_text.encode())
    local = tmp_path / "local.jsonl"
    local.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"reverse: ab{i}"},
                                                      {"role": "assistant", "content": f"{i}ba"}]}) + "\n"
                             for i in range(30)))
    write_golden(tmp_path / "golden.jsonl")
    ckpt, model = f"s3://{s3_bucket}/ckpt", f"s3://{s3_bucket}/model"
    doc = {
        "apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "lineage"},
        "spec": {
            "model": {"uri": "builtin://tiny-llama"},
            "datasets": [{"uri": f"s3://{s3_bucket}/data/train.jsonl", "format": "messages", "weight": 2},
                         {"uri": "local.jsonl", "format": "messages", "taskType": "local", "weight": 1}],
            "split": {"validation": 0.1, "test": 0.1, "seed": 7},
            "method": {"type": "full"},
            "training": {"maxSteps": 2, "learningRate": 1e-3, "perDeviceBatchSize": 2, "maxSeqLength": MAX_SEQ,
                         "packing": False, "lossOn": "assistant", "gradientCheckpointing": False,
                         "precision": "fp32", "loggingSteps": 1, "seed": 5},
            "eval": {"everySteps": 100, "goldenSet": {"uri": "golden.jsonl", "maxNewTokens": 4}},
            "preflight": {"maxBadRowRatio": 0.2},
            "checkpoints": {"uri": ckpt, "everySteps": 2, "keep": 1},
            "output": {"uri": model},
            "storage": {"endpoint": s3.endpoint, "secretRef": "s3-credentials"},
            "workers": {"nodes": 1, "gpusPerNode": 0},
        },
    }
    job = write_job(tmp_path, doc)
    env = trainer_env(**s3.env())
    res = run_entrypoint(job, tmp_path / "work", env=env)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]

    raw = read_s3(c, f"{ckpt}/lineage.json")
    assert read_s3(c, f"{model}/lineage.json") == raw  # the same manifest beside the exported model
    manifest = json.loads(raw)
    result = json.loads((tmp_path / "work" / "result.json").read_text())
    assert result["lineage"]["uri"] == f"{ckpt}/lineage.json"
    assert result["lineage"]["digest"] == manifest["digest"]
    assert result["lineage"]["modelUri"] == f"{model}/lineage.json"
    assert manifest["countsMatchPreflight"] is True

    remote, disk = manifest["datasets"]
    # the object as the store describes it, and its bytes
    head = c.head_object(Bucket=s3_bucket, Key="data/train.jsonl")
    assert remote["etag"] == head["ETag"].strip('"')
    assert remote["sha256"] == hashlib.sha256(s3_text.encode()).hexdigest()
    assert remote["bytes"] == len(s3_text.encode()) == head["ContentLength"]
    assert disk["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest() and "etag" not in disk
    # the rows, counted independently
    n = independent_count(s3_text)
    assert (n["rows"], n["malformed"], n["empty"], n["long"]) == (76, 3, 1, 2)  # the file is what we meant
    assert remote["rowsRead"] == n["rows"]
    assert remote["rowsDropped"] == {"malformed": n["malformed"], "unmaskable": 0}
    assert sum(remote["droppedReasons"].values()) == n["malformed"]
    assert any(r.startswith("invalid JSON") for r in remote["droppedReasons"])
    assert "no assistant turn to train on" in remote["droppedReasons"]
    # the weighted mix (2:1) subsamples the S3 source's train part: those rows are read, not placed
    assert remote["rowsNotSampled"] > 0 and disk["rowsNotSampled"] == 0
    assert remote["rowsKept"] + remote["rowsNotSampled"] == n["rows"] - n["malformed"]
    assert remote["rowsKept"] == sum(remote["keptBySplit"].values())
    assert remote["keptFlagged"] == {"emptyAssistantTurn": n["empty"], "truncated": n["long"]}
    assert remote["taskTypes"] == n["tasks"] and remote["weight"] == 2.0
    assert sum(remote["taskTypesKept"].values()) == remote["rowsKept"]
    assert disk["rowsRead"] == disk["rowsKept"] == 30 and disk["taskTypes"] == {"local": 30}
    assert disk["rowsDropped"] == {"malformed": 0, "unmaskable": 0}
    # split: 10% + 10% of each source held out; the weighted mix keeps the train set's size
    for d in (remote, disk):
        usable = d["rowsKept"] + d["rowsNotSampled"]
        assert d["keptBySplit"]["validation"] == round(usable * 0.1)
        assert d["keptBySplit"]["test"] == round(usable * 0.1)
    sizes = manifest["split"]["sizes"]
    assert manifest["split"]["seed"] == 7
    assert sizes["validation"] == remote["keptBySplit"]["validation"] + disk["keptBySplit"]["validation"]
    # the mix repeats the local source's rows (weight 1 of 3 but a third of the rows is more than it has)
    held = lambda d: d["keptBySplit"]["validation"] + d["keptBySplit"]["test"]  # noqa: E731
    assert sizes["train"] == sum(d["rowsKept"] + d["rowsNotSampled"] - held(d) for d in (remote, disk))
    assert manifest["mix"]["trainRows"] == sizes["train"]
    train_tasks = manifest["mix"]["taskTypes"]["train"]
    assert sum(train_tasks.values()) == sizes["train"] and train_tasks["local"] > 0
    assert result["preflight"]["rows"] == remote["rowsRead"] + disk["rowsRead"]
    # the base model: the files that save_pretrained writes of the builtin model, hashed independently
    from sft_trainer.tiny_model import build_model, build_tokenizer

    tok = build_tokenizer()
    build_model(tok, seed=5).save_pretrained(tmp_path / "base")
    files = {f["path"]: f["sha256"] for f in manifest["model"]["files"]}
    assert files["model.safetensors"] == hashlib.sha256((tmp_path / "base" / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["model"]["uri"] == "builtin://tiny-llama" and "tokenizer.json" in files
    assert manifest["goldenSet"]["sha256"] == hashlib.sha256((tmp_path / "golden.jsonl").read_bytes()).hexdigest()
    assert manifest["goldenSet"]["rows"] == 2
    assert manifest["spec"]["training"]["maxSeqLength"] == MAX_SEQ
    assert manifest["spec"]["storage"]["endpoint"] == s3.endpoint

    # The same bytes, uploaded again (a new object version and time), give the same digest: a rerun
    # (it finds its finished checkpoint, trains no step) writes the manifest again.
    c.put_object(Bucket=s3_bucket, Key="data/train.jsonl", Body=s3_text.encode())
    res = run_entrypoint(job, tmp_path / "work2", env=env)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    again = json.loads(read_s3(c, f"{ckpt}/lineage.json"))
    assert again["writtenAt"] >= manifest["writtenAt"] and again["digest"] == manifest["digest"]
    # One changed byte in one row: another sha256 and another digest, the same counts.
    changed = s3_text.replace("upper: ", "upper:_", 1)
    c.put_object(Bucket=s3_bucket, Key="data/train.jsonl", Body=changed.encode())
    res = run_entrypoint(job, tmp_path / "work3", env=env)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    third = json.loads(read_s3(c, f"{ckpt}/lineage.json"))
    assert third["datasets"][0]["sha256"] == hashlib.sha256(changed.encode()).hexdigest()
    assert third["datasets"][0]["rowsRead"] == remote["rowsRead"]
    assert third["digest"] != manifest["digest"]
