"""Drive kwok pods to an outcome from a test: succeed, fail with an exit code, be preempted or
evicted (DisruptionTarget), or lose their node. See kwok_stages.py for the Stages that act on the
annotations set here; kwok, not this module, writes the pod status."""

from __future__ import annotations

import time
from typing import Iterable

from kubernetes import client
from kubernetes.client.rest import ApiException

from sft_dev import kwok_stages as ks


class PodDriver:
    def __init__(self, api: client.ApiClient):
        self.core = client.CoreV1Api(api)

    # -- outcomes ----------------------------------------------------------------------------
    def _annotate(self, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        self.core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": annotations}})

    def set_outcome(self, namespace: str, name: str, outcome: str, exit_code: int | None = None,
                    reason: str | None = None, delay: str | None = None, message: str | None = None) -> None:
        if outcome not in ("succeed", "fail", "preempt", "evict"):
            raise ValueError(f"outcome {outcome!r}: expected succeed, fail, preempt or evict")
        ann: dict[str, str | None] = {ks.OUTCOME_ANNOTATION: outcome}
        if exit_code is not None:
            ann[ks.EXIT_CODE_ANNOTATION] = str(int(exit_code))
        if reason is not None:
            ann[ks.REASON_ANNOTATION] = reason
        if delay is not None:
            ann[ks.DELAY_ANNOTATION] = delay
        if message is not None:
            ann[ks.MESSAGE_ANNOTATION] = message
        self._annotate(namespace, name, ann)

    def set_outcome_for(self, namespace: str, label_selector: str, outcome: str, count: int | None = None,
                        timeout: float = 60, **kw) -> list[str]:
        """Wait for `count` Running pods matching the selector (all current ones when None), give
        each the outcome; returns their names. Handy for the pods of an operator-made Job."""
        pods = self.wait_for_pods(namespace, label_selector, count=count or 1, timeout=timeout)
        names = [p.metadata.name for p in pods]
        for n in names:
            self.set_outcome(namespace, n, outcome, **kw)
        return names

    def succeed(self, namespace: str, name: str, wait: bool = True, timeout: float = 30,
                message: str | None = None) -> client.V1Pod:
        self.set_outcome(namespace, name, "succeed", message=message)
        return self.wait_for_phase(namespace, name, "Succeeded", timeout) if wait else None

    def fail(self, namespace: str, name: str, exit_code: int = 1, wait: bool = True,
             timeout: float = 30, reason: str | None = None, message: str | None = None) -> client.V1Pod:
        """Terminate the pod's containers with ``exit_code``; ``reason`` is the containers'
        termination reason (default ``Error``; ``OOMKilled`` with 137 is what the kubelet writes
        when the kernel OOM-kills a container); ``message`` is their termination message."""
        self.set_outcome(namespace, name, "fail", exit_code=exit_code, reason=reason, message=message)
        return self.wait_for_phase(namespace, name, "Failed", timeout) if wait else None

    def preempt(self, namespace: str, name: str, reason: str = "PreemptionByScheduler", wait: bool = True,
                timeout: float = 30) -> client.V1Pod:
        self.set_outcome(namespace, name, "preempt", reason=reason)
        return self.wait_for_phase(namespace, name, "Failed", timeout) if wait else None

    def evict(self, namespace: str, name: str, reason: str = "EvictionByEvictionAPI", wait: bool = True,
              timeout: float = 30) -> client.V1Pod:
        self.set_outcome(namespace, name, "evict", reason=reason)
        return self.wait_for_phase(namespace, name, "Failed", timeout) if wait else None

    def lose_node(self, node: str, fast: bool = True, timeout: float = 30) -> list[client.V1Pod]:
        """Delete the Node, as when a machine disappears; returns the pods that were bound to it.

        The real controller-manager then fails those pods (DisruptionTarget, reason DeletionByPodGC)
        and deletes them, but only after pod GC's fixed 40s quarantine plus its 20s period. With
        ``fast`` the pods get that same condition and phase Failed through kwok first, so tests
        need not wait a minute; ``fast=False`` leaves everything to the real pod GC.
        """
        pods = [p for p in self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
                if p.status.phase not in ("Succeeded", "Failed")]
        if fast:
            for p in pods:
                self.set_outcome(p.metadata.namespace, p.metadata.name, "evict", reason="DeletionByPodGC")
            for p in pods:
                self.wait_for_phase(p.metadata.namespace, p.metadata.name, "Failed", timeout)
        self.core.delete_node(node)
        return pods

    # -- waiting -----------------------------------------------------------------------------
    def wait_for_phase(self, namespace: str, name: str, phase: str | Iterable[str], timeout: float = 30
                       ) -> client.V1Pod:
        phases = {phase} if isinstance(phase, str) else set(phase)
        deadline = time.monotonic() + timeout
        while True:
            pod = self.core.read_namespaced_pod(name, namespace)
            if pod.status.phase in phases:
                return pod
            if time.monotonic() > deadline:
                raise TimeoutError(f"pod {namespace}/{name} is {pod.status.phase}, not {sorted(phases)}, "
                                   f"after {timeout:.0f}s")
            time.sleep(0.2)

    def wait_for_pods(self, namespace: str, label_selector: str = "", count: int = 1, phase: str = "Running",
                      timeout: float = 60) -> list[client.V1Pod]:
        """Until at least `count` pods matching the selector are in `phase`; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            pods = self.core.list_namespaced_pod(namespace, label_selector=label_selector).items
            ok = [p for p in pods if p.status.phase == phase and not p.metadata.deletion_timestamp]
            if len(ok) >= count:
                return ok
            if time.monotonic() > deadline:
                got = {p.metadata.name: p.status.phase for p in pods}
                raise TimeoutError(f"wanted {count} pod(s) {label_selector!r} in {namespace} {phase} within "
                                   f"{timeout:.0f}s; have {got}")
            time.sleep(0.3)

    def wait_for_deleted(self, namespace: str, name: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.core.read_namespaced_pod(name, namespace)
            except ApiException as e:
                if e.status == 404:
                    return
                raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"pod {namespace}/{name} still exists after {timeout:.0f}s")
            time.sleep(0.5)
