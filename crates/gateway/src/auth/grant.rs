//! What a verified token allows, and the cache that lets identical
//! permissions be parsed once and shared.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use fanout_protocol::pattern::any_matches;
use fanout_protocol::{Name, RoomPattern};

/// The identity and permissions of one verified token.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Tenant (`tenant` claim): the same allocation as `permissions.tenant`.
    pub tenant: Name,
    /// User (`sub` claim).
    pub user: Name,
    /// Expiry, seconds since the epoch (`exp` claim).
    pub expires_at: u64,
    /// What the token allows. Shared (through [`PermissionCache`]) by every
    /// grant whose token has the same `tenant`, `rooms`, `publish` and
    /// `presence` claims: the session keeps its grant for the life of the
    /// connection, and many connections hold tokens minted from one template.
    pub permissions: Arc<Permissions>,
}

/// The `tenant`, `rooms`, `publish` and `presence` claims, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct Permissions {
    /// The tenant they apply in (one allocation of its name for all the
    /// tenant's connections that share these permissions).
    pub tenant: Name,
    /// Rooms the client may subscribe to (`rooms` claim).
    pub rooms: Vec<RoomPattern>,
    /// Rooms the client may publish into (`publish` claim).
    pub publish: Vec<RoomPattern>,
    /// Whether presence queries are allowed (`presence` claim, default true).
    pub presence: bool,
}

impl Grant {
    /// Whether the token allows subscribing to `room`.
    pub fn can_subscribe(&self, room: &str) -> bool {
        any_matches(&self.permissions.rooms, room)
    }

    /// Whether the token allows publishing into `room`.
    pub fn can_publish(&self, room: &str) -> bool {
        any_matches(&self.permissions.publish, room)
    }

    /// Whether the token allows asking who is in `room`: presence must be
    /// allowed and the room one the client may subscribe to.
    pub fn can_query_presence(&self, room: &str) -> bool {
        self.permissions.presence && self.can_subscribe(room)
    }
}

/// The claims a [`Permissions`] is parsed from, its key in the cache:
/// tenant, rooms, publish, presence.
pub(crate) type Claims = (String, Vec<String>, Vec<String>, bool);

/// Most distinct permission sets remembered. Past it, entries no live grant
/// uses are dropped, and if all are in use the cache starts afresh (grants
/// already handed out keep theirs; new ones are simply not shared with them).
const CACHE_MAX: usize = 4096;

/// Parsed permissions by their claims, held weakly: an entry lives as long
/// as some grant uses it, so the cache never keeps a permission set alive
/// and holds at most [`CACHE_MAX`] entries.
#[derive(Debug, Default)]
pub(crate) struct PermissionCache {
    entries: Mutex<HashMap<Claims, Weak<Permissions>>>,
}

impl PermissionCache {
    /// The shared permissions for these claims, parsed by `parse` if no
    /// live grant has them yet.
    pub(crate) fn get_or_parse<E>(
        &self,
        claims: Claims,
        parse: impl FnOnce(&Claims) -> Result<Permissions, E>,
    ) -> Result<Arc<Permissions>, E> {
        if let Some(found) = self.lock().get(&claims).and_then(Weak::upgrade) {
            return Ok(found);
        }
        let parsed = Arc::new(parse(&claims)?);
        let mut entries = self.lock();
        if entries.len() >= CACHE_MAX {
            entries.retain(|_, w| w.strong_count() > 0);
            if entries.len() >= CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(claims, Arc::downgrade(&parsed));
        Ok(parsed)
    }

    /// Entries held now (live or not yet pruned).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache holds no entry.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Claims, Weak<Permissions>>> {
        // Every critical section is one map operation: a poisoned lock
        // still holds a consistent map.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(claims: &Claims) -> Result<Permissions, String> {
        let patterns = |list: &[String]| {
            list.iter()
                .map(|p| RoomPattern::parse(p).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Permissions {
            tenant: Name::new("tenant", &claims.0).map_err(|e| e.to_string())?,
            rooms: patterns(&claims.1)?,
            publish: patterns(&claims.2)?,
            presence: claims.3,
        })
    }

    fn claims(rooms: &[&str]) -> Claims {
        (
            "acme".into(),
            rooms.iter().map(|r| r.to_string()).collect(),
            vec![],
            true,
        )
    }

    #[test]
    fn identical_claims_share_one_parse_and_different_ones_do_not() {
        let cache = PermissionCache::default();
        let a = cache.get_or_parse(claims(&["chat-*"]), parse).unwrap();
        let b = cache.get_or_parse(claims(&["chat-*"]), parse).unwrap();
        let c = cache.get_or_parse(claims(&["news"]), parse).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.rooms[0].as_str(), "news");
        let mut no_presence = claims(&["chat-*"]);
        no_presence.3 = false;
        let d = cache.get_or_parse(no_presence, parse).unwrap();
        assert!(!Arc::ptr_eq(&a, &d) && !d.presence);
        let mut other_tenant = claims(&["chat-*"]);
        other_tenant.0 = "globex".into();
        let e = cache.get_or_parse(other_tenant, parse).unwrap();
        assert!(!Arc::ptr_eq(&a, &e) && e.tenant.as_str() == "globex");
    }

    #[test]
    fn an_entry_lives_only_as_long_as_a_grant_uses_it() {
        let cache = PermissionCache::default();
        let a = cache.get_or_parse(claims(&["r"]), parse).unwrap();
        let weak = Arc::downgrade(&a);
        drop(a);
        assert!(
            weak.upgrade().is_none(),
            "the cache holds no strong reference"
        );
        // A later grant with the same claims parses afresh.
        let mut parsed = false;
        let b = cache
            .get_or_parse(claims(&["r"]), |c| {
                parsed = true;
                parse(c)
            })
            .unwrap();
        assert!(parsed, "a dead entry was not parsed again");
        assert_eq!(b.rooms.len(), 1);
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = PermissionCache::default();
        let mut live = Vec::new();
        for i in 0..CACHE_MAX + 10 {
            let p = cache
                .get_or_parse(claims(&[&format!("r{i}")]), parse)
                .unwrap();
            if i % 2 == 0 {
                live.push(p);
            }
        }
        assert!(cache.len() <= CACHE_MAX);
        // Everything still in use is still shared, the oldest and the
        // newest alike: the bound drops dead entries, never live ones.
        for i in [0, CACHE_MAX + 8] {
            let again = cache
                .get_or_parse(claims(&[&format!("r{i}")]), |_| {
                    Err("a live entry was parsed again".to_string())
                })
                .unwrap();
            assert!(live.iter().any(|p| Arc::ptr_eq(p, &again)), "r{i}");
        }
    }

    #[test]
    fn a_bad_pattern_is_an_error_and_is_not_cached() {
        let cache = PermissionCache::default();
        assert!(
            cache
                .get_or_parse(claims(&["bad pattern!"]), parse)
                .is_err()
        );
        assert!(cache.is_empty());
    }
}
