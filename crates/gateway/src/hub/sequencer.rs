//! The order of one room's stream on this node.
//!
//! In a room with history every message has an offset, and every member
//! must see offsets 1, 2, 3, … with no gap, no repeat and no reordering —
//! even though messages reach a node by two paths that can overtake each
//! other (this node's own publishes, delivered after the bus numbered
//! them, and other nodes' publishes, from Redis pub/sub), and pub/sub can
//! lose a message while the subscriber connection is down.
//!
//! A [`Sequencer`] per room puts them back in order. It knows the last
//! offset delivered; the next one is delivered at once, older ones are
//! dropped as duplicates, and newer ones are held until the missing
//! offsets arrive (or are read from history by the node's repair task, or
//! the room is declared broken and its members closed with 4010). Until
//! the first member goes live it has no position yet ("unanchored") and
//! holds everything: the member's history read then says where the stream
//! stands, and the held messages are released from there.
//!
//! Plain data, no locks, no I/O: the hub calls it under the room's entry lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use fanout_protocol::Name;

use crate::message::{Broadcast, Position};

/// How a joining member went live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoLive {
    /// Live: it receives every message after the offset it was given.
    Live,
    /// The room's stream on this node is of another epoch than the
    /// member's history read: the stream broke; the room's members
    /// (this one included) are closed with 4010.
    Broken,
    /// The connection is no longer a member (it left meanwhile).
    Gone,
}

/// A room whose stream has waited for a missing offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamGap {
    /// Tenant.
    pub tenant: Name,
    /// Room.
    pub room: Name,
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The last offset delivered in order; the next one is missing.
    pub last: u64,
}

/// Most messages a room holds while waiting for a missing offset; beyond
/// it the stream is declared broken (members close with 4010 and recover).
pub(crate) const MAX_HELD: usize = 4_096;

/// What to do with an arriving message.
#[derive(Debug)]
pub(crate) enum Admit {
    /// Deliver these, in this order (the message, then what it released).
    Deliver(Vec<Broadcast>),
    /// Already delivered (or older than the stream's position): drop it.
    Duplicate,
    /// Held until what comes before it arrives.
    Held,
    /// Another epoch, or too much held: the stream broke on this node.
    Broken,
}

/// A room stream's position on this node.
#[derive(Debug, Default)]
pub(crate) struct Sequencer {
    /// The epoch and the last offset delivered; `None` until anchored.
    at: Option<(Arc<str>, u64)>,
    /// Messages waiting for earlier offsets, by offset.
    held: BTreeMap<u64, Broadcast>,
    /// Since when something has been held (a gap is open).
    gap_since: Option<Instant>,
}

impl Sequencer {
    /// Takes a message with its position.
    pub(crate) fn admit(&mut self, msg: &Broadcast, pos: &Position) -> Admit {
        let Some((epoch, last)) = &self.at else {
            return self.hold(msg, pos);
        };
        if **epoch != *pos.epoch {
            return Admit::Broken;
        }
        if pos.offset <= *last || self.held.contains_key(&pos.offset) {
            return Admit::Duplicate;
        }
        if pos.offset == *last + 1 {
            let mut out = vec![msg.clone()];
            self.advance(pos.offset, &mut out);
            return Admit::Deliver(out);
        }
        self.hold(msg, pos)
    }

    fn hold(&mut self, msg: &Broadcast, pos: &Position) -> Admit {
        if self.held.len() >= MAX_HELD {
            return Admit::Broken;
        }
        if let Some(first) = self.held.values().next()
            && first
                .position
                .as_ref()
                .is_some_and(|p| p.epoch != pos.epoch)
        {
            return Admit::Broken;
        }
        self.held.insert(pos.offset, msg.clone());
        self.gap_since.get_or_insert_with(Instant::now);
        Admit::Held
    }

    /// Sets `last` to `offset` and moves every held message that now
    /// follows on into `out`.
    fn advance(&mut self, mut offset: u64, out: &mut Vec<Broadcast>) {
        while let Some(next) = self.held.remove(&(offset + 1)) {
            offset += 1;
            out.push(next);
        }
        if let Some((_, last)) = &mut self.at {
            *last = offset;
        }
        // Held messages at or below the new position are duplicates.
        self.held = self.held.split_off(&(offset + 1));
        if self.held.is_empty() {
            self.gap_since = None;
        }
    }

