//! The first phase of a session: authenticate, then be admitted.
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

use crate::auth::{AuthError, Grant, TokenVerifier};
use crate::metrics as m;

/// Why authentication did not produce a grant.
#[derive(Debug)]
pub(crate) enum AuthOutcome {
    /// Close with 4001 and this reason.
    Refused(String),
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
) -> Result<Grant, AuthOutcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(token) = header_token {
        return verifier.verify(token).map_err(|e| refused(&e));
    }
    let first = tokio::time::timeout(timeout, first_data_frame(ws)).await;
    let bytes = match first {
        Err(_) => {
            m::auth_failed("timeout");
            return Err(AuthOutcome::Refused(format!(
                "not authenticated within {}s",
                timeout.as_secs_f32()
            )));
        }
        Ok(None) => return Err(AuthOutcome::Gone),
        Ok(Some(bytes)) => bytes,
    };
    match codec.decode(&bytes) {
        Ok(ClientFrame::Auth { token }) => verifier.verify(&token).map_err(|e| refused(&e)),
        Ok(_) | Err(_) => {
            m::auth_failed("missing");
            Err(AuthOutcome::Refused(
                "authentication required: send a Bearer token on the upgrade or an `auth` frame first".into(),
            ))
        }
    }
}

/// The payload of the first text or binary frame; `None` if the peer left.
async fn first_data_frame<S>(ws: &mut WebSocketStream<S>) -> Option<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => return Some(t.as_bytes().to_vec()),
            Ok(Message::Binary(b)) => return Some(b.to_vec()),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Ok(Message::Close(_)) | Err(_) => return None,
        }
    }
    None
}
