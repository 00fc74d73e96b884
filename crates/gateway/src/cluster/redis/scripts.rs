//! The Lua scripts that make registry changes and routing decisions atomic.
//!
//! Each script touches only keys of one hash tag (one room, or one tenant),
//! declared in `KEYS`, and publishes only to channels under the same tag
//! (on a Redis Cluster; on one Redis the node inbox has no tag), so it runs
//! unchanged on a Redis Cluster with the publish verb as an argument. Times are
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
/// ARGV: node, max per user (0 = none), max per tenant (0 = none), strict
///       (0/1), live nodes...
/// Counts the fields of live nodes (the caller's last heartbeat, and
/// itself): a field a dead or swept node left behind never counts. A node
/// the caller does not know yet may be one that started since its last
/// heartbeat: when `strict` and its fields would decide a refusal, the
/// script returns 3 and the caller asks again with a fresh list of live
/// nodes (then, a node still unknown is gone, and ignored).
/// Returns 0 admitted, 1 user limit, 2 tenant limit, 3 ask again. Atomic,
/// so concurrent admissions on different nodes cannot overshoot.
pub(crate) static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local node = ARGV[1]
local max_user = tonumber(ARGV[2])
local max_tenant = tonumber(ARGV[3])
local strict = ARGV[4] == '1'
local live = {[node] = true}
for i = 5, #ARGV do live[ARGV[i]] = true end
local function sums(key)
  local known, unknown = 0, 0
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    if live[flat[i]] then
      known = known + tonumber(flat[i + 1])
    else
      unknown = unknown + tonumber(flat[i + 1])
    end
  end
  return known, unknown
end
local function over(key, max, refused)
  if max <= 0 then return nil end
  local known, unknown = sums(key)
  if known >= max then return refused end
  if strict and known + unknown >= max then return 3 end
  return nil
end
local verdict = over(KEYS[1], max_user, 1) or over(KEYS[2], max_tenant, 2)
if verdict then return verdict end
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

/// The presence rule every room script shares, in Lua: whether `user` has a
/// field in the members hash (`KEYS[2]`) of any host in the hosts zset
/// (`KEYS[1]`) other than `node` — live or dead but not swept yet. A user is
/// present in a room while any host holds a field for it; the `join` event
/// is due when the first such field appears, the `leave` when the last one
/// goes, whoever removes it (a leave, the sweep of a dead node, a repair, the
/// audit). A dead node's fields count until its sweep, so a user whose node
/// died and who reconnects elsewhere before the sweep gets no second `join`,
/// and one who does not gets its `leave` from the sweep, once.
const HELD_ELSEWHERE: &str = r#"
local function held_elsewhere(node, user)
  for _, other in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if other ~= node and redis.call('HEXISTS', KEYS[2], other .. '|' .. user) == 1 then
      return true
    end
  end
  return false
end
"#;

/// A room script: [`HELD_ELSEWHERE`] followed by `body`.
fn room_script(body: &str) -> Script {
    Script::from_lua(format!("{HELD_ELSEWHERE}{body}"))
}

/// Record a local join.
///
/// KEYS: room hosts zset, room members hash.
/// ARGV: node, user, now, expiry.
/// Registers the node as a host (score = expiry) and counts the user's
/// connection. Returns {user_joined, live hosts}: user_joined is 1 when this
/// field is the user's first in the room (a `join` is due).
pub(crate) static JOIN: LazyLock<Script> = LazyLock::new(|| {
    room_script(
        r#"
local node, user, now = ARGV[1], ARGV[2], ARGV[3]
redis.call('ZADD', KEYS[1], ARGV[4], node)
local joined = 0
if redis.call('HINCRBY', KEYS[2], node .. '|' .. user, 1) == 1 and not held_elsewhere(node, user) then
  joined = 1
end
return {joined, redis.call('ZCOUNT', KEYS[1], now, '+inf')}
"#,
    )
});

/// Record a local leave.
///
/// KEYS: room hosts zset, room members hash.
/// ARGV: node, user, now, room_empty_here (0/1).
/// Returns {user_left, live hosts}: user_left is 1 when the user's last
/// field in the room went (a `leave` is due). Hosts whose heartbeat lapsed
/// stay in the zset until their sweep (which emits their users' leaves).
pub(crate) static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    room_script(
        r#"
local node, user, now = ARGV[1], ARGV[2], ARGV[3]
local field = node .. '|' .. user
local left = 0
if redis.call('HINCRBY', KEYS[2], field, -1) <= 0 then
  redis.call('HDEL', KEYS[2], field)
  if not held_elsewhere(node, user) then left = 1 end
end
if ARGV[4] == '1' then redis.call('ZREM', KEYS[1], node) end
return {left, redis.call('ZCOUNT', KEYS[1], now, '+inf')}
"#,
    )
});

