//! HS256 tokens minted by the generator itself, one per connection.
//!
//! Minting locally (instead of asking `fanout token`) keeps a run one
//! command and lets every connection carry exactly the rooms it needs, so a
//! grant mistake in the node shows up as failed subscribes, not as silence.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The claims of docs/protocol.md §2 that the generator uses.
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    tenant: &'a str,
    exp: u64,
    rooms: &'a [String],
    publish: &'a [String],
}

/// Signs tokens for one tenant with one secret.
pub(crate) struct Minter {
    key: EncodingKey,
    header: Header,
    tenant: String,
    /// Expiry of every token: the run's cap plus an hour, so that no token
    /// expires during a run (expiry closes with 4001, which would read as loss).
    exp: u64,
}

impl Minter {
    /// A minter whose tokens outlive a run of `run_cap`.
    pub(crate) fn new(secret: &str, tenant: &str, run_cap: Duration) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            header: Header::new(Algorithm::HS256),
            tenant: tenant.to_owned(),
            exp: now + run_cap.as_secs() + 3600,
        }
    }

    /// A token for user `sub` that may subscribe to exactly `rooms`.
    pub(crate) fn mint(
        &self,
        sub: &str,
        rooms: &[String],
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            sub,
            tenant: &self.tenant,
            exp: self.exp,
            rooms,
            publish: &[],
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn tokens_carry_the_claims() {
        let m = Minter::new("0123456789abcdef0123", "acme", Duration::from_secs(60));
        let token = m.mint("u1", &["lobby".to_string()]).unwrap();
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &DecodingKey::from_secret(b"0123456789abcdef0123"),
            &Validation::new(Algorithm::HS256),
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "u1");
        assert_eq!(data.claims["tenant"], "acme");
        assert_eq!(data.claims["rooms"], serde_json::json!(["lobby"]));
        assert_eq!(data.claims["publish"], serde_json::json!([]));
    }
}
