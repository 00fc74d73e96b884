#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, from Debian's
# packages, only when missing. Run as root (CI is root); otherwise it says
# what to install and fails.
set -euo pipefail

# Binaries the tests start for real, and the Debian package of each.
declare -A NEEDED=(
  [redis-server]=redis-server # cluster tests: a real Redis on a free loopback port
  [redis-cli]=redis-tools     # Redis Cluster tests: redis-cli --cluster create
  [nginx]=nginx               # edge tests: a real nginx in front of the nodes
  [chromium]=chromium         # browser tests of clients/js: Debian's headless Chromium
  [openssl]=openssl           # deploy/cluster.sh: the local cluster's TLS keys
  [curl]=curl                 # deploy/cluster.sh: readiness checks
)

# clients/js tests: Node.js >= 20 with npm (the machine image ships them;
# Debian bookworm's own nodejs is 18, too old, so it is not installed here).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1 \
  || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "The JavaScript client's tests need Node.js >= 20 with npm (found: $(node --version 2>/dev/null || echo none))." >&2
  exit 1
fi

missing=()
for bin in "${!NEEDED[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("${NEEDED[$bin]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "The tests need: ${missing[*]}. Install them (apt-get install ${missing[*]}) or run this script as root." >&2
  exit 1
fi
echo "installing test dependencies: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
