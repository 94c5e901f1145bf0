"""Fixtures of the e2e tests: the operator process (session-wide) and per-test SFTJob helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from sft_e2e_helpers import OperatorProcess, Sft


@pytest.fixture(scope="module")
def operator(dev_cluster, sftjob_crd, tmp_path_factory):
    # Per module: it must not outlive the e2e tests, or it would act on the integration tests' objects.
    op = OperatorProcess(Path(dev_cluster.kubeconfig), tmp_path_factory.mktemp("operator"))
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def sft(kube_api, namespace) -> Sft:
    return Sft(kube_api, namespace)