/// Route a room message: the routing rule of the cluster, decided atomically
/// with the registry it reads, and — in a room with history — the
/// message's position, assigned in the same step.
///
/// KEYS: room hosts zset; then, only when the room keeps history
///       (ARGV[7] > 0), room stream and room meta hash; then, only with an
///       idempotency key (ARGV[12] > 0), that key (always last). All of the
///       room's slot. Only the keys used are declared: during a slot
///       migration Redis refuses (`TRYAGAIN`) a multi-key script any of
///       whose keys is missing, and a room without history has no stream.
/// ARGV: 1 origin node, 2 now, 3 K (direct_max_nodes), 4 room channel,
///       5 inbox prefix, 6 envelope, 7 history size (0: no history),
///       8 stream TTL (ms), 9 meta TTL (ms), 10 epoch to use if the room has
///       none, 11 the frame as JSON (stored), 12 idempotency window (ms, 0:
///       no key), 13 message id, 14 publish verb (`PUBLISH` on one Redis,
///       `SPUBLISH` on a Redis Cluster), 15 `1` to check the replication id.
///
/// Idempotency first: a key accepted before answers what it answered then,
/// and nothing is published. History next: the meta hash's counter gives
/// the offset (a room without meta — new, long quiet, or a Redis restarted
/// empty — gets the proposed epoch and starts at 1), the JSON is appended
/// to the stream as entry `<offset>-0` (trimmed to the size), both expire,
/// and `offset`/`epoch` are appended to the envelope's map (a fixmap, so
/// the first byte counts its fields). Then routing: with at most K live
/// hosts the envelope goes to each host's inbox except the origin's; with
/// more, it is published once on the room channel, to which every host
/// subscribed before it registered. Each host therefore gets exactly one
/// copy whichever way the room is routed, and because both its inbox and
/// the room channel arrive on the same subscriber connection in the order
/// Redis executed the publishes, offsets arrive in order too (a node's own
/// publishes are delivered by itself; its hub puts them in order).
///
/// Failover (ARGV[15] = 1, Redis Cluster): replication is asynchronous, so a
/// promoted replica may lack the last offsets its primary handed out and
/// would hand them out again. The meta keeps `rid`, the replication id of
/// the primary that last wrote it; when that equals this primary's
/// `master_replid2`, a failover happened since the room's last write and
/// the room starts a new epoch (clients recover with `recovered: false`,
/// as after a Redis restarted empty). A slot migration copies the meta with
/// its foreign `rid`, which is adopted silently.
///
/// Returns {hosts, mode (0 direct, 1 channel, -1 duplicate), publishes,
/// offset (0: no history), epoch, first answer `id|offset|epoch` (duplicate),
/// unheard}: `unheard` counts live hosts the publish reached no subscriber
/// of (a publish returns its receivers): a host resubscribing after a
/// failover or a migration, or whose subscriber connection is down. On the
/// channel path it is a lower bound (a lingering non-host subscriber
/// counts as heard).
pub(crate) static ROUTE_ROOM: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local origin, now, k = ARGV[1], ARGV[2], tonumber(ARGV[3])
local size, idem_ttl = tonumber(ARGV[7]), tonumber(ARGV[12])
local env = ARGV[6]
local head = string.byte(env, 1)
if size > 0 and (head == nil or head < 128 or head > 141) then
  return redis.error_reply('envelope is not a map of at most 13 fields')
