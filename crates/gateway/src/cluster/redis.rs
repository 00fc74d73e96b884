//! Cluster mode: the [`crate::cluster::Bus`] over one Redis.
//!
//! ```text
//!            ┌──────────── registry actor ─────────────┐   (one task; all registry writes, in order)
//! sessions ──┤ admit / join / leave / heartbeat / resync├──▶ Redis keys (hosts, members, users, tenants, nodes)
//!            └──────────────────────────────────────────┘
//! publish ──▶ route script (room: inboxes or room channel; user: inboxes; tenant: tenant channel) ──▶ PUBLISH
//! Redis pub/sub ──▶ reader ──▶ bounded queue ──▶ dispatcher ──▶ hub ──▶ member queues
//! supervisor: connection state → readiness; reconnect → resync (resubscribe in batches, re-register)
//! ```
//!
//! Files, top to bottom (imports point down only):
//!
//! - `bus`: [`RedisBus`], the [`crate::cluster::Bus`] impl; starts the tasks.
//! - `supervisor`: connection state → readiness; resync after a reconnect.
//! - `registry` (+ `batch`, `sync`, `state`): the actor that owns this
//!   node's entries in Redis.
//! - `route`: the route and history scripts' calls and replies.
//! - `receiver`: pub/sub → bounded queue → hub; the subscriber probe.
//! - `shards`: the connections by shard (one Redis, or one per Redis
//!   Cluster primary), the slot map, and command routing by slot.
//! - `keys`, `slots`, `scripts`, `envelope`: key names and their layouts,
//!   hash slots, Lua scripts, the wire format between nodes.
//! - `health`: readiness and node liveness, shared by all of the above.
//!
//! See `docs/architecture.md` for the keyspace and the routing rule.

mod bus;
pub mod envelope;
mod health;
mod keys;
mod receiver;
mod registry;
mod route;
mod scripts;
mod shards;
mod slots;
mod supervisor;

pub use self::bus::RedisBus;
pub use self::shards::StartError;
