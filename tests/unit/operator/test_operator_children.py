"""children.render: every object of one attempt, as the operator applies it and `sftctl render` prints it."""

from pathlib import Path

import pytest
import yaml
from sftop_factories import sftjob

from sft_api import load_sftjob
from sft_operator.children import job_name, render
from sft_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[3]
S = OperatorSettings(trainer_image="trainer:default", master_port=29500, trainer_metrics_port=9400,
                     termination_grace_seconds=900, shm_size="8Gi", storage_endpoint="http://s3.default:8333")


def by_kind(objs):
    return {o["kind"]: o for o in objs}


def pod_spec(objs):
    return by_kind(objs)["Job"]["spec"]["template"]["spec"]


def env_of(objs):
    return {e["name"]: e for e in pod_spec(objs)["containers"][0]["env"]}


def test_kinds_labels_and_owner_refs():
    objs = render(sftjob(), attempt=3, settings=S)
    assert [o["kind"] for o in objs] == ["ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "ConfigMap", "Service", "Job"]
    for o in objs:
        assert o["metadata"]["namespace"] == "ns"
        assert o["metadata"]["labels"]["sft.dev/job-name"] == "demo"
        per_job = o["kind"] in ("ServiceAccount", "Role", "RoleBinding")  # the same in every attempt
        assert o["metadata"]["labels"].get("sft.dev/attempt") == (None if per_job else "3"), o["kind"]
        ref = o["metadata"]["ownerReferences"][0]
        assert ref == {"apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob", "name": "demo", "uid": "uid-1",
                       "controller": True, "blockOwnerDeletion": True}
    tmpl = by_kind(objs)["Job"]["spec"]["template"]["metadata"]["labels"]
    assert tmpl["sft.dev/job-name"] == "demo" and tmpl["sft.dev/attempt"] == "3"


def test_client_side_render_has_no_owner_refs():
    body = sftjob()
    del body["metadata"]["uid"]
    assert all("ownerReferences" not in o["metadata"] for o in render(body, settings=S))


def test_indexed_job_gang_shape():
    job = by_kind(render(sftjob(nodes=4, gpus=8), settings=S))["Job"]["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["parallelism"] == job["completions"] == 4
    assert job["backoffLimit"] == 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    rules = job["podFailurePolicy"]["rules"]
    assert rules[0]["onExitCodes"]["values"] == [64, 65, 66, 67] and rules[0]["action"] == "FailJob"
    assert rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"
    assert rules[2]["onExitCodes"] == {"containerName": "trainer", "operator": "In", "values": [75]} and rules[2]["action"] == "FailJob"
    assert job["suspend"] is False


def test_rendezvous_env():
    env = env_of(render(sftjob(nodes=2, gpus=8), attempt=2, settings=S))
    assert env["MASTER_ADDR"]["value"] == "demo-a2-0.demo-a2"
    assert env["PET_MASTER_ADDR"]["value"] == "demo-a2-0.demo-a2"
    for key, value in {"MASTER_PORT": "29500", "NNODES": "2", "NPROC_PER_NODE": "8", "WORLD_SIZE": "16"}.items():
        assert env[key]["value"] == value and env[f"PET_{key}"]["value"] == value
    idx = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == idx
    assert env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == idx
    assert env["SFT_JOB_NAME"]["value"] == "demo" and env["SFT_JOB_NAMESPACE"]["value"] == "ns"
    assert env["SFT_ATTEMPT"]["value"] == "2" and env["SFT_RESUME"]["value"] == "latest"
    assert env["SFT_METRICS_PORT"]["value"] == "9400"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://127.0.0.1:8333"  # the spec's endpoint wins


def test_cpu_job_has_one_process_and_no_gpu():
    objs = render(sftjob(nodes=2, gpus=0), settings=S)
    env = env_of(objs)
    assert env["NPROC_PER_NODE"]["value"] == "1" and env["WORLD_SIZE"]["value"] == "2"
    res = pod_spec(objs)["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in res.get("limits", {}) and "nvidia.com/gpu" not in res.get("requests", {})


def test_pod_shape():
    body = sftjob(gpus=8)
    body["spec"]["workers"].update(
        nodeSelector={"gpu": "h100"}, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        affinity={"nodeAffinity": {}}, priorityClassName="high", env=[{"name": "EXTRA", "value": "1"}])
    objs = render(body, settings=S)
    ps = pod_spec(objs)
    c = ps["containers"][0]
    assert c["command"] == ["python", "-m", "sft_trainer", "--config", "/etc/sft/job.yaml"]
    assert c["image"] == "trainer:test"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8" and c["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert c["resources"]["requests"]["cpu"] == "4" and c["resources"]["requests"]["memory"] == "16Gi"
    assert ps["nodeSelector"] == {"gpu": "h100"} and ps["priorityClassName"] == "high"
    assert ps["tolerations"][0]["key"] == "nvidia.com/gpu" and ps["affinity"] == {"nodeAffinity": {}}
    assert env_of(objs)["EXTRA"]["value"] == "1"
    vols = {v["name"]: v for v in ps["volumes"]}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert vols["config"]["configMap"]["name"] == "demo-a1-config"
    assert c["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"rendezvous": 29500, "metrics": 9400}
    assert ps["terminationGracePeriodSeconds"] == 900
    # torchrun gets the grace period (less a margin) to let workers checkpoint, not its own 30 s
    assert env_of(objs)["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]["value"] == "885"
    assert ps["serviceAccountName"] == "demo-trainer" and ps["subdomain"] == "demo-a1"


def test_restricted_pod_security():
    ps = pod_spec(render(sftjob(), settings=S))
    c = ps["containers"][0]["securityContext"]
    assert c["allowPrivilegeEscalation"] is False and c["capabilities"] == {"drop": ["ALL"]}
    assert c["runAsNonRoot"] is True and c["seccompProfile"]["type"] == "RuntimeDefault"
    assert ps["securityContext"]["runAsNonRoot"] is True and ps["securityContext"]["runAsUser"] > 0
    allowed = {"configMap", "emptyDir", "secret", "projected", "persistentVolumeClaim", "downwardAPI", "csi", "ephemeral"}
    assert all(set(v) - {"name"} <= allowed for v in ps["volumes"])


def test_headless_service_and_progress_role():
    objs = by_kind(render(sftjob(), attempt=2, settings=S))
    svc = objs["Service"]
    assert svc["metadata"]["name"] == "demo-a2" and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"sft.dev/job-name": "demo", "sft.dev/attempt": "2"}
    assert objs["Role"]["rules"] == [{"apiGroups": ["sft.dev"], "resources": ["sftjobs/status"],
                                      "verbs": ["get", "patch"], "resourceNames": ["demo"]}]
    rb = objs["RoleBinding"]
    assert rb["roleRef"]["name"] == "demo-trainer" and rb["subjects"] == [{"kind": "ServiceAccount", "name": "demo-trainer", "namespace": "ns"}]


def test_config_map_holds_resolved_job():
    cm = by_kind(render(sftjob(), settings=S))["ConfigMap"]
    doc = yaml.safe_load(cm["data"]["job.yaml"])
    assert doc["kind"] == "SFTJob" and doc["metadata"] == {"name": "demo", "namespace": "ns", "uid": "uid-1"}
    assert doc["spec"]["workers"]["nodes"] == 2
    assert doc["spec"]["training"]["learningRate"] == 2e-5  # a default, filled in
    assert "status" not in doc


def test_config_map_carries_the_job_uid_the_trainer_resumes_by():
    """The uid is the run's identity in every checkpoint manifest: a re-created job never resumes the old one's."""
    from sft_api import SFTJob

    body = sftjob()
    body["metadata"]["uid"] = "0b6f-uid"
    doc = yaml.safe_load(by_kind(render(body, settings=S))["ConfigMap"]["data"]["job.yaml"])
    assert doc["metadata"]["uid"] == "0b6f-uid"
    job = SFTJob.model_validate(doc)
    assert (getattr(job.metadata, "uid", None) or (job.metadata.model_extra or {}).get("uid")) == "0b6f-uid"


def test_kueue_label_goes_to_suspended_job():
    job = by_kind(render(sftjob(labels={"kueue.x-k8s.io/queue-name": "gpu-queue"}), settings=S))["Job"]
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"


def test_default_image_and_resources_from_settings():
    body = sftjob()
    del body["spec"]["workers"]["image"]
    del body["spec"]["workers"]["resources"]
    s = OperatorSettings(trainer_image="registry/trainer:1", default_resources={"requests": {"cpu": "8"}})
    c = pod_spec(render(body, settings=s))["containers"][0]
    assert c["image"] == "registry/trainer:1" and c["resources"]["requests"]["cpu"] == "8"


@pytest.mark.parametrize("name", [pytest.param("a" * 50, id="the longest name is shortened with a hash"),
                                  pytest.param("x", id="a short name is kept")])
def test_names_fit_dns_labels(name):
    for attempt in (1, 999):
        jn = job_name(name, attempt)
        assert len(f"{jn}-1023") <= 63 and jn.endswith(f"-a{attempt}")


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_renders_from_the_model(path):
    job = load_sftjob(path)
    objs = render(job, settings=S)
    assert by_kind(objs)["Job"]["spec"]["parallelism"] == job.spec.workers.nodes
    env = env_of(objs)
    assert int(env["WORLD_SIZE"]["value"]) == job.spec.workers.nodes * max(job.spec.workers.gpus_per_node, 1)


@pytest.mark.parametrize("grace,timeout", [
    pytest.param(600, 585, id="the default grace keeps a 15 s margin"),
    pytest.param(900, 885, id="a longer grace keeps the same margin"),
    pytest.param(31, 16, id="just above twice the margin keeps the margin"),
    pytest.param(30, 15, id="at twice the margin it halves"),
    pytest.param(10, 5, id="a short grace halves"),
    pytest.param(1, 1, id="one second gives one second"),
    pytest.param(0, 1, id="no grace still gives one second"),
])
def test_torchrun_shutdown_timeout_fits_in_the_grace_period(grace, timeout):
    from sft_operator.children import shutdown_timeout

    assert shutdown_timeout(grace) == timeout
    assert timeout < grace or grace <= 1  # the launcher keeps time to collect the exit codes


def test_the_time_budget_annotation_reaches_the_trainers_config():
    """sft.dev/max-train-seconds is read by the trainer from its config file's metadata: without it
    there, a pod trained every step however the job was annotated."""
    from sft_api.contract import TIME_BUDGET_ANNOTATION
    from sft_operator.children import resolved_config

    body = {"metadata": {"name": "j", "annotations": {TIME_BUDGET_ANNOTATION: "60", "other": "x"}},
            "spec": {"model": {"uri": "builtin://tiny-llama"}}}
    meta = yaml.safe_load(resolved_config(body, "ns"))["metadata"]
    assert meta["annotations"] == {TIME_BUDGET_ANNOTATION: "60"}  # only the trainer's own annotation
    del body["metadata"]["annotations"]
    assert "annotations" not in yaml.safe_load(resolved_config(body, "ns"))["metadata"]
