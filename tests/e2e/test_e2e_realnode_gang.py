"""Cluster DNS, a real 2-pod gang and the README's "Local cluster" steps, on the one real node.

- CoreDNS (`up --real-node`) answers cluster.local to pods and nothing else.
- The quickstart's data as a 2-pod gang (`workers.nodes: 2`, `gpusPerNode: 0`) of the trainer image:
  rank 1 resolves `<job>-a1-0.<service>` through CoreDNS, gloo forms world size 2, checkpoints are
  committed to SeaweedFS, and progress and the evaluation reach status through the projected
  ServiceAccount token; the gang learns some held-out exact answers (`status.evaluation.exactMatch` > 0).
- The operator is installed with the README's own `helm install` line, run after the README's
  `eval "$(./scripts/sftctl dev-cluster env)"`.
- The README's real-node steps after that, as written: examples/quickstart.yaml itself (its capped
  variant) trained in a real pod to Succeeded (`kubectl wait`).

A private cluster with only the real node, as in test_e2e_realnode.py (its fixture, a cluster of
this module's own). Run it under `flock /tmp/sft-realnode.lock`: one real node per machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from test_e2e_realnode import BUCKET, ROOT, real  # noqa: F401 - `real` is this module's cluster fixture

pytestmark = [pytest.mark.realnode, pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]

GANG_NS = "sft-gang"
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
DATA = ROOT / "examples" / "data" / "quickstart"
# The README caps the quickstart's training with this annotation for a run of a few minutes; the
# test follows that variant of its apply step.
QUICKSTART_CAP_SECONDS = 60
# The gang's steps: enough to learn some held-out exact answers (the same spec as 2 gloo processes
# off the node: overall 3.2% at training seed 42, 27% at seed 7; docs/dev-cluster.md). At load 20 on
# 2 cores a step of the 2-pod gang takes ~10 s, at load 6 ~1.4 s.
STEPS = 400


def _readme_real_node_block() -> list[str]:
    """The commands of the README's real-node block, continuations joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Local cluster", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    (block,) = [b for b in blocks if "--real-node" in b]
    lines = re.sub(r"\\\n\s*", " ", block).splitlines()
    return [re.sub(r"\s+#.*$", "", ln).strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _readme_real_node_steps() -> list[str]:
    """Its steps after `dev-cluster env` (the fixture has brought the cluster up; `down` is its teardown)."""
    lines = _readme_real_node_block()
    start = next(i for i, ln in enumerate(lines) if "dev-cluster env" in ln) + 1
    return [ln for ln in lines[start:] if "dev-cluster down" not in ln]


def _shell(real, cmd: str) -> tuple[list[str], dict]:
    """bash running the README's own env line (`eval "$(./scripts/sftctl dev-cluster env)"`, pointed
    at this test's cluster by SFT_STATE), then `cmd`."""
    (env_line,) = [ln for ln in _readme_real_node_block() if "dev-cluster env" in ln]
    return ["bash", "-c", f"set -e; {env_line}; {cmd}"], dict(real.env, SFT_STATE=str(real.info.state_dir))


def _sh(real, cmd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    argv, env = _shell(real, cmd)
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def operator(real):
    """The operator as the README installs it (its helm line, run as written), Ready."""
    # the fixture's cluster is the README's `up` line (DevCluster.up(nodes=0, real_node=True))
    assert "./scripts/sftctl dev-cluster up --nodes 0 --real-node" in _readme_real_node_block()
    steps = _readme_real_node_steps()
    (helm,) = [s for s in steps if s.startswith("helm install")]
    assert "operator.image.repository=sft-operator/operator" in helm and "pullPolicy=Never" in helm
    p = _sh(real, helm + " --set operator.resyncSeconds=5")
    assert p.returncode == 0, p.stdout + p.stderr

    def ready() -> bool:
        pods = real.get("pods", "-n", "sft-system", "-l", "app.kubernetes.io/name=sft-operator")["items"]
        return bool(pods) and all(any(c["type"] == "Ready" and c["status"] == "True"
                                      for c in p["status"].get("conditions", [])) for p in pods)

    real.wait("the operator pod did not become Ready", ready, 240, lambda: _diag(real, "sft-system"))
    real.kubectl("create", "namespace", GANG_NS)
    real.kubectl("label", "namespace", GANG_NS, "pod-security.kubernetes.io/enforce=restricted",
                 "pod-security.kubernetes.io/enforce-version=latest")
    return steps


def _sh_background(real, cmd: str) -> subprocess.Popen:
    argv, env = _shell(real, cmd)
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _diag(real, ns: str) -> str:
    out = [real.kubectl("get", "pods,jobs,sftjobs", "-n", ns, "-o", "wide", check=False).stdout,
           real.kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False).stdout[-3000:],
           real.kubectl("logs", "-n", "sft-system", "-l", "app.kubernetes.io/name=sft-operator", "--tail=20",
                        check=False).stdout]
    for p in real.get("pods", "-n", ns)["items"]:
        out.append(f"--- {p['metadata']['name']}:\n" + real.kubectl(
            "logs", "-n", ns, p["metadata"]["name"], "--tail=25", check=False).stdout)
    return "\n".join(out)


def _restricted_pod(name: str, script: str) -> dict:
    """A one-shot pod of the trainer image that passes the restricted Pod Security Standard."""
    from sft_dev.realnode import NODE_LABEL

    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": GANG_NS},
            "spec": {"restartPolicy": "Never", "nodeSelector": {NODE_LABEL: "true"},
                     "automountServiceAccountToken": False,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "probe", "image": "sft-operator/trainer:dev", "imagePullPolicy": "Never",
                                     "command": ["python", "-c", script],
                                     "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                         "capabilities": {"drop": ["ALL"]}}}]}}


_RESOLVE = """
import json, socket
out = {}
for name in NAMES:
    try:
        out[name] = sorted({a[4][0] for a in socket.getaddrinfo(name, 443, proto=socket.IPPROTO_TCP)})
    except socket.gaierror as e:
        out[name] = f"gaierror {e.errno}"
print(json.dumps(out))
print(open('/etc/resolv.conf').read())
"""


def _resolve_in_pod(real, name: str, names: list[str]) -> tuple[dict, str]:
    real.kubectl("apply", "-f", "-", input=yaml.safe_dump(_restricted_pod(name, f"NAMES = {names!r}" + _RESOLVE)))
    real.wait(f"pod {name} did not finish", lambda: real.get("pod", name, "-n", GANG_NS)["status"].get("phase")
              in ("Succeeded", "Failed"), 240, lambda: _diag(real, GANG_NS))
    logs = real.kubectl("logs", "-n", GANG_NS, name).stdout
    first, _, resolv = logs.partition("\n")
    return json.loads(first), resolv


def test_pods_resolve_cluster_names_through_coredns_and_nothing_outside(real, operator):
    from sft_dev.realnode import KUBERNETES_SERVICE_IP, NODE_IP

    got, resolv = _resolve_in_pod(real, "dns-probe", [
        "kubernetes.default.svc.cluster.local", "kubernetes.default",  # the second through the search path
        "example.com", "pypi.org", "deb.debian.org"])
    assert f"nameserver {NODE_IP}" in resolv and resolv.count("nameserver") == 1, resolv
    assert f"search {GANG_NS}.svc.cluster.local svc.cluster.local cluster.local" in resolv, resolv
    assert got["kubernetes.default.svc.cluster.local"] == [KUBERNETES_SERVICE_IP], got
    assert got["kubernetes.default"] == [KUBERNETES_SERVICE_IP], got
    for outside in ("example.com", "pypi.org", "deb.debian.org"):
        assert isinstance(got[outside], str) and got[outside].startswith("gaierror"), got


def test_readme_local_cluster_steps_train_the_quickstart_in_a_real_pod(real, operator):
    """The README's steps after `dev-cluster env`, as written: apply examples/quickstart.yaml (the
    README's capped variant of that line) and `kubectl wait` for Succeeded."""
    steps = operator
    (apply,) = [s for s in steps if "examples/quickstart.yaml" in s and "kubectl" in s and "apply" in s]
    (wait,) = [s for s in steps if s.startswith("kubectl wait")]
    readme = (ROOT / "README.md").read_text()
    capped = ("kubectl annotate --local -f examples/quickstart.yaml sft.dev/max-train-seconds="
              f"{QUICKSTART_CAP_SECONDS} -o yaml | kubectl apply -f -")
    assert apply == "kubectl apply -f examples/quickstart.yaml" and capped in readme, (apply, capped)
    t = time.monotonic()
    p = _sh(real, capped)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "sftjob.sft.dev/quickstart created" in p.stdout, p.stdout
    # The README's `kubectl wait`, with the test's time limit; a Failed job ends the wait early.
    waiter = _sh_background(real, re.sub(r"--timeout=\S+", "--timeout=1200s", wait))
    try:
        real.wait("the quickstart did not finish", lambda: waiter.poll() is not None or (real.get(
            "sftjob", "quickstart", "-n", "default").get("status") or {}).get("phase") == "Failed", 1260)
    finally:
        if waiter.poll() is None:
            waiter.kill()
        out, _ = waiter.communicate(timeout=30)
    took = time.monotonic() - t
    status = real.get("sftjob", "quickstart", "-n", "default").get("status") or {}
    assert waiter.returncode == 0 and status.get("phase") == "Succeeded", \
        f"{out}\n{json.dumps(status, indent=1)}\n{_diag(real, 'default')}"
    assert "condition met" in out, out
    print(f"README quickstart on the real node: Succeeded in {took:.0f}s (training capped at "
          f"{QUICKSTART_CAP_SECONDS}s), step {(status.get('progress') or {}).get('step')}")
    (pod,) = [x for x in real.get("pods", "-n", "default", "-l", "sft.dev/job-name=quickstart")["items"]
              if x["spec"]["containers"][0]["name"] == "trainer"]
    assert pod["spec"]["nodeName"] == "real-node-0"
    assert (status.get("progress") or {}).get("step", 0) > 0, status
    # The relative data paths resolved in the image (its working dir holds examples/data): the
    # preflight pod read them, and so did the trainer.
    assert (status.get("preflight") or {}).get("passed") is True, status.get("preflight")


def _gang_job(real) -> dict:
    from sft_dev.realnode import NODE_IP, NODE_LABEL

    spec = yaml.safe_load(QUICKSTART.read_text())["spec"]
    spec.update(
        datasets=[{"uri": f"s3://{BUCKET}/gang/train.jsonl", "format": "messages"}],
        checkpoints={"uri": f"s3://{BUCKET}/gang/ckpt", "everySteps": STEPS // 2, "keep": 2},
        output={"uri": f"s3://{BUCKET}/gang/model"},
        storage={"endpoint": f"http://{NODE_IP}:{real.s3_port}", "secretRef": "s3-creds", "region": "us-east-1"},
        workers={"nodes": 2, "gpusPerNode": 0, "nodeSelector": {NODE_LABEL: "true"},
                 # 2 x 900m beside the operator's 100m on the 2-CPU node: the most CPU share the pods can get
                 "resources": {"requests": {"cpu": "900m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}},
        failurePolicy={"maxRestarts": 0},
        split={"validation": 0.01, "test": 0.01, "seed": 42},  # 120 held-out examples: a short generation pass
    )
    # A short run: STEPS steps of 2 packed rows (one a rank, ~11 examples each) of all four tasks of
    # the quickstart. Its kv_json rows alone learned no held-out exact answer in 500 steps (the ages are
    # copied digits; the other tasks teach copying), all four did in 400 (the quickstart's 1600 reach
    # kv_json 100%).
    # Training seed 7: 27% held-out exact match where seed 42 had 3.2% (4 answers of 120), a margin
    # for the floor on another CPU's rounding.
    spec["training"].update(maxSteps=STEPS, warmupRatio=0.05, loggingSteps=10, seed=7)
    spec["eval"] = {"everySteps": STEPS // 2,
                    "goldenSet": {"uri": f"s3://{BUCKET}/gang/golden.jsonl", "minPassRate": 0.0, "maxNewTokens": 48}}
    return {"apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "gang", "namespace": GANG_NS},
            "spec": spec}


def test_quickstart_data_trains_as_a_real_two_pod_gang(real, operator):
    c = real.s3.client()
    c.put_object(Bucket=BUCKET, Key="gang/train.jsonl", Body=(DATA / "train.jsonl").read_bytes())
    c.put_object(Bucket=BUCKET, Key="gang/golden.jsonl", Body=(DATA / "golden.jsonl").read_bytes())
    real.kubectl("create", "secret", "generic", "s3-creds", "-n", GANG_NS,
                 f"--from-literal=AWS_ACCESS_KEY_ID={real.s3.access_key}",
                 f"--from-literal=AWS_SECRET_ACCESS_KEY={real.s3.secret_key}")
    t = time.monotonic()
    real.kubectl("apply", "-f", "-", input=yaml.safe_dump(_gang_job(real)))
    selector = "sft.dev/job-name=gang,sft.dev/component!=preflight"

    def trainers() -> list[dict]:
        return [p for p in real.get("pods", "-n", GANG_NS, "-l", selector)["items"]
                if p["spec"]["containers"][0]["name"] == "trainer"]

    def both_running() -> bool:
        ps = trainers()
        return len(ps) == 2 and all(p["status"].get("phase") == "Running" and p["status"].get("podIP") for p in ps)

    real.wait("the gang's two pods did not both run", both_running, 600, lambda: _diag(real, GANG_NS))
    pods = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p for p in trainers()}
    rank0, rank1 = pods["0"], pods["1"]
    assert rank0["spec"]["nodeName"] == rank1["spec"]["nodeName"] == "real-node-0"
    env = {e["name"]: e.get("value") for e in rank1["spec"]["containers"][0]["env"]}
    master = env["MASTER_ADDR"]
    assert master == f"gang-a1-0.{rank0['spec']['subdomain']}", master
    # Rank 1 resolves rank 0's name through CoreDNS (the search path adds <ns>.svc.cluster.local).
    probe = real.kubectl("exec", "-n", GANG_NS, rank1["metadata"]["name"], "--", "python", "-c",
                         f"import socket; print(socket.gethostbyname({master!r}))", check=False)
    assert probe.returncode == 0 and probe.stdout.strip() == rank0["status"]["podIP"], probe.stdout + probe.stderr

    def phase() -> str:
        return (real.get("sftjob", "gang", "-n", GANG_NS).get("status") or {}).get("phase", "")

    real.wait("the gang did not finish", lambda: phase() in ("Succeeded", "Failed"), 1200, lambda: _diag(real, GANG_NS))
    took = time.monotonic() - t
    status = real.get("sftjob", "gang", "-n", GANG_NS)["status"]
    assert status["phase"] == "Succeeded", f"{json.dumps(status, indent=1)}\n{_diag(real, GANG_NS)}"
    print(f"2-pod gang on the real node: Succeeded in {took:.0f}s")
    # gloo formed a world of 2 (rank 0 reports the trainer's world size through its token)
    assert status.get("worldSize") == 2, status
    assert (status.get("progress") or {}).get("step") == STEPS, status
    for p in trainers():
        (term,) = [s["state"]["terminated"] for s in p["status"]["containerStatuses"]]
        assert term["exitCode"] == 0, p["metadata"]["name"]
    # Committed checkpoints in SeaweedFS: each with its manifest and commit marker.
    keys = {o["Key"] for o in c.list_objects_v2(Bucket=BUCKET, Prefix="gang/ckpt/").get("Contents", [])}
    committed = sorted(k for k in keys if k.endswith("/_COMMITTED"))
    assert committed, sorted(keys)[:20]
    ckpt = f"gang/ckpt/checkpoint-{STEPS}"
    assert f"{ckpt}/_COMMITTED" in committed, committed
    manifest = json.loads(c.get_object(Bucket=BUCKET, Key=f"{ckpt}/_COMMITTED")["Body"].read())
    assert manifest["step"] == STEPS and manifest["files"], manifest
    for f in manifest["files"]:  # every file the manifest lists is there, at its size
        head = c.head_object(Bucket=BUCKET, Key=f"{ckpt}/{f['path']}")
        assert head["ContentLength"] == f["size"], (f, head["ContentLength"])
    # The evaluation reached status through rank 0's token: test loss and the golden set's scores.
    ev = status.get("evaluation") or {}
    assert ev.get("goldenSetPassRate") is not None and ev.get("testLoss") is not None, ev
    print(f"gang: held-out exact match {ev.get('exactMatch')}, by task {ev.get('exactMatchByTask')}; "
          f"golden pass rate {ev.get('goldenSetPassRate')}, by task {ev.get('goldenSetByTask')}")
    # Rank 0's held-out exact match on the test split (the issue's floor): the gang learned some answers.
    assert set(ev.get("exactMatchByTask") or {}) == {"kv_json", "upper", "reverse", "arithmetic"}, ev
    assert ev["exactMatch"] > 0, ev
