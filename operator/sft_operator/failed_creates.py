"""The Job controller's FailedCreate events, from one cluster-wide watch instead of a list per pass.

When the apiserver refuses a Job's pods (an exceeded ResourceQuota, a PodSecurity rejection, a
webhook's verdict), the only trace is the Job controller's Warning event `FailedCreate` on the Job:
the Job's status says nothing. A pass of a pod-less Job used to list those events (one LIST per pass,
filtering every event in the namespace); at 1000 jobs that was 1.6-3 LISTs per job, nearly all while
the pods were merely slow to come.

One watch with the field selector `involvedObject.kind=Job,reason=FailedCreate` streams only those
events, so in the normal case it streams nothing. The latest message per Job is kept in memory; an
event for a Job of an SFTJob triggers that SFTJob's pass (`on_event`), which reads the message from
here. The first list ingests the events from before an operator restart and triggers their passes
too. Without `watch events` (an older ClusterRole) the status just lacks the detail.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Callable, Mapping

log = logging.getLogger("sft_operator.failed_creates")

__all__ = ["FailedCreates", "FIELD_SELECTOR"]

FIELD_SELECTOR = "involvedObject.kind=Job,reason=FailedCreate"


def _when(event: Mapping) -> str:
    meta = event.get("metadata") or {}
    return str(event.get("lastTimestamp") or event.get("eventTime") or meta.get("creationTimestamp") or "")


def message_of(event: Mapping) -> str:
    return str(event.get("message") or "").removeprefix("Error creating: ")


class FailedCreates:
    def __init__(self, api_client: Callable[[], object], *, on_event: Callable[[str, str], None] | None = None,
                 timeout_seconds: int = 300) -> None:
        self._api_client = api_client
        self._on_event = on_event
        self._timeout = timeout_seconds
        self._latest: dict[tuple[str, str], tuple[str, str]] = {}  # (namespace, job) -> (when, message)
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def synced(self) -> bool:
        """The first list was read and the watch runs: `message()` is authoritative."""
        return self._synced.is_set()

    def message(self, namespace: str, job: str) -> str | None:
        with self._lock:
            got = self._latest.get((namespace, job))
        return got[1] if got else None

    def forget(self, namespace: str, prefix: str) -> None:
        """The SFTJob is gone: drop its Jobs' messages (`prefix`: its name and a dash)."""
        with self._lock:
            for key in [k for k in self._latest if k[0] == namespace and k[1].startswith(prefix)]:
                del self._latest[key]

    def ingest(self, event: Mapping, notify: bool = True) -> None:
        obj = event.get("involvedObject") or {}
        namespace, job = obj.get("namespace") or (event.get("metadata") or {}).get("namespace"), obj.get("name")
        if not namespace or not job:
            return
        when = _when(event)
        with self._lock:
            have = self._latest.get((namespace, job))
            if have is not None and have[0] > when:
                return
            self._latest[(namespace, job)] = (when, message_of(event))
        if notify and self._on_event is not None:
            self._on_event(namespace, job)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sft-failed-creates", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        self._synced.clear()

    def _run(self) -> None:
        from kubernetes import client, watch
        from kubernetes.client.exceptions import ApiException

        rv: str | None = None
        failures = 0
        while not self._stop.is_set():
            core = client.CoreV1Api(self._api_client())
            try:
                if rv is None:
                    listed = core.list_event_for_all_namespaces(field_selector=FIELD_SELECTOR, _preload_content=False)
                    body = json.loads(listed.data)
                    for item in body.get("items") or ():
                        self.ingest(item)  # a pass for each: refusals from before a restart reach status
                    rv = (body.get("metadata") or {}).get("resourceVersion")
                    self._synced.set()
                w = watch.Watch()
                for ev in w.stream(core.list_event_for_all_namespaces, field_selector=FIELD_SELECTOR,
                                   resource_version=rv, timeout_seconds=self._timeout, allow_watch_bookmarks=True):
                    if self._stop.is_set():
                        w.stop()
                        break
                    obj = ev.get("raw_object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if ev.get("type") in ("ADDED", "MODIFIED"):
                        self.ingest(obj)
                failures = 0
            except ApiException as exc:
                if exc.status == 410:  # too old a resourceVersion: list again
                    rv = None
                    continue
                failures += 1
                log.warning(f"watching FailedCreate events failed ({exc.status}); retrying")
                rv = None
                self._stop.wait(min(30.0, 2.0 ** min(failures, 5)))
            except Exception as exc:  # connection reset, apiserver restart: resume after a pause
                failures += 1
                log.warning(f"watching FailedCreate events failed: {exc}; retrying")
                rv = None
                self._stop.wait(min(30.0, 2.0 ** min(failures, 5)))
