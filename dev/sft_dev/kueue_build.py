"""Build Kueue's manager from the Go module proxy into a cache directory keyed by its version.

``sigs.k8s.io/kueue`` has no replace directives, so ``go install sigs.k8s.io/kueue/cmd/kueue@vX`` works
(CGO off, the same GOMODCACHE/GOCACHE as the control-plane build). Its CRDs and manifests come from
the module cache: ``<GOMODCACHE>/sigs.k8s.io/kueue@vX/config/components/``.

Run as ``python -m sft_dev.kueue_build`` (prints the binary and the build time).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from sft_dev.build import BuildError, _go_env, _lock, _run_go, cache_root, find_go

KUEUE_VERSION = "v0.17.0"


def kueue_dir() -> Path:
    return cache_root() / f"kueue-{KUEUE_VERSION}"


def kueue_binary() -> Path:
    return kueue_dir() / "bin" / "kueue"


def module_dir() -> Path:
    """Kueue's module in the Go module cache (CRDs under config/components/crd/bases)."""
    return Path(_go_env()["GOMODCACHE"]) / f"sigs.k8s.io/kueue@{KUEUE_VERSION}"


def crd_dir() -> Path:
    return module_dir() / "config" / "components" / "crd" / "bases"


def kueue_ready() -> bool:
    try:
        stamp = json.loads((kueue_dir() / "bin" / "stamp.json").read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("kueue") == KUEUE_VERSION and os.access(kueue_binary(), os.X_OK) and crd_dir().is_dir()


def ensure_kueue(log=sys.stderr) -> Path:
    """The kueue binary; built once (~5 min cold on 2 cores, seconds with warm Go caches)."""
    if kueue_ready():
        return kueue_binary()
    with _lock(cache_root() / f".build-kueue-{KUEUE_VERSION}.lock"):
        if kueue_ready():
            return kueue_binary()
        go = find_go()
        out = kueue_dir() / "bin"
        out.mkdir(parents=True, exist_ok=True)
        env = dict(_go_env(), GOBIN=str(out), GOFLAGS="-buildvcs=false")  # -mod is refused with pkg@version
        print(f"building kueue {KUEUE_VERSION} into {out} (cold: ~5 min; cached afterwards)", file=log, flush=True)
        t = time.monotonic()
        _run_go([str(go), "install", "-trimpath", "-ldflags=-s -w", f"sigs.k8s.io/kueue/cmd/kueue@{KUEUE_VERSION}"],
                kueue_dir(), env, f"building kueue {KUEUE_VERSION}", log)
        # the module's manifests (CRDs) come with the download; make sure they are there
        _run_go([str(go), "mod", "download", f"sigs.k8s.io/kueue@{KUEUE_VERSION}"], kueue_dir(), env,
                "downloading kueue's module", log)
        if not crd_dir().is_dir():
            raise BuildError(f"kueue's CRDs are not at {crd_dir()}")
        took = time.monotonic() - t
        (out / "stamp.json").write_text(json.dumps({"kueue": KUEUE_VERSION, "seconds": round(took, 1)}))
    return kueue_binary()


def main() -> int:
    t = time.monotonic()
    try:
        path = ensure_kueue()
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    seconds = json.loads((path.parent / "stamp.json").read_text()).get("seconds")
    print(f"kueue {KUEUE_VERSION}: {path} (build {seconds}s; this call {time.monotonic() - t:.1f}s)", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
