"""What the operator registers with kopf, and why its diff base may be empty.

``handlers.NoEssenceDiffBase`` tells kopf that every watched body's essence is empty, which skips a
deep copy of each event's body. That is only right while no change handler (on.create, on.update,
on.resume, on.delete, on.field) reads kopf's diff: this test fails the day one is added."""

from __future__ import annotations

import kopf

from sft_operator import handlers


def _handlers(registry_part) -> list:
    return [h for hs in registry_part._handlers_by_resource.values() for h in hs] if hasattr(
        registry_part, "_handlers_by_resource") else list(getattr(registry_part, "_handlers", []))


def test_no_change_handlers_read_the_diff():
    registry = kopf.get_default_registry()
    assert _handlers(registry._watching), "the event handlers are registered"
    assert _handlers(registry._changing) == [], "a change handler needs kopf's diff: drop NoEssenceDiffBase"


def test_the_essence_of_any_body_is_empty():
    storage = handlers.NoEssenceDiffBase(prefix="kopf.sft.dev")
    body = kopf.Body({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
                      "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running"}})
    assert storage.build(body=body) == {}
