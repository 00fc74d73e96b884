//! Room patterns from token claims (`rooms`, `publish`).
//!
//! A pattern matches the *whole* room name; `*` matches any run of
//! characters, `:` included (docs/protocol.md §2). Matching is the classic greedy
//! wildcard algorithm with a single backtrack point, linear in practice and
//! never exponential, so a hostile token cannot make authorization slow.

use crate::names::is_name_byte;

/// A compiled room pattern such as `lobby` or `doc:*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPattern {
    text: String,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid room pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The refused pattern.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl RoomPattern {
    /// Parses a pattern: name characters plus `*`, 1 to 256 bytes.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError {
            pattern: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(err("empty"));
        }
        if text.len() > 256 {
            return Err(err("longer than 256 bytes"));
        }
        if !text.bytes().all(|b| b == b'*' || is_name_byte(b)) {
            return Err(err(
                "only letters, digits, _ . : @ - and the wildcard * are allowed",
            ));
        }
        Ok(Self {
            text: text.to_owned(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern matches the whole of `name`.
    pub fn matches(&self, name: &str) -> bool {
        wildcard_match(self.text.as_bytes(), name.as_bytes())
    }
}

/// Greedy wildcard match: on a mismatch, retry from the last `*` one byte
/// further into the text. O(p·t) worst case, usually O(p+t).
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Whether any of `patterns` matches `name`.
pub fn any_matches(patterns: &[RoomPattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        RoomPattern::parse(p).unwrap().matches(n)
    }

    #[test]
    fn exact_names_match_only_themselves() {
        assert!(m("lobby", "lobby"));
        assert!(!m("lobby", "lobby2"));
        assert!(!m("lobby", "lobb"));
    }

    #[test]
    fn star_matches_any_run_including_colons() {
        assert!(m("doc:*", "doc:1"));
        assert!(m("doc:*", "doc:"));
        assert!(m("doc:*", "doc:a:b:c"));
        assert!(!m("doc:*", "docs:1"));
        assert!(m("*", "anything"));
        assert!(m("a*b*c", "a-x-b-y-c"));
        assert!(!m("a*b*c", "a-x-b-y-d"));
        assert!(m("*:end", "x:y:end"));
        assert!(m("a**", "a"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(RoomPattern::parse("").is_err());
        assert!(RoomPattern::parse("a b").is_err());
        assert!(RoomPattern::parse("a?").is_err());
        assert!(RoomPattern::parse(&"a".repeat(257)).is_err());
    }

    #[test]
    fn pathological_pattern_stays_fast() {
        let p = RoomPattern::parse(&"*a".repeat(60)).unwrap();
        let text = "a".repeat(59) + "b";
        assert!(!p.matches(&text));
    }
}
