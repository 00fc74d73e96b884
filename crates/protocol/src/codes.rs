//! Error codes (in `error` frames) and WebSocket close codes (docs/protocol.md §4).

/// The integer `code` of an `error` frame. Mirrors the HTTP status of the same
/// meaning so that backend and client developers learn one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Malformed frame, unknown type, invalid name.
    BadRequest,
    /// Not allowed by the token's claims.
    Forbidden,
    /// Unknown room for an operation that needs one.
    NotFound,
    /// Frame or payload too large.
    TooLarge,
    /// Rate limited.
    RateLimited,
    /// A `history` request's `since` is no longer (or never was) in the
    /// room's history: another epoch, or trimmed (§7, extension).
    HistoryGap,
    /// The cluster cannot take this now; retry later.
    Unavailable,
}

impl ErrorCode {
    /// The integer sent on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::HistoryGap => 409,
            ErrorCode::Unavailable => 503,
        }
    }
}

/// WebSocket close codes used by fanout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: normal closure.
    Normal,
    /// 1009: a frame exceeded `max_frame_bytes`.
    TooBig,
    /// 1012: the node is draining; reconnect at once, with jitter.
    Restart,
    /// 4000: protocol violation such as repeated malformed frames.
    ProtocolViolation,
    /// 4001: authentication failed, missing, or the token expired.
    AuthFailed,
    /// 4003: connection limit reached (per user or per tenant).
    LimitReached,
    /// 4008: rate limit exceeded repeatedly.
    RateLimited,
    /// 4009: slow consumer, the send queue overflowed.
    SlowConsumer,
    /// 4010: the node lost messages of a room the connection is subscribed
    /// to (its stream has a gap it could not fill); reconnect and
    /// resubscribe with `since` to recover (extension).
    InsufficientState,
}

impl CloseCode {
    /// The integer sent in the close frame.
    pub fn as_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::TooBig => 1009,
            CloseCode::Restart => 1012,
            CloseCode::ProtocolViolation => 4000,
            CloseCode::AuthFailed => 4001,
            CloseCode::LimitReached => 4003,
            CloseCode::RateLimited => 4008,
            CloseCode::SlowConsumer => 4009,
            CloseCode::InsufficientState => 4010,
        }
    }

    /// Parses a close code sent on the wire.
    pub fn from_u16(code: u16) -> Option<Self> {
        [
            CloseCode::Normal,
            CloseCode::TooBig,
            CloseCode::Restart,
            CloseCode::ProtocolViolation,
            CloseCode::AuthFailed,
            CloseCode::LimitReached,
            CloseCode::RateLimited,
            CloseCode::SlowConsumer,
            CloseCode::InsufficientState,
        ]
        .into_iter()
        .find(|c| c.as_u16() == code)
    }

    /// A short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::TooBig => "too_big",
            CloseCode::Restart => "draining",
            CloseCode::ProtocolViolation => "protocol_violation",
            CloseCode::AuthFailed => "auth_failed",
            CloseCode::LimitReached => "limit_reached",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::InsufficientState => "insufficient_state",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_round_trip() {
        for code in [1000, 1009, 1012, 4000, 4001, 4003, 4008, 4009, 4010] {
            assert_eq!(CloseCode::from_u16(code).map(CloseCode::as_u16), Some(code));
        }
        assert_eq!(CloseCode::from_u16(4002), None);
    }
}
