"""The runtime half of the product, for real: the images built from the project's Dockerfiles
(`sftctl images build`), running in real pods on a real kubelet node (`sftctl dev-cluster up
--real-node`): the operator installed by the chart, and an SFTJob trained end to end by the
trainer image, with checkpoints in a real SeaweedFS, under the restricted Pod Security Standard.

A private dev cluster with only the real node (no kwok nodes), so every pod of these tests really
runs, and no other test's pod lands on it. Needs root, the real node's binaries and the images:
scripts/test.sh builds them first; without them the fixture fails and says what to run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from sft_realnode import CHART, ROOT, real_cluster

# The first test's setup imports the trainer image (5.6 GB) into containerd when its content changed:
# minutes on 2 busy cores, beyond the suite's default per-test timeout.
pytestmark = [pytest.mark.realnode, pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]

NS = "sft-realnode"
RELEASE = "sft"
BUCKET = "realnode"


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """This module's private cluster (sft_realnode.real_cluster): the real node only, SeaweedFS on
    the bridge, the restricted namespace NS; the host is checked on the way out."""
    with real_cluster(tmp_path_factory.mktemp("realnode"), NS, [BUCKET]) as r:
        yield r


def test_real_node_is_ready_and_not_kwok(real):
    from sft_dev.realnode import NODE_IP, NODE_LABEL, NODE_NAME

    node = real.get("node", NODE_NAME)
    assert "kwok.x-k8s.io/node" not in (node["metadata"].get("annotations") or {})
    assert node["metadata"]["labels"][NODE_LABEL] == "true"
    assert {"type": "InternalIP", "address": NODE_IP} in node["status"]["addresses"]
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_operator_image_runs_under_restricted_pss(real):
    """helm install with the built operator image: the pod passes restricted admission, runs with a
    read-only root filesystem as a non-root uid, answers its probes and logs through `kubectl logs`."""
    real.helm("install", RELEASE, str(CHART), "-n", NS, "--wait=false",
              "--set", "operator.image.repository=sft-operator/operator", "--set", "operator.image.tag=dev",
              "--set", "operator.image.pullPolicy=Never",
              "--set", "trainer.image.repository=sft-operator/trainer", "--set", "trainer.image.tag=dev",
              "--set", "trainer.image.pullPolicy=Never", "--set", "operator.resyncSeconds=5")

    def ready() -> bool:
        pods = real.get("pods", "-n", NS, "-l", "app.kubernetes.io/name=sft-operator")["items"]
        return bool(pods) and all(any(c["type"] == "Ready" and c["status"] == "True"
                                      for c in p["status"].get("conditions", [])) for p in pods)

    real.wait("the operator pod did not become Ready", ready, 240, real.diag)
    (pod,) = real.get("pods", "-n", NS, "-l", "app.kubernetes.io/name=sft-operator")["items"]
    assert pod["spec"]["nodeName"] == "real-node-0"
    (c,) = pod["spec"]["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["image"] == "sft-operator/operator:dev"
    logs = real.kubectl("logs", "-n", NS, pod["metadata"]["name"]).stdout
    assert logs.strip(), "the operator logged nothing"
    json.loads(logs.strip().splitlines()[-1])  # --log-format=json
    # A write to the root filesystem fails; /tmp (an emptyDir) is writable.
    ro = real.kubectl("exec", "-n", NS, pod["metadata"]["name"], "--", "python", "-c",
                      "import os;open('/tmp/x','w').write('x');print(os.getuid());open('/opt/x','w')", check=False)
    assert ro.returncode != 0 and "Read-only file system" in ro.stderr, ro.stderr
    assert ro.stdout.strip() == str(pod["spec"]["securityContext"]["runAsUser"])


def _write_data(tmp: Path) -> bytes:
    import random

    rng = random.Random(0)
    rows = []
    for i in range(120):
        w = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
        rows.append(json.dumps({"messages": [{"role": "user", "content": f"upper: {w}"},
                                             {"role": "assistant", "content": w.upper()}]}))
    return ("\n".join(rows) + "\n").encode()


def test_sftjob_trains_in_a_real_pod_to_succeeded(real):
    """The trainer image end to end on the real node: data from S3, checkpoints committed to S3,
    progress in status through the pod's ServiceAccount token, Succeeded, logs readable."""
    from sft_dev.realnode import NODE_IP, NODE_LABEL

    if not real.get("pods", "-n", NS, "-l", "app.kubernetes.io/name=sft-operator")["items"]:
        pytest.fail("the operator is not installed (test_operator_image_runs_under_restricted_pss failed)")
    c = real.s3.client()
    c.put_object(Bucket=BUCKET, Key="data/train.jsonl", Body=_write_data(real.tmp))
    real.kubectl("create", "secret", "generic", "s3-creds", "-n", NS,
                 f"--from-literal=AWS_ACCESS_KEY_ID={real.s3.access_key}",
                 f"--from-literal=AWS_SECRET_ACCESS_KEY={real.s3.secret_key}")
    job = {
        "apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "tiny", "namespace": NS},
        "spec": {
            "model": {"uri": "builtin://tiny-llama"},
            "datasets": [{"uri": f"s3://{BUCKET}/data/train.jsonl", "format": "messages"}],
            "split": {"validation": 0.1, "test": 0.1, "seed": 1},
            "method": {"type": "full"},
            "training": {"maxSteps": 8, "learningRate": 2e-3, "perDeviceBatchSize": 2, "maxSeqLength": 64,
                         "packing": False, "precision": "fp32", "loggingSteps": 1},
            "eval": {"everySteps": 4},
            "checkpoints": {"uri": f"s3://{BUCKET}/ckpt", "everySteps": 4, "keep": 2},
            "output": {"uri": f"s3://{BUCKET}/model"},
            "storage": {"endpoint": f"http://{NODE_IP}:{real.s3_port}", "secretRef": "s3-creds",
                        "region": "us-east-1"},
            "workers": {"nodes": 1, "gpusPerNode": 0, "nodeSelector": {NODE_LABEL: "true"},
                        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "6Gi"}}},
            "failurePolicy": {"maxRestarts": 0},
        },
    }
    t = time.monotonic()
    real.kubectl("apply", "-f", "-", input=yaml.safe_dump(job))

    def phase() -> str:
        return (real.get("sftjob", "tiny", "-n", NS).get("status") or {}).get("phase", "")

    real.wait("the SFTJob did not reach Succeeded", lambda: phase() in ("Succeeded", "Failed"), 780, real.diag)
    took = time.monotonic() - t
    status = real.get("sftjob", "tiny", "-n", NS)["status"]
    assert status["phase"] == "Succeeded", f"{json.dumps(status, indent=1)}\n{real.diag()}"
    print(f"SFTJob on the real node: Succeeded in {took:.0f}s")
    pods = real.get("pods", "-n", NS, "-l", "sft.dev/job-name=tiny")["items"]
    trainers = [p for p in pods if p["spec"]["containers"][0]["name"] == "trainer"]
    assert trainers and all(p["spec"]["nodeName"] == "real-node-0" for p in trainers)
    (term,) = [s["state"]["terminated"] for s in trainers[-1]["status"]["containerStatuses"]]
    assert term["exitCode"] == 0
    logs = real.kubectl("logs", "-n", NS, trainers[-1]["metadata"]["name"]).stdout
    assert logs.strip(), "the trainer logged nothing"
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=BUCKET, Prefix="ckpt/").get("Contents", [])]
    assert keys, "no checkpoint objects in S3"
    assert (status.get("progress") or {}).get("step") == 8, status
