"""tracking.py's pieces that need no server: CRC-32C, the TFRecord framing, the Event protobuf bytes,
the MLflow params of a spec and the auth headers. The event files are also read back by TensorBoard
itself in tests/integration/test_trainer_tracking.py."""

from __future__ import annotations

import struct

import pytest

from sft_api.models import SFTJob
from sft_trainer.config import ResolvedConfig
from sft_trainer.tracking import MlflowRest, _masked_crc, crc32c, encode_event, tfrecord


def test_crc32c_matches_the_standard_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C (Castagnoli) check value
    assert crc32c(b"") == 0


def test_tfrecord_framing():
    data = b"hello"
    rec = tfrecord(data)
    (length,) = struct.unpack("<Q", rec[:8])
    assert length == 5 and rec[12:17] == data
    assert struct.unpack("<I", rec[8:12])[0] == _masked_crc(rec[:8])
    assert struct.unpack("<I", rec[17:21])[0] == _masked_crc(data)


def test_event_bytes_are_the_protobuf_wire_format():
    ev = encode_event(1.5, 7, scalars={"loss": 0.25})
    assert ev[:9] == b"\x09" + struct.pack("<d", 1.5) and ev[9:11] == b"\x10\x07"
    # summary (field 5) { value (1) { tag (1) "loss", simple_value (2, fixed32) 0.25 } }
    value = b"\x0a\x04loss" + b"\x15" + struct.pack("<f", 0.25)
    assert ev[11:] == b"\x2a" + bytes([len(value) + 2]) + b"\x0a" + bytes([len(value)]) + value
    assert encode_event(0.0, file_version="brain.Event:2").endswith(b"\x1a\x0dbrain.Event:2")


def _cfg(tmp_path, method):
    job = SFTJob.model_validate({
        "apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "t"},
        "spec": {"model": {"uri": "builtin://tiny-llama"}, "datasets": [{"uri": "d.jsonl"}],
                 "method": method, "training": {"maxSteps": 3, "learningRate": 1e-4,
                                                "deepspeed": {"zeroStage": 2}},
                 "workers": {"gpusPerNode": 8}}})
    return ResolvedConfig.from_job(job, workdir=tmp_path, cuda=True)


@pytest.mark.parametrize("method, lora", [
    pytest.param({"type": "lora", "lora": {"r": 8, "alpha": 16, "targetModules": ["q_proj", "v_proj"]}},
                 {"lora_r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}, id="lora logs its adapter"),
    pytest.param({"type": "full"}, None, id="full fine-tuning has no adapter params"),
])
def test_tracking_params_of_a_spec(tmp_path, method, lora):
    params = _cfg(tmp_path, method).tracking_params
    assert params["learning_rate"] == 1e-4 and params["max_steps"] == 3 and params["deepspeed_stage"] == 2
    assert params["method"] == method["type"] and params["objective"] == "sft" and params["loss_on"]
    if lora:
        assert {k: params[k] for k in lora} == lora
    else:
        assert "lora_r" not in params


@pytest.mark.parametrize("env, header", [
    pytest.param({"MLFLOW_TRACKING_TOKEN": "tok"}, "Bearer tok", id="a token is a bearer"),
    pytest.param({"MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD": "p"}, "Basic dTpw", id="basic auth"),
    pytest.param({}, None, id="no credentials"),
])
def test_mlflow_credentials_from_the_environment(env, header):
    assert MlflowRest("http://127.0.0.1:1", env).headers.get("Authorization") == header
