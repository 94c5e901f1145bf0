#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs the pinned Python environment, builds (or reuses)
# the Kubernetes control-plane binaries from the Go module proxy, installs Prometheus from Debian, then
# runs unit, integration (real kube-apiserver, SeaweedFS S3, Prometheus) and e2e tests.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/unit -x`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
log="$(mktemp -d)"
start=$(date +%s)

# Debian packages of the real node (runc's libseccomp, the CNI plugins, iptables and ipset for kube-router's
# network policies) and of the image build (buildah, mmdebstrap), installed once up front so the
# background builds never race for apt's lock.
realnode_pkgs="libseccomp-dev pkg-config containernetworking-plugins iptables ipset buildah mmdebstrap"
if ! dpkg-query -W -f='${Status}\n' $realnode_pkgs 2>/dev/null | grep -c "install ok installed" | grep -qx 7; then
  echo "installing Debian packages for the real node and the images: $realnode_pkgs"
  if ! (apt-get install -y -qq --no-install-recommends $realnode_pkgs >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends $realnode_pkgs >/dev/null 2>&1; }); then
    echo "error: could not install Debian's $realnode_pkgs (needed by the realnode tests)" >&2
    exit 1
  fi
fi

# The Go builds need only the standard library and Go, so they run alongside the pip install: the
# control plane, then the real node's containerd, runc, kubelet, CoreDNS and kube-router (same Go caches).
(PYTHONPATH="$root/dev" python3 -m sft_dev.build && PYTHONPATH="$root/dev" python3 -m sft_dev.realnode_build) \
  >"$log/build.out" 2>"$log/build.err" &
build_pid=$!
# The operator and trainer images (network and disk bound: mmdebstrap, a wheelhouse, buildah).
PYTHONPATH="$root/dev" python3 -m sft_dev.images >"$log/images.out" 2>"$log/images.err" &
images_pid=$!
venv="$(bash scripts/venv.sh)"
echo "python env ready: $venv ($(( $(date +%s) - start ))s)"
# checkov for tests/unit/security (its own venv, cached by version; the test builds it too if missing).
"$venv/bin/python" -m sft_dev.checkov_tool --build >"$log/checkov.out" 2>"$log/checkov.err" &
checkov_pid=$!
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  echo "installing Prometheus (Debian package)"
  if ! (apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; }); then
    echo "error: could not install Debian's prometheus package (needed for promtool and the scrape tests)" >&2
    exit 1
  fi
fi
if ! wait "$build_pid"; then
  echo "error: building the Kubernetes control-plane or real-node binaries failed:" >&2
  tail -n 40 "$log/build.err" >&2
  exit 1
fi
cat "$log/build.out"
echo "binaries ready ($(( $(date +%s) - start ))s)"
if ! wait "$images_pid"; then
  echo "error: building the operator and trainer images failed:" >&2
  tail -n 40 "$log/images.err" >&2
  exit 1
fi
cat "$log/images.out"
echo "images ready ($(( $(date +%s) - start ))s)"

if ! wait "$checkov_pid"; then
  echo "error: building the checkov tool venv failed (needed by tests/unit/security):" >&2
  tail -n 40 "$log/checkov.err" >&2
  exit 1
fi
cat "$log/checkov.out"
"$venv/bin/python" -m sft_api.crdgen --check
export PATH="$venv/bin:$PATH"
set +e
"$venv/bin/pytest" "${@:-tests}"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
