#!/usr/bin/env bash
# Validates the Kubernetes manifests offline (k8s/validate.py) with the
# schemas of the kubernetes-validate package from PyPI, installed into a
# virtualenv under target/. Needs the fanout binary built (cargo build).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/k8s-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
  python3 -m venv "$venv" || {
    echo "validate-k8s: python3 -m venv failed; install Debian's python3-venv" >&2
    exit 1
  }
  "$venv/bin/pip" install -q 'kubernetes-validate==1.37.0'
fi
cargo build -q -p fanout-gateway
"$venv/bin/python" k8s/validate.py --fanout-bin target/debug/fanout