end
if idem_ttl > 0 then
  local first = redis.call('GET', KEYS[#KEYS])
  if first then return {0, -1, 0, 0, '', first} end
end
local offset, epoch = 0, ''
if size > 0 then
  local rid
  if ARGV[15] == '1' then
    local info = redis.call('INFO', 'replication')
    rid = string.match(info, 'master_replid:(%w+)')
    local rid2 = string.match(info, 'master_replid2:(%w+)')
    local stamp = redis.call('HGET', KEYS[3], 'rid')
    if stamp and stamp ~= rid and stamp == rid2 then
      redis.call('DEL', KEYS[3])
    end
  end
  epoch = redis.call('HGET', KEYS[3], 'epoch')
  if not epoch then
    epoch = ARGV[10]
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[3], 'epoch', epoch, 'top', 0)
  end
  offset = redis.call('HINCRBY', KEYS[3], 'top', 1)
  if rid then redis.call('HSET', KEYS[3], 'rid', rid) end
  redis.call('PEXPIRE', KEYS[3], ARGV[9])
  redis.call('XADD', KEYS[2], 'MAXLEN', size, offset .. '-0', 'j', ARGV[11])
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
  env = string.char(head + 2) .. string.sub(env, 2) .. cmsgpack.pack('offset')
    .. cmsgpack.pack(offset) .. cmsgpack.pack('epoch') .. cmsgpack.pack(epoch)
end
if idem_ttl > 0 then
  redis.call('SET', KEYS[#KEYS], ARGV[13] .. '|' .. offset .. '|' .. epoch, 'PX', idem_ttl)
end
local hosts = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
if #hosts > k then
  local heard = redis.call(ARGV[14], ARGV[4], env)
  return {#hosts, 1, 1, offset, epoch, '', math.max(0, #hosts - heard)}
end
local sent, unheard = 0, 0
for _, node in ipairs(hosts) do
  if node ~= origin then
    if redis.call(ARGV[14], ARGV[5] .. node, env) == 0 then unheard = unheard + 1 end
    sent = sent + 1
  end
end
return {#hosts, 0, sent, offset, epoch, '', unheard}
"#,
    )
});

/// Route to the nodes holding a user's connections (messages and disconnects).
///
/// KEYS: user hash, idempotency key (the tenant's slot; read only when
///       ARGV[4] > 0).
/// ARGV: 1 origin node, 2 inbox prefix, 3 envelope, 4 idempotency window
///       (ms, 0: no key), 5 message id, 6 publish verb, 7… dead nodes.
/// Returns {inbox publishes, first answer `id|0|` of a duplicate or '',
/// inboxes that had no subscriber (see ROUTE_ROOM's `unheard`)}.
pub(crate) static ROUTE_USER: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local origin = ARGV[1]
local idem_ttl = tonumber(ARGV[4])
if idem_ttl > 0 then
  local first = redis.call('GET', KEYS[2])
  if first then return {-1, first} end
  redis.call('SET', KEYS[2], ARGV[5] .. '|0|', 'PX', idem_ttl)
end
local dead = {}
for i = 7, #ARGV do dead[ARGV[i]] = true end
local sent, unheard = 0, 0
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local node = flat[i]
  if node ~= origin and not dead[node] and tonumber(flat[i + 1]) > 0 then
    if redis.call(ARGV[6], ARGV[2] .. node, ARGV[3]) == 0 then unheard = unheard + 1 end
    sent = sent + 1
  end
end
return {sent, '', unheard}
"#,
    )
});

/// Publish a tenant-wide message once per idempotency key.
///
/// KEYS: idempotency key (the tenant's slot).
/// ARGV: 1 tenant channel, 2 envelope, 3 idempotency window (ms), 4 message
///       id, 5 publish verb.
/// Returns '' when published, else the first answer `id|0|`.
pub(crate) static ROUTE_TENANT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local first = redis.call('GET', KEYS[1])
if first then return first end
redis.call('SET', KEYS[1], ARGV[4] .. '|0|', 'PX', ARGV[3])
redis.call(ARGV[5], ARGV[1], ARGV[2])
return ''
"#,
    )
});

/// Read a room's stream.
///
/// KEYS: room stream, room meta hash.
/// ARGV: 1 epoch to use if the room has none, 2 meta TTL (ms), 3 only
///       entries after this offset (-1: the latest), 4 at most this many.
/// A room without meta gets the proposed epoch at offset 0, as a publish
/// would give it (so the epoch a subscriber is told is the one the next
/// publish uses), and any stale stream is dropped.
/// Returns {epoch, top, oldest kept (top + 1 if none), offset, json, offset, json, …};
/// the latest entries come newest first.
pub(crate) static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'top', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
local top = tonumber(redis.call('HGET', KEYS[2], 'top'))
local oldest = top + 1
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first > 0 then oldest = tonumber(string.match(first[1][1], '^(%d+)')) end
local after, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local entries = {}
if limit > 0 then
  if after > 0 then
    -- ARGV[3] as sent, not `after`: Lua prints a number from 1e14 up in
    -- exponent form, which is no stream id. Nothing follows the top.
    if after < top then
      entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[3] .. '-0', '+', 'COUNT', limit)
    end
  elseif after == 0 then
    entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', limit)
  else
    entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', limit)
  end
end
local out = {epoch, top, oldest}
for _, e in ipairs(entries) do
  table.insert(out, string.match(e[1], '^(%d+)'))
  table.insert(out, e[2][2])
end
return out
"#,
    )
});

