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
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

# The first test's setup imports the trainer image (5.6 GB) into containerd when its content changed:
# minutes on 2 busy cores, beyond the suite's default per-test timeout.
pytestmark = [pytest.mark.realnode, pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sft-operator"
NS = "sft-realnode"
RELEASE = "sft"
BUCKET = "realnode"


def _require_built() -> None:
    """The node's binaries and both images must be built (scripts/test.sh does it just before pytest).
    An image built from older sources is used with a warning: in a working tree that others edit,
    the sources change faster than the trainer image (5.6 GB) can be rebuilt."""
    import warnings

    from sft_dev import images, realnode_build

    if os.environ.get("SFT_TEST_BUILD"):
        realnode_build.ensure_binaries()
        images.build()
    missing = []
    if not realnode_build.binaries_ready():
        missing.append(f"the real node's binaries ({realnode_build.bin_dir()}): "
                       "`sftctl dev-cluster build --real-node`")
    for name, spec in images.IMAGES.items():
        if not list(images.images_dir().glob(f"{name}-*.json")):
            missing.append(f"the {spec.ref} image: `sftctl images build`")
        elif not images.is_current(name):
            warnings.warn(f"{spec.ref} was built from older sources; `sftctl images build` rebuilds it")
    if missing:
        # Builds take minutes (the trainer image carries torch): longer than a test may take.
        pytest.fail("not built: " + "; ".join(missing) + " (or set SFT_TEST_BUILD=1)", pytrace=False)


class Real:
    """The private cluster with the real node, its S3 and clients."""

    def __init__(self, info, s3, s3_port: int, tmp: Path):
        from sft_dev.tools import helm, kubectl

        self.info, self.s3, self.s3_port, self.tmp = info, s3, s3_port, tmp
        self.env = dict(os.environ, KUBECONFIG=str(info.kubeconfig), HELM_CACHE_HOME=str(tmp / "helm" / "cache"),
                        HELM_CONFIG_HOME=str(tmp / "helm" / "config"), HELM_DATA_HOME=str(tmp / "helm" / "data"))
        self.kubectl_exe, self.helm_exe = str(kubectl()), str(helm(4))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120):
        p = subprocess.run([self.kubectl_exe, *args], input=input, capture_output=True, text=True, env=self.env,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def helm(self, *args: str):
        p = subprocess.run([self.helm_exe, *args], capture_output=True, text=True, env=self.env, timeout=300)
        if p.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def wait(self, what: str, check, timeout: float, diag=lambda: "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(2)
        raise AssertionError(f"{what} within {timeout:.0f}s\n{diag()}")

    def diag(self) -> str:
        """What a failing wait shows: pods, events, the operator's and the kubelet's last lines."""
        out = [self.kubectl("get", "pods,jobs,sftjobs", "-n", NS, "-o", "wide", check=False).stdout,
               self.kubectl("get", "events", "-n", NS, "--sort-by=.lastTimestamp", check=False).stdout[-3000:],
               self.kubectl("logs", "-n", NS, "-l", "app.kubernetes.io/name=sft-operator", "--tail=30",
                            check=False).stdout]
        log = self.info.state_dir / "logs" / "kubelet.log"
        if log.exists():
            out.append("kubelet: " + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from sft_dev.cluster import ClusterError, DevCluster, Ports
    from sft_dev.realnode import RealNodeError, expose
    from sft_dev.s3 import start_s3

    _require_built()
    tmp = tmp_path_factory.mktemp("realnode")
    cluster = DevCluster(tmp / "cluster")
    t = time.monotonic()
    try:
        info = cluster.up(nodes=0, ports=Ports.free(), real_node=True)
    except (ClusterError, RealNodeError) as e:
        cluster.down()
        pytest.fail(f"the dev cluster with a real node did not start: {e}", pytrace=False)
    except BaseException:  # anything else (an image archive replaced meanwhile): never leave the node running
        cluster.down()
        raise
    print(f"dev cluster with the real node up in {time.monotonic() - t:.0f}s")
    s3 = start_s3(tmp / "s3", buckets=[BUCKET])
    port = int(s3.endpoint.rsplit(":", 1)[1])
    fwd = expose(tmp, "s3", port)
    r = Real(info, s3, port, tmp)
    try:
        r.kubectl("create", "namespace", NS)
        r.kubectl("label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted",
                  "pod-security.kubernetes.io/enforce-version=latest")
        yield r
    finally:
        fwd.kill()
        fwd.wait(10)
        s3.stop()
        cluster.down()
        _assert_host_clean()


def _assert_host_clean() -> None:
    from sft_dev import realnode

    assert subprocess.run(["ip", "link", "show", realnode.BRIDGE], capture_output=True).returncode != 0, \
        f"bridge {realnode.BRIDGE} left behind"
    assert not realnode.shim_pids(), "containerd shims left running"
    assert not realnode.mounts_under(realnode.RUN_DIR), "mounts left under /run/sft-realnode"


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
