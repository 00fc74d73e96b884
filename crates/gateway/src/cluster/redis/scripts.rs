//! The Lua scripts that make registry changes and routing decisions atomic.
//!
//! Each script touches only keys of one hash tag (one room, or one tenant),
//! declared in `KEYS`, so it runs unchanged on a Redis Cluster. Times are
//! the calling node's clock in milliseconds; nodes are expected to be within
//! a small fraction of a heartbeat of each other (NTP).

use std::sync::LazyLock;

use fred::interfaces::ClientLike;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, Value};

/// Queues `EVALSHA script keys args` on a pipeline (fred's pipelines do not
/// expose scripts directly). The command is routed by the slot of the first
/// key, which is where every key of our scripts lives.
pub(crate) async fn queue<C: ClientLike>(
    pipe: &C,
    script: &Script,
    keys: Vec<String>,
    args: Vec<Value>,
) {
    let hash = keys
        .first()
        .map(|k| ClusterHash::Custom(fred::util::redis_keyslot(k.as_bytes())))
        .unwrap_or_default();
    let mut all: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
    all.push(script.sha1().to_string().into());
    all.push((keys.len() as i64).into());
    all.extend(keys.into_iter().map(Value::from));
    all.extend(args);
    let _: Result<(), _> = pipe
        .custom(CustomCommand::new("EVALSHA", hash, false), all)
        .await;
}

/// Admit a connection against cluster-wide user and tenant limits.
///
/// KEYS: user hash, tenant hash (node → connections).
/// ARGV: node, max per user (0 = none), max per tenant (0 = none), dead nodes...
/// Returns 0 admitted, 1 user limit, 2 tenant limit. Atomic, so concurrent
/// admissions on different nodes cannot overshoot.
pub(crate) static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local node = ARGV[1]
local max_user = tonumber(ARGV[2])
local max_tenant = tonumber(ARGV[3])
local dead = {}
for i = 4, #ARGV do dead[ARGV[i]] = true end
local function live_sum(key)
  local sum = 0
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    if not dead[flat[i]] then sum = sum + tonumber(flat[i + 1]) end
  end
  return sum
end
if max_user > 0 and live_sum(KEYS[1]) >= max_user then return 1 end
if max_tenant > 0 and live_sum(KEYS[2]) >= max_tenant then return 2 end
redis.call('HINCRBY', KEYS[1], node, 1)
redis.call('HINCRBY', KEYS[2], node, 1)
return 0
"#,
    )
});

/// Forget a connection. KEYS: user hash, tenant hash. ARGV: node.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
for i = 1, 2 do
  if redis.call('HINCRBY', KEYS[i], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[i], ARGV[1]) end
end
return 0
"#,
    )
});

/// Record a local join.
///
/// KEYS: room hosts zset, room members hash.
/// ARGV: node, user, now, expiry.
/// Registers the node as a host (score = expiry) and counts the user's
/// connection. Returns {user_joined, hosts}: user_joined is 1 when no other
/// live host has a connection of this user in the room (a `join` is due).
pub(crate) static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local node, user, now = ARGV[1], ARGV[2], ARGV[3]
redis.call('ZADD', KEYS[1], ARGV[4], node)
local joined = 0
if redis.call('HINCRBY', KEYS[2], node .. '|' .. user, 1) == 1 then
  joined = 1
  for _, other in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
    if other ~= node and redis.call('HEXISTS', KEYS[2], other .. '|' .. user) == 1 then
      joined = 0
      break
    end
  end
end
return {joined, redis.call('ZCOUNT', KEYS[1], now, '+inf')}
"#,
    )
});

/// Record a local leave.
///
/// KEYS: room hosts zset, room members hash.
/// ARGV: node, user, now, room_empty_here (0/1).
/// Returns {user_left, hosts}: user_left is 1 when the user has no
/// connection left in the room on any live host (a `leave` is due).
pub(crate) static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local node, user, now = ARGV[1], ARGV[2], ARGV[3]
local field = node .. '|' .. user
local left = 0
if redis.call('HINCRBY', KEYS[2], field, -1) <= 0 then
  redis.call('HDEL', KEYS[2], field)
  left = 1
  for _, other in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
    if other ~= node and redis.call('HEXISTS', KEYS[2], other .. '|' .. user) == 1 then
      left = 0
      break
    end
  end
end
if ARGV[4] == '1' then redis.call('ZREM', KEYS[1], node) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
return {left, redis.call('ZCARD', KEYS[1])}
"#,
    )
});

/// Route a room message: the routing rule of the cluster, decided atomically
/// with the registry it reads.
///
/// KEYS: room hosts zset.
/// ARGV: origin node, now, K (direct_max_nodes), room channel, inbox prefix, envelope.
///
/// With at most K live hosts the envelope goes to each host's inbox except
/// the origin's; with more, it is published once on the room channel, to
/// which every host subscribed before it registered. Each host therefore
/// gets exactly one copy whichever way the room is routed, and because both
/// its inbox and the room channel arrive on the same subscriber connection
/// in the order Redis executed the publishes, a publisher's order holds
/// across a switch. Returns {hosts, mode (0 direct, 1 channel), publishes}.
pub(crate) static ROUTE_ROOM: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local origin, now, k = ARGV[1], ARGV[2], tonumber(ARGV[3])
local hosts = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
if #hosts > k then
  redis.call('PUBLISH', ARGV[4], ARGV[6])
  return {#hosts, 1, 1}
end
local sent = 0
for _, node in ipairs(hosts) do
  if node ~= origin then
    redis.call('PUBLISH', ARGV[5] .. node, ARGV[6])
    sent = sent + 1
  end
end
return {#hosts, 0, sent}
"#,
    )
});

/// Route to the nodes holding a user's connections (messages and disconnects).
///
/// KEYS: user hash.
/// ARGV: origin node, inbox prefix, envelope, dead nodes...
/// Returns the number of inbox publishes.
pub(crate) static ROUTE_USER: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local origin = ARGV[1]
local dead = {}
for i = 4, #ARGV do dead[ARGV[i]] = true end
local sent = 0
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local node = flat[i]
  if node ~= origin and not dead[node] and tonumber(flat[i + 1]) > 0 then
    redis.call('PUBLISH', ARGV[2] .. node, ARGV[3])
    sent = sent + 1
  end
end
return sent
"#,
    )
});

/// Remove one node from a room (sweeping a dead node, or purging this
/// node's stale entries before it re-registers).
///
/// KEYS: room hosts zset, room members hash. ARGV: node.
/// Returns the number of hosts left.
pub(crate) static SWEEP_ROOM: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local prefix = ARGV[1] .. '|'
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(field, 1, #prefix) == prefix then redis.call('HDEL', KEYS[2], field) end
end
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('ZCARD', KEYS[1])
"#,
    )
});

/// Remove a swept node from the node index, unless it renewed its heartbeat
/// meanwhile. KEYS: nodes zset. ARGV: node, threshold (ms).
pub(crate) static REMOVE_DEAD_NODE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) < tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"#,
    )
});

/// Every script, for loading after a (re)connect.
pub(crate) fn all() -> [&'static Script; 8] {
    [
        &ADMIT,
        &RELEASE,
        &JOIN,
        &LEAVE,
        &ROUTE_ROOM,
        &ROUTE_USER,
        &SWEEP_ROOM,
        &REMOVE_DEAD_NODE,
    ]
}
