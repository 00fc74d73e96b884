//! A token bucket for client requests: `rate` per second sustained, `burst` at once.
//!
//! The bucket keeps only what changes (its tokens and when it last
//! refilled); the rate and burst are the node's `[limits]`, passed in on each
//! take. A session has three buckets, and every byte in them is in every
//! connection's task.

use std::time::Instant;

use crate::config::Limits;

/// How many requests of one kind a client may make: `per_sec` sustained,
/// `burst` at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rate {
    pub(crate) per_sec: f64,
    pub(crate) burst: u32,
}

impl Rate {
    /// `limits.request_rate` / `request_burst`: any request but a publish.
    pub(crate) fn requests(l: &Limits) -> Self {
        Self {
            per_sec: l.request_rate,
            burst: l.request_burst,
        }
    }

    /// `limits.membership_rate` / `membership_burst`: subscribes and unsubscribes.
    pub(crate) fn membership(l: &Limits) -> Self {
        Self {
            per_sec: l.membership_rate,
            burst: l.membership_burst,
        }
    }

    /// `limits.publish_rate` / `publish_burst`: client publishes.
    pub(crate) fn publishes(l: &Limits) -> Self {
        Self {
            per_sec: l.publish_rate,
            burst: l.publish_burst,
        }
    }
}

/// Per-connection request limiter.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(f64::from(rate.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill_at_rate() {
        let t0 = Instant::now();
        let rate = Rate {
            per_sec: 10.0,
            burst: 3,
        };
        let mut b = TokenBucket::new(3, t0);
        assert!(b.try_take(rate, t0) && b.try_take(rate, t0) && b.try_take(rate, t0));
        assert!(!b.try_take(rate, t0));
        assert!(!b.try_take(rate, t0 + Duration::from_millis(50)));
        assert!(b.try_take(rate, t0 + Duration::from_millis(110)));
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.try_take(rate, later)));
        assert!(!b.try_take(rate, later));
    }
}
