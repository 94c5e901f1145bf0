"""Faults and metrics with real pods on the real kubelet node (the kwok tests only simulate them):
- a graceful delete (`kubectl delete pod`, default grace) really sends SIGTERM: the trainer commits a
  checkpoint and exits 75, the operator counts a preemption (not a restart), and the next attempt's
  gang resumes from that checkpoint's step;
- a memory limit below the trainer's need is enforced by the kernel (cgroup v1 here): the container is
  OOMKilled (137) and the restart reason is OOMKilled in status, events and the operator's
  `sftoperator_restarts_total`;
- a real Prometheus on the host scrapes a trainer pod's /metrics at its pod IP on the bridge and sees
  `sftjob_step` rise.

One private cluster with only the real node for the module (sft_realnode.real_cluster), which checks
on the way out that the host is as it was. Run under `flock /tmp/sft-realnode.lock`.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request

import pytest
import yaml
from sft_realnode import real_cluster, tiny_data

pytestmark = [pytest.mark.realnode, pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]

NS = "sft-faults"
BUCKET = "faults"
TRAINER_METRICS_PORT = 9400  # the chart's trainer.metricsPort
OPERATOR_METRICS_PORT = 8080  # the chart's operator.metricsPort


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    with real_cluster(tmp_path_factory.mktemp("realnode-faults"), NS, [BUCKET]) as r:
        r.operator_pod = r.install_operator()
        r.s3_secret()
        r.s3.client().put_object(Bucket=BUCKET, Key="data/train.jsonl", Body=tiny_data())
        yield r


def _sftjob(real, name: str, *, max_steps: int, memory_limit: str = "6Gi", memory_request: str = "1Gi",
            max_restarts: int = 0) -> dict:
    """A tiny-model job on the real node: no preflight pod, no periodic checkpoint (only the one a
    SIGTERM or the end writes), no evaluation before the end."""
    from sft_dev.realnode import NODE_IP, NODE_LABEL

    return {
        "apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"uri": "builtin://tiny-llama"},
            "datasets": [{"uri": f"s3://{BUCKET}/data/train.jsonl", "format": "messages"}],
            "split": {"validation": 0.1, "test": 0.1, "seed": 1},
            "method": {"type": "full"},
            "training": {"maxSteps": max_steps, "learningRate": 2e-3, "perDeviceBatchSize": 2, "maxSeqLength": 64,
                         "packing": False, "precision": "fp32", "loggingSteps": 1},
            "eval": {"everySteps": 100000},
            "preflight": {"enabled": False},
            "checkpoints": {"uri": f"s3://{BUCKET}/{name}/ckpt", "everySteps": 100000, "keep": 2},
            "output": {"uri": f"s3://{BUCKET}/{name}/model"},
            "storage": {"endpoint": f"http://{NODE_IP}:{real.s3_port}", "secretRef": "s3-creds",
                        "region": "us-east-1"},
            "workers": {"nodes": 1, "gpusPerNode": 0, "nodeSelector": {NODE_LABEL: "true"},
                        "resources": {"requests": {"cpu": "500m", "memory": memory_request},
                                      "limits": {"memory": memory_limit}}},
            "failurePolicy": {"maxRestarts": max_restarts},
        },
    }


def _status(real, name: str) -> dict:
    return real.get("sftjob", name, "-n", NS).get("status") or {}


def _trainer_pods(real, name: str, attempt: int | None = None) -> list[dict]:
    sel = f"sft.dev/job-name={name}" + (f",sft.dev/attempt={attempt}" if attempt is not None else "")
    return [p for p in real.get("pods", "-n", NS, "-l", sel)["items"]
            if p["spec"]["containers"][0]["name"] == "trainer"]


def _running_trainer(real, name: str, attempt: int, timeout: float = 420) -> dict:
    """The attempt's trainer pod once its container runs and it has a pod IP."""
    def running():
        st = _status(real, name)
        if st.get("phase") in ("Failed", "Succeeded"):  # no use waiting: say why
            raise AssertionError(f"{name} ended {st['phase']} before attempt {attempt} ran: "
                                 f"{json.dumps(st.get('conditions'), indent=1)}\n{real.diag()}")
        for p in _trainer_pods(real, name, attempt):
            st = p["status"]
            if st.get("podIP") and any("running" in (c.get("state") or {}) for c in st.get("containerStatuses", [])):
                return p
        return None

    return real.wait(f"no running trainer pod of {name} attempt {attempt}", running, timeout)


