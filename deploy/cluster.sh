#!/usr/bin/env bash
# A local fanout cluster in one command: Redis, 3 nodes and nginx (TLS) on
# loopback, with keys generated for this cluster.
#
#   deploy/cluster.sh up       # start (builds the release binary if needed)
#   deploy/cluster.sh status   # what runs, and whether it is ready
#   deploy/cluster.sh down     # stop exactly what `up` started
#
# Everything lives in target/cluster/ (configs, keys, logs, pids), or in
# FANOUT_CLUSTER_DIR. Ports can be moved with FANOUT_CLUSTER_PORT (nginx,
# default 8443), FANOUT_NODE_PORTS (default "8081 8082 8083") and
# FANOUT_REDIS_PORT (default 6380). FANOUT_BIN points at another fanout binary.
#
# FANOUT_EXTRA_CONFIG names a TOML file appended to every node's config, e.g.
# history rules (every node of a cluster must have the same ones):
#
#   printf '[[history]]\ntenant = "*"\nrooms = "chat:*"\nsize = 1000\nttl = "10m"\n' >history.toml
#   FANOUT_EXTRA_CONFIG=history.toml deploy/cluster.sh up
#
# It follows the [shutdown] table, so it must start with a table header, and
# it may not repeat a table the script writes ([auth], [redis], [shutdown]).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${FANOUT_CLUSTER_DIR:-$ROOT/target/cluster}"
NGINX_PORT="${FANOUT_CLUSTER_PORT:-8443}"
NODE_PORTS="${FANOUT_NODE_PORTS:-8081 8082 8083}"
REDIS_PORT="${FANOUT_REDIS_PORT:-6380}"
BIN="${FANOUT_BIN:-$ROOT/target/release/fanout}"
EXTRA_CONFIG="${FANOUT_EXTRA_CONFIG:-}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

