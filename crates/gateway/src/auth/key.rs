//! One verification key: key material and the one algorithm it accepts.

use std::fs;

use jsonwebtoken::{Algorithm, DecodingKey};

use super::error::KeyError;
use crate::config::{JwtAlgorithm, KeyConfig};

/// A verification key with the one algorithm it accepts: a token signed
/// with another algorithm is never checked against it.
pub(super) struct VerifyKey {
    /// The key material.
    pub(super) key: DecodingKey,
    /// The only algorithm it verifies.
    pub(super) algorithm: Algorithm,
}

/// Loads a configured key (a secret, or a PEM public key file).
pub(super) fn load_key(key: &KeyConfig) -> Result<VerifyKey, KeyError> {
    let alg = key.algorithm.unwrap_or(if key.secret.is_some() {
        JwtAlgorithm::HS256
    } else {
        JwtAlgorithm::RS256
    });
    let pem = |k: &KeyConfig| -> Result<Vec<u8>, KeyError> {
        let path = k
            .public_key_file
            .as_ref()
            .ok_or(KeyError::NoPublicKeyFile)?;
        fs::read(path).map_err(|source| KeyError::Read {
            path: path.clone(),
            source,
        })
    };
    let bad = |kind| move |source| KeyError::BadKey { kind, source };
    let (key, algorithm) = match alg {
        JwtAlgorithm::HS256 => {
            let secret = key.secret.as_deref().ok_or(KeyError::NoSecret)?;
            (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            )
        }
        JwtAlgorithm::RS256 => (
            DecodingKey::from_rsa_pem(&pem(key)?).map_err(bad("RSA"))?,
            Algorithm::RS256,
        ),
        JwtAlgorithm::ES256 => (
            DecodingKey::from_ec_pem(&pem(key)?).map_err(bad("EC"))?,
            Algorithm::ES256,
        ),
    };
    Ok(VerifyKey { key, algorithm })
}
