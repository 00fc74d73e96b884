//! The embedded bus's room streams: history in this process's memory.
//!
//! The same semantics as the Redis streams of a cluster: per room an epoch
//! (random, new for every stream this process starts) and a counter; the
//! last `size` messages, dropped `ttl` after the room's last publish; the
//! epoch and counter outlive the messages by [`StreamSpec::meta_ttl`]. On
//! top, one memory budget for all rooms (`limits.history_memory_bytes`):
//! when a publish would exceed it, the messages of the rooms published to
//! longest ago are dropped (their epoch and counter stay), and every drop
//! is counted (`fanout_history_evicted_total`).
//!
//! One mutex guards it all. A publish holds it to assign an offset and
//! append, a read to copy out a page: short, never across an `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use fanout_protocol::Name;

use crate::cluster::{HistoryPage, HistoryQuery, StreamSpec, new_epoch};
use crate::message::Position;
use crate::metrics as m;

/// Bytes counted for a stored message besides its JSON: its deque slot
/// (offset and `Bytes` handle, 40 B, in a deque that rounds up to a power of
/// two) and the allocation's own header.
const ENTRY_OVERHEAD: usize = 64;
/// Bytes counted for a room's stream besides its messages: the map entry
/// with its keys, the epoch, the age index entry.
const STREAM_OVERHEAD: usize = 192;

/// One room's stream.
#[derive(Debug)]
struct Stream {
    epoch: Arc<str>,
    /// The latest offset.
    top: u64,
    /// (offset, JSON frame without position), oldest first.
    entries: VecDeque<(u64, Bytes)>,
    /// Bytes counted for `entries`.
    bytes: usize,
    /// Last publish, for the TTLs and for eviction order.
    touched: Instant,
    /// Key in [`Inner::by_age`].
    age_key: (Instant, u64),
    spec: StreamSpec,
}

impl Stream {
    /// Drops the messages if the room has been quiet for its TTL.
    fn expire(&mut self, now: Instant) -> usize {
        if !self.entries.is_empty() && now.duration_since(self.touched) >= self.spec.ttl {
            return self.clear();
        }
        0
    }

    fn clear(&mut self) -> usize {
        self.entries.clear();
        self.entries.shrink_to_fit();
        std::mem::take(&mut self.bytes)
    }

    fn oldest(&self) -> u64 {
        self.entries.front().map_or(self.top + 1, |e| e.0)
    }
}

#[derive(Debug, Default)]
struct Inner {
    streams: HashMap<(Name, Name), Stream>,
    /// Streams by last publish, oldest first: eviction and meta expiry order.
    by_age: BTreeMap<(Instant, u64), (Name, Name)>,
    /// Sum of every stream's `bytes`.
    bytes: usize,
    /// Tie-breaker of `by_age` keys.
    seq: u64,
}

/// All room streams of the embedded bus.
#[derive(Debug)]
pub(crate) struct Streams {
    inner: Mutex<Inner>,
    /// `limits.history_memory_bytes`.
    budget: usize,
}

impl Streams {
    /// Empty, with a memory budget in bytes.
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Assigns the next offset of the room's stream and stores `json`.
    pub(crate) fn append(
        &self,
        tenant: &Name,
        room: &Name,
        spec: StreamSpec,
        json: Bytes,
    ) -> Position {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.forget_stale(now);
        let key = (tenant.clone(), room.clone());
        inner.open(&key, spec, now);
        inner.seq += 1;
        let age_key = (now, inner.seq);
        let Inner {
            streams,
            by_age,
            bytes,
            ..
        } = inner;
        let Some(stream) = streams.get_mut(&key) else {
            unreachable!("Inner::open inserted it")
        };
        *bytes -= stream.expire(now);
        by_age.remove(&stream.age_key);
        by_age.insert(age_key, key.clone());
        stream.touched = now;
        stream.age_key = age_key;
        stream.spec = spec;
        stream.top += 1;
        let offset = stream.top;
        let size = json.len() + ENTRY_OVERHEAD;
        // A copy of exactly the frame's length: the live frame's buffer has
        // the encoder's spare capacity, which history would otherwise keep
        // for as long as the message (up to twice the bytes counted).
        stream
            .entries
            .push_back((offset, Bytes::copy_from_slice(&json)));
        stream.bytes += size;
        *bytes += size;
        while stream.entries.len() > spec.size {
            if let Some((_, old)) = stream.entries.pop_front() {
                stream.bytes -= old.len() + ENTRY_OVERHEAD;
                *bytes -= old.len() + ENTRY_OVERHEAD;
            }
        }
        let position = Position {
            offset,
            epoch: stream.epoch.clone(),
        };
        inner.evict_over(self.budget, &key);
        m::history_bytes(inner.bytes);
        position
    }

