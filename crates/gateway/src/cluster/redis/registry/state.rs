//! The registry actor's own view: what it has registered in Redis, and its
//! channel subscriptions. Plain data, no I/O, unit-tested.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use fanout_protocol::Name;
use tokio::time::Instant;

/// One channel's subscription state.
#[derive(Debug, Default)]
struct Channel {
    /// Whether the SUBSCRIBE completed.
    subscribed: bool,
    /// Set while nothing local needs the channel: when to unsubscribe.
    /// `None` while a room or tenant of [`Registered`] needs it, or pinned.
    release_at: Option<Instant>,
    /// Never released (the node's inbox and the control channel).
    pinned: bool,
}

/// Channel subscriptions, released after a linger once unneeded.
///
/// Whether a room or tenant channel is *needed* is not counted here: it is
/// needed exactly while [`Registered`] holds the room or the tenant, and the
/// actor reports the two transitions ([`Channels::needed`] when the first
/// member or connection arrives, [`Channels::unneeded`] when the last one
/// goes). This map only adds what Redis's subscriber state needs: whether
/// the SUBSCRIBE completed, and when a lingering channel is let go.
#[derive(Debug, Default)]
pub(crate) struct Channels {
    map: HashMap<String, Channel>,
}

impl Channels {
    /// The channels of `wanted` that are not subscribed yet (deduplicated).
    pub(crate) fn missing(&self, wanted: &[String]) -> Vec<String> {
        let mut out: Vec<String> = wanted
            .iter()
            .filter(|c| !self.map.get(*c).is_some_and(|ch| ch.subscribed))
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Records completed subscriptions. A channel seen here for the first
    /// time is unneeded until [`Channels::needed`] says otherwise (it was
    /// subscribed for a change that then failed: let it linger out).
    pub(crate) fn mark_subscribed(&mut self, channels: &[String]) {
        for c in channels {
            let ch = self.map.entry(c.clone()).or_insert_with(|| Channel {
                release_at: Some(Instant::now()),
                ..Channel::default()
            });
            ch.subscribed = true;
        }
    }

    /// Keeps `channel` subscribed for the life of the node.
    pub(crate) fn pin(&mut self, channel: String) {
        let ch = self.map.entry(channel).or_default();
        ch.pinned = true;
        ch.release_at = None;
    }

    /// A room or tenant got its first local member: keep its channel
    /// (cancels a pending release).
    pub(crate) fn needed(&mut self, channel: String) {
        self.map.entry(channel).or_default().release_at = None;
    }

    /// A room or tenant lost its last local member: release its channel
    /// after `linger`.
    pub(crate) fn unneeded(&mut self, channel: &str, linger: Duration) {
        if let Some(ch) = self.map.get_mut(channel)
            && !ch.pinned
        {
            ch.release_at = Some(Instant::now() + linger);
        }
    }

    /// Subscribed channels whose linger has passed.
    pub(crate) fn expired(&self, now: Instant) -> Vec<String> {
        self.map
            .iter()
            .filter(|(_, ch)| ch.subscribed && ch.release_at.is_some_and(|t| t <= now))
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Drops unsubscribed channels that are still unneeded.
    pub(crate) fn forget(&mut self, channels: &[String]) {
        for c in channels {
            if self
                .map
                .get(c)
                .is_some_and(|ch| !ch.pinned && ch.release_at.is_some())
            {
                self.map.remove(c);
            }
        }
    }

    /// Every channel that should be subscribed (needed or lingering) and
    /// that `within` selects (on a Redis Cluster: those of one shard).
    pub(crate) fn all(&self, within: impl Fn(&str) -> bool) -> Vec<String> {
        self.map.keys().filter(|c| within(c)).cloned().collect()
    }

    /// Marks the channels `within` selects unsubscribed (their subscriber
    /// connection was replaced, or their slots moved to another shard).
    pub(crate) fn reset_subscribed(&mut self, within: impl Fn(&str) -> bool) {
        for (c, ch) in self.map.iter_mut() {
            if within(c) {
                ch.subscribed = false;
            }
        }
    }
}

/// What this node has registered: local counts as Redis knows them.
#[derive(Debug, Default)]
pub(crate) struct Registered {
    /// (tenant, room) → user → local connections in the room.
    pub(crate) rooms: HashMap<(Name, Name), HashMap<Name, u32>>,
    /// (tenant, user) → local connections.
    pub(crate) users: HashMap<(Name, Name), u32>,
    /// tenant → local connections.
    pub(crate) tenants: HashMap<Name, u32>,
}

impl Registered {
    /// Counts a connection; returns (first of user, first of tenant).
    pub(crate) fn add_conn(&mut self, tenant: &Name, user: &Name) -> (bool, bool) {
        let u = self
            .users
            .entry((tenant.clone(), user.clone()))
            .or_insert(0);
        *u += 1;
        let t = self.tenants.entry(tenant.clone()).or_insert(0);
        *t += 1;
        (*u == 1, *t == 1)
    }

    /// Uncounts a connection; returns (last of user, last of tenant), or
    /// `None` when the user is not counted (its counts were released for a
    /// drain: nothing is left to uncount).
    pub(crate) fn remove_conn(&mut self, tenant: &Name, user: &Name) -> Option<(bool, bool)> {
        if !self.users.contains_key(&(tenant.clone(), user.clone())) {
            return None;
        }
        let last_user = decrement(&mut self.users, (tenant.clone(), user.clone()));
        let last_tenant = decrement(&mut self.tenants, tenant.clone());
        Some((last_user, last_tenant))
    }

    /// Counts a room member; returns true when the room is new on this node.
    pub(crate) fn add_member(&mut self, tenant: &Name, room: &Name, user: &Name) -> bool {
        let users = self
            .rooms
            .entry((tenant.clone(), room.clone()))
            .or_default();
        let first = users.is_empty();
        *users.entry(user.clone()).or_insert(0) += 1;
        first
    }

    /// Uncounts a room member; returns true when the room left this node.
    pub(crate) fn remove_member(&mut self, tenant: &Name, room: &Name, user: &Name) -> bool {
        let key = (tenant.clone(), room.clone());
        let Some(users) = self.rooms.get_mut(&key) else {
            return false;
        };
        decrement(users, user.clone());
        if users.is_empty() {
            self.rooms.remove(&key);
            return true;
        }
        false
    }
}

/// Decrements a count, removing it at zero; returns true when it reached zero.
fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K) -> bool {
    match map.get_mut(&key) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            map.remove(&key);
            true
        }
        None => false,
    }
}