def _scrape_step(pod_ip: str) -> float | None:
    """sftjob_step straight from the trainer's /metrics at its pod IP (the host routes to the bridge)."""
    try:
        text = urllib.request.urlopen(f"http://{pod_ip}:{TRAINER_METRICS_PORT}/metrics", timeout=3).read().decode()
    except OSError:
        return None
    m = re.search(r"^sftjob_step(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else None


def _operator_samples(real, pod: dict, metric: str) -> list[tuple[dict, float]]:
    """The samples of `metric` on the operator pod's own /metrics (its pod IP on the bridge, the chart's
    metrics port), with their labels."""
    ip = pod["status"]["podIP"]
    text = urllib.request.urlopen(f"http://{ip}:{OPERATOR_METRICS_PORT}/metrics", timeout=5).read().decode()
    out = []
    for m in re.finditer(rf"^{metric}\{{([^}}]*)\}} ([0-9.e+]+)$", text, re.M):
        out.append((dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))), float(m.group(2))))
    return out


def _delete_job(real, name: str) -> None:
    real.kubectl("delete", "sftjob", name, "-n", NS, "--wait=true", timeout=180)


def _watch_until_gone(real, pod: str, timeout: float = 300) -> tuple[dict, str]:
    """Poll a deleted pod until it is gone; the last container state seen, and its logs while it lasted."""
    deadline = time.monotonic() + timeout
    last, logs = {}, ""
    while time.monotonic() < deadline:
        p = real.kubectl("get", "pod", pod, "-n", NS, "-o", "json", check=False)
        if p.returncode != 0:
            return last, logs
        cs = json.loads(p.stdout)["status"].get("containerStatuses") or [{}]
        term = (cs[0].get("state") or {}).get("terminated")
        if term and not last:
            last = term
            logs = real.kubectl("logs", "-n", NS, pod, check=False).stdout
        time.sleep(0.5)
    raise AssertionError(f"pod {pod} still exists {timeout:.0f}s after its deletion\n{real.diag()}")


def test_prometheus_scrapes_trainer_pod_ip(real, tmp_path):
    """A real Prometheus (on 127.0.0.1, scraping out over the bridge) sees the trainer's sftjob_step rise."""
    from sft_dev.prom import start_prometheus

    real.kubectl("apply", "-f", "-", input=yaml.safe_dump(_sftjob(real, "scrape", max_steps=5000)))
    pod = _running_trainer(real, "scrape", 1)
    ip = pod["status"]["podIP"]
    assert ip.startswith("10.77.0."), ip
    target = f"{ip}:{TRAINER_METRICS_PORT}"
    prom = start_prometheus(state_dir=tmp_path / "prom")
    try:
        # the metrics server starts with the trainer, after its imports: wait for the first scrape
        real.wait("the trainer's /metrics did not answer", lambda: _scrape_step(ip) is not None, 300)
        prom.add_targets([target], job="sft-trainer")
        q = f'sftjob_step{{instance="{target}",job="sft-trainer"}}'
        first = real.wait("Prometheus has no sftjob_step above 0",
                          lambda: [float(r["value"][1]) for r in prom.query(q) if float(r["value"][1]) > 0], 300)[0]
        second = real.wait("sftjob_step did not rise in Prometheus",
                           lambda: [float(r["value"][1]) for r in prom.query(q) if float(r["value"][1]) > first],
                           120, every=1)[0]
        (t,) = [t for t in prom.targets() if t["labels"]["instance"] == target]
        assert t["health"] == "up" and t["scrapeUrl"] == f"http://{target}/metrics", t
        print(f"Prometheus scraped {target}: sftjob_step {first:.0f} -> {second:.0f}")
        assert second > first
        (series,) = prom.query(q)  # the trainer's own labels name the SFTJob
        assert series["metric"]["sftjob"] == "scrape" and series["metric"]["namespace"] == NS, series
    finally:
        prom.stop()
        _delete_job(real, "scrape")


