"""`sftctl images build`: the operator and trainer images, from the project's own Dockerfiles, without a
Docker daemon and without a container registry.

Route (and why): no registry can be reached here, so no public base image can be pulled. The base is
a Debian 12 root filesystem (python3 3.11 + python3-venv) made by `mmdebstrap` from apt's configured
sources, committed as a local image; the Dockerfiles then build on it with Debian's `buildah`
(`bud --isolation chroot`, its own storage under the cache dir, no daemon), with BASE_IMAGE set to
that local base. buildah reads the same Dockerfiles a user builds with `docker build`, so the files
under test are the files users build. Python packages come from a local wheelhouse (`pip download`
of the pins in pyproject.toml, once), mounted into the build, so a rebuild downloads nothing.

Each image is cached by a content hash of its inputs (Dockerfile, build args, the copied sources,
the base, the wheelhouse) as an uncompressed docker-archive under the cache dir; the real node
imports it into containerd's k8s.io namespace (sft_dev.realnode.load_images).

Run as `python -m sft_dev.images` (prints the archives, sizes and timings).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from sft_dev.build import BuildError, _lock, cache_root
from sft_dev.realnode_build import apt_install

REPO_ROOT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"  # Debian 12: python3 is 3.11, which the project supports
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
PYTHON_VERSION = "3.11"
# The build backend of pyproject.toml, pinned for the offline wheelhouse.
BUILD_REQUIREMENTS = ("setuptools==80.9.0", "wheel==0.45.1")
APT_PACKAGES = {"buildah": "builds the images from the Dockerfiles without a daemon",
                "mmdebstrap": "makes the Debian base root filesystem"}
_IGNORED = re.compile(r"(^|/)(__pycache__|[^/]*\.egg-info|\.pytest_cache)(/|$)|\.pyc$")


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    name: str
    dockerfile: str
    ref: str  # the name pods use; containerd stores it as docker.io/<ref>
    inputs: tuple[str, ...]  # paths the Dockerfile COPYs
    extras: tuple[str, ...]  # pyproject extras the image installs
    build_args: tuple[tuple[str, str], ...] = ()


IMAGES = {
    "operator": ImageSpec("operator", "operator/Dockerfile", "sft-operator/operator:dev",
                          ("pyproject.toml", "README.md", "api", "operator"), ("operator",)),
    # The CPU variant: the same Dockerfile without the GPU-only extras.
    "trainer": ImageSpec("trainer", "trainer-image/Dockerfile", "sft-operator/trainer:dev",
                         ("pyproject.toml", "README.md", "api", "trainer-image", "examples/data"), ("trainer",),
                         (("EXTRAS", "trainer"),)),
}


@dataclasses.dataclass
class BuiltImage:
    name: str
    ref: str
    archive: Path
    digest: str  # content hash of the inputs
    size_bytes: int
    seconds: float
    cached: bool

    @property
    def full_ref(self) -> str:
        return f"docker.io/{self.ref}"


def images_dir() -> Path:
    return cache_root() / "images"


def _storage_args() -> list[str]:
    root = images_dir() / "buildah"
    return ["--root", str(root / "storage"), "--runroot", str(root / "run"), "--storage-driver", "overlay"]


def _run(cmd: list[str], what: str, log, cwd: Path | None = None, env: dict | None = None) -> str:
    print(f"+ {' '.join(cmd)}", file=log, flush=True)
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-30:])
        raise BuildError(f"{what} failed (exit {p.returncode}): `{' '.join(cmd[:6])} ...`\n{tail}")
    return p.stdout


def _apt_sources() -> list[str]:
    """apt's configured Debian sources as one-line `deb URI SUITE COMPONENTS` entries, so the base
    comes from the same mirror as the machine's packages."""
    lines: list[str] = []
    apt = Path("/etc/apt")
    for f in sorted(apt.glob("sources.list.d/*.sources")):
        for stanza in f.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if "deb" not in fields.get("Types", "").split() or "debian" not in fields.get("URIs", ""):
                continue
            for uri in fields.get("URIs", "").split():
                for suite in fields.get("Suites", "").split():
                    lines.append(f"deb {uri} {suite} {fields.get('Components', 'main')}")
    for f in [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]:
        if f.exists():
            lines += [ln.strip() for ln in f.read_text().splitlines() if ln.strip().startswith("deb ")]
    return [ln for ln in lines if SUITE in ln.split()[2]] or [f"deb http://deb.debian.org/debian {SUITE} main"]


