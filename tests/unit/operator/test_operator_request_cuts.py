"""The request cuts as pure functions: which per-job child a restart may leave alone (apply.unchanged)
and which SFTJob body a pass starts from (handlers.BodyCache). The same paths against the real
apiserver and a running operator: tests/integration/test_operator_body_cache.py and
tests/e2e/test_e2e_request_cuts.py."""

import copy

import pytest

from sft_operator.apply import SKIPPABLE_KINDS, live_content, unchanged
from sft_operator.children import render
from sft_operator.handlers import BodyCache
from sft_operator.settings import OperatorSettings

S = OperatorSettings(trainer_image="t:1")


def sftjob(rv="5"):
    return {"apiVersion": "sft.dev/v1alpha1", "kind": "SFTJob",
            "metadata": {"name": "demo", "namespace": "ns", "uid": "uid-1", "resourceVersion": rv},
            "spec": {"model": {"uri": "builtin://tiny-llama"}, "datasets": [{"uri": "data/x.jsonl"}],
                     "workers": {"nodes": 2, "gpusPerNode": 1}}}


def children(attempt):
    return {o["kind"]: o for o in render(sftjob(), attempt=attempt, settings=S)}


def as_live(obj):
    """What the apiserver returns for an applied object: the rendered fields plus its own."""
    live = copy.deepcopy(obj)
    live["metadata"].update(uid="child-uid", resourceVersion="77", creationTimestamp="2026-01-01T00:00:00Z",
                            managedFields=[{"manager": "sft-operator", "operation": "Apply"}])
    live["metadata"]["labels"]["added-by-someone"] = "x"  # another manager's label is not ours to judge
    if obj["kind"] == "RoleBinding":
        live["subjects"][0].setdefault("apiGroup", "")  # a default the apiserver may add
    return live_content(live)


@pytest.mark.parametrize("kind", SKIPPABLE_KINDS)
def test_a_restart_finds_the_per_job_children_unchanged(kind):
    first, second = children(1), children(2)
    assert unchanged(second[kind], as_live(first[kind])), kind  # no attempt label: the same object


@pytest.mark.parametrize("kind", ["ConfigMap", "Service", "Job"])
def test_per_attempt_children_are_always_applied(kind):
    obj = children(1)[kind]
    assert not unchanged(obj, as_live(obj))


def test_a_deleted_child_is_applied_again():
    assert not unchanged(children(2)["Role"], None)


def test_an_edited_child_is_applied_again():
    role, binding, sa = children(1)["Role"], children(1)["RoleBinding"], children(1)["ServiceAccount"]
    edited = as_live(role)
    edited["rules"][0]["verbs"].append("delete")  # someone widened the trainer's rights
    assert not unchanged(role, edited)
    edited = as_live(binding)
    edited["subjects"].append({"kind": "ServiceAccount", "name": "intruder", "namespace": "ns"})
    assert not unchanged(binding, edited)
    edited = as_live(sa)
    del edited["metadata"]["labels"]["sft.dev/job-name"]
    assert not unchanged(sa, edited)
    edited = as_live(sa)
    edited["metadata"]["ownerReferences"] = []
    assert not unchanged(sa, edited)


def test_a_changed_render_is_applied_again():
    role = children(1)["Role"]
    live = as_live(role)
    role = copy.deepcopy(role)
    role["rules"][0]["verbs"] = ["get"]
    assert not unchanged(role, live)


def test_body_cache_keeps_the_newest_resource_version():
    cache, key = BodyCache(), ("ns", "demo")
    assert cache.get(key) is None
    cache.offer(key, sftjob("5"))
    cache.offer(key, sftjob("9"))
    cache.offer(key, sftjob("7"))  # a late watch event older than our own write's response
    assert cache.get(key)["metadata"]["resourceVersion"] == "9"
    cache.offer(key, None)
    assert cache.get(key)["metadata"]["resourceVersion"] == "9"
    cache.forget(key)
    assert cache.get(key) is None and len(cache) == 0
