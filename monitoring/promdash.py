"""Run the Grafana dashboard's queries against a Prometheus, as Grafana would, without Grafana.

Used by the dashboard tests (every query must return data after a real run) and by
render_quickstart_png.py (the picture in docs/monitoring.md). Standard library only.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parent / "dashboards" / "sft-operator.json"


@dataclass
class PanelQuery:
    panel: str
    ref: str
    expr: str
    legend: str


@dataclass
class Series:
    labels: dict[str, str]
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def finite(self) -> list[tuple[float, float]]:
        return [(t, v) for t, v in zip(self.times, self.values) if math.isfinite(v)]


def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(Path(path).read_text())


def panel_queries(dashboard: dict) -> list[PanelQuery]:
    return [PanelQuery(p["title"], t.get("refId", ""), t["expr"], t.get("legendFormat", ""))
            for p in dashboard["panels"] if p["type"] != "row" for t in p.get("targets", [])]


def substitute(expr: str, *, namespace: str, sftjob: str, rate_interval: str = "15s", range_: str = "1h") -> str:
    """Grafana's interpolation of the variables this dashboard uses."""
    out = expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)
    return out.replace("$namespace", namespace).replace("$sftjob", sftjob)


def legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt or fmt == "__auto":
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def _get(url: str, path: str, params: dict) -> dict:
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}", timeout=30) as r:
        out = json.loads(r.read())
    if out.get("status") != "success":
        raise RuntimeError(f"Prometheus {path} failed: {out}")
    return out["data"]


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[Series]:
    data = _get(url, "query_range", {"query": expr, "start": start, "end": end, "step": step})
    return [Series(r["metric"], [float(t) for t, _ in r["values"]], [float(v) for _, v in r["values"]])
            for r in data["result"]]


def label_values(url: str, label: str, match: str, start: float, end: float) -> list[str]:
    """What a Grafana `label_values(<match>, <label>)` variable offers."""
    return _get(url, f"label/{label}/values", {"match[]": match, "start": start, "end": end})


def variable_options(url: str, dashboard: dict, start: float, end: float, chosen: dict[str, str]) -> dict[str, list[str]]:
    """Options of every `label_values(...)` query variable, each narrowed by the variables before it."""
    out = {}
    for var in dashboard["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", str(var.get("query", "")))
        if var["type"] != "query" or not m:
            continue
        match = m.group(1)
        for name, value in chosen.items():
            match = match.replace(f"${name}", value)
        out[var["name"]] = label_values(url, m.group(2), match, start, end)
    return out


def rules(url: str) -> list[dict]:
    """Every rule Prometheus evaluates, with its `health`, `lastError` and (for alerts) `state`."""
    return [r for g in _get(url, "rules", {})["groups"] for r in g["rules"]]
