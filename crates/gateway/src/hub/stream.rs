//! Delivery in stream order, for rooms with history.
//!
//! A message with a position passes the room's [`Sequencer`] (under the
//! room's entry lock) before it reaches members, so every member sees the
//! room's offsets in order, each once. A member that is joining waits in a
//! *pending* state: what arrives for it is buffered until its subscribe
//! has been answered (ack, then the replay from history), and
//! [`Hub::go_live`] then hands it what followed the replay and makes it
//! live. See `docs/architecture.md` ("Recovery without gaps") for why this
//! leaves no gap and no duplicate between replay and live messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::one::RefMut;
use fanout_protocol::{CloseCode, Name};

use super::sequencer::{Admit, GoLive, MAX_HELD, StreamGap};
use super::{ConnHandle, Delivered, Hub, MemberStream, Room, push_to};
use crate::message::{Broadcast, Position};
use crate::metrics as m;

/// Close reason of a member whose room stream broke on this node.
const BROKEN_REASON: &str = "room stream interrupted; resubscribe with since to recover";

impl Hub {
    /// Joins `conn` to `room` as a *pending* member of its stream (see the
    /// module doc). Must be followed by [`Hub::go_live`] or a leave.
    pub fn join_pending(
        &self,
        conn: &Arc<ConnHandle>,
        room: &Name,
        presence_events: bool,
    ) -> super::Joined {
        self.join_as(conn, room, presence_events, true)
    }

    /// Makes a pending member live: the room's stream is anchored at
    /// `epoch`/`top` if it was not yet (this member's history read says where
    /// the stream stands). The member's replay ended at `top`; the room has
    /// delivered up to its position `last`; the member's buffer holds every
    /// positioned message that reached this node since it joined (in
    /// arrival order, repeats included), so it gets `top+1 ..= last` from
    /// there, in order. If its buffer misses one of those (pub/sub lost it),
    /// the member is closed with 4010 to recover rather than skip it.
    pub fn go_live(&self, conn: &ConnHandle, room: &Name, epoch: &Arc<str>, top: u64) -> GoLive {
        let Some(mut r) = self.room_mut(&conn.tenant, room) else {
            return GoLive::Gone;
        };
        let seq = r.stream.get_or_insert_with(Default::default);
        let Some(released) = seq.anchor(epoch, top) else {
            self.break_locked(&mut r);
            self.note_gap(&r, conn.tenant.clone(), room.clone());
            return GoLive::Broken;
        };
        let Some((_, last)) = seq.position().filter(|(e, _)| e == epoch) else {
            self.break_locked(&mut r);
            self.note_gap(&r, conn.tenant.clone(), room.clone());
            return GoLive::Broken;
        };
        let mut out = Delivered::default();
        for msg in &released {
            deliver_to_members(&mut r, msg, &mut out);
        }
        let Some(member) = r.members.get_mut(&conn.id) else {
            return GoLive::Gone;
        };
        let stream = member.stream.get_or_insert_with(Default::default);
        let mut pending = stream.pending.take().unwrap_or_default();
        stream.after = top.max(last);
        pending.retain(|m| {
            m.position
                .as_ref()
                .is_some_and(|p| p.offset > top && p.offset <= last)
        });
        pending.sort_by_key(|m| m.position.as_ref().map_or(0, |p| p.offset));
        pending.dedup_by_key(|m| m.position.as_ref().map_or(0, |p| p.offset));
        let complete = pending
            .iter()
            .zip(top + 1..)
            .all(|(m, want)| m.position.as_ref().is_some_and(|p| p.offset == want))
            && pending.len() as u64 == last.saturating_sub(top);
        if !complete {
            m::stream_event("lost", 1);
            member
                .conn
                .queue
                .close(CloseCode::InsufficientState, BROKEN_REASON);
            return GoLive::Broken;
        }
        for msg in &pending {
            push_to(&member.conn, msg, &mut out);
        }
        self.note_gap(&r, conn.tenant.clone(), room.clone());
        GoLive::Live
    }

