//! Publishing: validate, encode once, hand to the bus, deliver locally.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fanout_protocol::api::PublishRequest;
use fanout_protocol::{MessageFrame, Name, Scope, ServerFrame};
use serde_json::Value;

use super::{Node, NodeError};
use crate::cluster::BusError;
use crate::hub::ConnId;
use crate::message::{Audience, Broadcast, EncodedFrame, Recipients};
use crate::metrics as m;

/// Milliseconds since the epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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
        Ok(Self {
            tenant,
            audience,
            event,
            data: req.data,
            exclude: None,
        })
    }
}

/// A publish encoded and ready for the bus, with its id.
#[derive(Debug)]
pub struct Prepared {
    broadcast: Broadcast,
    scope: Scope,
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
        });
        let encoded =
            EncodedFrame::encode(&frame).map_err(|e| NodeError::Internal(e.to_string()))?;
        let max = self.config().limits.max_message_bytes;
        if encoded.json_len() > max {
            return Err(NodeError::TooLarge(format!(
                "message is {} bytes encoded; at most {max} are allowed",
                encoded.json_len()
            )));
        }
        Ok(Prepared {
            scope,
            broadcast: Broadcast {
                tenant: publish.tenant,
                audience: publish.audience,
                recipients: Recipients::Everyone,
                exclude: publish.exclude,
                frame: Arc::new(encoded),
                accepted_at: Instant::now(),
                ts,
                id: Arc::from(id),
            },
        })
    }

    /// Sends a prepared message: other nodes through the bus, then local members.
    pub async fn send(
        &self,
        prepared: Prepared,
        source: PublishSource,
    ) -> Result<String, NodeError> {
        if self.is_draining() {
            return Err(NodeError::Unavailable(BusError("node is draining".into())));
        }
        self.bus().publish(&prepared.broadcast).await?;
        if self.hub().deliver(&prepared.broadcast).queued > 0 {
            m::routed("local", 1);
        }
        let source = match source {
            PublishSource::Client => "ws",
            PublishSource::Http => "http",
        };
        m::published(source, scope_label(prepared.scope));
        Ok(prepared.broadcast.id.to_string())
    }

    /// Validates, encodes and sends one message; returns its id.
    pub async fn publish(
        &self,
        publish: Publish,
        source: PublishSource,
    ) -> Result<String, NodeError> {
        let prepared = self.prepare(publish)?;
        self.send(prepared, source).await
    }

    /// Sends a presence event (`join`/`leave`) to the room's presence watchers,
    /// except the connection that caused it.
    pub async fn presence_event(&self, event: PresenceEvent<'_>) {
        let (room, user) = (event.room.as_str(), event.user.as_str());
        let frame = if event.joined {
            ServerFrame::Join { room, user }
        } else {
            ServerFrame::Leave { room, user }
        };
        let encoded = match EncodedFrame::encode(&frame) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "encoding a presence event failed");
                return;
            }
        };
        let broadcast = Broadcast {
            tenant: event.tenant.clone(),
            audience: Audience::Room(event.room.clone()),
            recipients: Recipients::PresenceWatchers,
            exclude: Some(event.cause),
            frame: Arc::new(encoded),
            accepted_at: Instant::now(),
            ts: now_millis(),
            id: Arc::from(""),
        };
        if let Err(e) = self.bus().publish(&broadcast).await {
            tracing::warn!(error = %e, "presence event not sent to other nodes");
            m::dropped("bus_unavailable");
        }
        self.hub().deliver(&broadcast);
    }
}

/// A user joined or left a room.
#[derive(Debug, Clone, Copy)]
pub struct PresenceEvent<'a> {
    /// Tenant.
    pub tenant: &'a Name,
    /// Room.
    pub room: &'a Name,
    /// User.
    pub user: &'a Name,
    /// True for `join`, false for `leave`.
    pub joined: bool,
    /// The connection whose join or leave caused it (not told about itself).
    pub cause: ConnId,
}
