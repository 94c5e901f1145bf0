"""The operator's metrics, scraped by a real Prometheus while it runs a job through a restart."""

from __future__ import annotations

from sft_e2e_helpers import sftjob_manifest


def test_prometheus_scrapes_operator_metrics(operator, sft, kwok_pods, prometheus):
    target = f"127.0.0.1:{operator.metrics_port}"
    prom = prometheus(targets=[target])
    prom.wait_for_targets([target])
    name = "scraped"
    sft.apply(sftjob_manifest(name, nodes=1, gpus=1))
    [pod] = sft.running_pods(name, 1, 1)
    sft.wait_phase(name, "Running")
    kwok_pods.fail(sft.ns, pod.metadata.name, exit_code=1, wait=False)
    sft.running_pods(name, 2, 1)
    sft.wait_phase(name, "Running")
    assert prom.wait_for("sftoperator_build_info == 1")
    assert prom.wait_for('sftoperator_jobs{phase="Running"} >= 1')
    restarts = prom.wait_for(f'sftoperator_restarts_total{{namespace="{sft.ns}",sftjob="{name}",reason="PodFailed"}} == 1')
    assert len(restarts) == 1
    assert prom.wait_for("sftoperator_time_to_running_seconds_count >= 1")
    assert prom.wait_for("histogram_quantile(0.99, sum(rate(sftoperator_reconcile_duration_seconds_bucket[1m])) by (le)) > 0")