    /// Declares the room's stream broken only if it still stands where a
    /// repair saw it (`epoch`, `last`) with a gap open: a repair that read
    /// history slowly must not break a stream that has caught up since.
    pub fn break_stream_if(&self, tenant: &Name, room: &Name, epoch: &Arc<str>, last: u64) {
        if let Some(mut r) = self.room_mut(tenant, room) {
            let still = r.stream.as_ref().is_some_and(|s| {
                s.gap_since().is_some()
                    && s.position().is_some_and(|(e, l)| e == *epoch && l == last)
            });
            if still {
                m::stream_event("lost", 1);
                self.break_locked(&mut r);
                self.note_gap(&r, tenant.clone(), room.clone());
            }
        }
    }

    /// Delivers a positioned room message through the room's stream order.
    pub(super) fn deliver_in_order(
        &self,
        msg: &Broadcast,
        room: &Name,
        pos: &Position,
    ) -> Delivered {
        let mut out = Delivered::default();
        let Some(mut r) = self.room_mut(&msg.tenant, room) else {
            return out;
        };
        // A room whose members all joined without history (this node has no
        // rule for it, e.g. while a rule is being rolled out) is delivered
        // as it comes, as any room without history.
        let Some(seq) = r.stream.as_deref_mut() else {
            for member in r.members.values() {
                push_to(&member.conn, msg, &mut out);
            }
            m::delivered(out.queued, msg.accepted_at);
            return out;
        };
        let had_gap = seq.gap_since().is_some();
        let verdict = seq.admit(msg, pos);
        // Joining members keep every arrival, whatever the room's order made
        // of it: their own history read decides what they need (`go_live`).
        if !matches!(verdict, Admit::Broken) {
            buffer_for_pending(&mut r, msg);
        }
        match verdict {
            Admit::Deliver(list) => {
                for b in &list {
                    deliver_to_members(&mut r, b, &mut out);
                }
                if list.len() > 1 {
                    m::stream_event("reordered", list.len() as u64 - 1);
                }
            }
            Admit::Duplicate => m::stream_event("duplicate", 1),
            Admit::Held => {}
            Admit::Broken => {
                m::stream_event("lost", 1);
                self.break_locked(&mut r);
            }
        }
        if had_gap != r.stream.as_ref().is_some_and(|s| s.gap_since().is_some()) {
            self.note_gap(&r, msg.tenant.clone(), room.clone());
        }
        m::delivered(out.queued, msg.accepted_at);
        out
    }

