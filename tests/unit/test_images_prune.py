"""A rebuild's untagged images are pruned from buildah's storage (each old trainer image held ~5.9 GB),
while the tagged image and the images it is built on stay. Real buildah, in a storage of the test's
own (scripts/test.sh installs Debian's buildah for the image build)."""

from __future__ import annotations

import io
import subprocess

from sft_dev.images import prune_dangling


def _buildah(storage: list[str], *args: str) -> str:
    return subprocess.run(["buildah", *storage, *args], check=True, capture_output=True, text=True).stdout.strip()


def _commit(storage: list[str], ref: str, label: str, base: str = "scratch") -> str:
    ctr = _buildah(storage, "from", base)
    _buildah(storage, "config", "--label", f"build={label}", ctr)
    return _buildah(storage, "commit", "--rm", "-q", ctr, ref)


def _ids(storage: list[str]) -> list[str]:
    out = _buildah(storage, "images", "--all", "--quiet", "--noheading", "--no-trunc").split()
    return [i.removeprefix("sha256:") for i in out]


def test_prune_removes_untagged_images_and_keeps_the_tagged_one_and_its_base(tmp_path):
    storage = ["--root", str(tmp_path / "storage"), "--runroot", str(tmp_path / "run"), "--storage-driver", "vfs"]
    base = _commit(storage, "localhost/base:1", "base")
    old = _commit(storage, "localhost/app:dev", "1", base="localhost/base:1")
    new = _commit(storage, "localhost/app:dev", "2", base="localhost/base:1")  # the retag leaves `old` untagged
    assert {old, new, base} <= set(_ids(storage))
    removed = prune_dangling(storage, io.StringIO())
    assert len(removed) == 1 and old.startswith(removed[0])  # buildah lists short ids
    left = set(_ids(storage))
    assert old not in left and {new, base} <= left, left
    assert prune_dangling(storage, io.StringIO()) == []  # nothing left to prune
