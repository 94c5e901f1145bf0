"""checkov (PyPI), an outside security check, over everything this project puts on a cluster: the
chart's rendered manifests and the children the operator renders for every example.

checkov pins dozens of packages of its own (boto3, networkx, bc-python-hcl2, ...), so it never goes into
the project's pinned venv: it is installed once, under ``~/.cache/sft-operator/`` keyed by its version,
the way ``tracking_servers.tool_venv`` installs MLflow.

Every failed check is either fixed or waived, with its reason, in ``tests/unit/security/checkov-waivers.yaml``;
``tests/unit/security/test_checkov.py`` fails on a finding no waiver covers and on a waiver that covers
nothing. ``python -m sft_dev.checkov_tool --out bench/results/checkov.json`` writes the same scan's figures.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from sft_dev.build import cache_root

CHECKOV_VERSION = "3.3.30"
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sft-operator"
WAIVERS = REPO / "tests" / "unit" / "security" / "checkov-waivers.yaml"
RELEASE_NAMESPACE = "sft-system"
# Offline `helm template` of every monitoring object (the API check needs a cluster).
MONITORING_ON = ["--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.podMonitor.enabled=true",
                 "--set", "monitoring.prometheusRule.enabled=true", "--set", "monitoring.dashboard.enabled=true",
                 "--set", "monitoring.skipApiCheck=true"]

__all__ = ["CHECKOV_VERSION", "CheckovToolError", "Finding", "Waiver", "checkov_bin", "render_manifests", "scan",
           "load_waivers", "judge"]


class CheckovToolError(RuntimeError):
    """The checkov venv could not be built, or checkov did not produce a report; the message says why."""


def checkov_venv_dir() -> Path:
    return cache_root() / f"venv-checkov-{CHECKOV_VERSION}"


def checkov_bin(log=sys.stderr) -> Path:
    """The ``checkov`` executable of its own pinned venv, built once."""
    from sft_dev.tools import pinned_venv

    py = pinned_venv(checkov_venv_dir(), {"checkov": CHECKOV_VERSION}, f"checkov {CHECKOV_VERSION} tool",
                     CheckovToolError, log)
    return py.parent / "checkov"


# -- what goes on a cluster ------------------------------------------------------------------------------


def _helm_template(*args: str) -> str:
    from sft_dev.tools import helm

    p = subprocess.run([str(helm()), "template", "rel", str(CHART), "--namespace", RELEASE_NAMESPACE, *args],
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise CheckovToolError(f"helm template {' '.join(args)} failed: {p.stderr[-2000:]}")
    return p.stdout


def chart_settings(chart_yaml: str):
    """The OperatorSettings the chart's operator reads from its container env."""
    from sft_operator.settings import OperatorSettings

    [deploy] = [d for d in yaml.safe_load_all(chart_yaml) if d and d.get("kind") == "Deployment"]
    env = {e["name"]: e["value"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    saved = {k: v for k, v in os.environ.items() if k.startswith("SFT_")}
    try:
        for k in saved:
            del os.environ[k]
        os.environ.update(env)
        return OperatorSettings.from_env()
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)


def render_manifests(out: Path) -> list[Path]:
    """chart-defaults.yaml, chart-monitoring.yaml and example-<name>.yaml (the trainer's children and the
    preflight Job of each examples/*.yaml, under the chart's default operator settings) in `out`."""
    from sft_api import load_sftjob
    from sft_operator.children import render, render_preflight

    out.mkdir(parents=True, exist_ok=True)
    files = []
    defaults = _helm_template()
    for tag, text in (("defaults", defaults), ("monitoring", _helm_template(*MONITORING_ON))):
        files.append(out / f"chart-{tag}.yaml")
        files[-1].write_text(text)
    settings = chart_settings(defaults)
    for example in sorted((REPO / "examples").glob("*.yaml")):
        body = load_sftjob(example).model_dump(by_alias=True, exclude_none=True, mode="json")
        body["metadata"].setdefault("namespace", "default")  # as `kubectl apply` without -n
        preflight = [o for o in render_preflight(body, attempt=1, spec_hash="0", settings=settings) if o["kind"] == "Job"]
        files.append(out / f"example-{example.stem}.yaml")
        files[-1].write_text(yaml.safe_dump_all(render(body, settings=settings) + preflight, sort_keys=False))
    return files


# -- the scan and the waivers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    check_id: str
    check_name: str
    resource: str  # checkov's id: Kind.namespace.name
    file: str  # the rendered file's name, e.g. example-quickstart.yaml

    def __str__(self) -> str:
        return f"{self.check_id} {self.resource} in {self.file}: {self.check_name}"


@dataclass(frozen=True)
class Waiver:
    check: str
    resource: str  # fnmatch pattern on Kind.namespace.name
    file: str  # fnmatch pattern on the rendered file's name
    reason: str

    def covers(self, f: Finding) -> bool:
        return (f.check_id == self.check and fnmatch.fnmatchcase(f.resource, self.resource)
                and fnmatch.fnmatchcase(f.file, self.file))

    def __str__(self) -> str:
        return f"{self.check} {self.resource} in {self.file}"


def scan(directory: Path, timeout: float = 900.0) -> tuple[dict, list[Finding]]:
    """``checkov -d DIR --framework kubernetes --compact -o json``: its summary and its failed checks."""
    cmd = [str(checkov_bin()), "-d", str(directory), "--framework", "kubernetes", "--compact", "-o", "json",
           "--quiet", "--skip-download"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode not in (0, 1):  # 1: some check failed
        raise CheckovToolError(f"checkov exited {p.returncode}: {(p.stderr or p.stdout)[-2000:]}")
    try:
        report = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise CheckovToolError(f"checkov printed no JSON report: {(p.stdout + p.stderr)[-2000:]}") from None
    reports = report if isinstance(report, list) else [report]
    summary = {k: sum(int(r["summary"].get(k) or 0) for r in reports)
               for k in ("passed", "failed", "skipped", "parsing_errors", "resource_count")}
    summary["checkov_version"] = reports[0]["summary"].get("checkov_version")
    failed = [Finding(c["check_id"], c.get("check_name") or "", c["resource"], Path(c["file_path"]).name)
              for r in reports for c in (r.get("results") or {}).get("failed_checks") or []]
    return summary, sorted(set(failed), key=str)


def load_waivers(path: Path = WAIVERS) -> list[Waiver]:
    doc = yaml.safe_load(path.read_text()) or {}
    out = []
    for i, w in enumerate(doc.get("waivers") or []):
        missing = [k for k in ("check", "resource", "reason") if not str(w.get(k) or "").strip()]
        if missing:
            raise ValueError(f"{path.name}: waivers[{i}]: {', '.join(missing)} required")
        out.append(Waiver(w["check"], w["resource"], w.get("file") or "*", " ".join(str(w["reason"]).split())))
    return out


def judge(findings: list[Finding], waivers: list[Waiver]) -> tuple[list[Finding], list[Waiver], dict[str, list[str]]]:
    """(findings no waiver covers, waivers that cover nothing, {waiver: the findings it covers})."""
    covered = {str(w): [str(f) for f in findings if w.covers(f)] for w in waivers}
    open_ = [f for f in findings if not any(w.covers(f) for w in waivers)]
    return open_, [w for w in waivers if not covered[str(w)]], covered


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sft_dev.checkov_tool", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="write the scan's figures as JSON here (e.g. bench/results/checkov.json)")
    ap.add_argument("--build", action="store_true", help="only build (or find) the checkov tool venv")
    args = ap.parse_args(argv)
    if args.build:
        print(f"checkov {CHECKOV_VERSION}: {checkov_bin()}")
        return 0
    with tempfile.TemporaryDirectory(prefix="sft-checkov-") as tmp:
        files = render_manifests(Path(tmp))
        t0 = time.monotonic()
        summary, findings = scan(Path(tmp))
        seconds = time.monotonic() - t0
    open_, stale, covered = judge(findings, load_waivers())
    result = {"checkov_version": CHECKOV_VERSION, "files": [f.name for f in files], "summary": summary,
              "scan_seconds": round(seconds, 1), "findings": len(findings), "unwaived": [str(f) for f in open_],
              "stale_waivers": [str(w) for w in stale], "waived": covered,
              "load_average": [round(x, 2) for x in os.getloadavg()]}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(json.dumps({k: result[k] for k in ("summary", "findings", "unwaived", "stale_waivers", "scan_seconds")}, indent=2))
    return 1 if open_ or stale else 0


if __name__ == "__main__":
    sys.exit(main())
