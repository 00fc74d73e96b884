//! History and recovery (§7 of the protocol): which rooms keep history,
//! reading it, and repairing a room stream that has a gap on this node.
//!
//! The node owns the *rules* (`[[history]]`, first match wins) and the
//! *meaning* of a read (does it cover the client's position? which frames
//! does the client get?); the bus owns the storage and the numbering.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use fanout_protocol::{Name, ServerFrame, StoredMessage, StreamPosition};

use super::error::NodeError;
use super::state::{Node, NodeInner};
use crate::cluster::{HistoryPage, HistoryQuery, StreamSpec};
use crate::hub::StreamGap;
use crate::message::{Audience, Broadcast, EncodedFrame, Position, Recipients};
use crate::metrics as m;

/// How long a room stream may wait for a missing offset before the node
/// reads it from history (a message overtaken by a later one arrives within
/// milliseconds; one lost by pub/sub never does).
const GAP_WAIT: Duration = Duration::from_millis(500);
/// How often the repair task looks for gaps.
const GAP_CHECK: Duration = Duration::from_millis(100);
/// How long a gap may stay open while history cannot be read (the bus is
/// down) before the room's members are closed with 4010 to recover.
const GAP_GIVE_UP: Duration = Duration::from_secs(10);

/// A page of a room's history, decoded: what a `history` answer carries.
#[derive(Debug, Clone)]
pub struct History {
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The room's latest offset.
    pub offset: u64,
    /// The messages, oldest first, with their offsets.
    pub messages: Vec<(u64, StoredMessage)>,
}

impl History {
    /// The messages as `message` frames with their positions.
    pub fn frames(&self) -> Vec<ServerFrame<'_>> {
        self.messages
            .iter()
            .map(|(offset, m)| ServerFrame::Message(m.frame(*offset, &self.epoch)))
            .collect()
    }
}

/// Decodes a page's stored JSON; a message that does not decode (written
/// by a node of another version) is skipped and counted.
pub(crate) fn decode(page: &HistoryPage) -> Vec<(u64, StoredMessage)> {
    page.messages
        .iter()
        .filter_map(|(offset, json)| match serde_json::from_slice(json) {
            Ok(m) => Some((*offset, m)),
            Err(e) => {
                tracing::warn!(offset, error = %e, "a stored message does not decode; skipped");
                m::stream_event("undecodable", 1);
                None
            }
        })
        .collect()
}

impl Node {
    /// How `room` keeps history, if it does.
    pub(crate) fn stream_spec(&self, tenant: &Name, room: &Name) -> Option<StreamSpec> {
        self.inner.history.spec(tenant, room)
    }

    /// Reads a room's history: the latest `limit` messages, or with `since`
    /// the first `limit` after it (at most the rule's size either way).
    /// `since` of another epoch, or older than what is kept, is a
    /// [`NodeError::HistoryGap`].
    pub async fn history(
        &self,
        tenant: &Name,
        room: &Name,
        since: Option<&StreamPosition>,
        limit: Option<u32>,
    ) -> Result<History, NodeError> {
        let spec = self
            .stream_spec(tenant, room)
            .ok_or_else(|| NodeError::NoHistory(room.to_string()))?;
        let limit = limit.map_or(spec.size, |l| (l as usize).min(spec.size));
        let query = HistoryQuery {
            after: since.map(|s| s.offset),
            limit,
        };
        let page = self.inner.bus.history(tenant, room, spec, query).await?;
        if let Some(s) = since
            && !(page.covers(s.offset, &s.epoch) && page.contiguous_after(s.offset))
        {
            return Err(NodeError::HistoryGap {
                epoch: page.epoch.to_string(),
                offset: page.top,
            });
        }
        // One answer must fit a connection's send queue (half of it, with
        // room for the position each frame gets): without `since` the newest
        // messages are kept, with `since` the first ones (a client pages on).
        // Measured on the stored JSON, before anything is decoded.
        let budget = self.inner.config.limits.send_queue_bytes / 2;
        let mut page = page;
        let mut used = 0;
        let mut fits = |m: &(u64, bytes::Bytes)| {
            used += m.1.len() + 64;
            used <= budget
        };
        if since.is_some() {
            let n = page.messages.iter().take_while(|m| fits(m)).count();
            page.messages.truncate(n);
        } else {
            let n = page.messages.iter().rev().take_while(|m| fits(m)).count();
            page.messages.drain(..page.messages.len() - n);
        }
        let messages = decode(&page);
        Ok(History {
            messages,
            epoch: page.epoch,
            offset: page.top,
        })
    }

