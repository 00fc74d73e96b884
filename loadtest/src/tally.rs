//! Delivery accounting: what every connection received, checked against
//! what was published.
//!
//! Each connection keeps, per stream, the next sequence number it expects
//! and the gaps it has seen ([`Streams`]); that alone tells a new message
//! from a duplicate from a late (out-of-order) one, exactly, in memory
//! proportional to the gaps rather than to the messages. The counts go into
//! one [`Tally`] per group of connections (atomics, plus latency histograms
//! sharded by connection so that recording rarely contends). Loss is not
//! counted on arrival: it is `expected − received` once the publishers say
//! how many messages they got accepted.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

use crate::latency;
use crate::wire::Probe;

/// Latency histogram shards per tally; a power of two near the core count × 8.
const SHARDS: usize = 16;
/// Gap ranges remembered per stream. Beyond this (massive loss) the oldest
/// gaps are forgotten, and a message arriving into a forgotten gap is
/// counted as a duplicate instead of a late arrival.
const MAX_GAPS: usize = 4096;

/// Bits of a stream id that name its destination (a room or user index of
/// `rooms` / `users`); the bits above count ramp steps ([`step_stream`]).
const DEST_BITS: u32 = 32;

/// Which streams a connection should receive, for loss accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Every stream published in the run (one shared room).
    All,
    /// The streams into one destination (its own small room, or its user):
    /// those whose low [`DEST_BITS`] bits are this id. Without a ramp that
    /// is exactly one stream; a ramp gives each step its own.
    One(u64),
}

/// The stream of ramp step `step` into destination `dest` (`dest` itself
/// at step 0), so that every step's sequence numbers start afresh and its
/// counts stand alone.
pub(crate) fn step_stream(dest: u64, step: u64) -> u64 {
    debug_assert!(dest < 1 << DEST_BITS, "destination {dest} too large");
    (step << DEST_BITS) | dest
}

/// How one arrival relates to what the connection had seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// First copy, in order.
    New,
    /// First copy, but after a later message of the same stream.
    Late,
    /// Seen before.
    Duplicate,
}

#[derive(Debug, Default)]
struct StreamState {
    /// One past the highest sequence number seen.
    next: u64,
    /// Half-open ranges below `next` not seen yet.
    gaps: Vec<(u64, u64)>,
}

impl StreamState {
    fn observe(&mut self, seq: u64) -> Arrival {
        if seq >= self.next {
            if seq > self.next {
                if self.gaps.len() == MAX_GAPS {
                    self.gaps.remove(0);
                }
                self.gaps.push((self.next, seq));
            }
            self.next = seq + 1;
            return Arrival::New;
        }
        let Some(i) = self.gaps.iter().position(|&(a, b)| a <= seq && seq < b) else {
            return Arrival::Duplicate;
        };
        let (a, b) = self.gaps[i];
        match (seq == a, seq + 1 == b) {
            (true, true) => {
                self.gaps.remove(i);
            }
            (true, false) => self.gaps[i].0 = seq + 1,
            (false, true) => self.gaps[i].1 = seq,
            (false, false) => {
                self.gaps[i].1 = seq;
                self.gaps.insert(i + 1, (seq + 1, b));
            }
        }
        Arrival::Late
    }
}

/// One connection's view of its streams.
#[derive(Debug)]
pub(crate) struct Streams {
    expect: Expect,
    /// Stream id → state; a handful of streams per connection, so a vector.
    states: Vec<(u64, StreamState)>,
}

impl Streams {
    /// No stream seen yet.
    pub(crate) fn new(expect: Expect) -> Self {
        Self {
            expect,
            states: Vec::new(),
        }
    }

    /// Classifies one arrival; `None` when the stream is not one this
    /// connection should receive at all (a routing or isolation bug).
    pub(crate) fn observe(&mut self, probe: &Probe) -> Option<Arrival> {
        if let Expect::One(s) = self.expect
            && s != probe.s & ((1 << DEST_BITS) - 1)
        {
            return None;
        }
        let idx = match self.states.iter().position(|(s, _)| *s == probe.s) {
            Some(i) => i,
            None => {
                self.states.push((probe.s, StreamState::default()));
                self.states.len() - 1
            }
        };
        Some(self.states[idx].1.observe(probe.q))
    }
}

/// Cumulative counts of a tally at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// First copies of expected messages.
    pub(crate) received: u64,
    /// Copies of a message already received by the same connection.
    pub(crate) duplicates: u64,
    /// First copies that arrived after a later message of their stream.
    pub(crate) order_violations: u64,
    /// Messages of a stream the connection should not receive, or frames
    /// that could not be decoded.
    pub(crate) unexpected: u64,
    /// Arrival time of the latest delivery, µs since the epoch.
    pub(crate) last_delivery_us: u64,
}

impl Counts {
    /// The counts since `earlier`.
    pub(crate) fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            received: self.received - earlier.received,
            duplicates: self.duplicates - earlier.duplicates,
            order_violations: self.order_violations - earlier.order_violations,
            unexpected: self.unexpected - earlier.unexpected,
            last_delivery_us: self.last_delivery_us,
        }
    }
}

