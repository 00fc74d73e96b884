//! The embedded bus's memory of idempotency keys (§8 of the protocol).
//!
//! A key is remembered for [`IDEMPOTENCY_WINDOW`] with what its first
//! publish answered. The scope is the same as in cluster mode: a room's
//! publishes share one scope per room, user and tenant publishes one per
//! tenant (see `docs/protocol.md` §8 for why). At most
//! `limits.idempotency_keys` keys are held; beyond it the oldest are
//! forgotten early, and counted (`fanout_idempotency_evicted_total`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use fanout_protocol::Name;

use crate::cluster::{IDEMPOTENCY_WINDOW, Published};
use crate::message::Position;
use crate::metrics as m;

/// (tenant, room or none, key).
type Scope = (Name, Option<Name>, Name);

#[derive(Debug, Default)]
struct Inner {
    /// The first publish's message id and position, per key.
    answers: HashMap<Scope, (String, Option<Position>)>,
    /// Keys in the order they were accepted, for expiry and eviction.
    order: VecDeque<(Instant, Scope)>,
}

/// Accepted idempotency keys.
#[derive(Debug)]
pub(crate) struct Keys {
    inner: Mutex<Inner>,
    /// `limits.idempotency_keys`.
    cap: usize,
}

impl Keys {
    /// Empty; holds at most `cap` keys.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            cap: cap.max(1),
        }
    }

    /// Runs `publish` unless `scope` was accepted within the window, and
    /// remembers `id` and the position `publish` returns; answers the first
    /// publish's as a [`Published::Duplicate`] if it was. `publish` runs
    /// under the lock, so two concurrent publishes with one key deliver once.
    pub(crate) fn once(
        &self,
        scope: Scope,
        id: &str,
        publish: impl FnOnce() -> Option<Position>,
    ) -> Published {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((at, _)) = inner.order.front() {
            if now.duration_since(*at) < IDEMPOTENCY_WINDOW {
                break;
            }
            if let Some((_, old)) = inner.order.pop_front() {
                inner.answers.remove(&old);
            }
        }
        if let Some((id, position)) = inner.answers.get(&scope) {
            return Published::Duplicate {
                id: id.clone(),
                position: position.clone(),
            };
        }
        let position = publish();
        while inner.order.len() >= self.cap {
            if let Some((_, old)) = inner.order.pop_front() {
                inner.answers.remove(&old);
                m::idempotency_evicted();
            }
        }
        inner.order.push_back((now, scope.clone()));
        inner
            .answers
            .insert(scope, (id.to_owned(), position.clone()));
        Published::Accepted { position }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new("t", s).unwrap()
    }

    #[test]
    fn a_key_publishes_once_and_answers_the_first_id_after() {
        let keys = Keys::new(10);
        let scope = (n("t"), Some(n("r")), n("k1"));
        let mut runs = 0;
        let first = keys.once(scope.clone(), "id-1", || {
            runs += 1;
            None
        });
        assert_eq!(first, Published::Accepted { position: None });
        let again = keys.once(scope, "id-2", || {
            runs += 1;
            None
        });
        assert_eq!(
            again,
            Published::Duplicate {
                id: "id-1".into(),
                position: None
            }
        );
        assert_eq!(runs, 1);
        let other_room = keys.once((n("t"), Some(n("r2")), n("k1")), "id-3", || None);
        assert_eq!(other_room, Published::Accepted { position: None });
    }

    #[test]
    fn beyond_the_cap_the_oldest_key_is_forgotten() {
        let keys = Keys::new(2);
        for k in ["a", "b", "c"] {
            keys.once((n("t"), None, n(k)), k, || None);
        }
        assert!(matches!(
            keys.once((n("t"), None, n("a")), "a2", || None),
            Published::Accepted { .. }
        ));
        assert!(matches!(
            keys.once((n("t"), None, n("c")), "c2", || None),
            Published::Duplicate { .. }
        ));
    }
}
