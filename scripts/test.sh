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
# control plane (every cluster test needs it: cp.done marks it built), then the real node's containerd,
# runc, kubelet, CoreDNS and kube-router (same Go caches, same wrapper), niced: on a cold machine they
# build while the tests that need no real node run (the whole suite, no arguments, runs in two parts).
(PYTHONPATH="$root/dev" python3 -m sft_dev.build && touch "$log/cp.done" \
  && PYTHONPATH="$root/dev" nice -n 10 python3 -m sft_dev.realnode_build) >"$log/build.out" 2>"$log/build.err" &
build_pid=$!
# The operator and trainer images (network and disk bound: mmdebstrap, a wheelhouse, buildah).
PYTHONPATH="$root/dev" nice -n 10 python3 -m sft_dev.images >"$log/images.out" 2>"$log/images.err" &
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
# wait_job PID NAME WHAT: the background job's exit; on failure the tail of its log, and exit 1.
wait_job() {
  if ! wait "$1"; then
    echo "error: $3 failed:" >&2
    tail -n 40 "$log/$2.err" >&2
    exit 1
  fi
  cat "$log/$2.out"
}
wait_control_plane() {
  while [ ! -e "$log/cp.done" ]; do
    if ! kill -0 "$build_pid" 2>/dev/null; then
      wait "$build_pid" || true
      echo "error: building the Kubernetes control-plane binaries failed:" >&2
      tail -n 40 "$log/build.err" >&2
      exit 1
    fi
    sleep 2
  done
  echo "control-plane binaries ready ($(( $(date +%s) - start ))s)"
}
wait_real_node() {
  wait_job "$build_pid" build "building the real node's binaries"
  echo "real-node binaries ready ($(( $(date +%s) - start ))s)"
  wait_job "$images_pid" images "building the operator and trainer images"
  echo "images ready ($(( $(date +%s) - start ))s)"
}

wait_job "$checkov_pid" checkov "building the checkov tool venv (needed by tests/unit/security)"
"$venv/bin/python" -m sft_api.crdgen --check
export PATH="$venv/bin:$PATH"

run_pytest() {
  local t0 rc
  t0=$(date +%s)
  set +e
  "$venv/bin/pytest" "$@"
  rc=$?
  set -e
  if [ "$rc" -eq 5 ]; then
    echo "error: pytest collected no tests ($*)" >&2
    rc=1
  fi
  echo "pytest $* took $(( $(date +%s) - t0 ))s (rc $rc)"
  return "$rc"
}

if [ "$#" -gt 0 ]; then  # a chosen subset: everything built first
  wait_control_plane
  wait_real_node
  rc=0; run_pytest "$@" || rc=$?
  exit "$rc"
fi
# The whole suite: the tests without a real node while the real node's binaries and the images
# finish, then the real-node tier.
wait_control_plane
rc=0; run_pytest -m "not realnode" tests || rc=$?
wait_real_node
rc2=0; run_pytest -m realnode tests || rc2=$?
echo "tests done ($(( $(date +%s) - start ))s)"
[ "$rc" -eq 0 ] && [ "$rc2" -eq 0 ]
