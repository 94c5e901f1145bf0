"""Write a reconcile `Result` to the apiserver, idempotently.

- The operator-owned status fields are merge-patched with the SFTJob's resourceVersion, so the
  write is a compare-and-swap: a stale read (another replica, a trainer progress patch in between)
  gets 409 and the pass is recomputed. A restart is therefore counted exactly once.
- Children are applied with server-side apply under the field manager `sft-operator`; Jobs are
  only ever created (their pod template is immutable and Kueue owns `spec.suspend` after admission).
- Deletes ignore 404; the next attempt starts only once reconcile sees no pod of an earlier one.
- Events are posted only after the status write succeeded (and before the children change).
- After the status write, one pass's writes go in waves, each wave's requests at once on a shared
  pool (`SFT_WRITE_THREADS`, default 16): the events (in order) and the annotation patch, then the
  deletes, then the children other than RoleBindings and Jobs, then the RoleBindings (after their
  Roles), then the Jobs (their pods need the ServiceAccount, ConfigMap and RoleBinding). A new job's
  first pass was ten writes one after another; it is five round trips now.
- A per-job ServiceAccount, Role or RoleBinding whose live content (kopf index, `live_content`)
  already holds every field the operator renders is not re-applied (`unchanged`): a restart re-sends
  nothing. One deleted, or edited away from the rendered content, is applied again.
- `write_result` returns the newest SFTJob body its writes got back, which the next pass starts from.
- Errors are classified as kopf classifies handler errors: a `TemporaryError` (apiserver unreachable,
  throttled, overloaded, timed out) is retried after its `delay` or the work queue's per-key backoff;
  a `PermanentError` (the request itself is refused: 400, 403, 404, 422, ...) is not retried as-is.
  A child the apiserver refuses to create (an exceeded quota, a PodSecurity or webhook rejection)
  raises `ChildRefused`: the handler records it in status and retries with the job's own backoff.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from urllib3.exceptions import HTTPError

from .children import GROUP, KIND, PLURAL, VERSION
from .reconcile import ChildRef, Event, Result

__all__ = ["FIELD_MANAGER", "Conflict", "ApiError", "TemporaryError", "PermanentError", "ChildRefused", "classify",
           "KubeApi", "write_result", "live_content", "unchanged", "SKIPPABLE_KINDS"]

FIELD_MANAGER = "sft-operator"
log = logging.getLogger("sft_operator.apply")

# kind -> (api path prefix, plural)
_KINDS: dict[str, tuple[str, str]] = {
    "Job": ("/apis/batch/v1", "jobs"),
    "Pod": ("/api/v1", "pods"),
    "Service": ("/api/v1", "services"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "Event": ("/api/v1", "events"),
    "Workload": ("/apis/kueue.x-k8s.io/v1beta2", "workloads"),  # read only: Kueue's verdict on a queued Job
    KIND: (f"/apis/{GROUP}/{VERSION}", PLURAL),
}


class Conflict(Exception):
    """The object changed since it was read (HTTP 409 on a resourceVersion-guarded write)."""


class ApiError(Exception):
    def __init__(self, status: int, reason: str, body: str, retry_after: float | None = None):
        super().__init__(f"HTTP {status} {reason}: {body[:500]}")
        self.status = status
        self.reason = reason
        self.message = _status_message(body) or reason or f"HTTP {status}"
        self.retry_after = retry_after


def _status_message(body: str) -> str:
    """The `message` of the apiserver's Status object (what `kubectl` prints), else the raw body."""
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return (body or "").strip()[:1000]
    return str(data.get("message") or "") if isinstance(data, dict) else ""


class TemporaryError(Exception):
    """Retry later: after `delay` seconds when the apiserver said so, else after the per-key backoff."""

    permanent = False

    def __init__(self, message: str, delay: float | None = None):
        super().__init__(message)
        self.delay = delay


class PermanentError(Exception):
    """Retrying the same request cannot help; the next change of the world triggers a new pass."""

    permanent = True


class ChildRefused(Exception):
    """The apiserver refused to create or update child `kind/name`; `error` says why."""

    def __init__(self, kind: str, name: str, error: ApiError):
        super().__init__(f"{kind} {name}: {error.message}")
        self.kind, self.name, self.error = kind, name, error


# Statuses after which the same request can succeed later: timeouts, throttling, an overloaded or
# restarting apiserver. Everything else (400 Bad Request, 403 Forbidden by RBAC, quota or admission,
# 404, 405, 409 AlreadyExists, 413, 415, 422 Invalid) is the request's own fault.
TEMPORARY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def classify(exc: ApiError) -> TemporaryError | PermanentError:
    if exc.status in TEMPORARY_STATUSES or exc.status == 0:
        return TemporaryError(str(exc), delay=exc.retry_after)
    return PermanentError(str(exc))