/// Shared counters of a group of connections.
pub(crate) struct Tally {
    received: AtomicU64,
    duplicates: AtomicU64,
    order_violations: AtomicU64,
    unexpected: AtomicU64,
    last_delivery_us: AtomicU64,
    /// Latency of first copies, µs; a std mutex because it is held for one
    /// `record` and never across an `.await`.
    latency: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            order_violations: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            latency: (0..SHARDS)
                .map(|_| Mutex::new(latency::new_histogram()))
                .collect(),
        }
    }
}

impl Tally {
    /// Accounts one arrival at `now_us` on connection `conn`.
    pub(crate) fn record(&self, conn: usize, arrival: Option<Arrival>, probe: &Probe, now_us: u64) {
        match arrival {
            None => {
                self.unexpected.fetch_add(1, Ordering::Relaxed);
            }
            Some(Arrival::Duplicate) => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Some(first) => {
                if first == Arrival::Late {
                    self.order_violations.fetch_add(1, Ordering::Relaxed);
                }
                self.received.fetch_add(1, Ordering::Relaxed);
                self.last_delivery_us.fetch_max(now_us, Ordering::Relaxed);
                let mut h = self.latency[conn % SHARDS]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                latency::record(&mut h, now_us.saturating_sub(probe.t));
            }
        }
    }

    /// Counts a frame that is not one of ours or could not be decoded.
    pub(crate) fn record_unexpected(&self) {
        self.unexpected.fetch_add(1, Ordering::Relaxed);
    }

    /// First copies received so far.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// All counters now.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            received: self.received.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            order_violations: self.order_violations.load(Ordering::Relaxed),
            unexpected: self.unexpected.load(Ordering::Relaxed),
            last_delivery_us: self.last_delivery_us.load(Ordering::Relaxed),
        }
    }

    /// The latency recorded since the last call, merged over the shards;
    /// the shards start empty again.
    pub(crate) fn take_latency(&self) -> Histogram<u64> {
        let mut out = latency::new_histogram();
        for shard in &self.latency {
            let mut h = shard.lock().unwrap_or_else(|p| p.into_inner());
            latency::merge(&mut out, &h);
            h.reset();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: u64, q: u64) -> Probe {
        Probe { s, q, t: 0 }
    }

    #[test]
    fn in_order_gaps_late_and_duplicates_are_told_apart() {
        let mut st = Streams::new(Expect::All);
        let seq = [0, 1, 4, 2, 2, 3, 4, 7, 5, 6, 0];
        let got: Vec<_> = seq.iter().map(|&q| st.observe(&p(1, q)).unwrap()).collect();
        use Arrival::*;
        assert_eq!(
            got,
            [
                New, New, New, Late, Duplicate, Late, Duplicate, New, Late, Late, Duplicate
            ]
        );
        // Another stream is independent.
        assert_eq!(st.observe(&p(2, 0)), Some(New));
    }

    #[test]
    fn a_gap_split_in_the_middle_keeps_both_halves() {
        let mut st = StreamState::default();
        st.observe(10);
        assert_eq!(st.gaps, vec![(0, 10)]);
        assert_eq!(st.observe(5), Arrival::Late);
        assert_eq!(st.gaps, vec![(0, 5), (6, 10)]);
        assert_eq!(st.observe(5), Arrival::Duplicate);
        assert_eq!(st.observe(0), Arrival::Late);
        assert_eq!(st.observe(9), Arrival::Late);
        assert_eq!(st.gaps, vec![(1, 5), (6, 9)]);
    }

    #[test]
    fn foreign_streams_are_unexpected() {
        let mut st = Streams::new(Expect::One(7));
        assert_eq!(st.observe(&p(7, 0)), Some(Arrival::New));
        assert_eq!(st.observe(&p(8, 0)), None);
    }

    #[test]
    fn each_ramp_step_is_its_own_stream_into_the_same_destination() {
        let mut st = Streams::new(Expect::One(7));
        assert_eq!(step_stream(7, 0), 7);
        assert_eq!(st.observe(&p(step_stream(7, 0), 0)), Some(Arrival::New));
        assert_eq!(st.observe(&p(step_stream(7, 0), 1)), Some(Arrival::New));
        // A new step starts its sequence afresh: not a duplicate.
        assert_eq!(st.observe(&p(step_stream(7, 1), 0)), Some(Arrival::New));
        assert_eq!(
            st.observe(&p(step_stream(7, 1), 0)),
            Some(Arrival::Duplicate)
        );
        assert_eq!(st.observe(&p(step_stream(8, 1), 0)), None);
    }

    #[test]
    fn the_tally_counts_and_hands_out_latency_once() {
        let t = Tally::default();
        let probe = Probe {
            s: 1,
            q: 0,
            t: 1_000,
        };
        t.record(0, Some(Arrival::New), &probe, 3_000);
        t.record(1, Some(Arrival::Late), &probe, 4_000);
        t.record(2, Some(Arrival::Duplicate), &probe, 5_000);
        t.record(3, None, &probe, 5_000);
        let c = t.counts();
        assert_eq!(
            (c.received, c.order_violations, c.duplicates, c.unexpected),
            (2, 1, 1, 1)
        );
        assert_eq!(c.last_delivery_us, 4_000);
        assert_eq!(t.take_latency().len(), 2);
        assert_eq!(t.take_latency().len(), 0);
    }
}
