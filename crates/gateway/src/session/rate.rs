//! Token buckets for client requests: per kind of request, `rate` per
//! second sustained and `burst` at once (`[limits]`).
//!
//! The three buckets of a session share one refill time and keep only
//! their tokens; the rates and bursts are the node's configuration, passed
//! in on each take. Refilling every bucket whenever one is taken from gives
//! the same counts as refilling each on its own (the refill is linear in
//! time and capped at the burst either way), and every byte here is in
//! every connection's task.

use std::time::Instant;

use crate::config::Limits;

/// Which budget a request is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Client publishes (`publish_rate` / `publish_burst`).
    Publish = 0,
    /// Any request but a publish (`request_rate` / `request_burst`).
    Request = 1,
    /// Subscribes and unsubscribes (`membership_rate` / `membership_burst`).
    Membership = 2,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Publish, Kind::Request, Kind::Membership];

    /// Sustained requests per second and burst, from `[limits]`.
    pub(crate) fn rate(self, l: &Limits) -> (f64, u32) {
        match self {
            Kind::Publish => (l.publish_rate, l.publish_burst),
            Kind::Request => (l.request_rate, l.request_burst),
            Kind::Membership => (l.membership_rate, l.membership_burst),
        }
    }
}

/// A session's request budgets.
#[derive(Debug)]
pub(crate) struct Budgets {
    /// Tokens per [`Kind`], in its order.
    tokens: [f64; 3],
    /// When the tokens were last refilled.
    last: Instant,
}

impl Budgets {
    /// Full buckets.
    pub(crate) fn new(limits: &Limits, now: Instant) -> Self {
        Self {
            tokens: Kind::ALL.map(|k| f64::from(k.rate(limits).1)),
            last: now,
        }
    }

    /// Takes one token of `kind` if there is one.
    pub(crate) fn try_take(&mut self, kind: Kind, limits: &Limits, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        for k in Kind::ALL {
            let (rate, burst) = k.rate(limits);
            let t = &mut self.tokens[k as usize];
            *t = (*t + elapsed * rate).min(f64::from(burst));
        }
        let t = &mut self.tokens[kind as usize];
        if *t >= 1.0 {
            *t -= 1.0;
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

    fn limits() -> Limits {
        Limits {
            publish_rate: 10.0,
            publish_burst: 3,
            request_rate: 1.0,
            request_burst: 1,
            ..Limits::default()
        }
    }

    #[test]
    fn burst_then_refill_at_rate() {
        let l = limits();
        let t0 = Instant::now();
        let mut b = Budgets::new(&l, t0);
        let mut take = |at| b.try_take(Kind::Publish, &l, at);
        assert!(take(t0) && take(t0) && take(t0));
        assert!(!take(t0));
        assert!(!take(t0 + Duration::from_millis(50)));
        assert!(take(t0 + Duration::from_millis(110)));
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| take(later)));
        assert!(!take(later));
    }

    #[test]
    fn each_kind_has_its_own_budget_though_they_refill_together() {
        let l = limits();
        let t0 = Instant::now();
        let mut b = Budgets::new(&l, t0);
        assert!(b.try_take(Kind::Request, &l, t0));
        assert!(!b.try_take(Kind::Request, &l, t0));
        // Publishes are untouched by the spent request budget.
        assert!(b.try_take(Kind::Publish, &l, t0));
        // Taking publishes refills requests too: one second later, one more.
        assert!(b.try_take(Kind::Publish, &l, t0 + Duration::from_millis(500)));
        assert!(b.try_take(Kind::Request, &l, t0 + Duration::from_secs(1)));
        assert!(!b.try_take(Kind::Request, &l, t0 + Duration::from_secs(1)));
    }
}
