#!/usr/bin/env bash
# Validates the Kubernetes manifests offline (k8s/validate.py): renders the
# kustomizations with `kubectl kustomize` (Kustomize v5) and checks them with
# the schemas of the kubernetes-validate package from PyPI, installed into a
# virtualenv under target/. Needs kubectl and the fanout binary (built here).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v kubectl >/dev/null 2>&1; then
  echo "validate-k8s: kubectl is not on PATH; it renders the kustomizations. To validate the" \
    "manifests, install kubectl with Kustomize v5 built in (kubectl 1.27 or later), e.g. the" \
    "\`kubectl\` package of the Google Cloud SDK apt repository (Debian)" >&2
  exit 1
fi
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
