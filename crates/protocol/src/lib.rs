//! fanout's wire contract as types and codecs. No I/O.
//!
//! The gateway, the load generator and the example client all speak through
//! this crate, so the contract has one definition:
//!
//! ```text
//!  bytes ──Codec::decode──▶ RawClientFrame ──into_frame──▶ ClientFrame   (client → server)
//!  ServerFrame ──Codec::encode──▶ Encoded (text or binary)              (server → client)
//! ```
//!
//! - [`names`]: the one name rule for tenants, users, rooms and events.
//! - [`pattern`]: `*` room patterns of token claims.
//! - [`frames`]: client and server frames.
//! - [`codec`]: JSON and MessagePack, chosen by subprotocol.
//! - [`codes`]: error codes and close codes.
//! - [`api`]: bodies of the backend HTTP API.

pub mod api;
pub mod codec;
pub mod codes;
pub mod frames;
pub mod names;
pub mod pattern;

pub use codec::{Codec, Encoded};
pub use codes::{CloseCode, ErrorCode};
pub use frames::{
    ClientFrame, FrameError, MessageFrame, PresenceMember, Scope, ServerFrame, StoredMessage,
    StreamPosition,
};
pub use names::{Name, NameError};
pub use pattern::RoomPattern;
