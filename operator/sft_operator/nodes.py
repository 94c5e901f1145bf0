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
pass asks `missing()`, which lists again (at most once a `min_refresh`) before it calls a node lost.
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
    def __init__(self, api: Callable[[], KubeApi], *, interval: float = 5.0, min_refresh: float = 1.0,
                 on_gone: Callable[[frozenset[str]], None] | None = None) -> None:
        self._api = api
        self.interval = interval
        self.min_refresh = min_refresh
        self._on_gone = on_gone
        self._names: frozenset[str] | None = None
        self._polled_at = float("-inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def names(self) -> frozenset[str] | None:
        """The node names of the last successful poll; None before the first one."""
        return self._names

    def missing(self, nodes: Iterable[str | None]) -> frozenset[str]:
        """Which of `nodes` do not exist. Nothing before the first list; a node the last list lacks is
        checked with a fresh list (new nodes appear after a list, too), unless one ran under
        `min_refresh` ago."""
        known = self._names
        if known is None:
            return frozenset()
        unknown = frozenset(n for n in nodes if n and n not in known)
        if not unknown:
            return frozenset()
        if time.monotonic() - self._polled_at >= self.min_refresh:
            try:
                self.poll()
            except Exception as exc:  # unsure: no node counts as lost on a failed list
                log.warning(f"listing nodes failed: {exc}")
                return frozenset()
        return unknown - (self._names or frozenset())

    def poll(self) -> frozenset[str]:
        """List the nodes now; returns the names that were there at the last poll and are gone."""
        with self._lock:
            started = time.monotonic()
            got = self._api().request("GET", "/api/v1/nodes", query=[("resourceVersion", "0")], accept=METADATA_LIST)
            names = frozenset(((item.get("metadata") or {}).get("name") or "") for item in (got or {}).get("items") or ())
            names -= {""}
            before, self._names, self._polled_at = self._names, names, started
        gone = (before - names) if before is not None else frozenset()
        if gone:
            log.info(f"nodes gone: {sorted(gone)}")
            if self._on_gone is not None:
                self._on_gone(gone)
        return gone

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
