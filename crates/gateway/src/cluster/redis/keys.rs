//! Names of every Redis key and channel fanout uses.
//!
//! All names start with the configured prefix, so clusters sharing a Redis
//! never meet. Room keys and the room channel share the hash tag `{t/r}`,
//! tenant and user keys the tag `{t}`, so that a Redis Cluster keeps what
//! one script touches in one slot. `/` and `|` cannot appear in names, which
//! makes `t/r` and `node|user` unambiguous.
//!
//! Two layouts. On one Redis ([`Layout::Single`]) a node has one inbox
//! channel and the cluster one room index, as always. On a Redis Cluster
//! ([`Layout::Cluster`]) a script may only publish to shard channels of its
//! own slot, so a node's inbox is split by what publishes to it: the room
//! script of `t/r` sends to `P:{t/r}:in:<node>`, the user script of tenant
//! `t` to `P:{t}:in:<node>`; a host of a room listens on the room's inbox
//! beside its channel (one SSUBSCRIBE, one slot). The room index is split
//! into [`ROOM_BUCKETS`] keys so that no single key takes every join.

use fanout_protocol::Name;

use super::slots::slot_of;

/// Keys the cluster's room index is split into on a Redis Cluster.
pub(crate) const ROOM_BUCKETS: u16 = 64;

/// Which key names a node uses: decided by the Redis URL, never mixed in
/// one cluster (a rolling upgrade on one Redis keeps today's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One Redis (or Sentinel): classic PUBLISH, one inbox per node.
    Single,
    /// A Redis Cluster: SPUBLISH, inboxes under the publishing script's tag.
    Cluster,
}

/// Key and channel names for one cluster (prefix) as seen by one node.
#[derive(Debug, Clone)]
pub(crate) struct Keyspace {
    prefix: String,
    node: String,
    layout: Layout,
}

impl Keyspace {
    pub(crate) fn new(prefix: &str, node: &str, layout: Layout) -> Self {
        Self {
            prefix: prefix.to_owned(),
            node: node.to_owned(),
            layout,
        }
    }