    /// Reads a page of a room's stream (creating its epoch if it has none).
    pub(crate) fn read(
        &self,
        tenant: &Name,
        room: &Name,
        spec: StreamSpec,
        query: HistoryQuery,
    ) -> HistoryPage {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.forget_stale(now);
        let key = (tenant.clone(), room.clone());
        inner.open(&key, spec, now);
        let Some(stream) = inner.streams.get_mut(&key) else {
            unreachable!("Inner::open inserted it")
        };
        let expired = stream.expire(now);
        let messages: Vec<(u64, Bytes)> = match query.after {
            Some(after) => stream
                .entries
                .iter()
                .filter(|(o, _)| *o > after)
                .take(query.limit)
                .cloned()
                .collect(),
            None => {
                let skip = stream.entries.len().saturating_sub(query.limit);
                stream.entries.iter().skip(skip).cloned().collect()
            }
        };
        let page = HistoryPage {
            epoch: stream.epoch.clone(),
            top: stream.top,
            oldest: stream.oldest(),
            messages,
        };
        inner.bytes -= expired;
        inner.evict_over(self.budget, &key);
        m::history_bytes(inner.bytes);
        page
    }

    /// Bytes of history held now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

impl Inner {
    /// Makes sure the room has a stream: a new one gets a fresh epoch,
    /// offset 0, and is counted (its bookkeeping) against the budget.
    fn open(&mut self, key: &(Name, Name), spec: StreamSpec, now: Instant) {
        if self.streams.contains_key(key) {
            return;
        }
        self.seq += 1;
        let age_key = (now, self.seq);
        self.bytes += STREAM_OVERHEAD;
        self.by_age.insert(age_key, key.clone());
        self.streams.insert(
            key.clone(),
            Stream {
                epoch: new_epoch(),
                top: 0,
                entries: VecDeque::new(),
                bytes: 0,
                touched: now,
                age_key,
                spec,
            },
        );
    }

    /// Forgets streams quiet for longer than their meta TTL (epoch and
    /// counter included), oldest first; stops at the first one still young.
    fn forget_stale(&mut self, now: Instant) {
        while let Some((&age_key, key)) = self.by_age.iter().next() {
            let Some(stream) = self.streams.get(key) else {
                self.by_age.remove(&age_key);
                continue;
            };
            if now.duration_since(stream.touched) < stream.spec.meta_ttl() {
                break;
            }
            let key = key.clone();
            self.by_age.remove(&age_key);
            if let Some(stream) = self.streams.remove(&key) {
                self.bytes -= stream.bytes + STREAM_OVERHEAD;
            }
        }
    }

    /// Drops whole rooms' messages, least recently published first, until
    /// the budget holds; never the room just used (`keep`), unless it alone
    /// is over the budget. If that is not enough (many rooms with a stream
    /// and few messages), forgets whole streams, epoch and counter too,
    /// oldest first: a client of such a room then learns `recovered:false`.
    fn evict_over(&mut self, budget: usize, keep: &(Name, Name)) {
        if self.bytes <= budget {
            return;
        }
        self.drop_messages(budget, keep);
        while self.bytes > budget {
            let Some((&age_key, key)) = self.by_age.iter().find(|(_, k)| *k != keep) else {
                return;
            };
            let key = key.clone();
            self.by_age.remove(&age_key);
            if let Some(stream) = self.streams.remove(&key) {
                self.bytes -= stream.bytes + STREAM_OVERHEAD;
                m::history_evicted(1);
            }
        }
    }

