"""A checkpoint commit retries what a retry can cure, including botocore's errors that s3fs lets through
(found by bench/chaos.py: a restarting S3 server raised EndpointConnectionError, the attempt died)."""

from __future__ import annotations

import socket

import pytest

from sft_trainer import callbacks
from sft_trainer.callbacks import CheckpointCommitCallback
from sft_trainer.checkpoint_store import CheckpointStore, transient_storage_errors


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _dead_s3_error() -> BaseException:
    """What s3fs really raises when the S3 server is down (a refused connection on 127.0.0.1)."""
    import s3fs

    fs = s3fs.S3FileSystem(key="k", secret="s", client_kwargs={"endpoint_url": f"http://127.0.0.1:{_closed_port()}"},
                           config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2}, skip_instance_cache=True)
    with pytest.raises(Exception) as info:
        fs.pipe_file("bucket/ckpt/checkpoint-5/_COMMITTED", b"{}")
    return info.value


def test_a_down_s3_server_raises_an_error_the_commit_retries():
    err = _dead_s3_error()
    assert isinstance(err, transient_storage_errors()), type(err).__mro__


def test_commit_retries_a_transient_s3_error_then_succeeds(tmp_path, monkeypatch):
    monkeypatch.setattr(callbacks.time, "sleep", lambda s: None)
    cb = CheckpointCommitCallback(CheckpointStore(str(tmp_path)), keep=2, attempts=3)
    err = _dead_s3_error()
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise err
        return "committed"

    assert cb._with_retries("commit of step 5", flaky) == "committed" and len(calls) == 3


def test_commit_does_not_retry_a_programming_error(tmp_path, monkeypatch):
    monkeypatch.setattr(callbacks.time, "sleep", lambda s: None)
    cb = CheckpointCommitCallback(CheckpointStore(str(tmp_path)), keep=2, attempts=3)
    calls = []

    def broken():
        calls.append(1)
        raise ValueError("not a storage problem")

    with pytest.raises(ValueError):
        cb._with_retries("commit of step 5", broken)
    assert len(calls) == 1