def _retry_after(exc) -> float | None:
    try:
        return float((exc.headers or {}).get("Retry-After"))
    except (TypeError, ValueError, AttributeError):
        return None


_PLURALS = frozenset(plural for _, plural in _KINDS.values())


def _count(method: str, path: str) -> None:
    """sftoperator_api_requests_total{verb, resource}: the resource is the path's plural (+ /status)."""
    from .metrics import API_REQUESTS

    parts = path.strip("/").split("/")
    resource = "other"
    for i, part in enumerate(parts):
        if part in _PLURALS and parts[i - 1] != "namespaces":
            resource = part + ("/status" if parts[-1] == "status" and part == PLURAL else "")
    API_REQUESTS.labels(verb=method, resource=resource).inc()


class KubeApi:
    """Raw-JSON calls through the official client's ApiClient (auth, TLS, kubeconfig handling)."""

    def __init__(self, api_client=None, *, pool_size: int | None = None):
        if api_client is None:
            from kubernetes import client, config

            cfg = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=cfg)
            except config.ConfigException:
                config.load_kube_config(client_configuration=cfg)
            if pool_size:
                # One connection per concurrent caller (the reconcile workers): urllib3 would otherwise open
                # and drop a TLS connection for every caller beyond its pool (the client's default: 5 x CPUs).
                cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, pool_size)
            api_client = client.ApiClient(cfg)
        self.api_client = api_client

    def request(self, method: str, path: str, body: Any = None, *, query: Iterable[tuple[str, Any]] = (),
                content_type: str | None = None, accept: str = "application/json") -> dict | None:
        from kubernetes.client.exceptions import ApiException

        _count(method, path)
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        elif body is not None:
            headers["Content-Type"] = "application/json"
        try:
            resp = self.api_client.call_api(
                path,
                method,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=30,
            )
        except ApiException as exc:
            raise ApiError(exc.status or 0, exc.reason or "", exc.body or "", _retry_after(exc)) from None
        except (OSError, HTTPError) as exc:  # refused, reset, timed out: the apiserver is not there now
            raise TemporaryError(f"{method} {path}: apiserver unreachable: {exc}") from None
        data = resp.data
        return json.loads(data) if data else None

    # -- paths --------------------------------------------------------------------------------------
    @staticmethod
    def path(kind: str, namespace: str | None, name: str | None = None) -> str:
        prefix, plural = _KINDS[kind]
        p = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
        return f"{p}/{name}" if name else p

    # -- verbs --------------------------------------------------------------------------------------
    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self.request("GET", self.path(kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None, label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict]:
        query = [("labelSelector", label_selector)] if label_selector else []
        query += [("fieldSelector", field_selector)] if field_selector else []
        return list((self.request("GET", self.path(kind, namespace), query=query) or {}).get("items") or [])

    def apply(self, obj: dict) -> dict | None:
        meta = obj["metadata"]
        return self.request(
            "PATCH",
            self.path(obj["kind"], meta.get("namespace"), meta["name"]),
            obj,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def create(self, obj: dict) -> bool:
        """Create; False when it already exists."""
        meta = obj["metadata"]
        try:
            self.request("POST", self.path(obj["kind"], meta.get("namespace")), obj, query=[("fieldManager", FIELD_MANAGER)])
            return True
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise

    def delete(self, kind: str, namespace: str, name: str, *, force: bool = False) -> bool:
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if kind != "Pod":
            # Background: the Job goes at once; reconcile itself waits until no pod of it is left
            # (a foreground delete would also wait for pods stranded on a lost node).
            body["propagationPolicy"] = "Background"
        if force:
            body["gracePeriodSeconds"] = 0
        try:
            self.request("DELETE", self.path(kind, namespace, name), body)
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def merge_patch(self, kind: str, namespace: str, name: str, patch: dict, *, subresource: str | None = None) -> dict | None:
        path = self.path(kind, namespace, name) + (f"/{subresource}" if subresource else "")
        try:
            return self.request("PATCH", path, patch, content_type="application/merge-patch+json")
        except ApiError as exc:
            if exc.status == 409:
                raise Conflict(str(exc)) from None
            raise


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def post_event(api: KubeApi, body: dict, event: Event) -> None:
    meta = body["metadata"]
    now = _now()
    ev = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message,
        "source": {"component": FIELD_MANAGER},
        "reportingComponent": FIELD_MANAGER,
        "reportingInstance": os.environ.get("POD_NAME") or socket.gethostname(),
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        api.request("POST", KubeApi.path("Event", meta["namespace"]), ev)
    except ApiError as exc:  # an event is informative; never fail the pass for it
        log.warning("event %s/%s not posted: %s", event.reason, meta["name"], exc)


WRITE_THREADS = max(1, int(os.environ.get("SFT_WRITE_THREADS", "16")))
_POOL: ThreadPoolExecutor | None = None


def _wave(calls: list) -> list:
    """Run the zero-argument `calls` at once (one alone runs here); their results in order. Every
    call finishes before the first error, in call order, is raised."""
    global _POOL
    if len(calls) <= 1:
        return [c() for c in calls]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=WRITE_THREADS, thread_name_prefix="sft-write")
    futures = [_POOL.submit(c) for c in calls]
    errors = [f.exception() for f in futures]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return [f.result() for f in futures]


def write_result(api: KubeApi, body: dict, result: Result, live: Mapping[tuple[str, str], dict] | None = None) -> dict:
    """Write `result`; `live` maps (kind, name) to the `live_content` of the job's existing per-job
    children (None: unknown, apply everything). Returns the newest body the SFTJob writes returned."""
    from .metrics import SKIPPED_APPLIES, UNCHANGED_WRITES

    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    latest = body
    if result.status_patch:
        got = api.merge_patch(
            KIND,
            ns,
            name,
            {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": result.status_patch},
            subresource="status",
        )
        if got:
            if (got.get("metadata") or {}).get("resourceVersion") == meta["resourceVersion"]:
                UNCHANGED_WRITES.labels(resource=f"{PLURAL}/status").inc()  # the write changed nothing
            latest = got

    def events() -> None:  # right after the status write they describe, in their order
        for event in result.events:
            post_event(api, body, event)

    first: list = [events] if result.events else []
    if result.annotations:
        first.append(lambda: api.merge_patch(KIND, ns, name, {"metadata": {"annotations": result.annotations}}))
    done = _wave(first)
    if result.annotations:
        latest = done[-1] or latest
    _wave([lambda ref=ref: _delete(api, ns, ref) for ref in result.delete])
    todo = []
    for obj in result.apply:
        if live is not None and unchanged(obj, live.get((obj["kind"], obj["metadata"]["name"]))):
            SKIPPED_APPLIES.labels(kind=obj["kind"]).inc()
            continue
        todo.append(obj)
    for rank in sorted({_APPLY_RANK.get(o["kind"], 0) for o in todo}):
        _wave([lambda obj=obj: _apply(api, obj) for obj in todo if _APPLY_RANK.get(obj["kind"], 0) == rank])
    return latest


# The order of the apply waves: a RoleBinding after its Role (the apiserver resolves the roleRef when it
# checks that the binder holds the Role's rights: "not found" while the Role is being created), Jobs
# last (their pods need the ServiceAccount, the ConfigMap and the trainer's RoleBinding).
_APPLY_RANK = {"RoleBinding": 1, "Job": 2}


# Children that are the same object across attempts (one per SFTJob) and watched through kopf indices.
SKIPPABLE_KINDS = ("ServiceAccount", "Role", "RoleBinding")
_META_COMPARED = ("name", "namespace", "labels", "annotations", "ownerReferences")


def live_content(body: Mapping) -> dict:
    """What `unchanged` compares of a live child: its top-level content and the metadata the operator sets."""
    meta = body.get("metadata") or {}
    out = {k: copy.deepcopy(v) for k, v in body.items() if k not in ("metadata", "status", "apiVersion", "kind")}
    out["metadata"] = {k: copy.deepcopy(meta[k]) for k in _META_COMPARED if k in meta}
    return out


def _contains(live: Any, want: Any) -> bool:
    if isinstance(want, Mapping):
        return isinstance(live, Mapping) and all(_contains(live.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(live) == len(want) and all(map(_contains, live, want))
    return live == want


def unchanged(obj: Mapping, live: Mapping | None) -> bool:
    """True when the live child (`live_content`) already holds every field of the rendered `obj`, so a
    server-side apply would change nothing. Fields others added (defaults, other managers) do not count."""
    if live is None or obj["kind"] not in SKIPPABLE_KINDS:
        return False
    want = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    want["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k in _META_COMPARED}
    return _contains(live, want)


def _apply(api: KubeApi, obj: dict) -> None:
    try:
        if obj["kind"] == "Job":
            api.create(obj)
        else:
            api.apply(obj)
    except ApiError as exc:
        if exc.status == 403 and "being terminated" in exc.message:
            raise  # the namespace is going; nothing to create or report
        # Refused by quota, admission (PodSecurity, a webhook's verdict) or validation, or a webhook
        # that cannot be reached: the job's own status must say so. Anything else is a blip.
        if isinstance(classify(exc), PermanentError) or "webhook" in exc.message:
            raise ChildRefused(obj["kind"], obj["metadata"]["name"], exc) from None
        raise


def _delete(api: KubeApi, namespace: str, ref: ChildRef) -> None:
    api.delete(ref.kind, namespace, ref.name, force=ref.force)
