"""Pytest fixtures for tests against real servers on 127.0.0.1: the dev cluster (kube-apiserver,
etcd, controller-manager, scheduler, kwok), SeaweedFS S3, MLflow and Prometheus.

Loaded from tests/conftest.py with ``pytest_plugins = ["sft_dev.pytest_plugin"]``.

A broken environment makes these fixtures *fail* with the cause, never skip: CI must not go green
without having run the tests.

Environment:
  SFT_TEST_KUBECONFIG   use this running cluster (e.g. `sftctl dev-cluster up`'s kubeconfig)
                        instead of starting a private one for the session.
  SFT_TEST_NODES        kwok GPU nodes of the session cluster (default 4).
  SFT_TEST_BUILD=1      build missing binaries inside the session (else the fixture fails and
                        says to run scripts/build-binaries.sh first).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]  # dev/sft_dev/pytest_plugin.py in a checkout
CRD_FILE = REPO_ROOT / "crds" / "sftjob.yaml"
CRD_NAME = "sftjobs.sft.dev"

# Fixtures that need the cluster; tests using them get the `cluster` marker automatically.
_CLUSTER_FIXTURES = {"dev_cluster", "kube_api", "namespace", "sftjob_crd", "kwok_pods", "kubectl", "gpu_pool",
                     "kueue"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


def _fail(what: str, e: BaseException) -> None:
    pytest.fail(f"{what}: {e}", pytrace=False)


def _info_from_kubeconfig(path: Path):
    import yaml

    from sft_dev.cluster import ClusterInfo, DevCluster, Ports

    if (path.parent / "config.json").exists() and path.name == "kubeconfig":
        return DevCluster(path.parent).info()  # a cluster from `sftctl dev-cluster up`

    cfg = yaml.safe_load(path.read_text())
    ctx_name = cfg.get("current-context")
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
    if "token" not in user:
        raise ValueError(f"{path}: the fixtures need a token user (as `sftctl dev-cluster up` writes)")
    port = int(cluster["server"].rsplit(":", 1)[1].rstrip("/"))
    return ClusterInfo(state_dir=path.parent, kubeconfig=path, server=cluster["server"], token=user["token"],
                       ca_file=Path(cluster["certificate-authority"]), ports=Ports(apiserver=port),
                       nodes=[], pids={})


def _require_binaries() -> Path:
    from sft_dev.build import BuildError, bin_dir, binaries_ready, ensure_binaries

    if binaries_ready():
        return bin_dir()
    if not os.environ.get("SFT_TEST_BUILD"):
        # A cold build takes 20-40 minutes: longer than any test timeout, so it is a separate step.
        pytest.fail(f"the dev cluster binaries are not built in {bin_dir()}: run `bash scripts/build-binaries.sh` "
                    "(or `sftctl dev-cluster build`) first, or set SFT_TEST_BUILD=1 to build them here",
                    pytrace=False)
    try:
        return ensure_binaries()
    except BuildError as e:
        _fail("building the dev cluster binaries failed", e)


@pytest.fixture(scope="session")
def devcluster_bin() -> Path:
    """The directory holding etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok."""
    return _require_binaries()


@pytest.fixture(scope="session")
def dev_cluster(tmp_path_factory):
    """ClusterInfo of a real control plane with kwok GPU nodes (4 x nvidia.com/gpu=8 by default)."""
    from sft_dev.build import BuildError
    from sft_dev.cluster import ClusterError, DevCluster, Ports
    from sft_dev.tools import ToolError

    external = os.environ.get("SFT_TEST_KUBECONFIG")
    if external:
        try:
            info = _info_from_kubeconfig(Path(external))
        except Exception as e:
            _fail(f"SFT_TEST_KUBECONFIG={external} is not usable", e)
        yield info
        return
    _require_binaries()
    state = tmp_path_factory.mktemp("devcluster")
    cluster = DevCluster(state)
    t = time.monotonic()
    try:
        info = cluster.up(nodes=int(os.environ.get("SFT_TEST_NODES", "4")), ports=Ports.free())
    except (ClusterError, BuildError, ToolError) as e:
        cluster.down()
        _fail("the dev cluster did not start", e)
    info.startup_seconds = time.monotonic() - t
    try:
        yield info
    finally:
        cluster.down()


@pytest.fixture(scope="session")
def kube_api(dev_cluster):
    """A kubernetes.client.ApiClient with admin rights on the dev cluster."""
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = dev_cluster.server
    # The full header value, no api_key_prefix: kubernetes>=36 looks the prefix up under another key.
    cfg.api_key = {"authorization": f"Bearer {dev_cluster.token}"}
    cfg.ssl_ca_cert = str(dev_cluster.ca_file)
    api = client.ApiClient(cfg)
    try:
        client.VersionApi(api).get_code()
    except Exception as e:
        _fail(f"the apiserver at {dev_cluster.server} does not answer", e)
    yield api
    api.close()


@pytest.fixture(scope="session")
def kubectl(dev_cluster):
    """run(*args, input=None, check=True) -> CompletedProcess: kubectl against the dev cluster."""
    from sft_dev.tools import kubectl as kubectl_path

    exe = str(kubectl_path())

    def run(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([exe, "--kubeconfig", str(dev_cluster.kubeconfig), *args], input=input,
                           capture_output=True, text=True, timeout=120)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    return run


@pytest.fixture
def namespace(kube_api, request):
    """A fresh namespace for one test (its default ServiceAccount exists), deleted afterwards."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(kube_api)
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{base}-{secrets.token_hex(3)}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"sft.dev/test": "1"})))
    deadline = time.monotonic() + 30
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                _fail(f"namespace {name}: the default ServiceAccount never appeared", e)
            time.sleep(0.1)
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise


