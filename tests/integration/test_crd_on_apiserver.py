"""The generated SFTJob CRD on a real kube-apiserver: the examples are accepted, the invalid corpus
is rejected by the apiserver itself (OpenAPI schema and CEL) naming the field, immutable fields
stay immutable, the status subresource is separate, and `kubectl get sft` shows the columns."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID = sorted((REPO / "tests" / "unit" / "api" / "invalid").glob("*.yaml"))
GROUP, VERSION, PLURAL = "sft.dev", "v1alpha1", "sftjobs"


def _sftjob_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "SFTJob"]


def _quickstart() -> dict:
    docs = _sftjob_docs(REPO / "examples" / "quickstart.yaml")
    assert docs, "examples/quickstart.yaml holds no SFTJob"
    job = copy.deepcopy(docs[0])
    job["metadata"].pop("namespace", None)
    return job


def _header(path: Path, key: str) -> str:
    m = re.search(rf"^#\s*{key}:\s*(.+?)\s*$", path.read_text(), re.M)
    assert m, f"{path}: needs a leading `# {key}: ...` comment"
    return m.group(1)


def _api_message(e: ApiException) -> str:
    try:
        body = json.loads(e.body)
    except (TypeError, ValueError):
        return str(e.body)
    causes = " | ".join(f"{c.get('field', '')}: {c.get('message', '')}"
                        for c in (body.get("details") or {}).get("causes", []))
    return f"{body.get('message', '')} || {causes}"


def test_examples_and_corpus_exist():
    assert (REPO / "examples" / "quickstart.yaml").exists()
    assert EXAMPLES, "examples/ has no YAML files"
    assert INVALID, "tests/unit/api/invalid/ has no YAML files"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_passes_server_side_dry_run_apply(example, sftjob_crd, namespace, kubectl):
    # The examples name their own namespace (ml-team); apply each into the test's namespace.
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    for d in docs:
        d["metadata"]["namespace"] = namespace
    out = kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=sft-test", "-f", "-",
                  input=yaml.safe_dump_all(docs))
    assert out.stdout.count("serverside-applied (server dry run)") == len(docs), out.stdout


@pytest.mark.parametrize("bad", INVALID, ids=[p.name for p in INVALID])
def test_invalid_spec_is_rejected_by_the_apiserver_naming_the_field(bad, sftjob_crd, namespace, kube_api):
    field = _header(bad, "field")
    docs = _sftjob_docs(bad)
    assert len(docs) == 1, f"{bad}: expected exactly one SFTJob"
    body = docs[0]
    body.setdefault("metadata", {}).pop("namespace", None)
    body["metadata"].setdefault("name", "invalid")
    api = client.CustomObjectsApi(kube_api)
    with pytest.raises(ApiException) as e:
        # Straight to the apiserver: no client-side validation happens on this path. 422 is a
        # schema/CEL rejection, 400 a strict-decoding one (unknown field).
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, dry_run="All",
                                            field_validation="Strict")
    msg = _api_message(e.value)
    assert e.value.status in (400, 422), msg
    assert field in msg, f"the apiserver's message does not name {field}: {msg}"


@pytest.mark.parametrize("patch,field", [
    ({"spec": {"training": {"learningRate": 0.5}}}, "spec.training"),
    ({"spec": {"workers": {"nodes": 3}}}, "spec.workers.nodes"),
    ({"spec": {"model": {"uri": "hf://other/model"}}}, "spec.model"),
])
def test_immutable_fields_are_rejected_on_update(patch, field, sftjob_crd, namespace, kube_api):
    api = client.CustomObjectsApi(kube_api)
    job = _quickstart()
    name = job["metadata"]["name"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
    with pytest.raises(ApiException) as e:
        api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)
    assert e.value.status == 422
    msg = _api_message(e.value)
    assert f"{field}: is immutable" in msg, msg
    # The mutable fields still change.
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"suspend": True}})
    assert api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)["spec"]["suspend"] is True


def test_status_is_a_subresource(sftjob_crd, namespace, kube_api):
    api = client.CustomObjectsApi(kube_api)
    job = _quickstart()
    name = job["metadata"]["name"]
    created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
    # Status written through the main resource is dropped...
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"status": {"phase": "Running"}})
    got = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    assert "phase" not in (got.get("status") or {})
    # ...and through /status it lands without bumping the generation.
    api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name,
                                              {"status": {"phase": "Running", "restarts": 0}})
    got = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    assert got["status"]["phase"] == "Running"
    assert got["metadata"]["generation"] == created["metadata"]["generation"]


def test_kubectl_get_sft_shows_the_printer_columns(sftjob_crd, namespace, kube_api, kubectl):
    api = client.CustomObjectsApi(kube_api)
    job = _quickstart()
    name = job["metadata"]["name"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
    api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": {
        "phase": "Running", "restarts": 2,
        "progress": {"step": 1200, "totalSteps": 3000, "percent": 40.0},
        "metrics": {"trainLoss": 0.91, "tokensPerSecond": 98000},
    }})
    out = kubectl("get", "sft", "-n", namespace).stdout.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "STEP", "PROGRESS", "LOSS", "TOKENS/S", "RESTARTS", "AGE"]
    row = out[1].split()
    assert row[:7] == [name, "Running", "1200", "40", "0.91", "98000", "2"]
