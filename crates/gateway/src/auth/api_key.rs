//! API keys of the backend HTTP API.
//!
//! Keys are stored by their SHA-256 digest and looked up by the digest of the
//! presented key: the lookup time does not depend on how many leading
//! characters of a guess are right, and the keys themselves are not kept in
//! the node's memory in plain form.

use std::collections::HashMap;

use fanout_protocol::{Name, NameError};
use sha2::{Digest, Sha256};

use crate::config::ApiKeyConfig;

/// What an API key may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyScope {
    /// Any tenant.
    AllTenants,
    /// Only this tenant.
    Tenant(Name),
}

impl ApiKeyScope {
    /// Whether the key may act on `tenant`.
    pub fn allows(&self, tenant: &str) -> bool {
        match self {
            ApiKeyScope::AllTenants => true,
            ApiKeyScope::Tenant(t) => t.as_str() == tenant,
        }
    }
}

/// The configured API keys.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], ApiKeyScope>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// Builds the table from config.
    pub fn new(keys: &[ApiKeyConfig]) -> Result<Self, NameError> {
        let mut by_digest = HashMap::with_capacity(keys.len());
        for k in keys {
            let scope = match &k.tenant {
                Some(t) => ApiKeyScope::Tenant(Name::new("tenant", t)?),
                None => ApiKeyScope::AllTenants,
            };
            by_digest.insert(digest(&k.key), scope);
        }
        Ok(Self { by_digest })
    }

    /// The scope of `presented`, or `None` for an unknown key.
    pub fn lookup(&self, presented: &str) -> Option<&ApiKeyScope> {
        self.by_digest.get(&digest(presented))
    }

    /// Number of configured keys.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_and_unscoped_keys() {
        let keys = ApiKeys::new(&[
            ApiKeyConfig {
                key: "global-key-0123456789".into(),
                tenant: None,
            },
            ApiKeyConfig {
                key: "acme-key-0123456789".into(),
                tenant: Some("acme".into()),
            },
        ])
        .unwrap();
        assert_eq!(
            keys.lookup("global-key-0123456789"),
            Some(&ApiKeyScope::AllTenants)
        );
        let acme = keys.lookup("acme-key-0123456789").unwrap();
        assert!(acme.allows("acme"));
        assert!(!acme.allows("globex"));
        assert!(keys.lookup("acme-key-012345678").is_none());
    }
}
