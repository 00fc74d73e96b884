#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs every test of
# the workspace, validates the Kubernetes manifests, and prints one closing
# total. This is the command the README gives and CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
# The JavaScript client (clients/js): its tests start the fanout binary built
# here (and redis-server); npm ci installs exactly the locked dev packages.
js_status=0
{ cargo build -q -p fanout-gateway && (cd clients/js && npm ci --no-audit --no-fund && npm test); } 2>&1 | tee -a "$log" || js_status=$?
[ "$status" -eq 0 ] && status=$js_status
# The client's browser tests: its bundle in Debian's headless Chromium, over
# wss through nginx (the shipped config) to deploy/cluster.sh's 3 nodes and Redis.
browser_status=0
(cd clients/js && npm run test:browser) 2>&1 | tee -a "$log" || browser_status=$?
[ "$status" -eq 0 ] && status=$browser_status
# The Kubernetes manifests and the shipped configs are part of what is tested.
k8s_status=0
scripts/validate-k8s.sh || k8s_status=$?
[ "$status" -eq 0 ] && status=$k8s_status
# One line for the whole run: cargo prints a result line per test binary.
awk '/^client-js(-browser)?: / { p += $2; f += $4; s += $6 }
     /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1); if ($(i) ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