    /// Rooms whose stream has waited longer than `wait` for a missing offset.
    pub fn stream_gaps(&self, wait: Duration) -> Vec<StreamGap> {
        let now = Instant::now();
        let due: Vec<(Name, Name)> = self
            .lock_gaps()
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= wait)
            .map(|(k, _)| k.clone())
            .collect();
        due.into_iter()
            .filter_map(|(tenant, room)| {
                let r = self.inner.rooms.get(&(tenant.clone(), room.clone()))?;
                let (epoch, last) = r.stream.as_ref()?.position()?;
                Some(StreamGap {
                    tenant,
                    room,
                    epoch,
                    last,
                })
            })
            .collect()
    }

    /// Declares a room's stream broken on this node: its members are closed
    /// with 4010 (they reconnect and recover from history) and the stream
    /// starts over with the next member.
    pub fn break_stream(&self, tenant: &Name, room: &Name) {
        if let Some(mut r) = self.room_mut(tenant, room) {
            m::stream_event("lost", 1);
            self.break_locked(&mut r);
            self.note_gap(&r, tenant.clone(), room.clone());
        }
    }

    fn room_mut(&self, tenant: &Name, room: &Name) -> Option<RefMut<'_, (Name, Name), Room>> {
        self.inner.rooms.get_mut(&(tenant.clone(), room.clone()))
    }

    fn break_locked(&self, r: &mut Room) {
        for member in r.members.values() {
            member
                .conn
                .queue
                .close(CloseCode::InsufficientState, BROKEN_REASON);
        }
        if let Some(seq) = r.stream.as_mut() {
            seq.reset();
        }
    }

    /// Keeps the gap registry in step with the room's stream.
    fn note_gap(&self, r: &Room, tenant: Name, room: Name) {
        let since = r.stream.as_ref().and_then(|s| s.gap_since());
        let mut gaps = self.lock_gaps();
        match since {
            Some(t) => {
                gaps.entry((tenant, room)).or_insert(t);
            }
            None => {
                gaps.remove(&(tenant, room));
            }
        }
    }

    /// Forgets a room's gap (the room is gone).
    pub(super) fn gap_closed(&self, key: &(Name, Name)) {
        self.lock_gaps().remove(key);
    }

    fn lock_gaps(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(Name, Name), Instant>> {
        self.inner.gaps.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Hands one in-order message to a room's live members (unless their
/// replay already had it); joining members buffer every arrival instead
/// (`buffer_for_pending`).
fn deliver_to_members(r: &mut Room, msg: &Broadcast, out: &mut Delivered) {
    let offset = msg.position.as_ref().map_or(0, |p| p.offset);
    for member in r.members.values_mut() {
        match member.stream.as_deref_mut() {
            Some(MemberStream {
                pending: Some(_), ..
            }) => {}
            Some(MemberStream { after, .. }) if offset <= *after => {}
            _ => push_to(&member.conn, msg, out),
        }
    }
}

/// Keeps an arriving positioned message for every joining member.
fn buffer_for_pending(r: &mut Room, msg: &Broadcast) {
    for member in r.members.values_mut() {
        let Some(MemberStream {
            pending: Some(buf), ..
        }) = member.stream.as_deref_mut()
        else {
            continue;
        };
        if member.conn.queue.is_closing() {
            continue;
        }
        if buf.len() >= MAX_HELD {
            // As for a full send queue: the member cannot keep up.
            member
                .conn
                .queue
                .close(CloseCode::SlowConsumer, "fell behind while subscribing");
            m::slow_consumer_closed();
            continue;
        }
        buf.push(msg.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use fanout_protocol::{Codec, MessageFrame, Scope, ServerFrame};
    use tokio_tungstenite::tungstenite::Message;

    use super::*;
    use crate::hub::queue::{Next, SendQueue};
    use crate::hub::{ConnLimits, Hub};
    use crate::message::{Audience, EncodedFrame, Recipients};

    fn name(s: &str) -> Name {
        Name::new("test", s).unwrap()
    }

    fn conn(hub: &Hub, user: &str) -> Arc<ConnHandle> {
        let id = hub.next_conn_id();
        let c = Arc::new(ConnHandle::new(
            id,
            name("t"),
            name(user),
            Codec::Json,
            SendQueue::new(64, 1 << 20),
        ));
        hub.try_insert(c.clone(), ConnLimits::default()).unwrap();
        c
    }

    fn msg(offset: u64, epoch: &str) -> Broadcast {
        let data = serde_json::json!(offset);
        let frame = ServerFrame::Message(MessageFrame {
            scope: Scope::Room,
            room: Some("r"),
            event: "e",
            data: &data,
            id: "m",
            ts: 0,
            offset: Some(offset),
            epoch: Some(epoch),
        });
        Broadcast {
            tenant: name("t"),
            audience: Audience::Room(name("r")),
            recipients: Recipients::Everyone,
            exclude: None,
            frame: Arc::new(EncodedFrame::encode(&frame).unwrap()),
            accepted_at: Instant::now(),
            ts: 0,
            id: Arc::from("m"),
            position: Some(Position {
                offset,
                epoch: Arc::from(epoch),
            }),
        }
    }

    /// The offsets queued for `c`, in order, draining its queue.
    fn queued(c: &ConnHandle) -> Vec<u64> {
        let mut out = Vec::new();
        while let Next::Frame(Message::Text(t)) = c.queue.pop() {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            out.push(v["offset"].as_u64().unwrap());
        }
        out
    }

    #[test]
    fn a_pending_member_of_a_new_room_anchors_it_and_gets_what_followed_its_read() {
        let hub = Hub::new();
        let a = conn(&hub, "a");
        let e: Arc<str> = Arc::from("e");
        hub.join_pending(&a, &name("r"), false);
        for o in [2, 3] {
            hub.deliver(&msg(o, "e"));
        }
        assert!(queued(&a).is_empty(), "pending: nothing queued yet");
        assert_eq!(hub.go_live(&a, &name("r"), &e, 1), GoLive::Live);
        assert_eq!(queued(&a), vec![2, 3]);
        hub.deliver(&msg(3, "e"));
        hub.deliver(&msg(4, "e"));
        assert_eq!(queued(&a), vec![4], "3 again is a duplicate");
    }

    #[test]
    fn a_joining_member_skips_what_its_replay_had_and_live_members_miss_nothing() {
        let hub = Hub::new();
        let e: Arc<str> = Arc::from("e");
        let a = conn(&hub, "a");
        hub.join_pending(&a, &name("r"), false);
        hub.go_live(&a, &name("r"), &e, 4);
        hub.deliver(&msg(5, "e"));
        // b's history read saw 7: 6 and 7 are still on their way here.
        let b = conn(&hub, "b");
        hub.join_pending(&b, &name("r"), false);
        assert_eq!(hub.go_live(&b, &name("r"), &e, 7), GoLive::Live);
        for o in [6, 7, 8] {
            hub.deliver(&msg(o, "e"));
        }
        assert_eq!(queued(&a), vec![5, 6, 7, 8]);
        assert_eq!(queued(&b), vec![8], "6 and 7 came in b's replay");
        // c reads at 8 while 9 is already buffered for it.
        let c = conn(&hub, "c");
        hub.join_pending(&c, &name("r"), false);
        hub.deliver(&msg(9, "e"));
        hub.go_live(&c, &name("r"), &e, 8);
        assert_eq!(queued(&c), vec![9]);
    }

    #[test]
    fn two_members_joining_at_once_each_get_what_followed_their_own_read() {
        // a read 5, then 6 and 7 were published, b read 7; b goes live first.
        for arrival in [[6, 7], [7, 6]] {
            let hub = Hub::new();
            let e: Arc<str> = Arc::from("e");
            let a = conn(&hub, "a");
            let b = conn(&hub, "b");
            hub.join_pending(&a, &name("r"), false);
            hub.join_pending(&b, &name("r"), false);
            for o in arrival {
                hub.deliver(&msg(o, "e"));
            }
            assert_eq!(hub.go_live(&b, &name("r"), &e, 7), GoLive::Live);
            assert_eq!(hub.go_live(&a, &name("r"), &e, 5), GoLive::Live);
            hub.deliver(&msg(8, "e"));
            assert_eq!(queued(&a), vec![6, 7, 8], "arrival {arrival:?}");
            assert_eq!(queued(&b), vec![8]);
        }
    }

    #[test]
    fn a_joining_member_whose_buffer_misses_an_offset_is_closed_not_skipped() {
        let hub = Hub::new();
        let e: Arc<str> = Arc::from("e");
        let a = conn(&hub, "a");
        hub.join_pending(&a, &name("r"), false);
        hub.go_live(&a, &name("r"), &e, 3);
        // b joins and reads 3, but 4 reached this node before b joined.
        hub.deliver(&msg(4, "e"));
        let b = conn(&hub, "b");
        hub.join_pending(&b, &name("r"), false);
        hub.deliver(&msg(5, "e"));
        assert_eq!(hub.go_live(&b, &name("r"), &e, 3), GoLive::Broken);
        match b.queue.pop() {
            Next::Close(c) => assert_eq!(c.code, CloseCode::InsufficientState),
            other => panic!("expected a close, got {other:?}"),
        }
        assert_eq!(queued(&a), vec![4, 5], "the live member is not affected");
    }

    #[test]
    fn another_epoch_under_live_members_closes_them_with_4010() {
        let hub = Hub::new();
        let a = conn(&hub, "a");
        hub.join_pending(&a, &name("r"), false);
        hub.go_live(&a, &name("r"), &Arc::from("e1"), 0);
        hub.deliver(&msg(1, "e2"));
        assert!(a.queue.is_closing());
        match a.queue.pop() {
            Next::Close(c) => assert_eq!(c.code, CloseCode::InsufficientState),
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[test]
    fn members_that_joined_without_history_get_positioned_messages_as_they_come() {
        // A node without the room's rule (a rule being rolled out): its
        // members are not held back waiting for an anchor.
        let hub = Hub::new();
        let a = conn(&hub, "a");
        hub.join(&a, &name("r"), false);
        for o in [5, 3, 4] {
            hub.deliver(&msg(o, "e"));
        }
        assert_eq!(queued(&a), vec![5, 3, 4]);
    }

    #[test]
    fn a_held_gap_is_reported_until_filled() {
        let hub = Hub::new();
        let a = conn(&hub, "a");
        hub.join_pending(&a, &name("r"), false);
        hub.go_live(&a, &name("r"), &Arc::from("e"), 0);
        hub.deliver(&msg(2, "e"));
        let gaps = hub.stream_gaps(Duration::ZERO);
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].last, 0);
        hub.deliver(&msg(1, "e"));
        assert!(hub.stream_gaps(Duration::ZERO).is_empty());
        assert_eq!(queued(&a), vec![1, 2]);
    }
}