@pytest.fixture(scope="session")
def sftjob_crd(kubectl, kube_api, dev_cluster):
    """Installs crds/sftjob.yaml on the dev cluster and waits until it is Established."""
    from sft_dev.tools import wait_crd_established

    if not CRD_FILE.exists():
        pytest.fail(f"{CRD_FILE} does not exist: generate it from the API models first", pytrace=False)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    if not wait_crd_established(dev_cluster.kubeconfig, CRD_NAME):
        pytest.fail(f"the CRD {CRD_NAME} is not Established after 60 s", pytrace=False)
    # Discovery can lag the Established condition by a moment.
    deadline = time.monotonic() + 30
    while kubectl("get", "sftjobs", "-A", check=False).returncode != 0:
        if time.monotonic() > deadline:
            pytest.fail("the SFTJob CRD is Established but `kubectl get sftjobs` still fails", pytrace=False)
        time.sleep(0.3)
    return CRD_NAME


@pytest.fixture(scope="session")
def kwok_pods(kube_api):
    """A PodDriver: make a pod succeed, fail(exit_code), be preempted/evicted, or lose its node."""
    from sft_dev.pods import PodDriver

    return PodDriver(kube_api)


class GpuPool:
    """Dedicated kwok GPU nodes for one test: tainted, so only pods that tolerate the taint (and
    select the label) land there, and other tests' pods never take their GPUs."""

    def __init__(self, name: str, nodes: list[str], gpus: int):
        self.name, self.nodes, self.gpus = name, nodes, gpus
        self.node_selector = {"sft.dev/pool": name}
        self.tolerations = [{"key": "sft.dev/pool", "operator": "Equal", "value": name, "effect": "NoSchedule"}]