    /// Anchors an unanchored stream at `epoch`/`top` (a joining member's
    /// history read) and returns the held messages that follow on from it.
    /// On an anchored stream it changes nothing and returns nothing. `None`
    /// when the held messages are of another epoch: the stream broke.
    pub(crate) fn anchor(&mut self, epoch: &Arc<str>, top: u64) -> Option<Vec<Broadcast>> {
        if self.at.is_some() {
            return Some(Vec::new());
        }
        if let Some(first) = self.held.values().next()
            && first.position.as_ref().is_some_and(|p| p.epoch != *epoch)
        {
            return None;
        }
        self.at = Some((epoch.clone(), top));
        let mut out = Vec::new();
        self.advance(top, &mut out);
        Some(out)
    }

    /// The epoch and last offset delivered, once anchored.
    pub(crate) fn position(&self) -> Option<(Arc<str>, u64)> {
        self.at.clone()
    }

    /// Since when a gap has been open (something held on an anchored stream).
    pub(crate) fn gap_since(&self) -> Option<Instant> {
        self.at.as_ref().and(self.gap_since)
    }

    /// Forgets everything: the next member anchors it again.
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fanout_protocol::{Name, ServerFrame};

    use super::*;
    use crate::message::{Audience, EncodedFrame, Recipients};

    fn msg(offset: u64, epoch: &str) -> (Broadcast, Position) {
        let pos = Position {
            offset,
            epoch: Arc::from(epoch),
        };
        let b = Broadcast {
            tenant: Name::new("t", "t").unwrap(),
            audience: Audience::Room(Name::new("r", "r").unwrap()),
            recipients: Recipients::Everyone,
            exclude: None,
            frame: Arc::new(EncodedFrame::encode(&ServerFrame::ack(None)).unwrap()),
            accepted_at: std::time::Instant::now(),
            ts: 0,
            id: Arc::from(offset.to_string()),
            position: Some(pos.clone()),
        };
        (b, pos)
    }

    fn offsets(a: Admit) -> Vec<u64> {
        match a {
            Admit::Deliver(v) => v
                .iter()
                .map(|b| b.position.as_ref().unwrap().offset)
                .collect(),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    fn admit(s: &mut Sequencer, offset: u64, epoch: &str) -> Admit {
        let (b, p) = msg(offset, epoch);
        s.admit(&b, &p)
    }

    #[test]
    fn in_order_out_of_order_and_repeated_offsets() {
        let mut s = Sequencer::default();
        assert_eq!(s.anchor(&Arc::from("e"), 4).map(|v| v.len()), Some(0));
        assert_eq!(offsets(admit(&mut s, 5, "e")), vec![5]);
        assert!(matches!(admit(&mut s, 7, "e"), Admit::Held));
        assert!(matches!(admit(&mut s, 8, "e"), Admit::Held));
        assert!(s.gap_since().is_some());
        assert!(
            matches!(admit(&mut s, 7, "e"), Admit::Duplicate),
            "already held"
        );
        assert_eq!(offsets(admit(&mut s, 6, "e")), vec![6, 7, 8]);
        assert!(s.gap_since().is_none());
        assert!(matches!(admit(&mut s, 8, "e"), Admit::Duplicate));
        assert!(matches!(admit(&mut s, 2, "e"), Admit::Duplicate));
        assert!(matches!(admit(&mut s, 9, "other"), Admit::Broken));
    }

    #[test]
    fn an_unanchored_stream_holds_until_a_member_anchors_it_then_releases_what_follows() {
        let mut s = Sequencer::default();
        for o in [3, 4, 6] {
            assert!(matches!(admit(&mut s, o, "e"), Admit::Held));
        }
        assert!(
            s.gap_since().is_none(),
            "holding before the anchor is no gap"
        );
        let released = s.anchor(&Arc::from("e"), 3).unwrap();
        let got: Vec<u64> = released
            .iter()
            .map(|b| b.position.as_ref().unwrap().offset)
            .collect();
        assert_eq!(
            got,
            vec![4],
            "3 was in the member's history read; 6 waits for 5"
        );
        assert!(s.gap_since().is_some());
        assert_eq!(s.position().map(|p| p.1), Some(4));
        assert_eq!(offsets(admit(&mut s, 5, "e")), vec![5, 6]);
    }

    #[test]
    fn too_much_held_breaks_the_stream() {
        let mut s = Sequencer::default();
        s.anchor(&Arc::from("e"), 0);
        for o in 0..MAX_HELD as u64 {
            assert!(matches!(admit(&mut s, o + 2, "e"), Admit::Held));
        }
        assert!(matches!(
            admit(&mut s, MAX_HELD as u64 + 2, "e"),
            Admit::Broken
        ));
    }
}
