//! Wall-clock time in milliseconds since the Unix epoch.
//!
//! Message timestamps (`ts`), registry expiries in Redis and cross-node lag
//! are all wall-clock milliseconds, because they are compared between
//! processes; `Instant` stays the clock of everything measured within one
//! process (timers, latency histograms). This is the one place that reads
//! the wall clock, so every layer agrees on the unit and on what happens if
//! the clock is before the epoch (0, never a panic).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the system clock is set before it).
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
