"""checkov, an outside security check, over the chart's rendered manifests and the operator's rendered
children of every example: each finding is fixed or waived, with its reason, in checkov-waivers.yaml.

No cluster: helm template and children.render only. checkov lives in its own venv, built on first use
under ~/.cache/sft-operator/venv-checkov-<version> (sft_dev.checkov_tool)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sft_dev import checkov_tool as ck

WAIVERS = Path(__file__).with_name("checkov-waivers.yaml")


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    out = tmp_path_factory.mktemp("checkov")
    files = ck.render_manifests(out)
    summary, findings = ck.scan(out)
    return files, summary, findings


def test_the_tool_reads_this_waiver_file():
    assert ck.WAIVERS == WAIVERS


def test_every_finding_is_fixed_or_waived(scanned):
    _, summary, findings = scanned
    open_, _, _ = ck.judge(findings, ck.load_waivers(WAIVERS))
    assert not open_, ("checkov findings that are neither fixed nor waived in checkov-waivers.yaml:\n"
                       + "\n".join(map(str, open_)))
    assert summary["failed"] == len(findings)


def test_every_waiver_is_still_needed(scanned):
    _, _, findings = scanned
    _, stale, _ = ck.judge(findings, ck.load_waivers(WAIVERS))
    assert not stale, "waivers that cover no finding (delete them):\n" + "\n".join(map(str, stale))


def test_checkov_read_every_rendered_file(scanned):
    files, summary, findings = scanned
    assert summary["parsing_errors"] == 0 and summary["passed"] > 0
    assert {f.name for f in files} == {"chart-defaults.yaml", "chart-monitoring.yaml"} | {
        f"example-{p.stem}.yaml" for p in (ck.REPO / "examples").glob("*.yaml")}
    # Every file has at least one waived finding (the image tag), so each was parsed and checked.
    assert {f.file for f in findings} == {f.name for f in files}


def test_trainer_pods_have_their_network_policy(scanned):
    _, _, findings = scanned
    # CKV2_K8S_6 links each Pod to a NetworkPolicy selecting it; the operator renders one per job.
    assert not [f for f in findings if f.check_id == "CKV2_K8S_6" and f.file.startswith("example-")]


def test_fixed_findings_stay_fixed(scanned):
    _, _, findings = scanned
    fixed = {"CKV_K8S_20": "allowPrivilegeEscalation", "CKV_K8S_22": "read-only root filesystem",
             "CKV_K8S_40": "uid >= 10000", "CKV_K8S_28": "NET_RAW dropped", "CKV_K8S_31": "seccomp",
             "CKV_K8S_23": "runAsNonRoot"}
    assert not [str(f) for f in findings if f.check_id in fixed]


def test_a_waiver_needs_a_reason(tmp_path):
    bad = tmp_path / "w.yaml"
    bad.write_text("waivers:\n  - {check: CKV_K8S_11, resource: '*'}\n")
    with pytest.raises(ValueError, match=r"waivers\[0\]: reason required"):
        ck.load_waivers(bad)


def test_judge_reports_open_findings_and_stale_waivers():
    f = ck.Finding("CKV_K8S_11", "CPU limits", "Job.ns.a-a1", "example-a.yaml")
    covering = ck.Waiver("CKV_K8S_11", "Job.*", "example-*.yaml", "r")
    other_file = ck.Waiver("CKV_K8S_11", "Job.*", "chart-*.yaml", "r")
    assert ck.judge([f], [covering]) == ([], [], {str(covering): [str(f)]})
    open_, stale, _ = ck.judge([f], [other_file])
    assert open_ == [f] and stale == [other_file]
