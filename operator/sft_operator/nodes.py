"""Which nodes exist: a metadata-only LIST of the cluster's nodes every few seconds, not a watch.

The operator needs node names only, to tell a pod on a vanished node (NodeLost) from one that is just
slow. A watch of Nodes streams every heartbeat of every node, each event a whole Node object (on a real
node its image list alone is tens of KB) that would be parsed for its name: at 500 kwok nodes that was
~15,000 events in a 1000-job burst, all through kopf's event loop. The poll asks for
PartialObjectMetadataList from the apiserver's watch cache (resourceVersion=0): ~300 bytes a node, one
request every `interval` seconds however many nodes heartbeat.

A node that disappears between two polls triggers the passes of the SFTJobs with pods on it at once
(`on_gone`), so node loss is seen within one interval even when nothing else happens to those pods. A
pod on a node the last list did not have is either on a new node or on one that vanished since: a
pass asks `missing()`, which calls a node lost only when a consistent list (not the watch cache's
resourceVersion=0 view) that started after the question lacks it. Passes that ask together share one
such list. A list older than the question cannot tell a node created just after it from a lost one:
answering from it turned fresh kwok nodes into NodeLost restarts of gangs that had just been bound.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

from .apply import ApiError, KubeApi, TemporaryError

log = logging.getLogger("sft_operator.nodes")

__all__ = ["NodeNames", "METADATA_LIST"]

METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1, application/json"


class NodeNames:
    def __init__(self, api: Callable[[], KubeApi], *, interval: float = 5.0,
                 on_gone: Callable[[frozenset[str]], None] | None = None) -> None:
        self._api = api
        self.interval = interval
        self._on_gone = on_gone
        self._names: frozenset[str] | None = None
        self._consistent_at = float("-inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def names(self) -> frozenset[str] | None:
        """The node names of the last successful poll; None before the first one."""
        return self._names

    def missing(self, nodes: Iterable[str | None]) -> frozenset[str]:
        """Which of `nodes` do not exist. Nothing before the first list; a node the last list lacks is
        checked against a consistent list that started after this call (one already running when the
        call came may have missed a node created since, so it does not count)."""
        known = self._names
        if known is None:
            return frozenset()
        unknown = frozenset(n for n in nodes if n and n not in known)
        if not unknown:
            return frozenset()
        asked = time.monotonic()
        try:
            names = self._fresh(asked)
        except Exception as exc:  # unsure: no node counts as lost on a failed list
            log.warning(f"listing nodes failed: {exc}")
            return frozenset()
        return unknown - names

    def _fresh(self, asked: float) -> frozenset[str]:
        """The names of a consistent list that started at or after `asked`: the one another caller ran
        while this one waited for the lock, else a new one."""
        with self._lock:
            if self._names is not None and self._consistent_at >= asked:
                return self._names
            names, gone = self._poll_locked(consistent=True)
        self._report(gone)
        return names

    def poll(self, consistent: bool = False) -> frozenset[str]:
        """List the nodes now; returns the names that were there at the last poll and are gone.
        `consistent`: read through to etcd's latest revision, not the watch cache's current view."""
        with self._lock:
            gone = self._poll_locked(consistent)[1]
        self._report(gone)
        return gone

    def _poll_locked(self, consistent: bool) -> tuple[frozenset[str], frozenset[str]]:
        started = time.monotonic()
        query = [] if consistent else [("resourceVersion", "0")]
        got = self._api().request("GET", "/api/v1/nodes", query=query, accept=METADATA_LIST)
        names = frozenset(((item.get("metadata") or {}).get("name") or "") for item in (got or {}).get("items") or ())
        names -= {""}
        before, self._names = self._names, names
        if consistent:
            self._consistent_at = started
        return names, (before - names) if before is not None else frozenset()

    def _report(self, gone: frozenset[str]) -> None:
        if gone:
            log.info(f"nodes gone: {sorted(gone)}")
            if self._on_gone is not None:
                self._on_gone(gone)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sft-nodes", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except (ApiError, TemporaryError) as exc:  # the last names stay; the next poll tries again
                log.warning(f"listing nodes failed: {exc}")
            except Exception:  # never let the thread die: node loss would go unseen
                log.exception("listing nodes failed")
            self._stop.wait(self.interval)
