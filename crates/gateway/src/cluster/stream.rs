//! The data of room streams (history, §7 of the protocol) and idempotent
//! publishes (§8) as they cross the [`super::Bus`] seam.
//!
//! The node decides *whether* a room keeps history (its `[[history]]`
//! rules) and passes a [`StreamSpec`]; the bus decides *where*: in memory
//! on the embedded bus, in a Redis stream in cluster mode. Either way the
//! bus assigns offsets, because only the bus sees every publish of a room
//! in one order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fanout_protocol::Name;

use crate::message::Position;

/// How long an accepted idempotency key is remembered (§8: 5 minutes).
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(5 * 60);

/// How one room keeps history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSpec {
    /// Messages kept.
    pub size: usize,
    /// How long a quiet room keeps them.
    pub ttl: Duration,
}

impl StreamSpec {
    /// How long a room's epoch and counter outlive its messages: ten times
    /// the message TTL, at least a day. A client that comes back after the
    /// messages expired but within this learns `recovered:false` with the
    /// same epoch and the next offset continues the count; after it the
    /// room starts a new epoch.
    pub fn meta_ttl(&self) -> Duration {
        (self.ttl * 10).max(Duration::from_secs(24 * 3600))
    }
}

/// Options of one publish.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishOptions<'a> {
    /// The room keeps history: assign a position and store the message.
    pub history: Option<StreamSpec>,
    /// Deliver at most once per key within [`IDEMPOTENCY_WINDOW`].
    pub idempotency_key: Option<&'a Name>,
}

/// What the bus did with a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Accepted and handed over; with its position in a room with history.
    Accepted {
        /// The message's position.
        position: Option<Position>,
    },
    /// The idempotency key was accepted before: nothing was sent. The
    /// first publish's id and position.
    Duplicate {
        /// The first publish's message id.
        id: String,
        /// Its position, in a room with history.
        position: Option<Position>,
    },
}

/// Which messages of a stream to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only messages after this offset (of whatever epoch the stream has;
    /// the caller compares epochs); `None`: the latest ones.
    pub after: Option<u64>,
    /// At most this many (0: only the epoch and latest offset).
    pub limit: usize,
}

/// Part of a room's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The latest offset (0: no message yet in this epoch).
    pub top: u64,
    /// The oldest offset still kept (`top + 1` when none is).
    pub oldest: u64,
    /// The messages asked for, oldest first: offset and the `message`
    /// frame as JSON without its position.
    pub messages: Vec<(u64, Bytes)>,
}

impl HistoryPage {
    /// Whether every message after `offset` of `epoch` is still kept (or
    /// none was published after it): recovery from there is complete.
    pub fn covers(&self, offset: u64, epoch: &str) -> bool {
        *self.epoch == *epoch && offset <= self.top && offset + 1 >= self.oldest
    }

    /// Whether `messages` are exactly the offsets following `offset`, one
    /// by one, up to `top` (a page read with a limit below the count of
    /// messages after `offset` is never complete). A hole inside a stream
    /// cannot be made by fanout's scripts, but a Redis evicting or altering
    /// keys could make one: recovery must not paper over it.
    pub fn complete_after(&self, offset: u64) -> bool {
        self.contiguous_after(offset) && offset + self.messages.len() as u64 == self.top
    }

    /// Whether `messages` are offsets `offset + 1`, `offset + 2`, … with no
    /// hole (possibly fewer than up to `top`, for a page with a limit).
    pub fn contiguous_after(&self, offset: u64) -> bool {
        self.messages
            .iter()
            .zip(offset + 1..)
            .all(|((o, _), want)| *o == want)
    }
}

/// A fresh epoch: 10 random characters of `[0-9a-z]` (about 51 bits).
pub fn new_epoch() -> Arc<str> {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let s: String = (0..10)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    Arc::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(top: u64, oldest: u64) -> HistoryPage {
        HistoryPage {
            epoch: Arc::from("e1"),
            top,
            oldest,
            messages: Vec::new(),
        }
    }

    #[test]
    fn a_page_covers_a_position_only_in_its_epoch_and_while_nothing_after_it_was_trimmed() {
        let p = page(57, 20);
        assert!(p.covers(41, "e1"));
        assert!(
            p.covers(19, "e1"),
            "20 is the first one missed and still kept"
        );
        assert!(!p.covers(18, "e1"), "19 was trimmed");
        assert!(p.covers(57, "e1"), "nothing missed");
        assert!(!p.covers(58, "e1"), "ahead of the stream");
        assert!(!p.covers(41, "e2"), "another epoch");
        let mut holed = page(3, 1);
        holed.messages = vec![(1, Bytes::new()), (3, Bytes::new())];
        assert!(!holed.complete_after(0), "offset 2 is missing");
        holed.messages = vec![(2, Bytes::new()), (3, Bytes::new())];
        assert!(holed.complete_after(1));
        assert!(!holed.complete_after(0), "offset 1 is missing");
        let expired = page(57, 58);
        assert!(expired.covers(57, "e1"));
        assert!(!expired.covers(56, "e1"));
        assert!(page(0, 1).covers(0, "e1"));
    }
}
