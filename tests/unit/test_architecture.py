"""The shape of the code base: which package may import which, where the contract lives, how long a
function may grow, and what the wheel ships. Static checks over the source, so they run in a second."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "sft_api": REPO / "api" / "sft_api",
    "sft_operator": REPO / "operator" / "sft_operator",
    "sft_trainer": REPO / "trainer-image" / "sft_trainer",
    "sft_dev": REPO / "dev" / "sft_dev",
}
# package -> the project packages it must never import (at module level or inside a function)
FORBIDDEN = {
    "sft_api": {"sft_operator", "sft_trainer", "sft_dev"},
    "sft_operator": {"sft_trainer", "sft_dev"},
    "sft_trainer": {"sft_operator", "sft_dev"},
}
# The one deliberate exception: sftctl mounts `sftctl dev-cluster` when it runs from a checkout, inside
# a guarded import (the wheel has no sft_dev, and then the command is simply absent).
ALLOWED = {("operator/sft_operator/cli.py", "sft_dev")}
MAX_FUNCTION_LINES = 80


def _modules(package: str):
    for path in sorted(PACKAGES[package].rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _imported_roots(tree: ast.AST) -> set[tuple[str, int]]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {(a.name.split(".")[0], node.lineno) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add((node.module.split(".")[0], node.lineno))
    return out


def _violations(package: str) -> list[str]:
    bad = []
    for path, tree in _modules(package):
        for root, line in _imported_roots(tree):
            if root in FORBIDDEN[package] and (str(path.relative_to(REPO)), root) not in ALLOWED:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {root}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN), ids=lambda p: f"{p}-imports-only-the-contract")
def test_import_direction(package):
    assert _violations(package) == []


def test_import_check_catches_a_violation(tmp_path, monkeypatch):
    """The check itself can fail: a trainer module that imports the operator is reported with file:line."""
    pkg = tmp_path / "sft_trainer"
    pkg.mkdir()
    (pkg / "bad.py").write_text("import os\n\ndef f():\n    from sft_operator.children import job_name\n")
    monkeypatch.setitem(PACKAGES, "sft_trainer", pkg)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert _violations("sft_trainer") == ["sft_trainer/bad.py:4 imports sft_operator"]


def _definitions(name: str) -> list[str]:
    """Files that define ``name`` at module level: a class, or an assignment (plain or tuple)."""
    found = set()
    for package in ("sft_api", "sft_operator", "sft_trainer"):
        for path, tree in _modules(package):
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else []
                names = {e.id for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])
                         if isinstance(e, ast.Name)}
                if (isinstance(node, ast.ClassDef) and node.name == name) or name in names:
                    found.add(str(path.relative_to(REPO)))
    return sorted(found)


@pytest.mark.parametrize("name", ["Phase", "Reason", "CondType", "GROUP", "VERSION", "KIND", "PLURAL",
                                  "LABEL_JOB", "LABEL_ATTEMPT", "CONFIG_ERROR", "INTERRUPTED"])
def test_contract_is_defined_once(name):
    assert _definitions(name) == ["api/sft_api/contract.py"]


def test_exit_code_table_drives_the_operator():
    from sft_api import contract
    from sft_operator.conditions import NON_RETRYABLE_EXIT_CODES

    assert NON_RETRYABLE_EXIT_CODES == {c: e.reason for c, e in contract.EXIT_CODES.items()
                                        if c != contract.SUCCESS and not e.retryable}
    assert set(NON_RETRYABLE_EXIT_CODES) == {64, 65, 66, 67}
    assert contract.is_retryable(1) and contract.is_retryable(75) and contract.is_retryable(137)
    assert contract.reason_for(137) == contract.Reason.POD_FAILED


def _long_functions() -> list[str]:
    out = []
    for package in ("sft_api", "sft_operator", "sft_trainer"):
        for path, tree in _modules(package):
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        out.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}() is {length} lines")
    return out


def test_no_function_exceeds_80_lines():
    """When a function no longer fits on a screen, name its steps (docs/operator.md, STYLE)."""
    assert _long_functions() == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    # Copy the sources the build reads, so the build never writes into the checkout.
    src = out / "src"
    for rel in ("pyproject.toml", "README.md"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((REPO / rel).read_bytes())
    for top in ("api", "operator", "trainer-image", "dev"):
        for path in (REPO / top).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                dest = src / path.relative_to(REPO)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(path.read_bytes())
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (whl,) = (out / "dist").glob("sft_operator-*.whl")
    return zipfile.ZipFile(whl)


def test_wheel_ships_the_runtime_packages_and_no_dev_tooling(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist() if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"sft_api", "sft_operator", "sft_trainer"}
    assert not [n for n in wheel.namelist() if "devcluster" in n or "pytest_plugin" in n or "sft_dev" in n]
    metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    text = wheel.read(metadata).decode()
    trainer_reqs = [line for line in text.splitlines() if line.startswith("Requires-Dist:") and "extra == \"trainer\"" in line]
    assert trainer_reqs and not [r for r in trainer_reqs if "pytest" in r or "seaweedfs" in r or "kubectl" in r]


@pytest.mark.parametrize("dockerfile", ["trainer-image/Dockerfile"])
def test_images_copy_no_dev_tooling(dockerfile):
    lines = [line for line in (REPO / dockerfile).read_text().splitlines() if line.strip().startswith("COPY")]
    assert lines, "the Dockerfile copies the sources"
    assert not [line for line in lines if "dev/" in line.split()[1:-1] or line.split()[1] in (".", "./")]
    install = " ".join(line for line in (REPO / dockerfile).read_text().splitlines() if "pip install" in line)
    assert "dev]" not in install and ",dev" not in install
