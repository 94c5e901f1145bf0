"""Preflight before the gang, on the real control plane with kwok: one CPU-only pod checks the data
and template first; a data error fails the SFTJob with DataError naming file:line and no GPU is ever
requested; a pass proceeds to the gang and is not repeated by a restart of the same spec."""

from __future__ import annotations

import time

from sft_e2e_helpers import cond, sftjob_manifest

# The tail of what `python -m sft_trainer.preflight` prints for a broken row (measured on this data).
BAD_ROW = ("DataError: spec.datasets: 1 of 1200 rows are malformed (0.08% > spec.preflight.maxBadRowRatio 0.00%):\n"
           "  data/quickstart/train.jsonl:17: invalid JSON: Expecting ',' delimiter (column 30)")


def _gpu_requested(sft, name) -> list[str]:
    """Every pod of the job that asks for a GPU (preflight or gang)."""
    sel = f"sft.dev/job-name={name}"
    return [p.metadata.name for p in sft.core.list_namespaced_pod(sft.ns, label_selector=sel).items
            if any("nvidia.com/gpu" in ((c.resources.requests or {}) | (c.resources.limits or {})) for c in p.spec.containers)]


def test_data_error_in_preflight_fails_the_job_without_a_gpu(operator, sft, kwok_pods):
    name = "baddata"
    started = time.monotonic()
    sft.apply(sftjob_manifest(name, nodes=2, gpus=8, preflight={"enabled": True}))
    check = sft.running_preflight_pod(name)
    c = check.spec.containers[0]
    assert c.command == ["python", "-m", "sft_trainer.preflight", "/etc/sft/job.yaml", "--base-dir", ".",
                                    "--examples", "0"]
    assert c.security_context.run_as_non_root and c.security_context.allow_privilege_escalation is False
    assert check.spec.automount_service_account_token is False
    st = sft.status(name)
    assert st["phase"] == "Pending" and cond(st, "Preflight")["reason"] == "PreflightRunning"
    assert sft.jobs(name) == [] and _gpu_requested(sft, name) == []

    # What the trainer's preflight does with a broken row: exit 64, the row in its termination message.
    kwok_pods.fail(sft.ns, check.metadata.name, exit_code=64, message=BAD_ROW, wait=False)
    st = sft.wait_phase(name, "Failed", 30)
    took = time.monotonic() - started
    failed = cond(st, "Failed")
    assert failed["reason"] == "DataError" and "data/quickstart/train.jsonl:17" in failed["message"], failed
    assert cond(st, "Preflight")["reason"] == "DataError" and "train.jsonl:17" in cond(st, "Preflight")["message"]
    assert st["preflight"]["passed"] is False and st["restarts"] == 0 and st["attempt"] == 1
    ev = [e for e in sft.wait_events(name, {"DataError"}) if e.reason == "DataError"]
    assert ev and ev[0].type == "Warning" and "train.jsonl:17" in ev[0].message
    time.sleep(2)  # nothing comes after: no gang Job, no GPU pod, ever
    assert sft.jobs(name) == [] and _gpu_requested(sft, name) == []
    print(f"\napply -> Failed/DataError: {took:.1f}s (kwok fails the preflight pod as soon as it runs)")


def test_passing_preflight_proceeds_to_the_gang_and_is_not_repeated_on_restart(operator, sft, kwok_pods):
    name = "gooddata"
    sft.apply(sftjob_manifest(name, nodes=2, gpus=1, preflight={"enabled": True}))
    check = sft.running_preflight_pod(name)
    assert sft.jobs(name) == []
    kwok_pods.succeed(sft.ns, check.metadata.name, message="1200 rows checked, 0 bad; template verdict: markers")
    pods = sft.running_pods(name, 1, 2)
    st = sft.wait_phase(name, "Running", 30)
    assert cond(st, "Preflight")["status"] == "True" and cond(st, "Preflight")["reason"] == "PreflightPassed"
    assert st["preflight"]["passed"] is True and st["preflight"]["generation"] == 1
    ev = [e for e in sft.wait_events(name, {"PreflightPassed", "AttemptCreated"}) if e.reason == "PreflightPassed"]
    assert "1200 rows checked" in ev[0].message

    # A gang failure restarts the gang, not the preflight: the spec has not changed.
    kwok_pods.fail(sft.ns, pods[0].metadata.name, exit_code=1, wait=False)
    sft.running_pods(name, 2, 2)
    assert sft.preflight_jobs(name, 2) == []
    assert sft.status(name)["restarts"] == 1


def _run_pod_command(sft, pod, workdir):
    """Run the preflight pod's own command and env (read back from the apiserver) as a local process,
    in `workdir` as its working directory; returns (exit code, termination message) as the kubelet
    would make them with FallbackToLogsOnError: the log's last 80 lines, at most 2048 bytes."""
    import os
    import subprocess
    import sys

    c = pod.spec.containers[0]
    cm = next(v.config_map.name for v in pod.spec.volumes if v.config_map)
    mount = next(m.mount_path for m in c.volume_mounts if m.name == "config")
    config_dir = workdir / "config"
    config_dir.mkdir()
    for key, text in sft.core.read_namespaced_config_map(cm, sft.ns).data.items():
        (config_dir / key).write_text(text)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update({e.name: e.value.replace(mount, str(config_dir)) for e in c.env if e.value is not None})
    argv = [sys.executable if a == "python" else a.replace(mount, str(config_dir)) for a in c.command]
    p = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    log = (p.stdout + p.stderr).splitlines()[-80:]
    return p.returncode, "\n".join(log).encode()[-2048:].decode(errors="ignore")


def test_the_real_preflight_entry_point_fails_a_broken_row(operator, sft, kwok_pods, tmp_path):
    """The preflight pod's command, env and ConfigMap as the operator made them, run for real against
    data with a broken row; kwok then ends the pod with that exit code and termination message."""
    from pathlib import Path

    name = "realcheck"
    rows = (Path(__file__).resolve().parents[2] / "examples" / "data" / "quickstart" / "train.jsonl").read_text().splitlines()[:200]
    rows[16] = '{"messages": [{"role": "user", "content": "hi"}'  # line 17: truncated JSON
    data = tmp_path / "data" / "quickstart"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("\n".join(rows) + "\n")
    started = time.monotonic()
    sft.apply(sftjob_manifest(name, nodes=2, gpus=8, preflight={"enabled": True, "maxBadRowRatio": 0.0}))
    check = sft.running_preflight_pod(name)
    ran = time.monotonic()
    code, message = _run_pod_command(sft, check, tmp_path)
    checked = time.monotonic() - ran
    assert code == 64, message
    kwok_pods.fail(sft.ns, check.metadata.name, exit_code=code, message=message, wait=False)
    st = sft.wait_phase(name, "Failed", 30)
    took = time.monotonic() - started
    failed = cond(st, "Failed")
    assert failed["reason"] == "DataError" and "train.jsonl:17" in failed["message"] and "invalid JSON" in failed["message"], failed
    assert sft.jobs(name) == [] and _gpu_requested(sft, name) == []
    print(f"\nreal preflight: exit {code} after {checked:.1f}s; apply -> Failed/DataError {took:.1f}s; message: {failed['message']}")
