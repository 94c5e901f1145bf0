"""The CRD (crds/ and the chart's copy) and docs/api.md are generated from the models and never drift."""

import yaml

from sft_api import crdgen, rules
from sft_api.models import SFTJobSpec


def test_generated_files_are_up_to_date():
    for path, render in crdgen.GENERATED.items():
        assert path.exists(), f"{path} is missing; run python -m sft_api.crdgen"
        assert path.read_text() == render(), f"{path} drifted; run python -m sft_api.crdgen"


def test_drift_check_command_detects_a_stale_file(tmp_path, monkeypatch):
    stale = tmp_path / "sftjob.yaml"
    stale.write_text("# hand-edited\n")
    monkeypatch.setattr(crdgen, "GENERATED", {stale: crdgen.render_crd_yaml})
    assert crdgen.main(["--check"]) == 1
    assert crdgen.main([]) == 0
    assert crdgen.main(["--check"]) == 0


def _schema():
    crd = yaml.safe_load(crdgen.render_crd_yaml())
    (version,) = crd["spec"]["versions"]
    return crd, version, version["schema"]["openAPIV3Schema"]


def test_identity_printer_columns_and_subresources():
    crd, version, _ = _schema()
    assert crd["metadata"]["name"] == "sftjobs.sft.dev"
    assert crd["spec"]["names"]["shortNames"] == ["sft"]
    assert crd["spec"]["scope"] == "Namespaced"
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase", "Step", "Progress", "Loss", "Tokens/s", "Restarts", "Age"
    ]


def test_schema_is_structural():
    _, _, schema = _schema()

    def walk(node, path):
        assert "$ref" not in node and "title" not in node, path
        assert node.get("additionalProperties") is not False, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
        else:
            assert "type" in node, f"{path} has no type"
        for key, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")

    walk(schema, "")


def test_schema_carries_descriptions_defaults_enums_and_bounds():
    _, _, schema = _schema()
    training = schema["properties"]["spec"]["properties"]["training"]
    lr = training["properties"]["learningRate"]
    assert lr["minimum"] == 0 and lr["exclusiveMinimum"] is True and lr["default"] == 2e-5 and lr["description"]
    assert training["properties"]["precision"]["enum"] == ["bf16", "fp16", "fp32"]
    workers = schema["properties"]["spec"]["properties"]["workers"]
    assert workers["default"] == {}
    assert workers["properties"]["gpusPerNode"]["maximum"] == 16


def test_every_rule_and_every_immutable_field_is_in_the_crd():
    _, _, schema = _schema()
    messages = []

    def collect(node):
        if isinstance(node, dict):
            messages.extend(v["message"] for v in node.get("x-kubernetes-validations", []))
            for sub in node.values():
                collect(sub)

    collect(schema)
    for rule in rules.RULES:
        assert rule.message in messages
    spec_rules = schema["properties"]["spec"]["x-kubernetes-validations"]
    immutable = {r["fieldPath"] for r in spec_rules if r.get("reason") == "FieldValueForbidden"}
    for name, field in SFTJobSpec.model_fields.items():
        alias = field.alias or name
        if alias in rules.MUTABLE_SPEC_FIELDS:
            assert f".{alias}" not in immutable
        elif alias != "workers":
            assert f".{alias}" in immutable
    assert ".workers.image" in immutable and ".workers.nodes" in immutable


def test_chart_copy_is_gated_and_kept():
    text = crdgen.render_chart_crd_yaml()
    assert text.splitlines()[1] == "{{- if .Values.crds.install }}"
    assert "helm.sh/resource-policy: keep" in text and "{{- if .Values.crds.keep }}" in text


def test_check_update_names_immutable_fields():
    old = {"model": {"uri": "hf://a/b"}, "suspend": False}
    new = {"model": {"uri": "hf://a/c"}, "suspend": True}
    assert rules.check_update(old, new) == [
        "spec.model: is immutable after creation (only suspend, ttlSecondsAfterFinished, activeDeadlineSeconds may change)"
    ]
