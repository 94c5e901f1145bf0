"""Build the dev cluster's binaries (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kwok) from the Go module proxy, reproducibly, into a cache directory keyed by their versions.

k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces the staging modules with
./staging paths), so we build it through a small wrapper module that points every staging
module at its published v0.X.Y version. etcd is built from the same wrapper, so it uses the
etcd version that this Kubernetes release pins. kwok has no replace directives and is built
with `go install pkg@version`.

Run as `python -m sft_dev.build` (prints the bin dir and timings).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

K8S_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.8"  # the etcd that k8s.io/kubernetes v1.36.3's go.mod pins
KWOK_VERSION = "v0.8.0"
MIN_GO = (1, 26, 0)  # the `go` line of both k8s.io/kubernetes v1.36.3 and kwok v0.8.0

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
_K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
# Where Go is often installed without being on PATH.
GO_FALLBACKS = ("/usr/local/go/bin/go", "/usr/lib/go/bin/go")


class BuildError(RuntimeError):
    """The binaries could not be built; the message names the cause."""


def cache_root() -> Path:
    return Path(os.environ.get("SFT_CACHE") or Path.home() / ".cache" / "sft-operator")


def version_dir() -> Path:
    return cache_root() / f"k8s-{K8S_VERSION}-etcd-{ETCD_VERSION}-kwok-{KWOK_VERSION}"


def bin_dir() -> Path:
    return version_dir() / "bin"


def _stamp() -> dict:
    return {"k8s": K8S_VERSION, "etcd": ETCD_VERSION, "kwok": KWOK_VERSION, "binaries": list(BINARIES)}


def binaries_ready() -> bool:
    b = bin_dir()
    try:
        stamp = json.loads((b / "stamp.json").read_text())
    except (OSError, ValueError):
        return False
    return {k: stamp.get(k) for k in _stamp()} == _stamp() and all(
        os.access(b / name, os.X_OK) for name in BINARIES
    )


def find_go() -> Path:
    """The Go toolchain, or a BuildError that says how to get one."""
    explicit = os.environ.get("SFT_GO")
    if explicit and not os.access(explicit, os.X_OK):
        raise BuildError(f"Go toolchain not found: SFT_GO={explicit} is not an executable")
    candidates = [explicit] if explicit else [shutil.which("go"), *GO_FALLBACKS]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            go = Path(c)
            break
    else:
        raise BuildError(
            "Go toolchain not found: the dev cluster's binaries are built from the Go module proxy and "
            f"need Go >= {'.'.join(map(str, MIN_GO))}. Put `go` on PATH (or set SFT_GO=/path/to/go); "
            "see ../shared/TOOLING.md."
        )
    out = subprocess.run([str(go), "env", "GOVERSION"], capture_output=True, text=True).stdout.strip()
    m = re.match(r"go(\d+)\.(\d+)(?:\.(\d+))?", out)
    if not m:
        raise BuildError(f"{go}: cannot read the Go version (`go env GOVERSION` printed {out!r})")
    have = tuple(int(x or 0) for x in m.groups())
    if have < MIN_GO:
        raise BuildError(
            f"{go} is {out}, but Kubernetes {K8S_VERSION} and kwok {KWOK_VERSION} need Go >= "
            f"{'.'.join(map(str, MIN_GO))}. Install a newer Go or set SFT_GO."
        )
    return go


def _go_env() -> dict[str, str]:
    go_cache = cache_root() / "go"
    env = dict(os.environ)
    env.update(
        GOMODCACHE=str(go_cache / "mod"),
        GOCACHE=str(go_cache / "build"),
        GOPATH=str(go_cache / "path"),
        CGO_ENABLED="0",
        # Never let `go` fetch a different toolchain: the machine's Go must do, or we say so.
        GOTOOLCHAIN="local",
        GOFLAGS="-buildvcs=false -mod=mod",
    )
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], what: str, log) -> str:
    print(f"+ {' '.join(cmd)}", file=log, flush=True)
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-25:])
        hint = ""
        if "sum.golang.org" in tail or "verifying module" in tail:
            hint = "\nThe checksum database seems unreachable; retry with GONOSUMDB='*' or GOSUMDB=off."
        elif "proxy.golang.org" in tail or "dial tcp" in tail:
            hint = "\nThe Go module proxy seems unreachable (GOPROXY); the build needs it once, then the cache."
        raise BuildError(f"{what} failed (exit {p.returncode}): `{' '.join(cmd)}` in {cwd}\n{tail}{hint}")
    return p.stdout


def _run_go(cmd: list[str], cwd: Path, env: dict[str, str], what: str, log) -> str:
    """_run, retried once without the checksum database when sum.golang.org cannot be reached
    (module content is still pinned by the go.sum of each module we build)."""
    try:
        return _run(cmd, cwd, env, what, log)
    except BuildError as e:
        if "sum.golang.org" not in str(e) or env.get("GOSUMDB") == "off":
            raise
        print(f"warning: the Go checksum database is unreachable; retrying {what} with GOSUMDB=off",
              file=log, flush=True)
        return _run(cmd, cwd, dict(env, GOSUMDB="off", GONOSUMDB="*"), what, log)


def _ldflags_k8s() -> str:
    major, minor = K8S_VERSION.lstrip("v").split(".")[:2]
    pkg = "k8s.io/component-base/version"
    # Without these the binaries report v0.0.0, and version-sensitive clients misbehave.
    return " ".join(
        [
            "-s -w",
            f"-X {pkg}.gitVersion={K8S_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    )


def _prepare_wrapper(go: Path, wrapper: Path, env: dict[str, str], log) -> None:
    """A throwaway module that requires k8s.io/kubernetes with every staging module replaced."""
    wrapper.mkdir(parents=True, exist_ok=True)
    done = wrapper / ".prepared"
    if done.exists() and done.read_text() == json.dumps(_stamp()):
        return
    for f in ("go.mod", "go.sum"):
        (wrapper / f).unlink(missing_ok=True)
    _run([str(go), "mod", "init", "sft-devcluster-wrapper"], wrapper, env, "go mod init", log)
    info = json.loads(
        _run_go([str(go), "mod", "download", "-json", f"k8s.io/kubernetes@{K8S_VERSION}"], wrapper, env,
             f"downloading k8s.io/kubernetes@{K8S_VERSION}", log)
    )
    gomod = Path(info["GoMod"]).read_text()
    go_line = re.search(r"^go (\S+)", gomod, re.M)
    if go_line:
        _run([str(go), "mod", "edit", f"-go={go_line.group(1)}"], wrapper, env, "go mod edit -go", log)
    staging = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", gomod, re.M)))
    if not staging:
        raise BuildError(f"no staging replace directives found in k8s.io/kubernetes@{K8S_VERSION}'s go.mod")
    staging_version = "v0." + K8S_VERSION.lstrip("v").split(".", 1)[1]
    _run([str(go), "mod", "edit", *[f"-replace={m}={m}@{staging_version}" for m in staging]], wrapper, env,
         "go mod edit -replace", log)
    (wrapper / "tools.go").write_text(
        "//go:build tools\n\npackage tools\n\nimport (\n"
        + "".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"\n' for c in _K8S_COMMANDS)
        + '\t_ "go.etcd.io/etcd/server/v3/etcdmain"\n)\n'
    )
    _run_go([str(go), "get", f"k8s.io/kubernetes@{K8S_VERSION}", f"go.etcd.io/etcd/server/v3@{ETCD_VERSION}"],
            wrapper, env, "go get (resolving the wrapper module)", log)
    # Make sure MVS did not move etcd away from the release's pin.
    got = _run([str(go), "list", "-m", "-f", "{{.Version}}", "go.etcd.io/etcd/server/v3"], wrapper, env,
               "go list", log).strip()
    if got != ETCD_VERSION:
        raise BuildError(f"the wrapper module resolved go.etcd.io/etcd/server/v3 to {got}, expected {ETCD_VERSION}")
    done.write_text(json.dumps(_stamp()))


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build(log=sys.stderr) -> dict[str, float]:
    """Build every binary into bin_dir(); returns seconds per step."""
    go = find_go()
    env = _go_env()
    vdir = version_dir()
    wrapper = vdir / "wrapper"
    out = bin_dir()
    tmp = vdir / "bin.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    times: dict[str, float] = {}

    t = time.monotonic()
    _prepare_wrapper(go, wrapper, env, log)
    times["resolve"] = time.monotonic() - t

    t = time.monotonic()
    _run_go([str(go), "build", "-trimpath", "-ldflags=-s -w", "-o", str(tmp / "etcd"), "go.etcd.io/etcd/server/v3"],
            wrapper, env, f"building etcd {ETCD_VERSION}", log)
    times["etcd"] = time.monotonic() - t
    for cmd in _K8S_COMMANDS:
        t = time.monotonic()
        _run_go([str(go), "build", "-trimpath", f"-ldflags={_ldflags_k8s()}", "-o", str(tmp / cmd),
                 f"k8s.io/kubernetes/cmd/{cmd}"], wrapper, env, f"building {cmd} {K8S_VERSION}", log)
        times[cmd] = time.monotonic() - t

    t = time.monotonic()
    kenv = dict(env, GOBIN=str(tmp), GOFLAGS="-buildvcs=false")  # -mod is refused with pkg@version
    # kwok's version is a constant in its source (pkg/consts.Version), so no ldflags are needed.
    _run_go([str(go), "install", "-trimpath", "-ldflags=-s -w", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"],
            vdir, kenv, f"building kwok {KWOK_VERSION}", log)
    times["kwok"] = time.monotonic() - t

    (tmp / "stamp.json").write_text(json.dumps({**_stamp(), "seconds": times}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return times


def ensure_binaries(force: bool = False, log=sys.stderr) -> Path:
    """The bin dir holding every dev-cluster binary; builds them (minutes, once) when missing."""
    if not force and binaries_ready():
        return bin_dir()
    with _lock(version_dir().parent / f".build-{version_dir().name}.lock"):
        # Another process may have finished the build while we waited for the lock.
        if force or not binaries_ready():
            print(f"building the dev cluster binaries into {bin_dir()} (cold: ~20-40 min on 2 cores; "
                  "cached afterwards)", file=log, flush=True)
            build(log=log)
    return bin_dir()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    force = "--force" in argv
    t = time.monotonic()
    try:
        path = ensure_binaries(force=force)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    took = time.monotonic() - t
    try:
        seconds = json.loads((path / "stamp.json").read_text()).get("seconds", {})
    except (OSError, ValueError):
        seconds = {}
    print(f"dev cluster binaries: k8s {K8S_VERSION}, etcd {ETCD_VERSION}, kwok {KWOK_VERSION}", file=sys.stderr)
    if seconds:
        steps = ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items())
        print(f"last build: {steps}", file=sys.stderr)
    print(f"this run: {took:.1f}s", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
