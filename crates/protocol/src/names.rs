//! Name validation for tenants, users, rooms and events.
//!
//! The contract (docs/protocol.md §1) allows `^[A-Za-z0-9_.:@\-]{1,128}$` and says
//! anything else is rejected, never truncated or mangled. The check is a byte
//! scan rather than a regex: it runs on every publish and subscribe, and a
//! regex engine would be a dependency for a one-line character class.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest name the contract allows, in bytes (all allowed characters are ASCII).
pub const MAX_NAME_LEN: usize = 128;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name was empty.
    #[error("{kind} name is empty")]
    Empty {
        /// What kind of name was being checked ("room", "user", ...).
        kind: &'static str,
    },
    /// The name was longer than [`MAX_NAME_LEN`].
    #[error("{kind} name is {len} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong {
        /// What kind of name was being checked.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The name held a character outside `[A-Za-z0-9_.:@-]`.
    #[error("{kind} name contains {found:?}; only letters, digits and _ . : @ - are allowed")]
    BadChar {
        /// What kind of name was being checked.
        kind: &'static str,
        /// The first offending character.
        found: char,
    },
}

/// Whether `b` may appear in a name.
pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-')
}

/// Checks `name` against the contract's name rule. `kind` is used in the error.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            len: name.len(),
        });
    }
    if let Some(found) = name
        .chars()
        .find(|c| !c.is_ascii() || !is_name_byte(*c as u8))
    {
        return Err(NameError::BadChar { kind, found });
    }
    Ok(())
}

/// A validated name, cheap to clone (it is shared by every index that holds it).
///
/// `Arc<str>` rather than `String`: the same room or tenant name is a key in
/// several maps of the hub and is carried by every message to that room.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Name(Arc<str>);

impl Name {
    /// Validates and wraps `name`.
    pub fn new(kind: &'static str, name: &str) -> Result<Self, NameError> {
        validate_name(kind, name)?;
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::new("name", &s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_whole_allowed_alphabet() {
        assert!(validate_name("room", "aZ09_.:@-").is_ok());
        assert!(validate_name("room", &"a".repeat(128)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert_eq!(
            validate_name("room", ""),
            Err(NameError::Empty { kind: "room" })
        );
        assert_eq!(
            validate_name("room", &"a".repeat(129)),
            Err(NameError::TooLong {
                kind: "room",
                len: 129
            })
        );
        for bad in ["a b", "a/b", "a*b", "é", "a\u{0}", "a#"] {
            assert!(validate_name("room", bad).is_err(), "{bad:?} accepted");
        }
        let err = validate_name("user", "x y").unwrap_err().to_string();
        assert!(err.contains("user name contains ' '"), "{err}");
    }
}
