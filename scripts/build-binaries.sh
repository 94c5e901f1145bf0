#!/usr/bin/env bash
# Builds (or reuses) the dev cluster's binaries: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok, from the Go module proxy, into
# ${SFT_CACHE:-~/.cache/sft-operator}/k8s-<ver>-etcd-<ver>-kwok-<ver>/bin, and prints that path.
# Needs only python3 and Go (not the venv), so CI can run it in parallel with scripts/venv.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHONPATH="$root/dev${PYTHONPATH:+:$PYTHONPATH}" exec "${SFT_PYTHON:-python3}" -m sft_dev.build "$@"
