"""The per-job NetworkPolicy, enforced: kube-router's network-policy controller on the real node
(`sftctl dev-cluster up --real-node --network-policy`) and the policy exactly as the operator renders
it (`sft_operator.children.render`) with the settings the chart gives the operator.

Pods of the trainer image, labelled as the Job controller labels a job's pods (the rendered Job's
pod template labels, its pod and container securityContext, restricted PSS), on the one real node:
- rank 0 of job `alpha` listens on the rendezvous port (c10d's, no authentication) and the metrics port;
- before the policy, a pod of another job and a pod of another namespace reach both (the network works);
- with the policy: a pod of the same job reaches both; a pod of another job in the namespace and a
  pod of another namespace reach neither; a pod of the `monitoring` namespace (the chart's default
  `trainer.networkPolicy.metricsFrom`) reaches the metrics port and not the rendezvous port;
- with the policy deleted, the other job's pod reaches rank 0 again.
The fixture's teardown checks that iptables, the ipsets and net.bridge.bridge-nf-call-iptables are
as they were before `up` (sft_realnode.HostState).

A cluster of this module's own; run it under `flock /tmp/sft-realnode.lock` (one real node per machine).
"""

from __future__ import annotations

import json
import time

import pytest
import yaml
from sft_realnode import CHART, real_cluster

pytestmark = [pytest.mark.realnode, pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1200)]

NS = "sft-netpol"
OTHER_NS = "sft-netpol-other"
MONITORING_NS = "monitoring"  # the chart's default trainer.networkPolicy.metricsFrom
RELEASE_NS = "sft-system"
JOB, OTHER_JOB = "alpha", "beta"
CONNECT_TIMEOUT = 3.0

_SERVER = """
import socket, threading
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        c.sendall(b"ok\\n")
        c.close()
for p in PORTS[1:]:
    threading.Thread(target=serve, args=(p,), daemon=True).start()
serve(PORTS[0])
"""

