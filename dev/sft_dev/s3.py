"""A real S3 server for tests: SeaweedFS (`weed server -s3`) on 127.0.0.1 with an access key."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

from sft_dev.tools import weed

HOST = "127.0.0.1"


class S3Error(RuntimeError):
    """SeaweedFS could not start; the message names the cause."""


@dataclasses.dataclass
class S3Info:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    pid: int | None = None
    state_dir: Path | None = None
    _proc: subprocess.Popen | None = dataclasses.field(default=None, repr=False)

    def client(self):
        """A boto3 S3 client for this server."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}))

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """The environment a trainer or s3fs needs to reach this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_ENDPOINT_URL_S3": self.endpoint,
                "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region}

    def storage_options(self) -> dict:
        """fsspec/s3fs options: `fsspec.filesystem("s3", **info.storage_options())`."""
        return {"key": self.access_key, "secret": self.secret_key,
                "client_kwargs": {"endpoint_url": self.endpoint, "region_name": self.region}}

    def stop(self) -> None:
        stop_s3(self)


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1 (all held open together, so no two are the same)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start_s3(state_dir: Path | str, port: int | None = None, buckets: list[str] = (), timeout: float = 60.0,
             access_key: str | None = None, secret_key: str | None = None) -> S3Info:
    """Start SeaweedFS with its master, volume, filer and S3 gateway on free 127.0.0.1 ports."""
    state_dir = Path(state_dir)
    data = state_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    access_key = access_key or "sftdev" + secrets.token_hex(4)
    secret_key = secret_key or secrets.token_hex(16)
    cfg = {"identities": [{"name": "sft-dev", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                           "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
    (state_dir / "s3.json").write_text(json.dumps(cfg))
    os.chmod(state_dir / "s3.json", 0o600)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc, s3_free = free_ports(8)
    port = port or s3_free
    argv = [
        str(weed()), "server", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=32",
        "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={port}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={state_dir / 's3.json'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={state_dir / 's3.sock'}",
    ]
    log = open(state_dir / "weed.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    (state_dir / "weed.pid").write_text(str(proc.pid))
    info = S3Info(endpoint=f"http://{HOST}:{port}", access_key=access_key, secret_key=secret_key,
                  pid=proc.pid, state_dir=state_dir, _proc=proc)
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if proc.poll() is not None:
            raise S3Error(f"weed server exited with code {proc.returncode} while starting; "
                          f"log {state_dir / 'weed.log'}:\n{_tail(state_dir / 'weed.log')}")
        try:
            # The S3 gateway answers before the filer has a writable volume: only a bucket
            # round-trip proves it is usable.
            c = info.client()
            probe = "sft-dev-probe"
            c.create_bucket(Bucket=probe)
            c.put_object(Bucket=probe, Key="ok", Body=b"ok")
            c.delete_object(Bucket=probe, Key="ok")
            c.delete_bucket(Bucket=probe)
            break
        except Exception as e:  # not ready yet
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            stop_s3(info)
            raise S3Error(f"SeaweedFS S3 on {info.endpoint} was not usable within {timeout:.0f}s ({last}); "
                          f"log {state_dir / 'weed.log'}:\n{_tail(state_dir / 'weed.log')}")
        time.sleep(0.3)
    for b in buckets:
        info.create_bucket(b)
    return info


def stop_s3(info: S3Info) -> None:
    # weed ignores SIGTERM: SIGKILL is the only reliable stop.
    if info._proc is not None:
        if info._proc.poll() is None:
            info._proc.send_signal(signal.SIGKILL)
        info._proc.wait(timeout=10)
    elif info.pid:
        try:
            os.kill(info.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
