#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, from Debian's
# packages, only when missing. Run as root (CI is root); otherwise it says
# what to install and fails.
set -euo pipefail

# Binaries the tests start for real, and the Debian package of each.
declare -A NEEDED=(
  [redis-server]=redis-server # cluster tests: a real Redis on a free loopback port
  [nginx]=nginx               # edge tests: a real nginx in front of the nodes
)

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
