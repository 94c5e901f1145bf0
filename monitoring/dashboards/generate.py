#!/usr/bin/env python3
"""Build the "SFT operator" Grafana dashboard with grafana-foundation-sdk and write it as JSON.

    python monitoring/dashboards/generate.py           # writes monitoring/dashboards/sft-operator.json
    python monitoring/dashboards/generate.py --check   # fails if the JSON is out of date

Then run `python charts/sft-operator/hack/sync.py` so the chart's ConfigMap carries the same JSON.
Every query uses only metrics of docs/monitoring.md and PromQL that Prometheus 2.42 understands; the
integration test runs each one against a real Prometheus after a real training run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus as gprom
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.builders import common as gcommon
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as mcommon
from grafana_foundation_sdk.models import dashboard as mdash

OUT = Path(__file__).resolve().parent / "sft-operator.json"
UID = "sft-operator"

DS = mdash.DataSourceRef(type_val="prometheus", uid="${datasource}")
JOB = 'namespace="$namespace", sftjob="$sftjob"'


def q(expr: str, legend: str = "__auto", ref: str = "A", instant: bool = False) -> gprom.Dataquery:
    query = gprom.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)
    return query.instant() if instant else query.range()


def thresholds(*steps: tuple[float | None, str]) -> gdash.ThresholdsConfig:
    return gdash.ThresholdsConfig().mode(mdash.ThresholdsMode.ABSOLUTE).steps(
        [mdash.Threshold(value=v, color=c) for v, c in steps])


def ts(title: str, description: str, unit: str, *queries: gprom.Dataquery, w: int = 12, h: int = 8) -> gts.Panel:
    panel = (gts.Panel().title(title).description(description).unit(unit).datasource(DS)
             .span(w).height(h).line_width(1).fill_opacity(10).show_points(mcommon.VisibilityMode.NEVER)
             .legend(gcommon.VizLegendOptions().show_legend(True).display_mode(mcommon.LegendDisplayMode.LIST)
                     .placement(mcommon.LegendPlacement.BOTTOM))
             .tooltip(gcommon.VizTooltipOptions().mode(mcommon.TooltipDisplayMode.MULTI).sort(mcommon.SortOrder.NONE)))
    for query in queries:
        panel = panel.with_target(query)
    return panel


def st(title: str, description: str, unit: str, query: gprom.Dataquery, w: int = 4, h: int = 4,
       steps: tuple[tuple[float | None, str], ...] = ((None, "green"),)) -> gstat.Panel:
    return (gstat.Panel().title(title).description(description).unit(unit).datasource(DS).span(w).height(h)
            .with_target(query).thresholds(thresholds(*steps))
            .color_mode(mcommon.BigValueColorMode.VALUE).graph_mode(mcommon.BigValueGraphMode.AREA)
            .reduce_options(gcommon.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))


def build() -> dict:
    datasource = (gdash.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    namespace = (gdash.QueryVariable("namespace").label("Namespace").datasource(DS)
                 .query("label_values(sftjob_step, namespace)")
                 .refresh(mdash.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(mdash.VariableSort.ALPHABETICAL_ASC))
    sftjob = (gdash.QueryVariable("sftjob").label("SFTJob").datasource(DS)
              .query('label_values(sftjob_step{namespace="$namespace"}, sftjob)')
              .refresh(mdash.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(mdash.VariableSort.ALPHABETICAL_ASC))

    steps_left = f"sftjob_total_steps{{{JOB}}} - sftjob_step{{{JOB}}}"
    step_rate = f"deriv(sftjob_step{{{JOB}}}[5m])"
    steps_since_ckpt = f"sftjob_step{{{JOB}}} - sftjob_checkpoint_last_step{{{JOB}}}"

    d = (gdash.Dashboard("SFT operator").uid(UID)
         .description("Training progress, loss curves and throughput of one SFTJob, and the health of the sft-operator fleet.")
         .tags(["sft-operator", "training"]).refresh("30s").time("now-6h", "now").timezone("browser")
         .tooltip(mdash.DashboardCursorSync.CROSSHAIR).editable()
         .with_variable(datasource).with_variable(namespace).with_variable(sftjob))

    d = d.with_row(gdash.Row("SFTJob $namespace/$sftjob"))
    d = (d
         .with_panel(st("Progress", "Steps done out of the planned total (sftjob_step / sftjob_total_steps).", "percentunit",
                        q(f"sftjob_step{{{JOB}}} / sftjob_total_steps{{{JOB}}}", "progress"),
                        steps=((None, "blue"),)).min(0).max(1))
         .with_panel(st("ETA", "Steps left divided by the step rate of the last 5 minutes.", "s",
                        q(f"({steps_left}) / {step_rate}", "eta")))
         .with_panel(st("Tokens/s", "Training throughput reported by rank 0.", "short",
                        q(f"sftjob_tokens_per_second{{{JOB}}}", "tokens/s")))
         .with_panel(st("Checkpoint age", "Training time since the last committed checkpoint: steps since it, at the current step rate. Work a restart would lose.",
                        "s", q(f"({steps_since_ckpt}) / {step_rate}", "age"),
                        steps=((None, "green"), (3600, "orange"), (7200, "red"))))
         # The operator's restart series of a job appear with its first restart; "No data" reads 0.
         .with_panel(st("Restarts", "Gang restarts of this job (pod failures, stalls), not counting preemptions.", "short",
                        q(f'sum(sftoperator_restarts_total{{{JOB}, reason!="Preempted"}})', "restarts"),
                        steps=((None, "green"), (1, "orange"), (3, "red"))).no_value("0"))
         .with_panel(st("Preemptions", "Restarts caused by preemption, eviction or node loss; these do not count against maxRestarts.", "short",
                        q(f'sum(sftoperator_restarts_total{{{JOB}, reason="Preempted"}})', "preemptions"),
                        steps=((None, "green"), (1, "orange"), (5, "red"))).no_value("0"))
         )
    d = (d
         .with_panel(ts("Loss: train and eval per task_type",
                        "Train loss falling while eval loss rises is overfitting. One task_type whose eval loss rises while the others fall is the task that misbehaves.",
                        "none",
                        q(f"sftjob_train_loss{{{JOB}}}", "train", "A"),
                        q(f"sftjob_eval_loss{{{JOB}}}", "eval {{task_type}}", "B"), w=16, h=9))
         .with_panel(ts("Learning rate", "The scheduler's learning rate (warmup, then decay).", "sci",
                        q(f"sftjob_learning_rate{{{JOB}}}", "lr"), w=8, h=9))
         .with_panel(ts("Tokens/s", "Training tokens processed per second, with the job's own 1-hour average for comparison.", "short",
                        q(f"sftjob_tokens_per_second{{{JOB}}}", "tokens/s", "A"),
                        q(f"avg_over_time(sftjob_tokens_per_second{{{JOB}}}[1h])", "1h average", "B"), w=8))
         .with_panel(ts("MFU", "Model FLOPs utilisation: achieved FLOPs over the GPUs' peak. 30-50% is typical for well-tuned LLM training.",
                        "percentunit", q(f"sftjob_mfu_ratio{{{JOB}}}", "MFU"), w=8)
                     .min(0).max(1).thresholds(thresholds((None, "red"), (0.2, "orange"), (0.35, "green")))
                     .thresholds_style(gcommon.GraphThresholdsStyleConfig().mode(mcommon.GraphTresholdsStyleMode.DASHED)))
         .with_panel(ts("GPU memory used", "GPU memory in use on rank 0.", "bytes",
                        q(f"sftjob_gpu_memory_used_bytes{{{JOB}}}", "used"), w=8).min(0))
         .with_panel(ts("Step progress", "Current step and the planned total. A flat step line means a stall.", "short",
                        q(f"sftjob_step{{{JOB}}}", "step", "A"),
                        q(f"sftjob_total_steps{{{JOB}}}", "total steps", "B"), w=8).min(0))
         .with_panel(ts("Checkpoint age", "Steps since the last committed checkpoint and the training time they represent.", "s",
                        q(f"({steps_since_ckpt}) / {step_rate}", "age (s)", "A"),
                        q(f"sftjob_checkpoint_save_seconds{{{JOB}}}", "last save took (s)", "B"), w=8)
                     .min(0).thresholds(thresholds((None, "green"), (3600, "orange"), (7200, "red")))
                     .thresholds_style(gcommon.GraphThresholdsStyleConfig().mode(mcommon.GraphTresholdsStyleMode.LINE)))
         .with_panel(ts("Restarts and preemptions", "Cumulative restarts of this job by reason (Preempted counts preemptions).", "short",
                        q(f"sum by (reason) (sftoperator_restarts_total{{{JOB}}})", "{{reason}}"), w=8).min(0))
         .with_panel(ts("Gradient norm", "Global gradient norm before clipping. Spikes often precede a loss blow-up.", "none",
                        q(f"sftjob_grad_norm{{{JOB}}}", "grad norm"), w=8))
         .with_panel(ts("Golden-set pass rate per task_type",
                        "Golden-set pass rate at each scored checkpoint (eval.goldenSet.everyCheckpoints) and at the end. A fall of more than eval.goldenSet.maxDrop from the best checkpoint stops training.",
                        "percentunit", q(f"sftjob_golden_pass_ratio{{{JOB}}}", "{{task_type}}"), w=8).min(0).max(1))
         )
    d = d.with_row(gdash.Row("Fleet"))
    d = (d
         .with_panel(ts("SFTJobs by phase", "Number of SFTJobs in each phase, across all namespaces.", "short",
                        q("sum by (phase) (sftoperator_jobs)", "{{phase}}"), w=8).min(0)
                     .stacking(gcommon.StackingConfig().mode(mcommon.StackingMode.NORMAL)))
         .with_panel(ts("Reconcile latency", "Duration of one reconcile of an SFTJob.", "s",
                        q("histogram_quantile(0.5, sum by (le) (rate(sftoperator_reconcile_duration_seconds_bucket[$__rate_interval])))", "p50", "A"),
                        q("histogram_quantile(0.99, sum by (le) (rate(sftoperator_reconcile_duration_seconds_bucket[$__rate_interval])))", "p99", "B"),
                        w=8).min(0)
                     .thresholds(thresholds((None, "green"), (1, "orange"), (5, "red")))
                     .thresholds_style(gcommon.GraphThresholdsStyleConfig().mode(mcommon.GraphTresholdsStyleMode.DASHED)))
         .with_panel(ts("Time to Running", "From SFTJob creation to phase Running (scheduling, Kueue admission, image pull, model load), over the selected time range.", "s",
                        q("histogram_quantile(0.5, sum by (le) (increase(sftoperator_time_to_running_seconds_bucket[$__range])))", "p50", "A"),
                        q("histogram_quantile(0.9, sum by (le) (increase(sftoperator_time_to_running_seconds_bucket[$__range])))", "p90", "B"),
                        w=8).min(0))
         .with_panel(ts("Reconcile errors", "Failed reconciles per second. A few transient conflicts are normal.", "reqps",
                        q("sum(rate(sftoperator_reconcile_errors_total[$__rate_interval]))", "errors/s"), w=12).min(0))
         .with_panel(ts("Operator", "Operator version (sftoperator_build_info always reads 1 while it is up).", "short",
                        q("sum by (version) (sftoperator_build_info)", "{{version}}"), w=12).min(0))
         )
    out = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    # Stable panel ids in layout order: links to a panel (viewPanel=<id>) survive regeneration.
    for n, panel in enumerate(out["panels"], start=1):
        panel["id"] = n
    return out


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if sft-operator.json is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python monitoring/dashboards/generate.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