die() { echo "cluster.sh: $*" >&2; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] ||
    die "$1 is missing: install it (Debian: apt-get install $2)"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_ready() { # url
  for _ in $(seq 100); do
    curl -fsk "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

up() {
  need redis-server redis-server
  need nginx nginx
  need openssl openssl
  need curl curl
  if [ -f "$STATE/pids" ] && [ -s "$STATE/pids" ]; then
    die "already up (deploy/cluster.sh status, or down first)"
  fi
  if [ -n "$EXTRA_CONFIG" ] && [ ! -r "$EXTRA_CONFIG" ]; then
    die "FANOUT_EXTRA_CONFIG=$EXTRA_CONFIG is not a readable file"
  fi
  if [ ! -x "$BIN" ]; then
    echo "building the release binary..." >&2
    (cd "$ROOT" && cargo build --release -q -p fanout-gateway)
  fi
  mkdir -p "$STATE/tls" "$STATE/logs" "$STATE/nginx-tmp"
  : >"$STATE/pids"
  # A failure half-way stops what was already started.
  trap 'echo "cluster.sh: up failed; stopping what it started" >&2; down' ERR
  umask 077

  # Keys of this cluster: generated once, kept across up/down.
  [ -f "$STATE/secret" ] || openssl rand -hex 32 >"$STATE/secret"
  [ -f "$STATE/api-key" ] || openssl rand -hex 24 >"$STATE/api-key"
  if [ ! -f "$STATE/tls/fanout.crt" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
      -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
      -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
      -keyout "$STATE/tls/fanout.key" -out "$STATE/tls/fanout.crt" 2>/dev/null
  fi
  local secret api_key
  secret="$(cat "$STATE/secret")"
  api_key="$(cat "$STATE/api-key")"

  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    >"$STATE/logs/redis.log" 2>&1 &
  echo "redis $!" >>"$STATE/pids"
  echo $! >"$STATE/redis.pid"

  : >"$STATE/fanout-nodes.conf"
  local port
  for port in $NODE_PORTS; do
    cat >"$STATE/node-$port.toml" <<EOF
node_id = "local-$port"
listen = "127.0.0.1:$port"

[auth]
secret = "$secret"

[[api_keys]]
key = "$api_key"

[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
prefix = "fanout-local"

[shutdown]
grace = "8s"
readiness_delay = "1s"
drain_window = "3s"
EOF
    if [ -n "$EXTRA_CONFIG" ]; then
      { echo; cat "$EXTRA_CONFIG"; } >>"$STATE/node-$port.toml"
    fi
    "$BIN" --config "$STATE/node-$port.toml" >"$STATE/logs/node-$port.log" 2>&1 &
    echo "node-$port $!" >>"$STATE/pids"
    echo $! >"$STATE/node-$port.pid"
    echo "server 127.0.0.1:$port max_fails=1 fail_timeout=10s;" >>"$STATE/fanout-nodes.conf"
  done

  cat >"$STATE/nginx.conf" <<EOF
daemon off;
master_process off;
pid $STATE/nginx.pid;
error_log $STATE/logs/nginx.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $STATE/nginx-tmp;
  proxy_temp_path $STATE/nginx-tmp;
  fastcgi_temp_path $STATE/nginx-tmp;
  uwsgi_temp_path $STATE/nginx-tmp;
  scgi_temp_path $STATE/nginx-tmp;
  include $ROOT/nginx/fanout.conf;
  server {
    listen 127.0.0.1:$NGINX_PORT ssl;
    ssl_certificate $STATE/tls/fanout.crt;
    ssl_certificate_key $STATE/tls/fanout.key;
    include $ROOT/nginx/fanout-locations.conf;
  }
}
EOF
  "$NGINX" -p "$STATE" -c "$STATE/nginx.conf" >"$STATE/logs/nginx.out" 2>&1 &
  echo "nginx $!" >>"$STATE/pids"
  echo $! >"$STATE/nginx-proc.pid"

  for port in $NODE_PORTS; do
    wait_ready "http://127.0.0.1:$port/readyz" ||
      { tail -20 "$STATE/logs/node-$port.log" >&2; trap - ERR; down; die "node on $port did not become ready"; }
  done
  wait_ready "https://127.0.0.1:$NGINX_PORT/nginx-healthz" ||
    { tail -20 "$STATE/logs/nginx.log" >&2; trap - ERR; down; die "nginx did not start"; }

  trap - ERR
  local token
  token="$("$BIN" token --config "$STATE/node-${NODE_PORTS%% *}.toml" --sub alice --tenant demo --rooms 'lobby,chat:*' 2>/dev/null)"
  cat <<EOF
fanout cluster is up: Redis on 127.0.0.1:$REDIS_PORT, nodes on $(echo "$NODE_PORTS" | sed 's/ /, /g'),
nginx (TLS, self-signed certificate) on https://localhost:$NGINX_PORT

  WebSocket:  wss://localhost:$NGINX_PORT/ws   (certificate: $STATE/tls/fanout.crt)
  token:      $token
              (more: $BIN token --config $STATE/node-${NODE_PORTS%% *}.toml --sub bob --tenant demo --rooms lobby)
  publish:    curl --cacert $STATE/tls/fanout.crt https://localhost:$NGINX_PORT/v1/publish \\
                -H "Authorization: Bearer $api_key" -H 'Content-Type: application/json' \\
                -d '{"tenant":"demo","room":"lobby","event":"hello","data":{"text":"hi"}}'
  stats:      curl --cacert $STATE/tls/fanout.crt -H "Authorization: Bearer $api_key" https://localhost:$NGINX_PORT/v1/stats

  logs in $STATE/logs; stop with deploy/cluster.sh down
EOF
}

# Whether a pid is a live process (a zombie nobody reaped yet counts as gone).
running() {
  [ -r "/proc/$1/stat" ] && ! sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | grep -q '^Z'
}

# Stops the "name pid" lines on stdin that this script started: SIGTERM to
# all of them at once, then up to 10 s for each to exit, then SIGKILL.
stop_all() {
  local name pid started=()
  while read -r name pid; do
    # Only a process this script started: after a reboot the pid may be reused.
    if running "$pid" && grep -qa -e fanout -e redis -e nginx "/proc/$pid/cmdline" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      started+=("$name:$pid")
    fi
  done
  local entry
  for entry in ${started[@]+"${started[@]}"}; do
    name=${entry%%:*} pid=${entry##*:}
    for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "stopped $name ($pid)"
  done
}

down() {
  [ -f "$STATE/pids" ] || { echo "not running"; return 0; }
  # nginx first (no new traffic), then every node at once (they drain in
  # parallel, not one after another), Redis last (they deregister through it).
  { grep '^nginx' "$STATE/pids" || true; } | stop_all
  { grep '^node-' "$STATE/pids" || true; } | stop_all
  { grep -v -e '^nginx' -e '^node-' "$STATE/pids" || true; } | stop_all
  rm -f "$STATE/pids" "$STATE"/*.pid
}

status() {
  [ -f "$STATE/pids" ] || { echo "not running"; return 3; }
  local name pid state rc=0
  while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then state=running; else state=stopped; rc=1; fi
    case "$name" in
      node-*)
        if [ "$state" = running ] && curl -fs "http://127.0.0.1:${name#node-}/readyz" >/dev/null; then
          state="running, ready"
        elif [ "$state" = running ]; then
          state="running, not ready"; rc=1
        fi ;;
    esac
    echo "$name ($pid): $state"
  done <"$STATE/pids"
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: deploy/cluster.sh up|down|status" >&2; exit 2 ;;
esac
