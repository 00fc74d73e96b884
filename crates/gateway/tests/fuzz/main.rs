//! Fuzzing and property tests of every decoder of the node (issue 13,
//! item 8); docs/testing.md says what runs, how long, and how to run longer.
//!
//! - `targets`: one function per decoder, `fn(&[u8])`, that decodes the
//!   bytes as the node does and asserts what must hold whatever they are
//!   (no panic, a typed refusal, accepted values consistent). Client frames
//!   in both codecs, API bodies (through the real router), token claims,
//!   whole tokens, cross-node envelopes (with the receive path), stored
//!   history messages.
//! - `corpus`: replays `corpus/<target>/*` (seeds and past crashers) through
//!   the targets, then a bounded mutation loop per target: proptest picks a
//!   seed and edits it, `FANOUT_FUZZ_CASES` cases per target (default
//!   [`DEFAULT_FUZZ_CASES`]).
//! - `properties`: round trips and limits that need the gateway: positions
//!   appended to encoded frames, envelopes and the route script's append,
//!   claims into grants, API bodies into 202 / 400 / 413.

#![allow(
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

#[path = "../../../protocol/tests/strategies/mod.rs"]
mod strategies;

mod corpus;
mod node;
mod properties;
mod seeds;
mod targets;

use proptest::test_runner::{Config as ProptestConfig, FailurePersistence, FileFailurePersistence};

/// Mutation-loop cases per target when `FANOUT_FUZZ_CASES` is not set.
pub const DEFAULT_FUZZ_CASES: u32 = 2_000;

/// Cases per fuzz target: `FANOUT_FUZZ_CASES`, or [`DEFAULT_FUZZ_CASES`].
pub fn fuzz_cases() -> u32 {
    std::env::var("FANOUT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_FUZZ_CASES)
}

/// Failures are saved in `<file>.proptest-regressions` beside the test's
/// source and replayed first on the next run.
fn persistence() -> Option<Box<dyn FailurePersistence>> {
    Some(Box::new(FileFailurePersistence::WithSource(
        "proptest-regressions",
    )))
}

/// The config of the property tests: proptest's defaults, so
/// `PROPTEST_CASES` is honoured (256 cases unless set).
pub fn property_config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: persistence(),
        ..ProptestConfig::default()
    }
}

/// The config of the mutation loops: [`fuzz_cases`] cases. Nothing is
/// persisted: a saved RNG seed would replay another input once the corpus
/// changes, so a failing input is saved as bytes instead (see `corpus`).
pub fn fuzz_config() -> ProptestConfig {
    ProptestConfig {
        cases: fuzz_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
