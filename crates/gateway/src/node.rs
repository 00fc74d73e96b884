//! The node: the one domain object that sessions and HTTP handlers call.
//!
//! It owns the live state built from [`Config`]: the hub, the bus, the token
//! verifier, the API keys, the draining flag. Sessions and handlers decode,
//! authorize with the [`crate::auth::Grant`] or API key, call the node, and
//! encode its answer; the node holds the rules in between, and is the only
//! caller of the hub and the bus:
//!
//! ```text
//! admit    hub limits (atomic) ─▶ bus.register (cluster limits) ─▶ or roll back the hub
//! join     room limit ─▶ hub.join ─▶ bus.joined ─▶ join event if the user is new to the room
//!                                   └─ refused: hub.leave (roll back)
//! leave    hub.leave ─▶ bus.left ─▶ leave event if the user left the room cluster-wide
//! release  leave every room ─▶ hub.remove ─▶ bus.unregister
//! publish  validate ─▶ encode once (both codecs) ─▶ bus.publish (other nodes) ─▶ hub.deliver
//! ```
//!
//! A publish goes to the bus first: if the bus cannot take the message,
//! nothing was delivered anywhere and the caller gets 503, so a retry cannot
//! duplicate a message for local members.

mod drain;
mod error;
mod history;
mod membership;
mod presence;
mod publish;
mod rules;
mod state;

pub use self::error::{BuildError, NodeError, Unready};
pub use self::history::History;
pub use self::membership::{JoinOptions, Subscription};
pub use self::presence::PresenceEvent;
pub use self::publish::{Prepared, Publish, PublishSource, Sent};
pub use self::state::{Node, NodeParts};