    /// Starts the task that repairs room streams with a gap on this node:
    /// it reads the missing messages from history, or closes the room's
    /// members with 4010 when history no longer has them. It ends when the
    /// node is dropped.
    pub fn spawn_stream_repair(&self) -> tokio::task::JoinHandle<()> {
        let node = Arc::downgrade(&self.inner);
        tokio::spawn(repair_loop(node))
    }
}

async fn repair_loop(node: Weak<NodeInner>) {
    let mut open_since: std::collections::HashMap<(Name, Name), Instant> = Default::default();
    loop {
        tokio::time::sleep(GAP_CHECK).await;
        let Some(inner) = node.upgrade() else { return };
        let node = Node { inner };
        let gaps = node.inner.hub.stream_gaps(GAP_WAIT);
        open_since.retain(|k, _| gaps.iter().any(|g| (&g.tenant, &g.room) == (&k.0, &k.1)));
        for gap in gaps {
            let key = (gap.tenant.clone(), gap.room.clone());
            let since = *open_since.entry(key).or_insert_with(Instant::now);
            if !node.repair(&gap).await && since.elapsed() >= GAP_GIVE_UP {
                tracing::warn!(tenant = %gap.tenant, room = %gap.room, "room stream gap not repaired in time; members must recover");
                node.inner
                    .hub
                    .break_stream_if(&gap.tenant, &gap.room, &gap.epoch, gap.last);
            }
        }
    }
}

impl Node {
    /// Fills one gap from history. False when history could not be read
    /// (retried); a gap history no longer covers breaks the stream.
    async fn repair(&self, gap: &StreamGap) -> bool {
        let Some(spec) = self.stream_spec(&gap.tenant, &gap.room) else {
            self.inner.hub.break_stream(&gap.tenant, &gap.room);
            return true;
        };
        let query = HistoryQuery {
            after: Some(gap.last),
            limit: spec.size,
        };
        let page = match self
            .inner
            .bus
            .history(&gap.tenant, &gap.room, spec, query)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::debug!(error = %e, "reading history to fill a gap failed; retrying");
                return false;
            }
        };
        // Everything after the last offset delivered must be there, up to
        // the newest (held ones included; the sequencer drops repeats).
        let decoded = decode(&page);
        if !page.covers(gap.last, &gap.epoch)
            || !page.complete_after(gap.last)
            || decoded.len() != page.messages.len()
        {
            tracing::warn!(tenant = %gap.tenant, room = %gap.room, last = gap.last, "messages missing on this node are no longer in history; members must recover");
            self.inner
                .hub
                .break_stream_if(&gap.tenant, &gap.room, &gap.epoch, gap.last);
            return true;
        }
        let mut filled = 0;
        for (offset, stored) in decoded {
            let frame = stored.frame(offset, &page.epoch);
            let Ok(encoded) = EncodedFrame::encode(&ServerFrame::Message(frame)) else {
                continue;
            };
            let broadcast = Broadcast {
                tenant: gap.tenant.clone(),
                audience: Audience::Room(gap.room.clone()),
                recipients: Recipients::Everyone,
                exclude: None,
                frame: Arc::new(encoded),
                accepted_at: std::time::Instant::now(),
                ts: stored.ts,
                id: Arc::from(stored.id.as_str()),
                position: Some(Position {
                    offset,
                    epoch: page.epoch.clone(),
                }),
            };
            self.inner.hub.deliver(&broadcast);
            filled += 1;
        }
        m::stream_event("filled", filled);
        true
    }
}
