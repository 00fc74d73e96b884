//! Who may connect and what they may do: JWT verification for clients,
//! API keys for backends.
//!
//! A verified token becomes a [`Grant`]: tenant, user, expiry and compiled
//! room patterns. The session keeps the grant and asks it before every
//! subscribe, publish and presence query; nothing else reads token claims.
//!
//! Files, in import order: `jwt` (the verifier) → `keyring` (which keys a
//! token may use) → `jwks` (keys fetched from a JWKS) → `key` → `error`;
//! `grant` and `api_key` stand apart.

mod api_key;
mod error;
mod grant;
mod jwks;
mod jwt;
mod key;
mod keyring;

pub use self::api_key::{ApiKeyScope, ApiKeys};
pub use self::error::{AuthError, KeyError, VerifierError};
pub use self::grant::{Grant, Permissions};
pub use self::jwt::{DevTokenRequest, TokenVerifier, mint_hs256};
