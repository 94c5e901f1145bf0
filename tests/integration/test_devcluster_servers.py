"""The other real servers the tests use: SeaweedFS S3 and Prometheus, on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from sft_dev import tools


def test_s3_bucket_round_trip_and_multipart(s3, s3_bucket):
    c = s3.client()
    c.put_object(Bucket=s3_bucket, Key="ckpt/manifest.json", Body=b'{"step": 10}')
    assert c.get_object(Bucket=s3_bucket, Key="ckpt/manifest.json")["Body"].read() == b'{"step": 10}'
    # Checkpoint shards are large: multipart must work.
    part = b"x" * (5 * 1024 * 1024)
    up = c.create_multipart_upload(Bucket=s3_bucket, Key="ckpt/model.safetensors")
    etags = [c.upload_part(Bucket=s3_bucket, Key="ckpt/model.safetensors", UploadId=up["UploadId"],
                           PartNumber=i, Body=part)["ETag"] for i in (1, 2)]
    c.complete_multipart_upload(Bucket=s3_bucket, Key="ckpt/model.safetensors", UploadId=up["UploadId"],
                                MultipartUpload={"Parts": [{"ETag": e, "PartNumber": i}
                                                           for i, e in zip((1, 2), etags)]})
    keys = {o["Key"]: o["Size"] for o in c.list_objects_v2(Bucket=s3_bucket, Prefix="ckpt/")["Contents"]}
    assert keys == {"ckpt/manifest.json": 12, "ckpt/model.safetensors": 2 * len(part)}


def test_s3_rejects_a_wrong_secret(s3, s3_bucket):
    import boto3
    from botocore.exceptions import ClientError

    bad = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
                       aws_secret_access_key="wrong", region_name="us-east-1")
    with pytest.raises(ClientError) as e:
        bad.list_objects_v2(Bucket=s3_bucket)
    assert e.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId")


def test_s3_works_through_fsspec(s3, s3_bucket):
    fsspec = pytest.importorskip("fsspec", reason="fsspec is in the trainer extra")
    fs = fsspec.filesystem("s3", **s3.storage_options())
    with fs.open(f"{s3_bucket}/data/train.jsonl", "wb") as f:
        f.write(b'{"messages": []}\n')
    assert fs.cat(f"{s3_bucket}/data/train.jsonl") == b'{"messages": []}\n'


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _exporter(value: float) -> tuple[str, object]:
    reg = CollectorRegistry()
    Gauge("sftjob_step", "Current optimizer step.", ["namespace", "sftjob"], registry=reg).labels(
        "default", "probe").set(value)
    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=reg)
    return f"127.0.0.1:{port}", server


def test_prometheus_scrapes_targets_and_can_add_more(prometheus):
    t1, s1 = _exporter(7)
    t2, s2 = _exporter(9)
    try:
        prom = prometheus([t1])
        res = prom.wait_for(f'sftjob_step{{instance="{t1}"}}')
        assert float(res[0]["value"][1]) == 7
        assert res[0]["metric"]["sftjob"] == "probe"
        prom.add_targets([t2], job="trainer", labels={"role": "rank0"})
        res = prom.wait_for(f'sftjob_step{{instance="{t2}",job="trainer"}}')
        assert float(res[0]["value"][1]) == 9 and res[0]["metric"]["role"] == "rank0"
        assert prom.query("sum(sftjob_step)")[0]["value"][1] == "16"
    finally:
        s1.shutdown()
        s2.shutdown()


def test_promtool_and_helm_and_kubectl_are_runnable():
    assert "promtool" in subprocess.run([str(tools.promtool()), "--version"], capture_output=True,
                                        text=True).stderr + subprocess.run(
        [str(tools.promtool()), "--version"], capture_output=True, text=True).stdout
    helm = subprocess.run([str(tools.helm()), "version", "--short"], capture_output=True, text=True)
    assert helm.returncode == 0 and helm.stdout.startswith("v4."), helm.stdout + helm.stderr
    kc = subprocess.run([str(tools.kubectl()), "version", "--client"], capture_output=True, text=True)
    assert "v1.37" in kc.stdout