    fn drop_messages(&mut self, budget: usize, keep: &(Name, Name)) {
        let order: Vec<(Name, Name)> = self.by_age.values().cloned().collect();
        for key in order
            .iter()
            .filter(|k| *k != keep)
            .chain(std::iter::once(keep))
        {
            if self.bytes <= budget {
                return;
            }
            if let Some(stream) = self.streams.get_mut(key)
                && !stream.entries.is_empty()
            {
                let freed = if key == keep {
                    // Only the newest messages of the one room left: trim it.
                    let mut freed = 0;
                    while self.bytes - freed > budget && stream.entries.len() > 1 {
                        if let Some((_, old)) = stream.entries.pop_front() {
                            freed += old.len() + ENTRY_OVERHEAD;
                        }
                    }
                    stream.bytes -= freed;
                    freed
                } else {
                    stream.clear()
                };
                self.bytes -= freed;
                m::history_evicted(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn n(s: &str) -> Name {
        Name::new("t", s).unwrap()
    }

    const SPEC: StreamSpec = StreamSpec {
        size: 3,
        ttl: Duration::from_secs(60),
    };

    fn all(s: &Streams, room: &str) -> HistoryPage {
        s.read(
            &n("t"),
            &n(room),
            SPEC,
            HistoryQuery {
                after: None,
                limit: 100,
            },
        )
    }

    #[test]
    fn offsets_count_from_one_and_only_the_last_size_messages_are_kept() {
        let s = Streams::new(1 << 20);
        let first = s.append(&n("t"), &n("r"), SPEC, Bytes::from_static(b"{}"));
        assert_eq!(first.offset, 1);
        for i in 2..=5 {
            let p = s.append(
                &n("t"),
                &n("r"),
                SPEC,
                Bytes::from(format!("{{\"i\":{i}}}")),
            );
            assert_eq!((p.offset, &p.epoch), (i, &first.epoch));
        }
        let page = all(&s, "r");
        assert_eq!((page.top, page.oldest), (5, 3));
        assert_eq!(
            page.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let after = s.read(
            &n("t"),
            &n("r"),
            SPEC,
            HistoryQuery {
                after: Some(3),
                limit: 1,
            },
        );
        assert_eq!(
            after.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            vec![4]
        );
        assert_ne!(
            all(&s, "other").epoch,
            first.epoch,
            "each stream has its own epoch"
        );
    }

    #[test]
    fn a_read_of_a_new_room_fixes_its_epoch_for_the_first_publish() {
        let s = Streams::new(1 << 20);
        let page = all(&s, "quiet");
        assert_eq!((page.top, page.oldest), (0, 1));
        let p = s.append(&n("t"), &n("quiet"), SPEC, Bytes::from_static(b"{}"));
        assert_eq!((p.offset, p.epoch), (1, page.epoch));
    }

    #[test]
    fn over_the_memory_budget_the_least_recently_published_rooms_lose_their_messages_first() {
        let msg = Bytes::from(vec![b'x'; 100]);
        let per = 100 + ENTRY_OVERHEAD;
        let budget = per * 4 + STREAM_OVERHEAD * 3;
        let s = Streams::new(budget);
        for room in ["a", "b"] {
            for _ in 0..2 {
                s.append(&n("t"), &n(room), SPEC, msg.clone());
            }
        }
        assert_eq!(s.bytes(), per * 4 + STREAM_OVERHEAD * 2);
        s.append(&n("t"), &n("c"), SPEC, msg.clone());
        assert!(s.bytes() <= budget);
        let a = all(&s, "a");
        assert!(a.messages.is_empty(), "the oldest room is evicted");
        assert_eq!(a.top, 2, "its counter stays");
        assert_eq!(all(&s, "b").messages.len(), 2);
        assert_eq!(all(&s, "c").messages.len(), 1);
    }

    #[test]
    fn many_empty_streams_are_forgotten_oldest_first_within_the_budget() {
        let s = Streams::new(STREAM_OVERHEAD * 3);
        let first = all(&s, "r0").epoch;
        for i in 1..10 {
            all(&s, &format!("r{i}"));
        }
        assert!(s.bytes() <= STREAM_OVERHEAD * 3, "{}", s.bytes());
        assert_ne!(
            all(&s, "r0").epoch,
            first,
            "r0 was forgotten and starts a new epoch"
        );
    }
}
