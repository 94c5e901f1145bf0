"""Pod-spec execution: run the container command and env of the pods the operator created on the real
apiserver as two local processes (2 nodes x 1 process, CPU, gloo). Only the rank-0 DNS name is mapped
to 127.0.0.1 (a private /etc/hosts in a mount namespace), the config file path points at the
ConfigMap's contents, the ServiceAccount token is the per-job trainer token at its in-cluster path,
and storage is the real SeaweedFS. The real trainer must see world size 2, commit a checkpoint and
report progress: this catches the silent world-size-1 failure."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client
from sft_e2e_helpers import cond

from sft_dev.podexec import resolve_env

REPO = Path(__file__).resolve().parents[2]
SA_PATH = "/run/secrets/kubernetes.io/serviceaccount"  # /var/run is a link to /run


@pytest.mark.slow
def test_pod_spec_trains_across_two_processes(operator, sft, s3, s3_bucket, dev_cluster, tmp_path):
    name = "podspec"
    core = client.CoreV1Api(sft.api_client)
    core.create_namespaced_secret(sft.ns, {"metadata": {"name": "s3-credentials"},
                                           "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}})
    # A small slice of the quickstart data, read by the trainer from the real S3 (keeps this test short).
    rows = (REPO / "examples" / "data" / "quickstart" / "train.jsonl").read_text().splitlines()[:300]
    s3.client().put_object(Bucket=s3_bucket, Key="data/train.jsonl", Body="\n".join(rows).encode() + b"\n")
    sft.apply({
        "apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name},
        "spec": {
            "model": {"uri": "builtin://tiny-llama"},
            "datasets": [{"uri": f"s3://{s3_bucket}/data/train.jsonl", "format": "messages"}],
            "split": {"validation": 0.05, "test": 0.02, "seed": 42},
            "method": {"type": "full"},
            "training": {"maxSteps": 6, "learningRate": 2e-3, "perDeviceBatchSize": 1, "maxSeqLength": 256,
                         "packing": True, "precision": "fp32", "gradientCheckpointing": False, "loggingSteps": 1},
            "eval": {"everySteps": 100},
            "checkpoints": {"uri": f"s3://{s3_bucket}/{name}/", "everySteps": 3, "keep": 2},
            "storage": {"secretRef": "s3-credentials", "endpoint": s3.endpoint},
            "workers": {"nodes": 2, "gpusPerNode": 0, "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}},
            "failurePolicy": {"maxRestarts": 0, "stallTimeoutSeconds": 3600},
            # the operator's CPU-only preflight pod would never finish here (kwok): this test runs the gang
            "preflight": {"enabled": False},
        },
    })
    pods = sft.running_pods(name, 1, 2)
    sft.wait_phase(name, "Running")

    # Everything below comes from the objects on the apiserver, not from render().
    [job] = sft.jobs(name, 1)
    tmpl = job.spec.template.spec
    container = tmpl.containers[0]
    cm = core.read_namespaced_config_map(tmpl.volumes[[v.name for v in tmpl.volumes].index("config")].config_map.name, sft.ns)
    mount = next(m.mount_path for m in container.volume_mounts if m.name == "config")
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    for key, text in cm.data.items():
        (config_dir / key).write_text(text)
    secret = {k: base64.b64decode(v).decode() for k, v in core.read_namespaced_secret("s3-credentials", sft.ns).data.items()}

    # The in-cluster identity of the pods: the per-job ServiceAccount token, CA and namespace.
    sa_dir = tmp_path / "sa"
    sa_dir.mkdir()
    token = core.create_namespaced_service_account_token(tmpl.service_account_name, sft.ns, {"spec": {"audiences": [], "expirationSeconds": 3600}}).status.token
    (sa_dir / "token").write_text(token)
    (sa_dir / "ca.crt").write_text(Path(dev_cluster.ca_file).read_text())
    (sa_dir / "namespace").write_text(sft.ns)
    api_port = dev_cluster.server.rsplit(":", 1)[1].rstrip("/")

    procs = []
    for rank, pod in enumerate(pods):
        env = resolve_env(container, pod.metadata.name, rank, "local", secret)  # as the kubelet injects it
        assert env["MASTER_ADDR"] == f"{job.metadata.name}-0.{tmpl.subdomain}"
        hosts = tmp_path / f"hosts-{rank}"
        hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 {env['MASTER_ADDR']}\n")
        scratch = tmp_path / f"scratch-{rank}"  # the pod's own /tmp (an emptyDir)
        scratch.mkdir()
        # The ConfigMap volume is at /run/sft inside the namespace (mounting at /etc/sft would need a
        # directory on the host); the command's and env's config path point there.
        remap = lambda v: f"/run/sft/{Path(v).name}" if isinstance(v, str) and v.startswith(mount + "/") else v  # noqa: E731
        argv = [sys.executable if a == "python" else remap(a) for a in container.command]
        env = {k: remap(v) for k, v in env.items()}
        # The pod's scratch volume at /tmp becomes a private TMPDIR (and HOME): mounting it over /tmp
        # would hide a clone, a venv or the editable install that lives under /tmp.
        full_env = {"PATH": os.environ["PATH"], "HOME": str(scratch), "TMPDIR": str(scratch),
                    "PYTHONUNBUFFERED": "1", "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                    "KUBERNETES_SERVICE_PORT": api_port, **env}
        # A private mount namespace per process: the SA token at its in-cluster path, an /etc/hosts
        # that maps only the rank-0 name. Nothing on the host changes.
        script = (f"mount -t tmpfs none /run && mkdir -p {SA_PATH} /run/sft && cp {sa_dir}/* {SA_PATH}/ && "
                  f"cp {config_dir}/* /run/sft/ && mount --bind {hosts} /etc/hosts && "
                  f"exec {shlex.join(argv)}")
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append((subprocess.Popen(["unshare", "-m", "sh", "-c", script], cwd=REPO / "examples", env=full_env,
                                       stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + 420
    for p, log in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for q, _ in procs:
                q.kill()
                q.wait(10)
        log.close()
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in range(2)]
    for r, (p, _) in enumerate(procs):
        assert p.returncode == 0, f"rank {r} exited {p.returncode}:\n{logs[r][-4000:]}"

    st = sft.status(name)
    assert st.get("worldSize") == 2, json.dumps(st, indent=1)
    assert (st.get("progress") or {}).get("step", 0) >= 1
    ckpt = st.get("checkpoint") or {}
    assert ckpt.get("uri", "").startswith(f"s3://{s3_bucket}/{name}/checkpoint-"), ckpt
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=s3_bucket, Prefix=f"{name}/").get("Contents", [])]
    assert any("checkpoint-" in k for k in keys), keys

    # The fake pods finish too; the operator closes the job.
    from sft_dev.pods import PodDriver

    driver = PodDriver(sft.api_client)
    for pod in pods:
        driver.succeed(sft.ns, pod.metadata.name)
    st = sft.wait_phase(name, "Succeeded", 30)
    assert cond(st, "Succeeded")["status"] == "True"