@pytest.fixture
def gpu_pool(dev_cluster, kube_api, request):
    """make(nodes=2, gpus=8) -> GpuPool with .nodes, .node_selector, .tolerations; deleted after the test."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from sft_dev.cluster import ClusterError, DevCluster

    core = client.CoreV1Api(kube_api)
    made: list[str] = []

    def make(nodes: int = 2, gpus: int = 8) -> GpuPool:
        name = f"pool-{secrets.token_hex(3)}"
        names = [f"{name}-{i}" for i in range(nodes)]
        pool = GpuPool(name, names, gpus)
        taints = [{k: v for k, v in t.items() if k != "operator"} for t in pool.tolerations]
        try:
            DevCluster(dev_cluster.state_dir).add_nodes(names, gpus, labels=pool.node_selector, taints=taints)
        except ClusterError as e:
            _fail("creating kwok GPU nodes failed", e)
        made.extend(names)
        deadline = time.monotonic() + 30
        for n in names:
            while not any(c.type == "Ready" and c.status == "True"
                          for c in (core.read_node(n).status.conditions or [])):
                if time.monotonic() > deadline:
                    pytest.fail(f"kwok node {n} did not become Ready within 30s", pytrace=False)
                time.sleep(0.2)
        return pool

    yield make
    for n in made:
        try:
            core.delete_node(n)
        except ApiException as e:
            if e.status != 404:
                raise


# -- S3 --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """S3Info of a real SeaweedFS S3 server (endpoint, access_key, secret_key, .client())."""
    from sft_dev.s3 import S3Error, start_s3, stop_s3
    from sft_dev.tools import ToolError

    try:
        info = start_s3(tmp_path_factory.mktemp("seaweedfs"))
    except (S3Error, ToolError) as e:
        _fail("SeaweedFS S3 did not start", e)
    try:
        yield info
    finally:
        stop_s3(info)


@pytest.fixture
def s3_bucket(s3, request):
    """A fresh bucket for one test, emptied and deleted afterwards."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{base}-{secrets.token_hex(3)}"
    c = s3.client()
    c.create_bucket(Bucket=name)
    yield name
    try:
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                c.delete_object(Bucket=name, Key=obj["Key"])
        c.delete_bucket(Bucket=name)
    except Exception:  # the server may already be gone at session end; the bucket dies with it
        pass


# -- Kueue -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kueue(dev_cluster):
    """Kueue (sft_dev.kueue) running against the session's dev cluster: its CRDs, the manager and its
    webhooks on 127.0.0.1. Per module: stopped (webhooks deleted first) after the module, so that the
    other tests' queue-labelled Jobs are not Kueue's to admit."""
    from sft_dev.build import BuildError
    from sft_dev.cluster import DevCluster
    from sft_dev.kueue import Kueue, KueueError
    from sft_dev.tools import ToolError

    if not (Path(dev_cluster.state_dir) / "config.json").exists():
        pytest.fail("the kueue fixture needs a dev cluster with a state dir (SFT_TEST_KUBECONFIG from "
                    "`sftctl dev-cluster up`, or the session's own)", pytrace=False)
    k = Kueue(DevCluster(dev_cluster.state_dir))
    try:
        ports = k.up()
    except (KueueError, BuildError, ToolError) as e:
        _fail("Kueue did not start", e)
    try:
        yield ports
    finally:
        k.down()


# -- MLflow ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """MlflowInfo of a real MLflow tracking server on 127.0.0.1 (SQLite backend; .url, .api()), from
    its own cached tool venv; every process it started is ended at session end."""
    from sft_dev.tracking_servers import TrackingToolError, start_mlflow, stop_mlflow

    try:
        info = start_mlflow(tmp_path_factory.mktemp("mlflow"))
    except TrackingToolError as e:
        _fail("the MLflow server did not start", e)
    try:
        yield info
    finally:
        stop_mlflow(info)


# -- Prometheus ------------------------------------------------------------------------------


@pytest.fixture
def prometheus(tmp_path_factory):
    """start(targets=[...], **kw) -> PromInfo: a real Prometheus scraping `targets` every second.
    Extend with info.add_targets([...]); query with info.query()/wait_for(). Stopped after the test."""
    from sft_dev.prom import PromError, start_prometheus, stop_prometheus
    from sft_dev.tools import ToolError

    started = []

    def start(targets=(), **kw):
        try:
            info = start_prometheus(list(targets), state_dir=tmp_path_factory.mktemp("prometheus"), **kw)
        except (PromError, ToolError) as e:
            _fail("Prometheus did not start", e)
        started.append(info)
        return info

    yield start
    for info in started:
        stop_prometheus(info)
        shutil.rmtree(info.state_dir / "data", ignore_errors=True)