def _hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _base_ref() -> tuple[str, str]:
    digest = _hash(SUITE, *BASE_PACKAGES, *_apt_sources())
    return f"localhost/sft-base:{SUITE}-{digest}", digest


def _image_exists(ref: str) -> bool:
    p = subprocess.run(["buildah", *_storage_args(), "inspect", "--type", "image", ref], capture_output=True)
    return p.returncode == 0


def ensure_base(log=sys.stderr) -> str:
    """The local Debian base image (built by mmdebstrap once, then kept in buildah's storage)."""
    ref, digest = _base_ref()
    if _image_exists(ref):
        return ref
    work = images_dir() / f"base-{digest}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tar = work / "rootfs.tar"
    _run(["mmdebstrap", "--variant=minbase", "--mode=root", f"--include={','.join(BASE_PACKAGES)}",
          "--aptopt=Acquire::Retries \"3\"", "--dpkgopt=path-exclude=/usr/share/doc/*",
          "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
          SUITE, str(tar), *_apt_sources()], "mmdebstrap (the Debian base)", log)
    ctr = _run(["buildah", *_storage_args(), "from", "scratch"], "buildah from scratch", log).strip()
    try:
        _run(["buildah", *_storage_args(), "add", ctr, str(tar), "/"], "buildah add (the base rootfs)", log)
        _run(["buildah", *_storage_args(), "config", "--env",
              "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "--cmd", "/bin/bash", ctr],
             "buildah config", log)
        _run(["buildah", *_storage_args(), "commit", "--rm", ctr, ref], "buildah commit (the base)", log)
    except BuildError:
        subprocess.run(["buildah", *_storage_args(), "rm", ctr], capture_output=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return ref


def _pins(extras: tuple[str, ...]) -> list[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for e in extras:
        deps += project["optional-dependencies"][e]
    return sorted(set(deps))


def _requirements() -> list[str]:
    return sorted(set(_pins(("operator",)) + _pins(("trainer",)))) + list(BUILD_REQUIREMENTS)


def wheelhouse_dir() -> Path:
    return cache_root() / f"wheels-py{PYTHON_VERSION}-{_hash(PYTHON_VERSION, *_requirements())}"


def ensure_wheelhouse(log=sys.stderr) -> Path:
    """Wheels for every pinned dependency of the images (and the build backend), downloaded once."""
    reqs = _requirements()
    out = wheelhouse_dir()
    if (out / ".complete").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Seed from earlier wheelhouses (older pins): pip download skips the files already there, so a
    # change of one pin downloads one wheel, not the ~3 GB of torch and its CUDA libraries again.
    for old in cache_root().glob("wheels-*"):
        if old not in (out, tmp) and old.is_dir():
            for f in old.glob("*.whl"):
                if not (tmp / f.name).exists():
                    os.link(f, tmp / f.name)
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
          f"--python-version={PYTHON_VERSION}", "-d", str(tmp), *reqs],
         "pip download (the images' wheelhouse; needs PyPI once)", log)
    (tmp / ".complete").write_text(json.dumps(reqs, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _files(inputs: tuple[str, ...]) -> list[Path]:
    out = []
    for rel in inputs:
        p = REPO_ROOT / rel
        found = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        out += [q for q in found if not _IGNORED.search(str(q.relative_to(REPO_ROOT)))]
    return out


def input_digest(spec: ImageSpec, base: str, wheels: Path) -> str:
    """A content hash of everything that goes into the image."""
    h = hashlib.sha256()
    for part in (spec.dockerfile, repr(spec.build_args), base, wheels.name):
        h.update(part.encode() + b"\0")
    for f in [REPO_ROOT / spec.dockerfile, REPO_ROOT / ".dockerignore", *_files(spec.inputs)]:
        h.update(str(f.relative_to(REPO_ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def archive_path(spec: ImageSpec, base: str, wheels: Path) -> Path:
    return images_dir() / f"{spec.name}-{input_digest(spec, base, wheels)}.tar"


def is_current(name: str) -> bool:
    """Whether the image's archive for today's inputs exists (nothing to build)."""
    a = archive_path(IMAGES[name], _base_ref()[0], wheelhouse_dir())
    return a.exists() and a.with_suffix(".json").exists()


def _build_one(spec: ImageSpec, base: str, wheels: Path, log) -> BuiltImage:
    digest = input_digest(spec, base, wheels)
    archive = archive_path(spec, base, wheels)
    meta = archive.with_suffix(".json")
    if archive.exists() and meta.exists():
        m = json.loads(meta.read_text())
        return BuiltImage(spec.name, spec.ref, archive, digest, archive.stat().st_size, m["seconds"], True)
    t = time.monotonic()
    args = [("BASE_IMAGE", base), ("WHEELHOUSE", "/wheels"), *spec.build_args]
    _run(["buildah", *_storage_args(), "bud", "--isolation", "chroot", "--pull=never",
          # cached layers: the dependency layer (pyproject.toml only) survives edits of the sources
          "--layers",
          "--format", "docker", "-f", spec.dockerfile, *[f"--build-arg={k}={v}" for k, v in args],
          "-v", f"{wheels}:/wheels:ro", "-t", f"localhost/{spec.ref}", "."],
         f"buildah bud {spec.dockerfile}", log, cwd=REPO_ROOT)
    tmp = archive.with_suffix(".tar.tmp")
    tmp.unlink(missing_ok=True)
    _run(["buildah", *_storage_args(), "push", f"localhost/{spec.ref}", f"docker-archive:{tmp}:docker.io/{spec.ref}"],
         f"buildah push {spec.ref} (docker-archive)", log)
    tmp.rename(archive)
    seconds = round(time.monotonic() - t, 1)
    meta.write_text(json.dumps({"ref": spec.ref, "digest": digest, "seconds": seconds,
                                "size_bytes": archive.stat().st_size}, indent=1))
    for old in images_dir().glob(f"{spec.name}-*.tar"):  # keep only the current archive of each image
        if old != archive:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    return BuiltImage(spec.name, spec.ref, archive, digest, archive.stat().st_size, seconds, False)


def missing_apt_packages() -> list[str]:
    return [p for p in APT_PACKAGES if shutil.which(p) is None]


def build(names: tuple[str, ...] = ("operator", "trainer"), log=sys.stderr) -> list[BuiltImage]:
    """Build (or reuse) the named images; returns where each archive is."""
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        raise BuildError(f"unknown image(s) {unknown}; known: {sorted(IMAGES)}")
    if os.geteuid() != 0:
        raise BuildError("building the images needs root here (mmdebstrap --mode=root, buildah's chroot isolation)")
    apt_install(missing_apt_packages(), log)
    images_dir().mkdir(parents=True, exist_ok=True)
    with _lock(images_dir() / ".build.lock"):
        base = ensure_base(log)
        wheels = ensure_wheelhouse(log)
        built = [_build_one(IMAGES[n], base, wheels, log) for n in names]
        if not all(b.cached for b in built):
            prune_dangling(_storage_args(), log)
        return built


def prune_dangling(storage: list[str], log) -> list[str]:
    """Remove the images a rebuild left untagged (each old trainer image keeps ~5.9 GB of layers in
    buildah's storage). Only top-level dangling images go: the intermediate images that --layers
    caches for the current build are not listed without --all, so the next build still reuses them."""
    ids = _run(["buildah", *storage, "images", "--filter", "dangling=true", "--quiet", "--noheading"],
               "buildah images (dangling)", log).split()
    for image_id in dict.fromkeys(ids):
        _run(["buildah", *storage, "rmi", image_id], f"buildah rmi {image_id}", log)
    return list(dict.fromkeys(ids))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = tuple(a for a in argv if not a.startswith("-")) or ("operator", "trainer")
    t = time.monotonic()
    try:
        built = build(names)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for b in built:
        state = "cached" if b.cached else f"built in {b.seconds:.0f}s"
        print(f"{b.full_ref}: {b.size_bytes / 2**20:.0f} MiB ({state}) {b.archive}")
    print(f"this run: {time.monotonic() - t:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