def test_graceful_delete_checkpoints_exits_75_and_resumes(real):
    """`kubectl delete pod` (default grace) -> SIGTERM -> checkpoint at step N, exit 75 -> a preemption,
    not a restart -> attempt 2's gang resumes at step N and trains on to Succeeded."""
    name = "graceful"
    real.kubectl("apply", "-f", "-", input=yaml.safe_dump(_sftjob(real, name, max_steps=120)))
    pod = _running_trainer(real, name, 1)
    ip, pod_name = pod["status"]["podIP"], pod["metadata"]["name"]
    real.wait("the trainer did not reach step 3", lambda: (_scrape_step(ip) or 0) >= 3, 300, every=0.5)
    # Follow the log from before the delete: kubelet removes the container (and its log) once it ends.
    follow = subprocess.Popen([real.kubectl_exe, "logs", "-f", "-n", NS, pod_name], env=real.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t = time.monotonic()
    real.kubectl("delete", "pod", pod_name, "-n", NS, "--wait=false")
    term, _ = _watch_until_gone(real, pod_name)
    took = time.monotonic() - t
    try:
        logs = follow.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        follow.kill()
        logs = follow.communicate()[0]
    assert term.get("exitCode") == 75, f"{term}\n{logs[-3000:]}"
    m = re.search(r"stopped by SIGTERM at step (\d+) after committing a checkpoint", term.get("message") or "")
    assert m, f"termination message: {term}\n{logs[-3000:]}"
    step = int(m.group(1))
    assert step >= 3 and "received signal 15" in logs, logs[-3000:]
    print(f"deleted {pod_name}: exit 75 at step {step}, gone {took:.1f}s after the delete")
    # The checkpoint is committed in S3 under the step it stopped at.
    keys = [o["Key"] for o in real.s3.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{name}/ckpt/").get("Contents", [])]
    assert any(f"checkpoint-{step}/" in k for k in keys), keys

    status = real.wait("no attempt 2", lambda: (s := _status(real, name)).get("attempt", 0) >= 2 and s, 180)
    assert status["preemptions"] == 1 and status.get("restarts", 0) == 0, status
    lf = status["lastFailure"]
    assert lf["reason"] == "Interrupted" and lf["exitCode"] == 75 and lf["pod"] == pod_name, lf
    # The Job controller made no replacement pod in attempt 1: the operator's podFailurePolicy fails the
    # Job on the first failure (backoffLimit 0), and the operator starts attempt 2 as a whole gang.
    assert not _trainer_pods(real, name, 1), [p["metadata"]["name"] for p in _trainer_pods(real, name, 1)]
    pod2 = _running_trainer(real, name, 2)
    assert pod2["metadata"]["name"] != pod_name

    def resumed():
        out = real.kubectl("logs", "-n", NS, pod2["metadata"]["name"], check=False).stdout
        return re.search(r"resuming from committed checkpoint (\d+)", out)

    got = real.wait("attempt 2 did not log its resume", resumed, 300)
    assert int(got.group(1)) == step, got.group(0)
    final = real.wait("the SFTJob did not finish", lambda: (s := _status(real, name)).get("phase") in
                      ("Succeeded", "Failed") and s, 600)
    assert final["phase"] == "Succeeded", json.dumps(final, indent=1)
    assert final["preemptions"] == 1 and final.get("restarts", 0) == 0 and final["attempt"] == 2, final
    assert final["progress"]["step"] == 120, final["progress"]
    events = real.get("events", "-n", NS, "--field-selector", f"involvedObject.name={name}")["items"]
    assert any(e["reason"] == "Interrupted" for e in events), [(e["reason"], e["message"]) for e in events]
    _delete_job(real, name)


def test_memory_limit_below_need_is_oomkilled(real):
    """A 200Mi limit (the trainer's imports alone need more): the kernel kills it, the container ends
    OOMKilled with 137, attempt 1 is restarted with reason OOMKilled, attempt 2 too and then it fails."""
    name = "oom"
    job = _sftjob(real, name, max_steps=20, memory_limit="200Mi", memory_request="200Mi", max_restarts=1)
    real.kubectl("apply", "-f", "-", input=yaml.safe_dump(job))
    final = real.wait("the SFTJob did not fail", lambda: (s := _status(real, name)).get("phase") in
                      ("Succeeded", "Failed") and s, 600)
    assert final["phase"] == "Failed", json.dumps(final, indent=1)
    assert final["restarts"] == 1 and final.get("preemptions", 0) == 0 and final["attempt"] == 2, final
    lf = final["lastFailure"]
    assert lf["reason"] == "OOMKilled" and lf["exitCode"] == 137, lf
    failed = [c for c in final["conditions"] if c["type"] == "Failed"]
    assert failed and failed[0]["reason"] == "MaxRestartsExceeded" and "OOMKilled" in failed[0]["message"], failed
    # The last attempt's pod is kept: its container really was killed by the kernel.
    (pod,) = _trainer_pods(real, name, 2)
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["state"]["terminated"]["reason"] == "OOMKilled" and cs["state"]["terminated"]["exitCode"] == 137, cs
    assert pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == "200Mi"
    events = real.get("events", "-n", NS, "--field-selector", f"involvedObject.name={name}")["items"]
    assert any(e["reason"] == "OOMKilled" for e in events), [(e["reason"], e["message"]) for e in events]
    # The operator's metric counts the one restart under the same reason (read before the delete,
    # which drops the job's series).
    (op,) = real.get("pods", "-n", NS, "-l", "app.kubernetes.io/name=sft-operator")["items"]
    restarts = {s["reason"]: v for s, v in _operator_samples(real, op, "sftoperator_restarts_total")
                if s.get("namespace") == NS and s.get("sftjob") == name}
    assert restarts == {"OOMKilled": 1.0}, (restarts, op["metadata"]["name"], op["status"].get("containerStatuses"))
    _delete_job(real, name)
