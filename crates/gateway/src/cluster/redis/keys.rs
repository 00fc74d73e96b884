//! Names of every Redis key and channel fanout uses.
//!
//! All names start with the configured prefix, so clusters sharing a Redis
//! never meet. Room keys and the room channel share the hash tag `{t/r}`,
//! tenant and user keys the tag `{t}`, so that a Redis Cluster keeps what
//! one script touches in one slot. `/` and `|` cannot appear in names, which
//! makes `t/r` and `node|user` unambiguous.

use fanout_protocol::Name;

/// Key and channel names for one cluster (prefix) as seen by one node.
#[derive(Debug, Clone)]
pub(crate) struct Keyspace {
    prefix: String,
    node: String,
}

impl Keyspace {
    pub(crate) fn new(prefix: &str, node: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            node: node.to_owned(),
        }
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
    /// hosts raise the score with every heartbeat.
    pub(crate) fn rooms(&self) -> String {
        format!("{}:rooms", self.prefix)
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
        let k = Keyspace::new("fo", "node-1");
        assert_eq!(k.room_hosts(&n("a:b"), &n("c")), "fo:{a:b/c}:hosts");
        assert_eq!(k.room_channel(&n("a:b"), &n("c")), "fo:{a:b/c}:ch");
        assert_ne!(
            k.room_hosts(&n("a:b"), &n("c")),
            k.room_hosts(&n("a"), &n("b:c"))
        );
        assert_eq!(k.user_conns(&n("acme"), &n("u1")), "fo:{acme}:user:u1");
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
