//! The first phase of a session: authentication, up to a verified
//! [`Grant`]. (Admission — connection limits and registration — is the next
//! step, [`crate::node::Node::admit`], called by the session.)
//!
//! A token comes from the upgrade's `Authorization: Bearer` header or, for
//! browsers that cannot set headers, from a first `auth` frame within
//! `auth_timeout`. Every refusal completes the WebSocket handshake and then
//! closes with 4001 (never an HTTP 401: browsers cannot read the status of a
//! failed upgrade, but they can read a close code).

use std::time::Duration;

use fanout_protocol::{ClientFrame, Codec};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::Error as WsError;

use crate::auth::{AuthError, Grant, TokenVerifier};
use crate::metrics as m;

/// Why authentication did not produce a grant.
#[derive(Debug)]
pub(crate) enum AuthOutcome {
    /// Close with 4001 and this reason.
    Refused(String),
    /// The first frame exceeded `max_frame_bytes`: close with 1009 and this reason.
    TooBig(String),
    /// The node started draining first: close with 1012.
    Draining,
    /// The peer went away first; nothing to send.
    Gone,
}

fn refused(err: &AuthError) -> AuthOutcome {
    m::auth_failed(err.label());
    AuthOutcome::Refused(err.to_string())
}

/// Verifies the header token, or waits for an `auth` frame.
pub(crate) async fn authenticate<S>(
    ws: &mut WebSocketStream<S>,
    verifier: &TokenVerifier,
    codec: Codec,
    header_token: Option<&str>,
    timeout: Duration,
    drain_started: impl Future<Output = ()>,
) -> Result<Grant, AuthOutcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(token) = header_token {
        return verifier.verify_async(token).await.map_err(|e| refused(&e));
    }
    let first = tokio::select! {
        first = tokio::time::timeout(timeout, first_data_frame(ws)) => first,
        () = drain_started => return Err(AuthOutcome::Draining),
    };
    let bytes = match first {
        Err(_) => {
            m::auth_failed("timeout");
            return Err(AuthOutcome::Refused(format!(
                "not authenticated within {}s",
                timeout.as_secs_f32()
            )));
        }
        Ok(Err(outcome)) => return Err(outcome),
        Ok(Ok(bytes)) => bytes,
    };
    match codec.decode(&bytes) {
        Ok(ClientFrame::Auth { token }) => {
            verifier.verify_async(&token).await.map_err(|e| refused(&e))
        }
        Ok(_) | Err(_) => {
            m::auth_failed("missing");
            Err(AuthOutcome::Refused(
                "authentication required: send a Bearer token on the upgrade or an `auth` frame first".into(),
            ))
        }
    }
}

/// The payload of the first text or binary frame; `Gone` if the peer left,
/// `TooBig` if the frame exceeds `max_frame_bytes` (1009 applies before
/// authentication too).
async fn first_data_frame<S>(ws: &mut WebSocketStream<S>) -> Result<Vec<u8>, AuthOutcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => return Ok(t.as_bytes().to_vec()),
            Ok(Message::Binary(b)) => return Ok(b.to_vec()),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Err(WsError::Capacity(e)) => {
                return Err(AuthOutcome::TooBig(format!(
                    "{e}; the limit is max_frame_bytes"
                )));
            }
            Ok(Message::Close(_)) | Err(_) => return Err(AuthOutcome::Gone),
        }
    }
    Err(AuthOutcome::Gone)
}
