"""Helpers of the operator's integration tests: SFTJob objects and per-identity API clients."""

from __future__ import annotations

from kubernetes import client


def sftjob_body(name: str, namespace: str, **spec) -> dict:
    body = {
        "apiVersion": "sft.dev/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"uri": "builtin://tiny-llama"},
            "datasets": [{"uri": "data/quickstart/train.jsonl"}],
            "training": {"maxSteps": 10},
            "storage": {"secretRef": "s3-credentials"},
            "workers": {"nodes": 1, "gpusPerNode": 1},
        },
    }
    body["spec"].update(spec)
    return body


def create_sftjob(api: client.ApiClient, name: str, namespace: str, **spec) -> dict:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        "sft.dev", "v1alpha1", namespace, "sftjobs", sftjob_body(name, namespace, **spec))


def _config_like(api: client.ApiClient) -> client.Configuration:
    cfg = client.Configuration()
    cfg.host = api.configuration.host
    cfg.ssl_ca_cert = api.configuration.ssl_ca_cert
    return cfg


def impersonating(admin: client.ApiClient, user: str) -> client.ApiClient:
    """An ApiClient that acts as `user` (the admin token impersonates it; RBAC applies to `user`)."""
    cfg = _config_like(admin)
    cfg.api_key = dict(admin.configuration.api_key)
    cfg.api_key_prefix = dict(admin.configuration.api_key_prefix)
    api = client.ApiClient(cfg)
    api.set_default_header("Impersonate-User", user)
    return api


def with_token(admin: client.ApiClient, token: str) -> client.ApiClient:
    cfg = _config_like(admin)
    # The full header value: kubernetes>=36 ignores api_key_prefix for the "authorization" key.
    cfg.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(cfg)


def status_code(fn) -> int:
    from kubernetes.client.rest import ApiException

    try:
        fn()
        return 200
    except ApiException as e:
        return e.status