/// Remove one node from a room: sweeping a dead node, this node's entry of
/// a room it no longer hosts, or a drained node's rooms.
///
/// KEYS: room hosts zset, room members hash. ARGV: node.
/// Returns {hosts left, departed users...}: the users whose last field in
/// the room this removed (their `leave` is due).
pub(crate) static SWEEP_ROOM: LazyLock<Script> = LazyLock::new(|| {
    room_script(
        r#"
local node = ARGV[1]
local prefix = node .. '|'
redis.call('ZREM', KEYS[1], node)
local out = {0}
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(field, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[2], field)
    local user = string.sub(field, #prefix + 1)
    if not held_elsewhere(node, user) then table.insert(out, user) end
  end
end
out[1] = redis.call('ZCARD', KEYS[1])
return out
"#,
    )
});

/// Write this node's view of one room over whatever Redis holds for it
/// (a repair or a resync): the host entry, exactly these member counts, and
/// none of this node's other fields in the room. Nothing is removed first,
/// so the node never looks absent while it repairs. With no members the
/// node's host entry goes too (it no longer hosts the room).
///
/// KEYS: room hosts zset, room members hash.
/// ARGV: node, expiry, n, then n pairs user, connections, then users to
///       check.
/// Returns {departed, arrived, absent, hosts left}: the users whose last
/// field in the room this removed (their `leave` is due), those whose first
/// field it created, and those of the users to check who have no field in
/// the room at all (a leave whose outcome was unknown). The caller announces
/// arrivals only when this node knows its users were announced as gone (it
/// was swept while alive); otherwise a rewrite restores what the room's
/// watchers were told already (Redis lost it: a restart, a failover).
pub(crate) static REWRITE_ROOM: LazyLock<Script> = LazyLock::new(|| {
    room_script(
        r#"
local node = ARGV[1]
local prefix = node .. '|'
local n = tonumber(ARGV[3])
local want = {}
for i = 4, 3 + 2 * n, 2 do want[ARGV[i]] = true end
if n > 0 then
  redis.call('ZADD', KEYS[1], ARGV[2], node)
else
  redis.call('ZREM', KEYS[1], node)
end
local departed = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(field, 1, #prefix) == prefix then
    local user = string.sub(field, #prefix + 1)
    if not want[user] then
      redis.call('HDEL', KEYS[2], field)
      if not held_elsewhere(node, user) then table.insert(departed, user) end
    end
  end
end
local arrived = {}
for i = 4, 3 + 2 * n, 2 do
  if redis.call('HSET', KEYS[2], prefix .. ARGV[i], ARGV[i + 1]) == 1
    and not held_elsewhere(node, ARGV[i]) then
    table.insert(arrived, ARGV[i])
  end
end
local absent = {}
for i = 4 + 2 * n, #ARGV do
  if not want[ARGV[i]] and not held_elsewhere(node, ARGV[i]) then
    table.insert(absent, ARGV[i])
  end
end
return {departed, arrived, absent, redis.call('ZCARD', KEYS[1])}
"#,
    )
});

/// The audit of a user or tenant hash: removes the fields of nodes that are
/// not in the node index at all (swept, or never swept because their own
/// index was lost), which nothing else would ever remove.
///
/// KEYS: the hash. ARGV: every node in the node index (live or dead).
/// Returns the number of fields removed.
pub(crate) static AUDIT_COUNTS: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local known = {}
for i = 1, #ARGV do known[ARGV[i]] = true end
local removed = 0
for _, node in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not known[node] then
    redis.call('HDEL', KEYS[1], node)
    removed = removed + 1
  end
end
return removed
"#,
    )
});

/// The audit of a room: removes hosts and member fields of nodes that are
/// not in the node index at all.
///
/// KEYS: room hosts zset, room members hash. ARGV: every node in the node index.
/// Returns {fields and hosts removed, departed users...}.
pub(crate) static AUDIT_ROOM: LazyLock<Script> = LazyLock::new(|| {
    room_script(
        r#"
local known = {}
for i = 1, #ARGV do known[ARGV[i]] = true end
local out, departed = {0}, {}
for _, host in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if not known[host] then
    redis.call('ZREM', KEYS[1], host)
    out[1] = out[1] + 1
  end
end
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  local bar = string.find(field, '|', 1, true)
  local node = bar and string.sub(field, 1, bar - 1)
  if node and not known[node] then
    redis.call('HDEL', KEYS[2], field)
    out[1] = out[1] + 1
    local user = string.sub(field, bar + 1)
    if not departed[user] and not held_elsewhere(node, user) then
      departed[user] = true
      table.insert(out, user)
    end
  end
end
return out
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
pub(crate) fn all() -> [&'static Script; 13] {
    [
        &ADMIT,
        &RELEASE,
        &JOIN,
        &LEAVE,
        &ROUTE_ROOM,
        &ROUTE_USER,
        &ROUTE_TENANT,
        &HISTORY,
        &SWEEP_ROOM,
        &REWRITE_ROOM,
        &AUDIT_COUNTS,
        &AUDIT_ROOM,
        &REMOVE_DEAD_NODE,
    ]
}
