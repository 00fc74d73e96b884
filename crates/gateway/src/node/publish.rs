//! Publishing: validate, encode once, hand to the bus, deliver locally.
//!
//! A batch is two calls: [`Node::prepare`] every entry (validation and
//! encoding, where a batch can still be refused whole), then [`Node::send`]
//! each in order.

use std::sync::Arc;
use std::time::Instant;

use fanout_protocol::api::PublishRequest;
use fanout_protocol::{MessageFrame, Name, Scope, ServerFrame};
use serde_json::Value;

use super::error::NodeError;
use super::state::Node;
use crate::clock::now_millis;
use crate::cluster::{PublishOptions, Published};
use crate::message::{Audience, Broadcast, ConnId, EncodedFrame, Position, Recipients};
use crate::metrics as m;

/// The longest `,"offset":N,"epoch":"E"` a frame gets in a room with
/// history (a 20-digit offset, a 10-character epoch).
const POSITION_SUFFIX_MAX: usize = r#","offset":,"epoch":"""#.len() + 20 + 10;

/// Where a publish came from (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishSource {
    /// A client's `publish` frame.
    Client,
    /// The backend HTTP API.
    Http,
}

/// A validated publish, ready to be prepared.
#[derive(Debug, Clone)]
pub struct Publish {
    /// Tenant.
    pub tenant: Name,
    /// Room, user or whole tenant.
    pub audience: Audience,
    /// Event name.
    pub event: Name,
    /// Payload.
    pub data: Value,
    /// The publishing connection, which does not get its own message back.
    pub exclude: Option<ConnId>,
    /// Deliver at most once per key (§8); HTTP publishes only.
    pub idempotency_key: Option<Name>,
}

impl Publish {
    /// Validates an HTTP publish body.
    pub fn from_request(req: PublishRequest) -> Result<Self, NodeError> {
        let tenant = Name::new("tenant", &req.tenant)?;
        let event = Name::new("event", &req.event)?;
        let audience = match (req.room, req.user) {
            (Some(_), Some(_)) => {
                return Err(NodeError::BadRequest(
                    "give `room` or `user`, not both (neither means the whole tenant)".into(),
                ));
            }
            (Some(room), None) => Audience::Room(Name::new("room", &room)?),
            (None, Some(user)) => Audience::User(Name::new("user", &user)?),
            (None, None) => Audience::Tenant,
        };
        let idempotency_key = req
            .idempotency_key
            .as_deref()
            .map(|k| Name::new("idempotency_key", k))
            .transpose()?;
        Ok(Self {
            tenant,
            audience,
            event,
            data: req.data,
            exclude: None,
            idempotency_key,
        })
    }
}

/// A publish encoded and ready for the bus, with its id.
#[derive(Debug)]
pub struct Prepared {
    broadcast: Broadcast,
    scope: Scope,
    idempotency_key: Option<Name>,
}

/// What a publish answers: the message's id, and its position in a room
/// with history. For a repeated idempotency key, the first publish's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Message id.
    pub id: String,
    /// Offset and epoch, in a room with history.
    pub position: Option<Position>,
}

impl Prepared {
    /// Message id returned to the publisher.
    pub fn id(&self) -> &str {
        &self.broadcast.id
    }
}

fn scope_label(scope: Scope) -> &'static str {
    match scope {
        Scope::Room => "room",
        Scope::User => "user",
        Scope::Tenant => "tenant",
    }
}

impl Node {
    /// Assigns an id and timestamp and encodes the message once per codec.
    /// Fails with 413 when the encoded message exceeds `max_message_bytes`.
    pub fn prepare(&self, publish: Publish) -> Result<Prepared, NodeError> {
        let id = uuid::Uuid::now_v7().to_string();
        let ts = now_millis();
        let (scope, room) = match &publish.audience {
            Audience::Room(r) => (Scope::Room, Some(r.as_str())),
            Audience::User(_) => (Scope::User, None),
            Audience::Tenant => (Scope::Tenant, None),
        };
        let frame = ServerFrame::Message(MessageFrame {
            scope,
            room,
            event: publish.event.as_str(),
            data: &publish.data,
            id: &id,
            ts,
            offset: None,
            epoch: None,
        });
        let encoded =
            EncodedFrame::encode(&frame).map_err(|e| NodeError::Internal(e.to_string()))?;
        let max = self.config().limits.max_message_bytes;
        // In a room with history the frame gets its position appended later
        // (`,"offset":…,"epoch":"…"`); the limit holds for the delivered
        // frame, so that a message that passes it fits every reader's queue.
        let size = match &publish.audience {
            Audience::Room(room) if self.stream_spec(&publish.tenant, room).is_some() => {
                encoded.encoded_len() + POSITION_SUFFIX_MAX
            }
            _ => encoded.encoded_len(),
        };
        if size > max {
            return Err(NodeError::TooLarge { size, max });
        }
        Ok(Prepared {
            scope,
            idempotency_key: publish.idempotency_key,
            broadcast: Broadcast {
                tenant: publish.tenant,
                audience: publish.audience,
                recipients: Recipients::Everyone,
                exclude: publish.exclude,
                frame: Arc::new(encoded),
                accepted_at: Instant::now(),
                ts,
                id: Arc::from(id),
                position: None,
            },
        })
    }

    /// Sends a prepared message: other nodes through the bus, then local
    /// members. In a room with history the bus gives the message its
    /// position first, and local members get the frame with it.
    pub async fn send(&self, prepared: Prepared, source: PublishSource) -> Result<Sent, NodeError> {
        if self.is_closing() {
            return Err(NodeError::Draining);
        }
        let Prepared {
            mut broadcast,
            scope,
            idempotency_key,
        } = prepared;
        let history = match &broadcast.audience {
            Audience::Room(room) => self.stream_spec(&broadcast.tenant, room),
            _ => None,
        };
        let opts = PublishOptions {
            history,
            idempotency_key: idempotency_key.as_ref(),
        };
        let position = match self.inner.bus.publish(&broadcast, opts).await? {
            Published::Duplicate { id, position } => {
                m::idempotent_duplicate();
                return Ok(Sent { id, position });
            }
            Published::Accepted { position } => position,
        };
        if let Some(pos) = &position {
            let frame = broadcast.frame.with_position(pos).ok_or_else(|| {
                NodeError::Internal("a message frame did not take its position".into())
            })?;
            broadcast.frame = Arc::new(frame);
            broadcast.position = Some(pos.clone());
        }
        if self.inner.hub.deliver(&broadcast).queued > 0 {
            m::routed("local", 1);
        }
        let source = match source {
            PublishSource::Client => "ws",
            PublishSource::Http => "http",
        };
        m::published(source, scope_label(scope));
        Ok(Sent {
            id: broadcast.id.to_string(),
            position,
        })
    }

    /// Validates, encodes and sends one message.
    pub async fn publish(
        &self,
        publish: Publish,
        source: PublishSource,
    ) -> Result<Sent, NodeError> {
        let prepared = self.prepare(publish)?;
        self.send(prepared, source).await
    }
}
