"""status.lineage and status.tracking on a real kube-apiserver: the CRD's structural schema keeps
them (nothing pruned), and the trainer's own ServiceAccount token may write them."""

from __future__ import annotations

from kubernetes import client
from sft_integration_helpers import create_sftjob
from test_progress_kube_status import trainer_token

from sft_trainer.progress import KubeStatusReporter

G, V, P = "sft.dev", "v1alpha1", "sftjobs"


def test_lineage_and_tracking_status_survive_the_schema(kube_api, dev_cluster, namespace, sftjob_crd):
    admin = client.CustomObjectsApi(kube_api)
    create_sftjob(kube_api, "tracked", namespace)
    token = trainer_token(kube_api, namespace, "tracked")
    lineage = {"uri": "s3://ckpt/tracked/lineage.json", "digest": "sha256:" + "ab" * 32}
    tracking = {"mlflowRunId": "0123abcd", "mlflowExperimentId": "1",
                "mlflowRunUrl": "http://mlflow.mlops:5000/#/experiments/1/runs/0123abcd",
                "tensorboardUri": "s3://ckpt/tracked/tensorboard/", "healthy": False,
                "message": "POST runs/log-batch: Connection refused; 12 logs wait for a retry"}
    rep = KubeStatusReporter.from_token("tracked", namespace, host=dev_cluster.server, token=token,
                                        ca_file=str(dev_cluster.ca_file), retry_seconds=0.2)
    try:
        rep.report({"lineage": lineage, "tracking": tracking})
        assert rep.flush(timeout=30), rep.last_error
        rep.report({"tracking": {"healthy": True, "message": None}})  # the tracker caught up
        assert rep.flush(timeout=30), rep.last_error
    finally:
        rep.close(timeout=1)
    status = admin.get_namespaced_custom_object(G, V, namespace, P, "tracked")["status"]
    assert status["lineage"] == lineage
    assert status["tracking"] == {**{k: v for k, v in tracking.items() if k != "message"}, "healthy": True}
