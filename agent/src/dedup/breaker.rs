//! A circuit breaker for a remote dedup store: after a failure, skip the store for a cool-down instead of
//! making every request wait for its timeout.
//!
//! Closed: every check goes to the store. A failure opens it for [`BASE_COOLDOWN`], doubling with each
//! consecutive failure up to [`MAX_COOLDOWN`]; while open, checks are skipped (the request goes through
//! unchecked, as on a failure, but at once). When the cool-down ends, one check is let through as a probe
//! (others keep skipping until it answers): a success closes the breaker, a failure opens it again for longer.
//! Pure: time comes in as `now`.

use std::time::Duration;

use tokio::time::Instant;

/// The first cool-down after a failure, by default.
pub const BASE_COOLDOWN: Duration = Duration::from_secs(1);
/// The longest cool-down.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(30);

/// What to do with one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Ask the store.
    Call,
    /// Ask the store as the probe after a cool-down (report the outcome).
    Probe,
    /// Do not ask: the store failed recently; it is tried again after `until`.
    Skip {
        /// When the next probe may go.
        until: Instant,
    },
}

/// What changed after an outcome, for a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing worth logging.
    None,
    /// The store failed; checks are skipped for `cooldown`.
    Opened {
        /// How long checks are skipped.
        cooldown: Duration,
    },
    /// The store answered again after being skipped.
    Closed,
}

/// The breaker's state.
#[derive(Debug)]
pub struct Breaker {
    /// The first cool-down.
    base: Duration,
    /// Consecutive failures (0: closed).
    failures: u32,
    /// While open: when the next probe may go.
    open_until: Option<Instant>,
    /// A probe is out.
    probing: bool,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new(BASE_COOLDOWN)
    }
}

impl Breaker {
    /// A closed breaker whose first cool-down is `base` (doubling up to [`MAX_COOLDOWN`], or `base` if longer).
    pub fn new(base: Duration) -> Self {
        Self {
            base,
            failures: 0,
            open_until: None,
            probing: false,
        }
    }

    /// Whether (and how) to ask the store at `now`.
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.open_until {
            None => Admit::Call,
            Some(until) if now < until || self.probing => Admit::Skip { until },
            Some(_) => {
                self.probing = true;
                Admit::Probe
            }
        }
    }

    /// Records that the store answered.
    pub fn on_success(&mut self) -> Transition {
        let was_open = self.open_until.is_some();
        *self = Self::new(self.base);
        if was_open {
            Transition::Closed
        } else {
            Transition::None
        }
    }

    /// Records that the store failed (an error or a timeout) at `now`.
    pub fn on_failure(&mut self, now: Instant) -> Transition {
        self.failures = self.failures.saturating_add(1);
        let doublings = self.failures.saturating_sub(1).min(16);
        let cooldown = self
            .base
            .saturating_mul(1 << doublings)
            .min(MAX_COOLDOWN.max(self.base));
        let reopened = self.open_until.is_some() && !self.probing;
        self.probing = false;
        self.open_until = Some(now + cooldown);
        if reopened {
            // A call admitted before the breaker opened failed too: the cool-down is extended, quietly.
            Transition::None
        } else {
            Transition::Opened { cooldown }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_on_failure_probes_once_after_the_cooldown_and_backs_off() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        assert_eq!(b.admit(t0), Admit::Call);
        assert_eq!(
            b.on_failure(t0),
            Transition::Opened {
                cooldown: BASE_COOLDOWN
            }
        );
        assert_eq!(
            b.admit(t0 + Duration::from_millis(999)),
            Admit::Skip {
                until: t0 + BASE_COOLDOWN
            }
        );
        let t1 = t0 + BASE_COOLDOWN;
        assert_eq!(b.admit(t1), Admit::Probe);
        assert!(
            matches!(b.admit(t1), Admit::Skip { .. }),
            "one probe at a time"
        );
        // The probe fails: twice as long.
        assert_eq!(
            b.on_failure(t1),
            Transition::Opened {
                cooldown: 2 * BASE_COOLDOWN
            }
        );
        let t2 = t1 + 2 * BASE_COOLDOWN;
        assert_eq!(b.admit(t2), Admit::Probe);
        assert_eq!(b.on_success(), Transition::Closed);
        assert_eq!(b.admit(t2), Admit::Call);
        assert_eq!(b.on_success(), Transition::None);
    }

    #[test]
    fn the_cooldown_is_capped_and_late_failures_are_quiet() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        let mut now = t0;
        for _ in 0..40 {
            b.on_failure(now);
            while let Admit::Skip { until } = b.admit(now) {
                now = until;
            }
        }
        let Transition::Opened { cooldown } = b.on_failure(now) else {
            panic!("a failed probe reopens")
        };
        assert_eq!(cooldown, MAX_COOLDOWN);
        // A call admitted while closed that fails after the breaker opened does not log again.
        let mut b = Breaker::default();
        assert_eq!(b.admit(t0), Admit::Call);
        assert_eq!(b.admit(t0), Admit::Call);
        assert!(matches!(b.on_failure(t0), Transition::Opened { .. }));
        assert_eq!(b.on_failure(t0), Transition::None);
    }
}