_PROBE = """
import json, socket, sys
ip, timeout, ports = sys.argv[1], float(sys.argv[2]), [int(p) for p in sys.argv[3:]]
out = {}
for port in ports:
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.settimeout(timeout)
            out[port] = "open" if s.recv(3) == b"ok\\n" else "no banner"
    except OSError as e:
        out[port] = type(e).__name__
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    with real_cluster(tmp_path_factory.mktemp("netpol"), NS, ["netpol"], network_policy=True) as r:
        yield r


def chart_settings(real, monkeypatch):
    """The operator's settings as the chart's defaults configure them: the SFT_* env of the
    Deployment that `helm template` renders, read by OperatorSettings.from_env."""
    from sft_operator.settings import OperatorSettings

    docs = [d for d in yaml.safe_load_all(real.helm("template", "sft", str(CHART), "-n", RELEASE_NS).stdout) if d]
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e["value"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    for k, v in env.items():
        if k.startswith("SFT_"):
            monkeypatch.setenv(k, v)
    return OperatorSettings.from_env()


def _body(name: str) -> dict:
    return {"apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"uri": "builtin://tiny-llama"}, "datasets": [{"uri": "data/quickstart/train.jsonl"}],
                     "training": {"maxSteps": 10}, "storage": {"secretRef": "s3-credentials"},
                     "workers": {"nodes": 2, "gpusPerNode": 0}}}


def _pod(name: str, namespace: str, job: dict | None, script: str) -> dict:
    """A pod of the trainer image; with `job` (a rendered Job), labelled and secured as its pods are."""
    from sft_dev.realnode import NODE_LABEL

    tmpl = (job or {}).get("spec", {}).get("template", {})
    trainer = tmpl["spec"]["containers"][0] if job else {}
    labels = dict(tmpl.get("metadata", {}).get("labels") or {}, **{"batch.kubernetes.io/job-name": job["metadata"]["name"]}) \
        if job else {"app": "netpol-probe"}
    pod_sec = tmpl["spec"]["securityContext"] if job else {
        "runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    ctr_sec = trainer.get("securityContext") or {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"restartPolicy": "Never", "nodeSelector": {NODE_LABEL: "true"},
                     "automountServiceAccountToken": False, "enableServiceLinks": False,
                     "terminationGracePeriodSeconds": 1, "securityContext": pod_sec,
                     "containers": [{"name": "trainer", "image": "sft-operator/trainer:dev", "imagePullPolicy": "Never",
                                     "command": ["python", "-c", script], "ports": trainer.get("ports", []),
                                     "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                                                   "limits": {"memory": "256Mi"}},
                                     "securityContext": ctr_sec}]}}


def _restricted_ns(real, name: str) -> None:
    real.kubectl("create", "namespace", name)
    real.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
                 "pod-security.kubernetes.io/enforce-version=latest")


def _diag(real) -> str:
    out = [real.kubectl("get", "pods,networkpolicies", "-A", "-o", "wide", check=False).stdout]
    log = real.info.state_dir / "logs" / "kube-router.log"
    if log.exists():
        out.append("kube-router: " + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))
    return "\n".join(out)


def test_rendered_policy_is_enforced_on_the_real_node(real, monkeypatch):
    from sft_dev import realnode
    from sft_operator.children import network_policy_name, render

    settings = chart_settings(real, monkeypatch)
    rdzv, metrics = settings.master_port, settings.trainer_metrics_port
    assert settings.network_policy and {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": MONITORING_NS}}} in settings.metrics_from, settings.metrics_from
    objs = render(_body(JOB), attempt=1, settings=settings)
    (policy,) = [o for o in objs if o["kind"] == "NetworkPolicy"]
    (job,) = [o for o in objs if o["kind"] == "Job"]
    (other_job,) = [o for o in render(_body(OTHER_JOB), attempt=1, settings=settings) if o["kind"] == "Job"]

    for ns in (OTHER_NS, MONITORING_NS):
        _restricted_ns(real, ns)
    sleeper = "import time; time.sleep(3600)"
    pods = [_pod("alpha-0", NS, job, f"PORTS = {[rdzv, metrics]!r}" + _SERVER),
            _pod("alpha-1", NS, job, sleeper), _pod("beta-0", NS, other_job, sleeper),
            _pod("outsider", OTHER_NS, None, sleeper), _pod("scraper", MONITORING_NS, None, sleeper)]
    t = time.monotonic()
    real.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(pods))

    def running() -> bool:
        got = [real.get("pod", p["metadata"]["name"], "-n", p["metadata"]["namespace"])["status"] for p in pods]
        return all(s.get("phase") == "Running" and s.get("podIP") for s in got)

    real.wait("the probe pods did not all run", running, 300, lambda: _diag(real))
    target = real.get("pod", "alpha-0", "-n", NS)["status"]["podIP"]
    print(f"5 pods running in {time.monotonic() - t:.0f}s; rank 0 of {JOB} at {target}")

    def probe(pod: str, ns: str) -> dict[int, str]:
        p = real.kubectl("exec", "-n", ns, pod, "--", "python", "-c", _PROBE, target, str(CONNECT_TIMEOUT),
                         str(rdzv), str(metrics), timeout=60)
        return {int(k): v for k, v in json.loads(p.stdout.strip().splitlines()[-1]).items()}

    def listening() -> bool:  # the server may still be starting
        return probe("alpha-1", NS) == {rdzv: "open", metrics: "open"}

    real.wait("rank 0 did not listen", listening, 60, lambda: _diag(real), every=1)
    # Without the policy, everyone reaches both ports: the network works, so a refusal later is the policy's.
    before = {who: probe(*who) for who in (("beta-0", NS), ("outsider", OTHER_NS), ("scraper", MONITORING_NS))}
    assert all(v == {rdzv: "open", metrics: "open"} for v in before.values()), before

    real.kubectl("apply", "--server-side", "--field-manager=sft-operator", "-f", "-", input=json.dumps(policy))
    live = real.get("networkpolicy", network_policy_name(JOB), "-n", NS)
    assert live["spec"] == policy["spec"]
    t = time.monotonic()
    real.wait("the policy was not enforced", lambda: probe("beta-0", NS)[rdzv] != "open", 60, lambda: _diag(real),
              every=0.5)
    enforced_in = time.monotonic() - t
    chains, ipsets = realnode.kube_router_firewall()
    assert any(c.startswith("KUBE-NWPLCY-") and c != "KUBE-NWPLCY-DEFAULT" for c in chains), chains
    assert ipsets, "kube-router made no ipset for the policy"

    got = {who: probe(*who) for who in (("alpha-1", NS), ("beta-0", NS), ("outsider", OTHER_NS),
                                        ("scraper", MONITORING_NS))}
    print(f"enforced {enforced_in:.1f}s after the apply: {got}")
    assert got[("alpha-1", NS)] == {rdzv: "open", metrics: "open"}, got  # the job's own pods: every port
    for who in (("beta-0", NS), ("outsider", OTHER_NS)):  # another job, another namespace: nothing
        assert got[who][rdzv] != "open" and got[who][metrics] != "open", (who, got)
    scraper = got[("scraper", MONITORING_NS)]  # metricsFrom: the metrics port only
    assert scraper[metrics] == "open" and scraper[rdzv] != "open", got
    # kube-router REJECTs: a refusal, not a timeout (the packet reached the host and was turned away)
    assert got[("beta-0", NS)][rdzv] == "ConnectionRefusedError", got

    real.kubectl("delete", "networkpolicy", network_policy_name(JOB), "-n", NS)
    t = time.monotonic()
    real.wait("deleting the policy did not open rank 0 again",
              lambda: probe("beta-0", NS) == {rdzv: "open", metrics: "open"}, 60, lambda: _diag(real), every=0.5)
    print(f"policy deleted: open again after {time.monotonic() - t:.1f}s")
