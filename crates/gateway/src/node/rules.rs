//! The `[[history]]` rules, compiled: which rooms keep history, and how.
//!
//! Plain data built once from the config; the first matching rule wins.

use fanout_protocol::{Name, RoomPattern};

use crate::cluster::StreamSpec;
use crate::config::HistoryRule;

/// The `[[history]]` rules, compiled.
#[derive(Debug, Default)]
pub(crate) struct HistoryRules {
    rules: Vec<(Option<Name>, RoomPattern, StreamSpec)>,
}

impl HistoryRules {
    /// Compiles validated rules (a rule that does not compile is skipped;
    /// config validation refuses such rules at start).
    pub(crate) fn new(rules: &[HistoryRule]) -> Self {
        let rules = rules
            .iter()
            .filter_map(|r| {
                let tenant = if r.tenant == "*" {
                    None
                } else {
                    Some(Name::new("tenant", &r.tenant).ok()?)
                };
                let rooms = RoomPattern::parse(&r.rooms).ok()?;
                let spec = StreamSpec {
                    size: r.size,
                    ttl: r.ttl,
                };
                Some((tenant, rooms, spec))
            })
            .collect();
        Self { rules }
    }

    /// The first rule matching the room, if any.
    pub(crate) fn spec(&self, tenant: &Name, room: &Name) -> Option<StreamSpec> {
        self.rules
            .iter()
            .find(|(t, rooms, _)| {
                t.as_ref().is_none_or(|t| t == tenant) && rooms.matches(room.as_str())
            })
            .map(|(_, _, spec)| *spec)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rule(tenant: &str, rooms: &str, size: usize) -> HistoryRule {
        HistoryRule {
            tenant: tenant.into(),
            rooms: rooms.into(),
            size,
            ttl: Duration::from_secs(60),
        }
    }

    fn n(s: &str) -> Name {
        Name::new("t", s).unwrap()
    }

    #[test]
    fn the_first_matching_rule_wins_and_no_rule_means_no_history() {
        let rules =
            HistoryRules::new(&[rule("acme", "chat:vip:*", 1000), rule("*", "chat:*", 100)]);
        assert_eq!(
            rules.spec(&n("acme"), &n("chat:vip:1")).map(|s| s.size),
            Some(1000)
        );
        assert_eq!(
            rules.spec(&n("globex"), &n("chat:vip:1")).map(|s| s.size),
            Some(100)
        );
        assert_eq!(
            rules.spec(&n("acme"), &n("chat:1")).map(|s| s.size),
            Some(100)
        );
        assert_eq!(rules.spec(&n("acme"), &n("lobby")), None);
    }
}
