#!/usr/bin/env bash
# The standard benchmark matrix, in one command.
#
#   loadtest/run.sh                 # full matrix, 3 repeats (~30 min on 2 cores)
#   loadtest/run.sh --repeat 1      # one repeat
#   loadtest/run.sh --only idle,fanout --repeat 1
#   loadtest/run.sh --quick         # tiny sizes, checks the script itself (~2 min)
#   loadtest/run.sh --only redis_cluster --repeat 3   # one Redis vs a Redis Cluster
#
# It builds the release binaries, starts every node, floor and Redis it needs
# on loopback (free ports, a temporary directory), runs the scenarios, stops
# exactly the processes it started (by pid, also on Ctrl-C or error), appends
# one JSON line per run to loadtest/results/<date>.jsonl and regenerates the
# results table and plots in docs/ from that file (loadtest/report.py).
# A --quick run writes loadtest/results/<date>-quick.jsonl and leaves docs/
# alone. With --only, lines are appended to the day's file and the report
# takes each label from the newest run that measured it.
#
# Groups (for --only): idle (one node at 2k-18k connections, and the floor
# at 18k), fanout (floor vs fanout, one node), rooms, users,
# churn, cluster (3 nodes + Redis, and the direct_max_nodes comparison),
# knee (3 nodes at 20 publishes/s with fewer subscribers), big (100k
# connections over 6 nodes + Redis), history (rooms, fanout and memory
# without and with a [[history]] rule, and churned clients recovering),
# redis_cluster (the Redis-bound workload, many rooms of 4 over 3 nodes at a
# rising rate, on one Redis and on a 3-primary + 3-replica Redis Cluster).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

REPEAT=3
ONLY=""
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --quick) QUICK=1; REPEAT=1; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

for bin in redis-server redis-cli curl python3 awk; do
  command -v "$bin" >/dev/null || {
    echo "run.sh needs $bin (apt-get install redis-server curl python3)" >&2
    exit 1
  }
done

echo "building release binaries..." >&2
cargo build --release -q -p fanout-gateway -p fanout-loadtest
BIN="$ROOT/target/release"
LOADTEST="$BIN/fanout-loadtest"

DATE="$(date -u +%F)"
RUN_ID="$(date -u +%FT%TZ)"
mkdir -p loadtest/results
if [ "$QUICK" = 1 ]; then
  OUT="loadtest/results/$DATE-quick.jsonl"
else
  OUT="loadtest/results/$DATE.jsonl"