/// What failed or timed-out registry scripts may have done to one entry,
/// for its repair to announce exactly what nobody announced yet (the
/// caller of a script whose outcome is unknown announces nothing).
#[derive(Debug, Default, Clone)]
pub(crate) struct Unknown {
    /// Users whose join's outcome is unknown (the client was refused): if
    /// the repair removes their last field, watchers were never told they
    /// came, and no `leave` is due.
    pub(crate) joins: BTreeSet<String>,
    /// Users whose leave's outcome is unknown: if they have no field in the
    /// room after the repair and the repair did not remove one itself, the
    /// leave ran and its `leave` is due.
    pub(crate) leaves: BTreeSet<String>,
}

impl Unknown {
    /// Adds what another failed script may have done.
    pub(crate) fn merge(&mut self, other: Unknown) {
        self.joins.extend(other.joins);
        self.leaves.extend(other.leaves);
    }
}

/// Where the audit stands.
#[derive(Debug, Default)]
pub(crate) struct Audit {
    /// Shard id → SCAN cursor of the pass under way (a shard not listed
    /// has not started; `Some(0)` after its first step: done).
    pub(crate) cursors: HashMap<String, u64>,
    /// When the next pass starts (`None`: a pass is under way or due).
    pub(crate) next_pass: Option<Instant>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new("t", s).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn channels_linger_after_the_last_reference_and_a_new_one_cancels_the_release() {
        let mut c = Channels::default();
        let ch = "room".to_string();
        assert_eq!(c.missing(&[ch.clone(), ch.clone()]), vec![ch.clone()]);
        c.mark_subscribed(std::slice::from_ref(&ch));
        assert_eq!(
            c.expired(Instant::now()),
            vec![ch.clone()],
            "subscribed but never needed: released at once"
        );
        c.needed(ch.clone());
        assert!(c.missing(std::slice::from_ref(&ch)).is_empty());
        assert!(c.expired(Instant::now()).is_empty(), "needed");
        c.unneeded(&ch, Duration::from_secs(5));
        assert!(c.expired(Instant::now()).is_empty(), "still lingering");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(c.expired(Instant::now()), vec![ch.clone()]);
        c.needed(ch.clone());
        assert!(
            c.expired(Instant::now()).is_empty(),
            "a new member cancels the release"
        );
    }

    #[test]
    fn registered_counts_first_and_last() {
        let mut r = Registered::default();
        assert_eq!(r.add_conn(&n("t"), &n("u")), (true, true));
        assert_eq!(r.add_conn(&n("t"), &n("v")), (true, false));
        assert_eq!(r.remove_conn(&n("t"), &n("u")), Some((true, false)));
        assert_eq!(r.remove_conn(&n("t"), &n("v")), Some((true, true)));
        assert_eq!(
            r.remove_conn(&n("t"), &n("v")),
            None,
            "not counted any more"
        );
        assert!(r.add_member(&n("t"), &n("r"), &n("u")));
        assert!(!r.add_member(&n("t"), &n("r"), &n("u")));
        assert!(!r.remove_member(&n("t"), &n("r"), &n("u")));
        assert!(r.remove_member(&n("t"), &n("r"), &n("u")));
        assert!(r.rooms.is_empty());
    }
}
