#!/usr/bin/env bash
# Creates (or reuses) the project's virtualenv in a stable cache directory outside the clone and
# prints its path. The venv is keyed by the Python minor version; a stamp holding the hash of
# pyproject.toml decides whether `pip install` must run again (incrementally) after the pins change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SFT_CACHE:-$HOME/.cache/sft-operator}"
py="${SFT_PYTHON:-python3}"
pyver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
venv="$cache/venv-py$pyver"
stamp="$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
mkdir -p "$cache"
exec 9>"$cache/venv.lock"
flock 9
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --upgrade pip==25.3 >&2
fi
if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "installing pinned dependencies into $venv (first run downloads torch; later runs reuse it)" >&2
  "$venv/bin/pip" install --quiet -e "$root[operator,trainer,dev]" >&2
  echo "$stamp" > "$venv/.stamp"
fi
# The editable install points at one clone; re-point it cheaply when a different clone uses the venv.
if ! "$venv/bin/python" - "$root" <<'PY' 2>/dev/null
import sys, sft_api, sft_operator, sft_trainer
root = sys.argv[1].rstrip("/") + "/"
sys.exit(0 if all(m.__file__.startswith(root) for m in (sft_api, sft_operator, sft_trainer)) else 1)
PY
then
  "$venv/bin/pip" install --quiet --no-deps -e "$root" >&2
fi
# The dev tooling (dev cluster, pytest plugin) is not part of the wheel or the images; a checkout's venv
# sees it through a .pth file that points at this clone's dev/ directory.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
[ "$(cat "$site/sft-dev.pth" 2>/dev/null)" = "$root/dev" ] || echo "$root/dev" > "$site/sft-dev.pth"
echo "$venv"
