"""Fixtures for the Helm chart tests: the pinned helm binaries (3 and 4; every test runs under both)
and a `render` helper."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "sft-operator"


@pytest.fixture(scope="session", params=[3, 4], ids=["helm3", "helm4"])
def helm_major(request) -> int:
    """The helm major every chart test runs under: users run helm 3 and helm 4 (README "Helm versions")."""
    return request.param


@pytest.fixture(scope="session")
def helm_bin(helm_major) -> str:
    from sft_dev.tools import helm

    return str(helm(helm_major))


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("helm-home")
    return dict(os.environ, HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
                HELM_DATA_HOME=str(home / "data"))


@pytest.fixture(scope="session")
def run_helm(helm_bin, helm_env):
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([helm_bin, *args], capture_output=True, text=True, env=helm_env, timeout=120)
        if check and p.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
        return p

    return run


@pytest.fixture(scope="session")
def render(run_helm):
    """render(*helm_template_args, apis=()) -> list of manifests (dicts) of `helm template`."""

    def _render(*args: str, apis: tuple[str, ...] = ()) -> list[dict]:
        api_args = [a for api in apis for a in ("--api-versions", api)]
        out = run_helm("template", "rel", str(CHART), "--namespace", "sft-system", *api_args, *args).stdout
        return [d for d in yaml.safe_load_all(out) if d]

    return _render