    /// The prefix of every name.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The layout of this cluster's names.
    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    /// The publish command of the route scripts: `PUBLISH` or `SPUBLISH`.
    pub(crate) fn publish_verb(&self) -> &'static str {
        match self.layout {
            Layout::Single => "PUBLISH",
            Layout::Cluster => "SPUBLISH",
        }
    }

    /// Channels a node keeps subscribed for its whole life (single layout:
    /// its inbox and the control channel; a cluster node's probe channels
    /// follow the shards instead).
    pub(crate) fn pinned(&self) -> Vec<String> {
        match self.layout {
            Layout::Single => vec![self.inbox(&self.node), self.control()],
            Layout::Cluster => Vec::new(),
        }
    }

    /// Inbox prefix of the room script of `t/r` (the script appends a node id).
    pub(crate) fn room_inbox_prefix(&self, tenant: &Name, room: &Name) -> String {
        match self.layout {
            Layout::Single => self.inbox_prefix(),
            Layout::Cluster => format!("{}:{{{tenant}/{room}}}:in:", self.prefix),
        }
    }

    /// Inbox prefix of the user script of `t` (the script appends a node id).
    pub(crate) fn tenant_inbox_prefix(&self, tenant: &Name) -> String {
        match self.layout {
            Layout::Single => self.inbox_prefix(),
            Layout::Cluster => format!("{}:{{{tenant}}}:in:", self.prefix),
        }
    }

    /// What a host of a room listens on besides its pinned channels.
    pub(crate) fn room_listen(&self, tenant: &Name, room: &Name) -> Vec<String> {
        let channel = self.room_channel(tenant, room);
        match self.layout {
            Layout::Single => vec![channel],
            Layout::Cluster => vec![
                channel,
                format!("{}{}", self.room_inbox_prefix(tenant, room), self.node),
            ],
        }
    }

    /// What a node with connections of a tenant listens on besides its
    /// pinned channels.
    pub(crate) fn tenant_listen(&self, tenant: &Name) -> Vec<String> {
        let channel = self.tenant_channel(tenant);
        match self.layout {
            Layout::Single => vec![channel],
            Layout::Cluster => vec![
                channel,
                format!("{}{}", self.tenant_inbox_prefix(tenant), self.node),
            ],
        }
    }

    /// A channel in the slot of `tag` on which a node probes its own
    /// subscription to that slot's shard (cluster layout).
    pub(crate) fn probe_channel(&self, tag: &str) -> String {
        format!("{}:{{{tag}}}:probe:{}", self.prefix, self.node)
    }

    /// This node's id.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// ZSET node id → expiry (ms): the live-node index.
    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// STRING (JSON) with a node's id, start time and counts; expires with the node.
    pub(crate) fn node_info(&self, node: &str) -> String {
        format!("{}:node:{node}:info", self.prefix)
    }

    /// SET of what a node registered (`r:t/r`, `u:t/u`, `t:t`), for sweeping it when it dies.
    pub(crate) fn node_index(&self, node: &str) -> String {
        format!("{}:node:{node}:index", self.prefix)
    }

    /// A node's inbox channel (direct sends).
    pub(crate) fn inbox(&self, node: &str) -> String {
        format!("{}{node}", self.inbox_prefix())
    }

    /// The part of an inbox channel name before the node id (scripts append the id).
    pub(crate) fn inbox_prefix(&self) -> String {
        format!("{}:inbox:", self.prefix)
    }

    /// Channel every node subscribes to for cluster-wide control messages.
    pub(crate) fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// ZSET `t/r` → expiry of every room with a live host (for `/v1/stats`);
    /// hosts raise the score with every heartbeat. The key of room `t/r`:
    /// one key on one Redis, one of [`ROOM_BUCKETS`] on a Redis Cluster.
    pub(crate) fn rooms(&self, room_id: &str) -> String {
        match self.layout {
            Layout::Single => format!("{}:rooms", self.prefix),
            Layout::Cluster => self.rooms_bucket(slot_of(room_id) % ROOM_BUCKETS),
        }
    }

    /// Every key of the room index.
    pub(crate) fn all_rooms(&self) -> Vec<String> {
        match self.layout {
            Layout::Single => vec![format!("{}:rooms", self.prefix)],
            Layout::Cluster => (0..ROOM_BUCKETS).map(|b| self.rooms_bucket(b)).collect(),
        }
    }

    fn rooms_bucket(&self, bucket: u16) -> String {
        format!("{}:rooms:{{#r{bucket}}}", self.prefix)
    }

    /// Lock key held by the node that sweeps dead nodes this round.
    pub(crate) fn sweeper(&self) -> String {
        format!("{}:sweeper", self.prefix)
    }

    /// ZSET node → expiry: the nodes hosting members of a room.
    pub(crate) fn room_hosts(&self, tenant: &Name, room: &Name) -> String {
        format!("{}:{{{tenant}/{room}}}:hosts", self.prefix)
    }

    /// HASH `node|user` → connections: room presence, per node.
    pub(crate) fn room_members(&self, tenant: &Name, room: &Name) -> String {
        format!("{}:{{{tenant}/{room}}}:members", self.prefix)
    }

    /// `KEYS` of the room scripts (join, leave, sweep): hosts, then members.
    pub(crate) fn room_script_keys(&self, tenant: &Name, room: &Name) -> Vec<String> {
        vec![
            self.room_hosts(tenant, room),
            self.room_members(tenant, room),
        ]
    }

    /// STREAM of a room's history: entry id `<offset>-0`, field `j` = the
    /// `message` frame as JSON without its position; trimmed to the rule's
    /// size, expiring by its TTL.
    pub(crate) fn room_stream(&self, tenant: &Name, room: &Name) -> String {
        format!("{}:{{{tenant}/{room}}}:stream", self.prefix)
    }

    /// HASH `epoch`, `top` of a room's stream; outlives the stream (see
    /// `StreamSpec::meta_ttl`), so that an expired room keeps its epoch and
    /// counter.
    pub(crate) fn room_meta(&self, tenant: &Name, room: &Name) -> String {
        format!("{}:{{{tenant}/{room}}}:meta", self.prefix)
    }

    /// STRING `id|offset|epoch` of an accepted idempotency key of a room
    /// publish (in the room's slot); expires after the idempotency window.
    pub(crate) fn room_idempotency(&self, tenant: &Name, room: &Name, key: &Name) -> String {
        format!("{}:{{{tenant}/{room}}}:idem:{key}", self.prefix)
    }

    /// The same for user and tenant publishes (in the tenant's slot).
    pub(crate) fn tenant_idempotency(&self, tenant: &Name, key: &Name) -> String {
        format!("{}:{{{tenant}}}:idem:{key}", self.prefix)
    }

    /// A room's channel, used when the room is spread over many nodes.
    pub(crate) fn room_channel(&self, tenant: &Name, room: &Name) -> String {
        format!("{}:{{{tenant}/{room}}}:ch", self.prefix)
    }

    /// HASH node → connections of one user.
    pub(crate) fn user_conns(&self, tenant: &Name, user: &Name) -> String {
        format!("{}:{{{tenant}}}:user:{user}", self.prefix)
    }

    /// HASH node → connections of one tenant.
    pub(crate) fn tenant_conns(&self, tenant: &Name) -> String {
        format!("{}:{{{tenant}}}:conns", self.prefix)
    }

    /// A tenant's channel (tenant-wide messages).
    pub(crate) fn tenant_channel(&self, tenant: &Name) -> String {
        format!("{}:{{{tenant}}}:ch", self.prefix)
    }
}

