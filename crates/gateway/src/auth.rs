//! Who may connect and what they may do: JWT verification for clients,
//! API keys for backends.
//!
//! A verified token becomes a [`Grant`]: tenant, user, expiry and compiled
//! room patterns. The session keeps the grant and asks it before every
//! subscribe, publish and presence query; nothing else reads token claims.

mod api_key;
mod grant;
mod jwt;

pub use self::api_key::{ApiKeyScope, ApiKeys};
pub use self::grant::Grant;
pub use self::jwt::{
    AuthError, DevTokenRequest, KeyError, TokenVerifier, VerifierError, mint_hs256,
};
