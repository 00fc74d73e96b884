#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs every test of
# the workspace. This is the command the README gives and CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo test --workspace "$@"
