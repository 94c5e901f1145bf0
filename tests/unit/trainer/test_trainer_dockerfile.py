"""Docker cannot run here: check that trainer-image/Dockerfile and pyproject.toml agree instead."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = (ROOT / "trainer-image" / "Dockerfile").read_text()


def pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        deps += extra
    out = {}
    for d in deps:
        m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^;\s]+)", d)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def args() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE, re.M):
        found.setdefault(name, []).append(value)
    return found


def test_base_image_torch_is_the_pinned_torch():
    torch = pins()["torch"]
    assert set(args()["TORCH_VERSION"]) == {torch}
    (base,) = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert base == "${BASE_IMAGE}"  # a build argument: the CPU variant builds on a local Debian base
    assert args()["BASE_IMAGE"] == ["pytorch/pytorch:${TORCH_VERSION}-${CUDA_TAG}"]
    assert "cuda" in args()["CUDA_TAG"][0]


def test_every_version_in_the_dockerfile_matches_pyproject():
    p = pins()
    for name, version in re.findall(r'"([A-Za-z0-9_.\-]+)==([^"\s]+)"', DOCKERFILE):
        version = version.replace("${TORCH_VERSION}", args()["TORCH_VERSION"][0])
        assert p.get(name.lower()) == version, f"{name}=={version} in the Dockerfile, {p.get(name.lower())} in pyproject"


def test_installs_the_package_with_the_trainer_and_gpu_extras():
    # EXTRAS defaults to the GPU image's extras; the CPU variant passes EXTRAS=trainer
    assert args()["EXTRAS"] == ["trainer,gpu"]
    assert re.search(r'pip install .*"\.\[\$\{EXTRAS\}\]"', DOCKERFILE)
    for pkg in ("deepspeed", "bitsandbytes", "liger-kernel", "trl", "peft"):
        assert pkg in pins()


def test_runs_as_a_numeric_non_root_user_with_the_entrypoint():
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert users and users[-1].isdigit() and int(users[-1]) != 0
    assert re.findall(r"^ENTRYPOINT (.+)$", DOCKERFILE, re.M) == ['["python", "-m", "sft_trainer"]']
    # the entrypoint's default config path is where the operator mounts the job
    from sft_trainer.__main__ import DEFAULT_CONFIG

    assert f"SFT_CONFIG={DEFAULT_CONFIG}" in DOCKERFILE
