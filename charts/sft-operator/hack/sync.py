#!/usr/bin/env python3
"""Regenerate the chart's derived files from their sources, or check them with --check.

- files/operator-rules.yaml   <- sft_operator.rbac.OPERATOR_RULES (the operator's least-privilege rules)
- files/sft-operator.rules.yaml <- monitoring/alerts/sft-operator.rules.yaml (byte copy)
- files/sft-operator.json     <- monitoring/dashboards/sft-operator.json (byte copy)
- README.md                   <- hack/README.md.tmpl + a values table from the `# --` comments of values.yaml

Helm cannot read files outside the chart directory, hence the copies; tests run --check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent.parent
ROOT = CHART.parent.parent


def operator_rules_yaml() -> str:
    sys.path.insert(0, str(ROOT / "operator"))
    from sft_operator.rbac import OPERATOR_RULES

    lines = ["# Generated from sft_operator.rbac.OPERATOR_RULES by charts/sft-operator/hack/sync.py: do not edit."]
    for rule in OPERATOR_RULES:
        first = True
        for key in ("apiGroups", "resources", "resourceNames", "nonResourceURLs", "verbs"):
            if key in rule:
                lines.append(f"{'- ' if first else '  '}{key}: {json.dumps(rule[key])}")
                first = False
    return "\n".join(lines) + "\n"


_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-]+):(?:\s|$)")


def values_table(values_path: Path) -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every key that has a `# --` comment."""
    text = values_path.read_text()
    values = yaml.safe_load(text)
    rows, stack, pending = [], [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = stripped[4:].strip()
            continue
        m = _KEY.match(line)
        if not m or stripped.startswith("#"):
            continue
        depth = len(m.group("indent")) // 2
        stack = stack[:depth] + [m.group("key")]
        if pending is None:
            continue
        node = values
        for k in stack:
            node = node[k]
        kind = {dict: "object", list: "list", bool: "bool", int: "int", float: "float", str: "string"}.get(type(node), "string")
        default = json.dumps(node) if not isinstance(node, str) else json.dumps(node)
        rows.append((".".join(stack), kind, default, pending))
        pending = None
    return rows


def readme() -> str:
    rows = values_table(CHART / "values.yaml")
    table = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for key, kind, default, desc in rows:
        default = default.replace("|", "\\|")
        table.append(f"| `{key}` | {kind} | `{default}` | {desc} |")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    tmpl = (CHART / "hack" / "README.md.tmpl").read_text()
    return (tmpl.replace("{{ version }}", chart["version"]).replace("{{ appVersion }}", chart["appVersion"])
            .replace("{{ values_table }}", "\n".join(table)))


def targets() -> dict[Path, str]:
    return {
        CHART / "files" / "operator-rules.yaml": operator_rules_yaml(),
        CHART / "files" / "sft-operator.rules.yaml": (ROOT / "monitoring" / "alerts" / "sft-operator.rules.yaml").read_text(),
        CHART / "files" / "sft-operator.json": (ROOT / "monitoring" / "dashboards" / "sft-operator.json").read_text(),
        CHART / "README.md": readme(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a derived file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, content in targets().items():
        current = path.read_text() if path.exists() else None
        if current == content:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    if args.check and stale:
        print("out of date (run `python charts/sft-operator/hack/sync.py`): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    for p in stale:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
