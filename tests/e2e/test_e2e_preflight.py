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
