//! Client requests of an authenticated session: decode → authorize → node call → reply.

use std::time::Instant;

use fanout_protocol::frames::RequestId;
use fanout_protocol::{
    ClientFrame, CloseCode, ErrorCode, FrameError, Name, ServerFrame, StreamPosition,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::warn;

use super::rate::Kind;
use super::{Flow, Session, expiry_instant};
use crate::message::{Audience, to_message};
use crate::metrics as m;
use crate::node::{JoinOptions, NodeError, Publish, PublishSource};

fn frame_label(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Auth { .. } => "auth",
        ClientFrame::Subscribe { .. } => "subscribe",
        ClientFrame::History { .. } => "history",
        ClientFrame::Unsubscribe { .. } => "unsubscribe",
        ClientFrame::Publish { .. } => "publish",
        ClientFrame::Presence { .. } => "presence",
        ClientFrame::Refresh { .. } => "refresh",
        ClientFrame::Ping { .. } => "ping",
    }
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Handles a text or binary frame. `codec_matches` is false when the
    /// frame type does not fit the negotiated codec (text on msgpack, ...).
    pub(super) async fn on_data(&mut self, codec_matches: bool, bytes: &[u8]) -> Flow {
        let decoded = if codec_matches {
            self.handle.codec.decode(bytes)
        } else {
            Err(FrameError::bad_request(
                None,
                format!(
                    "wrong frame type for subprotocol {}: JSON uses text frames, MessagePack binary frames",
                    self.handle.codec.subprotocol()
                ),
            ))
        };
        match decoded {
            Ok(frame) => {
                self.malformed_strikes = 0;
                m::frame_in(frame_label(&frame));
                self.on_frame(frame).await
            }
            Err(err) => {
                m::frame_in("malformed");
                self.malformed_strikes += 1;
                self.error(&err);
                if self.malformed_strikes >= self.node.config().limits.malformed_strikes {
                    return Flow::Close(
                        CloseCode::ProtocolViolation,
                        "too many malformed frames".into(),
                    );
                }
                Flow::Continue
            }
        }
    }

    fn error(&self, err: &FrameError) {
        m::client_error(err.code.as_u16());
        self.reply(&ServerFrame::error(err));
    }

    fn refuse(&self, id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) {
        self.error(&FrameError {
            id,
            code,
            message: message.into(),
        });
    }

    fn node_error(&self, id: Option<RequestId>, err: &NodeError) {
        if let NodeError::Internal(cause) = err {
            tracing::error!(%cause, conn = %self.handle.public_id(self.node.id()), "internal error");
        }
        self.refuse(id, err.code(), err.to_string());
    }

    fn ack(&self, id: Option<RequestId>) {
        self.reply(&ServerFrame::ack(id));
    }

    /// Charges a request to the connection's budgets: `None` when allowed,
    /// else the flow after refusing it (429, or 4008 when repeated).
    fn over_budget(&mut self, frame: &ClientFrame) -> Option<Flow> {
        let now = Instant::now();
        let limits = &self.node.config().limits;
        let refused = match frame {
            // Publishes have their own budget; a second `auth` is refused anyway.
            ClientFrame::Publish { .. } | ClientFrame::Auth { .. } => return None,
            _ if !self.budgets.try_take(Kind::Request, limits, now) => {
                format!(
                    "rate limited: at most {} requests per second",
                    limits.request_rate
                )
            }
            ClientFrame::Subscribe { .. } | ClientFrame::Unsubscribe { .. }
                if !self.budgets.try_take(Kind::Membership, limits, now) =>
            {
                format!(
                    "rate limited: at most {} subscribes and unsubscribes per second",
                    limits.membership_rate
                )
            }
            _ => {
                self.rate_strikes = 0;
                return None;
            }
        };
        Some(self.rate_limited(frame.id(), refused))
    }

    /// A request over its budget: 429, or 4008 after `rate_limit_strikes`
    /// in a row.
    fn rate_limited(&mut self, id: Option<RequestId>, message: String) -> Flow {
        self.rate_strikes += 1;
        if self.rate_strikes >= self.node.config().limits.rate_limit_strikes {
            return Flow::Close(
                CloseCode::RateLimited,
                "rate limit exceeded repeatedly".into(),
            );
        }
        self.refuse(id, ErrorCode::RateLimited, message);
        Flow::Continue
    }

    async fn on_frame(&mut self, frame: ClientFrame) -> Flow {
        if let Some(flow) = self.over_budget(&frame) {
            return flow;
        }
        match frame {
            ClientFrame::Auth { .. } => {
                self.refuse(None, ErrorCode::BadRequest, "already authenticated");
                Flow::Continue
            }
            ClientFrame::Subscribe {
                id,
                room,
                presence_events,
                since,
            } => {
                // join/leave events are presence by another name: a token
                // that may not query presence may not watch it either.
                if presence_events && !self.grant.permissions.presence {
                    self.refuse(
                        id,
                        ErrorCode::Forbidden,
                        format!(
                            "not allowed to see presence of {room}: presence_events needs a token with presence allowed"
                        ),
                    );
                    return Flow::Continue;
                }
                let options = JoinOptions {
                    presence_events,
                    since,
                };
                self.subscribe(id, room, options).await;
                Flow::Continue
            }
            ClientFrame::History {
                id,
                room,
                limit,
                since,
            } => {
                self.history(id, room, limit, since).await;
                Flow::Continue
            }
            ClientFrame::Unsubscribe { id, room } => {
                self.node.leave(&self.handle, &room).await;
                self.ack(id);
                Flow::Continue
            }
            ClientFrame::Publish {
                id,
                room,
                event,
                data,
            } => self.publish(id, room, event, data).await,
            ClientFrame::Presence { id, room } => {
                if !self.grant.can_query_presence(room.as_str()) {
                    self.refuse(
                        id,
                        ErrorCode::Forbidden,
                        format!("not allowed to see presence of {room}"),
                    );
                    return Flow::Continue;
                }
                match self.node.presence(&self.grant.tenant, &room).await {
                    Ok(members) => self.reply(&ServerFrame::Presence {
                        id,
                        room: room.as_str(),
                        members: &members,
                    }),
                    Err(e) => self.node_error(id, &e),
                }
                Flow::Continue
            }
            ClientFrame::Refresh { id, token } => {
                self.refresh(id, &token);
                Flow::Continue
            }
            ClientFrame::Ping { id } => {
                self.reply(&ServerFrame::Pong { id });
                Flow::Continue
            }
        }
    }

    async fn subscribe(&mut self, id: Option<RequestId>, room: Name, options: JoinOptions) {
        if !self.grant.can_subscribe(room.as_str()) {
            self.refuse(
                id,
                ErrorCode::Forbidden,
                format!("not allowed to subscribe to {room}"),
            );
            return;
        }
        match self.node.join(&self.handle, &room, options).await {
            Ok(sub) => {
                let ack = ServerFrame::Ack {
                    id,
                    recovered: sub.recovered,
                    epoch: sub.stream.as_ref().map(|s| &*s.0),
                    offset: sub.stream.as_ref().map(|s| s.1),
                };
                match self.handle.codec.encode(&ack) {
                    Ok(encoded) => sub.start(to_message(encoded)),
                    Err(e) => {
                        warn!(error = %e, conn = %self.handle.public_id(self.node.id()), "encoding an ack failed")
                    }
                }
            }
            Err(e) => self.node_error(id, &e),
        }
    }

    async fn history(
        &mut self,
        id: Option<RequestId>,
        room: Name,
        limit: Option<u32>,
        since: Option<StreamPosition>,
    ) {
        if !self.grant.can_subscribe(room.as_str()) {
            self.refuse(
                id,
                ErrorCode::Forbidden,
                format!("not allowed to read the history of {room}"),
            );
            return;
        }
        match self
            .node
            .history(&self.grant.tenant, &room, since.as_ref(), limit)
            .await
        {
            Ok(history) => {
                let messages = history.frames();
                self.reply(&ServerFrame::History {
                    id,
                    room: room.as_str(),
                    epoch: &history.epoch,
                    offset: history.offset,
                    messages: &messages,
                });
            }
            Err(e) => self.node_error(id, &e),
        }
    }

    async fn publish(
        &mut self,
        id: Option<RequestId>,
        room: Name,
        event: Name,
        data: serde_json::Value,
    ) -> Flow {
        if !self.grant.can_publish(room.as_str()) {
            self.refuse(
                id,
                ErrorCode::Forbidden,
                format!("not allowed to publish into {room}"),
            );
            return Flow::Continue;
        }
        let limits = &self.node.config().limits;
        if !self.budgets.try_take(Kind::Publish, limits, Instant::now()) {
            let message = format!(
                "rate limited: at most {} publishes per second",
                self.node.config().limits.publish_rate
            );
            return self.rate_limited(id, message);
        }
        self.rate_strikes = 0;
        let publish = Publish {
            tenant: self.grant.tenant.clone(),
            audience: Audience::Room(room),
            event,
            data,
            exclude: Some(self.handle.id),
            idempotency_key: None,
        };
        match self.node.publish(publish, PublishSource::Client).await {
            // The position lets a client that tracks offsets count its own
            // message, which it is not sent back.
            Ok(sent) => self.reply(&ServerFrame::Ack {
                id,
                recovered: None,
                epoch: sent.position.as_ref().map(|p| &*p.epoch),
                offset: sent.position.as_ref().map(|p| p.offset),
            }),
            Err(e) => self.node_error(id, &e),
        }
        Flow::Continue
    }

    fn refresh(&mut self, id: Option<RequestId>, token: &str) {
        let grant = match self.node.verifier().verify(token) {
            Ok(g) => g,
            Err(e) => {
                m::auth_failed(e.label());
                self.refuse(id, ErrorCode::Forbidden, format!("refresh refused: {e}"));
                return;
            }
        };
        if grant.user != self.grant.user || grant.tenant != self.grant.tenant {
            m::auth_failed("refresh_identity");
            self.refuse(
                id,
                ErrorCode::Forbidden,
                "refresh refused: the token is for another user or tenant",
            );
            return;
        }
        if grant.expires_at <= self.grant.expires_at {
            self.refuse(
                id,
                ErrorCode::BadRequest,
                "refresh refused: the token must expire later than the current one",
            );
            return;
        }
        self.expires = expiry_instant(grant.expires_at, self.node.config().auth.leeway);
        self.grant = grant;
        self.ack(id);
    }
}