fi
# A full run starts the day's file afresh; an --only run appends, and the
# report takes each label from the newest run that measured it.
[ -z "$ONLY" ] && : >"$OUT"
WORK="$(mktemp -d /tmp/fanout-bench.XXXXXX)"
MACHINE="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# Every process this script starts, by pid; stopped on exit whatever happens.
STARTED=()
stop_pids() {
  local pid
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
}
cleanup() {
  [ ${#STARTED[@]} -gt 0 ] && stop_pids "${STARTED[@]}"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wants() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cpu_ticks() { # utime+stime of the given pids, in clock ticks
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
TICKS="$(getconf CLK_TCK)"

# REDIS_PROCS: "pid:port:role" of every redis-server the current servers
# use (role single, primary or replica), for the per-process figures.
REDIS_PID="" REDIS_URL="" REDIS_PROCS=() REDIS_DETAIL=0
start_redis() {
  local port; port="$(free_port)"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --maxclients 10000 >"$WORK/redis-$port.log" 2>&1 &
  REDIS_PID=$!
  STARTED+=("$REDIS_PID")
  REDIS_PROCS+=("$REDIS_PID:$port:single")
  for _ in $(seq 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -p "$port" ping >/dev/null || { echo "redis did not start" >&2; exit 1; }
  REDIS_URL="redis://127.0.0.1:$port"
}

# free_low_ports N: N distinct loopback ports, free a moment ago, below the
# kernel's ephemeral range (free_port's range, where any outgoing connection
# may take a port before Redis binds it), picked as the Rust test harness
# (crates/gateway/tests/it/redis_cluster_support.rs) picks them.
free_low_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
want = int(sys.argv[1])
with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
    top = int(f.read().split()[0])
bottom = max(1024, top - 16384)
ports = []
for _ in range(10000):
    if len(ports) == want:
        break
    port = random.randrange(bottom, top) if top > bottom + 1024 else 0
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        port = s.getsockname()[1]
    except OSError:
        continue
    finally:
        s.close()
    if port not in ports:
        ports.append(port)
print(" ".join(map(str, ports)))
PY
}

redis_field() { # PORT FIELD ARGS...: FIELD of the `field:value` reply to ARGS
  local port="$1" field="$2"; shift 2
  redis-cli -p "$port" "$@" 2>/dev/null | tr -d '\r' | awk -F: -v f="$field" '$1 == f {print $2}'
}

# rcluster_formed PORT...: succeeds when every node says cluster_state:ok
# with all 16384 slots ok, 3 primaries serving slots and 6 known nodes, and
# every replica's link to its primary is up; otherwise prints why.
rcluster_formed() {
  local port info f want
  for port in "$@"; do
    info="$(redis-cli -p "$port" cluster info 2>/dev/null | tr -d '\r')" || true
    for want in cluster_state=ok cluster_slots_ok=16384 cluster_size=3 cluster_known_nodes=6; do
      f="$(awk -F: -v f="${want%%=*}" '$1 == f {print $2}' <<<"$info")"
      [ "$f" = "${want#*=}" ] || { echo "node $port: ${want%%=*}:$f"; return 1; }
    done
    if [ "$(redis_field "$port" role info replication)" = slave ]; then
      f="$(redis_field "$port" master_link_status info replication)"
      [ "$f" = up ] || { echo "replica $port: master_link_status:$f"; return 1; }
    fi
  done
}

# start_redis_cluster: 3 primaries + 3 replicas, each redis-server in its own
# directory, with the flags of the test harness; waits (bounded) until the
# cluster is whole. Sets RCLUSTER_URL to fred's form naming the primaries:
# redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=127.0.0.1:P3.
RCLUSTER_PIDS=() RCLUSTER_URL=""
start_redis_cluster() {
  local ports=() addrs=() primaries=() i port pid dir why formed=0
  read -r -a ports <<<"$(free_low_ports 12)"
  [ ${#ports[@]} = 12 ] || { echo "no free loopback ports for the Redis Cluster" >&2; exit 1; }
  for i in 0 1 2 3 4 5; do
    port="${ports[$i]}"
    dir="$WORK/rcluster-$port"
    mkdir -p "$dir"
    # --cluster-port: the default (port + 10000) may be taken or past 65535.
    redis-server --port "$port" --bind 127.0.0.1 --protected-mode no \
      --save '' --appendonly no --repl-diskless-sync-delay 0 --maxclients 10000 \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-port "${ports[$((i + 6))]}" \
      --cluster-node-timeout 1000 --cluster-require-full-coverage no \
      --cluster-replica-validity-factor 0 --dir "$dir" >"$dir/redis.log" 2>&1 &
    pid=$!
    STARTED+=("$pid")
    RCLUSTER_PIDS+=("$pid")
  done
  for i in 0 1 2 3 4 5; do
    port="${ports[$i]}" pid="${RCLUSTER_PIDS[$i]}"
    for _ in $(seq 100); do
      redis-cli -p "$port" ping >/dev/null 2>&1 && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    # Whoever answers must be our process, not one that held the port.
    if [ "$(redis_field "$port" process_id info server)" != "$pid" ]; then
      echo "Redis Cluster node on port $port did not start (or the port is another process's):" >&2
      tail -20 "$WORK/rcluster-$port/redis.log" >&2
      exit 1
    fi
    addrs+=("127.0.0.1:$port")
  done
  if ! timeout 60 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
    >"$WORK/rcluster-create.log" 2>&1 </dev/null; then
    echo "redis-cli --cluster create failed:" >&2
    tail -20 "$WORK/rcluster-create.log" >&2
    exit 1
  fi
  for _ in $(seq 150); do
    why="$(rcluster_formed "${ports[@]:0:6}")" && { formed=1; break; }
    sleep 0.2
  done
  [ "$formed" = 1 ] || { echo "the Redis Cluster did not form within 30 s: $why" >&2; exit 1; }
  for i in 0 1 2 3 4 5; do
    port="${ports[$i]}"
    if [ "$(redis_field "$port" role info replication)" = master ]; then
      primaries+=("$port")
      REDIS_PROCS+=("${RCLUSTER_PIDS[$i]}:$port:primary")
    else
      REDIS_PROCS+=("${RCLUSTER_PIDS[$i]}:$port:replica")
    fi
  done
  RCLUSTER_URL="redis-cluster://127.0.0.1:${primaries[0]}?node=127.0.0.1:${primaries[1]}&node=127.0.0.1:${primaries[2]}"
}

NODE_PIDS=() NODE_URLS=()
# start_node [redis_url] [extra toml]: a release node with the development
# secret and API key (what the generator uses by default).
start_node() {
  local redis="${1:-}" extra="${2:-}" port dir
  port="$(free_port)"
  dir="$WORK/node-$port"
  mkdir -p "$dir"
  {
    echo "node_id = \"bench-$port\""
    echo "listen = \"127.0.0.1:$port\""
    echo "[auth]"
    echo "secret = \"fanout-dev-secret-DO-NOT-USE-IN-PRODUCTION\""
    echo "[[api_keys]]"
    echo "key = \"fanout-dev-api-key\""
    echo "[shutdown]"
    echo "grace = \"5s\""
    echo "readiness_delay = \"0s\""
    echo "drain_window = \"1s\""
    echo "[limits]"
    echo "max_connections_per_user = 0"
    if [ -n "$redis" ]; then
      echo "[redis]"
      echo "url = \"$redis\""
    fi
    printf '%b\n' "$extra"
  } >"$dir/fanout.toml"
  "$BIN/fanout" --config "$dir/fanout.toml" >"$dir/node.log" 2>&1 &
  local pid=$!
  STARTED+=("$pid")
  NODE_PIDS+=("$pid")
  NODE_URLS+=("ws://127.0.0.1:$port")
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "node on port $port did not become ready:" >&2
  # Without the backtrace's indented lines, so that the error itself shows.
  grep -v '^[[:space:]]' "$dir/node.log" | tail -20 >&2
  exit 1
}

FLOOR_PID="" FLOOR_URL=""
start_floor() {
  local port; port="$(free_port)"
  "$BIN/fanout-floor" --listen "127.0.0.1:$port" >"$WORK/floor.log" 2>&1 &
  FLOOR_PID=$!
  STARTED+=("$FLOOR_PID")
  FLOOR_URL="ws://127.0.0.1:$port"
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "floor did not start" >&2
  exit 1
}

stop_servers() {
  local pids=("${NODE_PIDS[@]}" "${RCLUSTER_PIDS[@]}")
  [ -n "$FLOOR_PID" ] && pids+=("$FLOOR_PID")
  [ -n "$REDIS_PID" ] && pids+=("$REDIS_PID")
  [ ${#pids[@]} -gt 0 ] && stop_pids "${pids[@]}"
  local keep=() pid p gone
  for pid in "${STARTED[@]}"; do
    gone=0
    for p in "${pids[@]}"; do [ "$p" = "$pid" ] && gone=1; done
    [ "$gone" = 0 ] && keep+=("$pid")
  done
  STARTED=("${keep[@]}")
  NODE_PIDS=() NODE_URLS=() FLOOR_PID="" REDIS_PID="" REDIS_URL=""
  RCLUSTER_PIDS=() RCLUSTER_URL="" REDIS_PROCS=()
}

# history_rule on|off: the node config lines of the "with history" runs —
# every room the scenarios name (lt-<run id>-room<i>) keeps its last
# $HIST_SIZE messages — or nothing.
history_rule() {
  if [ "$1" = on ]; then
    printf '[[history]]\ntenant = "*"\nrooms = "lt-*-room*"\nsize = %s\nttl = "5m"' "$HIST_SIZE"
  fi
}

node_args() { local u; for u in "${NODE_URLS[@]}"; do printf -- '--node %s ' "$u"; done; }
pid_args() { local p; for p in "${NODE_PIDS[@]}"; do printf -- '--node-pid %s ' "$p"; done; }
redis_pids() { [ -z "$REDIS_PID" ] || echo "$REDIS_PID"; [ ${#RCLUSTER_PIDS[@]} = 0 ] || echo "${RCLUSTER_PIDS[@]}"; }
redis_pid_args() { local p; for p in $(redis_pids); do printf -- '--redis-pid %s ' "$p"; done; }

# redis_snapshot: per Redis process of the current servers (REDIS_PROCS)
# one line "pid port role cpu_ticks command=calls ..." (INFO commandstats).
redis_snapshot() {
  local entry pid port role
  for entry in "${REDIS_PROCS[@]}"; do
    IFS=: read -r pid port role <<<"$entry"
    echo "$pid $port $role $(cpu_ticks "$pid")" \
      "$(redis-cli -p "$port" info commandstats 2>/dev/null | tr -d '\r' |
        sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),.*/\1=\2/p' | tr '\n' ' ')"
  done
}

# run LABEL REPEAT SERVER_DESC -- loadtest args...: runs one scenario and
# appends {label, repeat, ..., cpu, result} to $OUT. The Redis CPU is every
# redis-server's of the current servers (a cluster's primaries and replicas
# too); with REDIS_DETAIL=1 the line also has redis_procs: per process its
# role, CPU seconds and commands (INFO commandstats) over the run.
run() {
  local label="$1" rep="$2" servers="$3"; shift 4
  local server_pids=("${NODE_PIDS[@]}")
  [ -n "$FLOOR_PID" ] && server_pids+=("$FLOOR_PID")
  local before redis_before after redis_after start end snap_before="" snap_after=""
  before="$(cpu_ticks "${server_pids[@]}")"
  redis_before="$(cpu_ticks $(redis_pids))"
  [ "$REDIS_DETAIL" = 1 ] && snap_before="$(redis_snapshot)"
  start="$(date +%s.%N)"
  echo "== $label (repeat $rep): fanout-loadtest $*" >&2
  local result
  result="$("$LOADTEST" "$@" 2>"$WORK/last.err")" || true
  tail -6 "$WORK/last.err" | sed 's/^/   /' >&2
  end="$(date +%s.%N)"
  after="$(cpu_ticks "${server_pids[@]}")"
  redis_after="$(cpu_ticks $(redis_pids))"
  [ "$REDIS_DETAIL" = 1 ] && snap_after="$(redis_snapshot)"
  [ -n "$result" ] || result='{"complete":false,"errors":["no result line"]}'
  LABEL="$label" REP="$rep" SERVERS="$servers" CMD="fanout-loadtest $*" \
    WALL="$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.2f", b - a}')" \
    SERVER_CPU="$(awk -v a="$before" -v b="$after" -v t="$TICKS" 'BEGIN {printf "%.2f", (b - a) / t}')" \
    REDIS_CPU="$(awk -v a="$redis_before" -v b="$redis_after" -v t="$TICKS" 'BEGIN {printf "%.2f", (b - a) / t}')" \
    RESULT="$result" DATE="$DATE" RUN_ID="$RUN_ID" MACHINE="$MACHINE" COMMIT="$COMMIT" \
    SNAP_BEFORE="$snap_before" SNAP_AFTER="$snap_after" TICKS="$TICKS" \
    python3 -c '
import json, os
e = os.environ
rec = {
    "label": e["LABEL"], "repeat": int(e["REP"]), "date": e["DATE"], "run_id": e["RUN_ID"],
    "machine": e["MACHINE"], "commit": e["COMMIT"], "servers": e["SERVERS"],
    "command": e["CMD"], "wall_secs": float(e["WALL"]),
    "server_cpu_secs": float(e["SERVER_CPU"]), "redis_cpu_secs": float(e["REDIS_CPU"]),
}
def snap(text):
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 4:
            calls = dict(kv.rsplit("=", 1) for kv in f[4:])
            out[f[1]] = (int(f[0]), f[2], int(f[3]), {k: int(v) for k, v in calls.items()})
    return out
before, after = snap(e["SNAP_BEFORE"]), snap(e["SNAP_AFTER"])
if after:
    rec["redis_procs"] = [{
        "port": int(port), "pid": pid, "role": role,
        "cpu_secs": round(max(0, ticks - before[port][2]) / float(e["TICKS"]), 2),
        "calls": {k: v - before[port][3].get(k, 0) for k, v in sorted(calls.items())
                  if v > before[port][3].get(k, 0)},
    } for port, (pid, role, ticks, calls) in after.items() if port in before]
rec["result"] = json.loads(e["RESULT"])
print(json.dumps(rec))' >>"$OUT"
}

# Sizes: the real matrix, or tiny ones that only check the script works.
if [ "$QUICK" = 1 ]; then
  IDLE_SIZES="200 400"; IDLE_HOLD=2s; FAN_SUBS=300; FAN_SAT_RATE=20; ROOMS_CONNS=400
  CLUSTER_SUBS=300; USERS=100; CHURN_SUBS=100; BIG_CONNS=1200; BIG_PUBLISHES=3
  KNEE_SIZES="100 200"; HIST_ROOMS=200
  RC_CONNS=400; RC_RATE=50; RC_FACTOR=2; RC_STEP=1s; RC_MAX_RATE=400; RC_PUBLISHERS=8
  RC_DURATION=60s
else
  IDLE_SIZES="2000 6000 12000 18000"; IDLE_HOLD=30s; FAN_SUBS=10000; FAN_SAT_RATE=50
  ROOMS_CONNS=10000; CLUSTER_SUBS=10000; USERS=2000; CHURN_SUBS=2000
  BIG_CONNS=100000; BIG_PUBLISHES=20; KNEE_SIZES="1000 2500 5000"; HIST_ROOMS=2000
  RC_CONNS=4000; RC_RATE=250; RC_FACTOR=1.25; RC_STEP=5s; RC_MAX_RATE=100000; RC_PUBLISHERS=32
  RC_DURATION=300s
fi
# History: messages kept per room (the rule's size, also what `history`
# fills each room with) and the padding of the memory run's payloads.
HIST_SIZE=100; HIST_PAYLOAD=200

for rep in $(seq "$REPEAT"); do
  if wants idle; then
    for c in $IDLE_SIZES; do
      start_node
      hold=5s
      [ "$c" = "${IDLE_SIZES##* }" ] && hold="$IDLE_HOLD"
      run "idle-$c" "$rep" "1 node" -- idle --connections "$c" --rooms 100 \
        --bind 127.0.0.1-2 --connect-rate 4000 --hold "$hold" --duration 120s \
        $(node_args) $(pid_args)
      stop_servers
    done
    # The floor (the plain library) at the largest size, same scenario, same
    # run: what an idle socket costs before anything fanout adds or removes.
    c="${IDLE_SIZES##* }"
    start_floor
    run "floor-idle-$c" "$rep" "floor" -- idle --connections "$c" --rooms 100 \
      --bind 127.0.0.1-2 --connect-rate 4000 --hold 5s --duration 120s \
      --node "$FLOOR_URL" --node-pid "$FLOOR_PID"
    stop_servers
  fi

  if wants fanout; then
    # The floor and fanout, same scenario, same run: their ratio is the figure.
    start_floor
    run "floor-ramp" "$rep" "floor" -- fanout --node "$FLOOR_URL" --subscribers "$FAN_SUBS" \
      --ramp --rate 10 --ramp-factor 1.25 --p99-bound-ms 250 --step 5s --duration 150s
    run "floor-saturate" "$rep" "floor" -- fanout --node "$FLOOR_URL" --subscribers "$FAN_SUBS" \
      --rate "$FAN_SAT_RATE" --publishes $((FAN_SAT_RATE * 10)) --duration 90s --drain 10s
    stop_servers
    start_node
    run "fanout-ramp" "$rep" "1 node" -- fanout $(node_args) --subscribers "$FAN_SUBS" \
      --ramp --rate 10 --ramp-factor 1.25 --p99-bound-ms 250 --step 5s --duration 150s
    run "fanout-saturate" "$rep" "1 node" -- fanout $(node_args) --subscribers "$FAN_SUBS" \
      --rate "$FAN_SAT_RATE" --publishes $((FAN_SAT_RATE * 10)) --duration 90s --drain 10s
    run "fanout-msgpack-saturate" "$rep" "1 node" -- fanout $(node_args) --codec msgpack \
      --subscribers "$FAN_SUBS" --rate "$FAN_SAT_RATE" --publishes $((FAN_SAT_RATE * 10)) \
      --duration 90s --drain 10s
    stop_servers
  fi

  if wants rooms; then
    start_node
    run "rooms-1node" "$rep" "1 node" -- rooms $(node_args) --connections "$ROOMS_CONNS" \
      --room-size 4 --rate 1000 --publishes 10000 --publishers 8 --duration 90s
    stop_servers
  fi

  if wants churn; then
    start_node
    run "churn-1node" "$rep" "1 node" -- churn $(node_args) --subscribers "$CHURN_SUBS" \
      --churn-rate 200 --churn-hold 1s --rate 50 --publishes 1000 --duration 90s
    stop_servers
  fi

  if wants history; then
    # What history costs: each run twice, on a fresh node without and with
    # the [[history]] rule (same binary; the rule is the only difference),
    # the pair back to back and its order flipped every repeat. The node
    # CPU while publishing comes from --node-pid (node_cpu in the result).
    if [ $((rep % 2)) = 1 ]; then variants="off on"; else variants="on off"; fi
    for v in $variants; do
      start_node "" "$(history_rule "$v")"
      run "history-rooms-$v" "$rep" "1 node, history $v" -- rooms $(node_args) $(pid_args) \
        --connections "$ROOMS_CONNS" --room-size 4 --rate 1000 --publishes 10000 --publishers 8 \
        --duration 90s
      stop_servers
    done
    for v in $variants; do
      start_node "" "$(history_rule "$v")"
      run "history-fanout-$v" "$rep" "1 node, history $v" -- fanout $(node_args) $(pid_args) \
        --subscribers "$FAN_SUBS" --rate "$FAN_SAT_RATE" --publishes $((FAN_SAT_RATE * 10)) \
        --duration 90s --drain 10s
      stop_servers
    done
    # Memory: HIST_ROOMS rooms filled with HIST_SIZE messages each, no
    # subscribers; RSS before/after and fanout_history_bytes.
    for v in $variants; do
      start_node "" "$(history_rule "$v")"
      run "history-memory-$v" "$rep" "1 node, history $v" -- history $(node_args) $(pid_args) \
        --rooms "$HIST_ROOMS" --messages "$HIST_SIZE" --payload-bytes "$HIST_PAYLOAD" \
        --settle 2s --duration 120s
      stop_servers
    done
    # Recovery under churn: the churn run's load, its churn connections
    # being clients that leave and come back with `since`.
    start_node "" "$(history_rule on)"
    run "history-churn-recover" "$rep" "1 node, history on" -- churn $(node_args) $(pid_args) \
      --subscribers "$CHURN_SUBS" --churn-rate 200 --churn-hold 1s --churn-away 500ms --recover \
      --rate 50 --publishes 1000 --duration 90s
    stop_servers
  fi

  if wants users; then
    start_redis
    for _ in 1 2 3; do start_node "$REDIS_URL"; done
    run "users-3nodes" "$rep" "3 nodes + Redis" -- users $(node_args) --users "$USERS" \
      --conns-per-user 3 --rate 500 --publishes 5000 --publishers 8 --duration 90s
    stop_servers
  fi

  if wants cluster; then
    # The target run: 10k subscribers over 3 nodes, 20 publishes/s.
    start_redis
    for _ in 1 2 3; do start_node "$REDIS_URL"; done
    run "cluster-fanout" "$rep" "3 nodes + Redis" -- fanout $(node_args) \
      --subscribers "$CLUSTER_SUBS" --rate 20 --publishes 400 --duration 90s
    stop_servers
    # The hybrid-routing threshold K (redis.direct_max_nodes): 1 sends every
    # room held by more than one node through its room channel; 4 (the
    # default) sends rooms on up to 4 nodes straight to those nodes' inboxes,
    # which with 3 nodes is every room.
    for k in 1 4; do
      start_redis
      for _ in 1 2 3; do start_node "$REDIS_URL" "direct_max_nodes = $k"; done
      run "cluster-rooms-k$k" "$rep" "3 nodes + Redis, direct_max_nodes=$k" -- rooms $(node_args) \
        --connections "$ROOMS_CONNS" --room-size 4 --rate 1000 --publishes 10000 --publishers 8 \
        --duration 90s
      run "cluster-fanout-k$k" "$rep" "3 nodes + Redis, direct_max_nodes=$k" -- fanout $(node_args) \
        --subscribers "$CLUSTER_SUBS" --rate 20 --publishes 200 --duration 90s
      stop_servers
    done
  fi

  if wants knee; then
    # Where the cluster target's latency holds on this machine: the same
    # 3 nodes and 20 publishes/s with fewer subscribers.
    for subs in $KNEE_SIZES; do
      start_redis
      for _ in 1 2 3; do start_node "$REDIS_URL"; done
      run "cluster-fanout-$subs" "$rep" "3 nodes + Redis" -- fanout $(node_args) \
        --subscribers "$subs" --rate 20 --publishes 400 --duration 90s
      stop_servers
    done
  fi

  if wants redis_cluster; then
    # Issue 12 item 6: the Redis-bound workload on one Redis and on a Redis
    # Cluster (3 primaries + 3 replicas), same run, the order flipped every
    # repeat. RC_CONNS connections in rooms of 4 over 3 nodes (a room's
    # members sit on three nodes, so every publish is routed through Redis),
    # each publish to a random room, the rate rising by RC_FACTOR every
    # RC_STEP until a step has p99 > 50 ms, any loss, duplicate or reorder,
    # or under 90 % of its rate accepted. The knee is the last passing
    # step's achieved rate. Redis CPU (every redis-server, replicas
    # included) per step from --redis-pid, and per process over the run
    # (redis_procs); node CPU per step from --node-pid.
    if [ $((rep % 2)) = 1 ]; then variants="single cluster"; else variants="cluster single"; fi
    REDIS_DETAIL=1
    for v in $variants; do
      if [ "$v" = single ]; then
        start_redis
        url="$REDIS_URL" servers="3 nodes + Redis"
      else
        start_redis_cluster
        url="$RCLUSTER_URL" servers="3 nodes + Redis Cluster (3 primaries + 3 replicas)"
      fi
      for _ in 1 2 3; do start_node "$url"; done
      run "rooms-ramp-redis-$v" "$rep" "$servers" -- rooms $(node_args) $(pid_args) $(redis_pid_args) \
        --connections "$RC_CONNS" --room-size 4 --ramp --rate "$RC_RATE" --ramp-factor "$RC_FACTOR" \
        --step "$RC_STEP" --p99-bound-ms 50 --max-rate "$RC_MAX_RATE" --publishers "$RC_PUBLISHERS" \
        --duration "$RC_DURATION"
      stop_servers
    done
    REDIS_DETAIL=0
  fi

  if wants big; then
    # 100k connections: 6 nodes (a node holds at most ~19,900 sockets under
    # the 20,000 open-file limit) and 6 generator processes, 12 source addresses.
    start_redis
    for _ in 1 2 3 4 5 6; do start_node "$REDIS_URL"; done
    run "big-100k" "$rep" "6 nodes + Redis" -- fanout $(node_args) --subscribers "$BIG_CONNS" \
      --procs 6 --bind 127.0.0.1-12 --connect-rate 1500 --connect-timeout 30s \
      --rate 0.5 --publishes "$BIG_PUBLISHES" --publishers 1 --duration 240s --drain 15s
    # Fresh nodes for the memory figure: a node that served a run keeps
    # memory its allocator will reuse, so its "before" is no baseline.
    stop_servers
    start_redis
    for _ in 1 2 3 4 5 6; do start_node "$REDIS_URL"; done
    run "big-100k-idle" "$rep" "6 nodes + Redis" -- idle $(node_args) $(pid_args) \
      --connections "$BIG_CONNS" --procs 6 --bind 127.0.0.1-12 --connect-rate 1500 \
      --connect-timeout 30s --hold 30s --duration 240s
    stop_servers
  fi
done

echo "results: $OUT" >&2
if [ "$QUICK" = 0 ]; then
  python3 loadtest/report.py "$OUT"
fi