/// Member of every live node's index; its absence tells a node it was swept.
pub(crate) const INDEX_MARKER: &str = "n:";

/// Index entries of the per-node registry index.
pub(crate) fn index_room(tenant: &Name, room: &Name) -> String {
    format!("r:{tenant}/{room}")
}

pub(crate) fn index_user(tenant: &Name, user: &Name) -> String {
    format!("u:{tenant}/{user}")
}

pub(crate) fn index_tenant(tenant: &Name) -> String {
    format!("t:{tenant}")
}

/// `t/r` as stored in the rooms set.
pub(crate) fn room_id(tenant: &Name, room: &Name) -> String {
    format!("{tenant}/{room}")
}

/// A parsed index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IndexEntry {
    Room(Name, Name),
    User(Name, Name),
    Tenant(Name),
}

/// Parses an index entry written by [`index_room`], [`index_user`] or [`index_tenant`].
pub(crate) fn parse_index(entry: &str) -> Option<IndexEntry> {
    let (kind, rest) = entry.split_once(':')?;
    let pair = |rest: &str| -> Option<(Name, Name)> {
        let (a, b) = rest.split_once('/')?;
        Some((Name::new("tenant", a).ok()?, Name::new("name", b).ok()?))
    };
    match kind {
        "r" => pair(rest).map(|(t, r)| IndexEntry::Room(t, r)),
        "u" => pair(rest).map(|(t, u)| IndexEntry::User(t, u)),
        "t" => Name::new("tenant", rest).ok().map(IndexEntry::Tenant),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new("t", s).unwrap()
    }

    #[test]
    fn room_keys_share_a_hash_tag_and_names_with_colons_do_not_collide() {
        let k = Keyspace::new("fo", "node-1", Layout::Single);
        assert_eq!(k.room_hosts(&n("a:b"), &n("c")), "fo:{a:b/c}:hosts");
        assert_eq!(k.room_channel(&n("a:b"), &n("c")), "fo:{a:b/c}:ch");
        assert_ne!(
            k.room_hosts(&n("a:b"), &n("c")),
            k.room_hosts(&n("a"), &n("b:c"))
        );
        assert_eq!(k.user_conns(&n("acme"), &n("u1")), "fo:{acme}:user:u1");
    }

    #[test]
    fn one_redis_keeps_the_names_of_earlier_releases() {
        let k = Keyspace::new("fo", "node-1", Layout::Single);
        let (t, r) = (n("acme"), n("lobby"));
        assert_eq!(k.room_inbox_prefix(&t, &r), "fo:inbox:");
        assert_eq!(k.tenant_inbox_prefix(&t), "fo:inbox:");
        assert_eq!(k.rooms("acme/lobby"), "fo:rooms");
        assert_eq!(k.all_rooms(), vec!["fo:rooms".to_string()]);
        assert_eq!(k.room_listen(&t, &r), vec![k.room_channel(&t, &r)]);
        assert_eq!(k.pinned(), vec!["fo:inbox:node-1", "fo:control"]);
        assert_eq!(k.publish_verb(), "PUBLISH");
    }

    #[test]
    fn on_a_cluster_every_scripts_keys_and_channels_share_one_slot() {
        let k = Keyspace::new("fo", "node-1", Layout::Cluster);
        assert_eq!(k.publish_verb(), "SPUBLISH");
        let (t, r, key) = (n("acme"), n("lobby"), n("k1"));
        let slot = slot_of(&k.room_hosts(&t, &r));
        // The room scripts (join, leave, sweep, route, history) and what
        // the route script publishes to.
        let mut room = k.room_script_keys(&t, &r);
        room.extend([
            k.room_stream(&t, &r),
            k.room_meta(&t, &r),
            k.room_idempotency(&t, &r, &key),
            k.room_channel(&t, &r),
            format!("{}node-2", k.room_inbox_prefix(&t, &r)),
        ]);
        room.extend(k.room_listen(&t, &r));
        for name in &room {
            assert_eq!(slot_of(name), slot, "{name}");
        }
        // The tenant scripts (admit, release, route user, route tenant).
        let slot = slot_of(&k.tenant_conns(&t));
        let mut tenant = vec![
            k.user_conns(&t, &n("u1")),
            k.tenant_idempotency(&t, &key),
            k.tenant_channel(&t),
            format!("{}node-2", k.tenant_inbox_prefix(&t)),
        ];
        tenant.extend(k.tenant_listen(&t));
        for name in &tenant {
            assert_eq!(slot_of(name), slot, "{name}");
        }
        // A host listens on its own inbox of the room, which is where other
        // nodes' route scripts send it.
        assert!(
            k.room_listen(&t, &r)
                .contains(&format!("{}node-1", k.room_inbox_prefix(&t, &r)))
        );
        // The room index is spread over buckets in different slots.
        let slots: std::collections::HashSet<u16> =
            k.all_rooms().iter().map(|b| slot_of(b)).collect();
        assert_eq!(k.all_rooms().len(), ROOM_BUCKETS as usize);
        assert!(slots.len() > ROOM_BUCKETS as usize / 2, "{}", slots.len());
        assert!(k.all_rooms().contains(&k.rooms("acme/lobby")));
        assert!(k.pinned().is_empty());
    }

    #[test]
    fn index_entries_round_trip() {
        assert_eq!(
            parse_index(&index_room(&n("a:b"), &n("c:d"))),
            Some(IndexEntry::Room(n("a:b"), n("c:d")))
        );
        assert_eq!(
            parse_index(&index_user(&n("t"), &n("u@x"))),
            Some(IndexEntry::User(n("t"), n("u@x")))
        );
        assert_eq!(
            parse_index(&index_tenant(&n("t"))),
            Some(IndexEntry::Tenant(n("t")))
        );
        assert_eq!(parse_index("x:y"), None);
    }
}
