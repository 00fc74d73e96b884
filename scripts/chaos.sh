#!/usr/bin/env bash
# The chaos suite (crates/gateway/tests/chaos) in soak mode: three real
# nodes and a real Redis under load while faults drawn from a seed are
# injected, for as long as asked.
#
#   scripts/chaos.sh 30m            # a 30-minute soak with the default seed
#   scripts/chaos.sh 2h 0x5eed      # two hours, another seed
#   scripts/chaos.sh round [seed]   # the CI round (every fault kind once, ~80 s)
#
# Environment it passes on: FANOUT_CHAOS_STRICT=1 (every check that waits
# for a fix turns on), FANOUT_CHAOS_KEEP_GOING=1 (report every violation at
# the end instead of stopping at the first), FANOUT_CHAOS_FAULTS=kind,...
# (only those fault kinds; names in tests/chaos/plan.rs). Builds and runs
# only the chaos target; prints the seed at the start and in any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: $0 <duration: 90s | 30m | 2h | round> [seed]" >&2
  exit 2
}
[ $# -ge 1 ] && [ $# -le 2 ] || usage
case "$1" in
  round) unset FANOUT_CHAOS_DURATION ;;
  *[0-9][smh]) export FANOUT_CHAOS_DURATION="$1" ;;
  *) usage ;;
esac
if [ $# -eq 2 ]; then
  export FANOUT_CHAOS_SEED="$2"
fi

# The one binary the suite starts besides fanout (it fails, never skips,
# without it; scripts/install-test-deps.sh installs everything the tests need).
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/sbin/redis-server ]; then
  echo "the chaos suite needs redis-server: apt-get install redis-server (or run scripts/install-test-deps.sh as root)" >&2
  exit 1
fi
# Build first, so that the soak's clock starts with the nodes, not the compiler.
cargo test -q -p fanout-gateway --test chaos --no-run
exec cargo test -q -p fanout-gateway --test chaos -- --exact chaos --nocapture
