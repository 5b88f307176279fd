//! Retry policy: what may be retried, and a budget that stops retry storms.
//!
//! - A request that got no response from the transport (connect refused, connection reset before the
//!   response headers, the channel's UNAVAILABLE for a dead endpoint) is retried once on another endpoint,
//!   for any method, if its body can be sent again (a buffered unary body, or a streaming body nothing was
//!   read from). The request keeps its `x-lateral-request-id`, so an agent that did receive the first
//!   attempt drops the duplicate.
//! - A response with `grpc-status: UNAVAILABLE` in its headers (a trailers-only error from the server) is
//!   retried once on another endpoint only for methods configured as idempotent.
//! - Everything else is returned as is.
//!
//! The budget is a token bucket in the style of Finagle's `RetryBudget` and tower's `TpsBudget`: every
//! request deposits `retry_ratio` of a token (capped), a retry withdraws one; when the bucket is empty, up to
//! `min_retries_per_second` retries per second are still allowed. Time comes from `tokio::time`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Milli-tokens per token.
const SCALE: i64 = 1000;

/// Retry budget settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per request sent (0.2: retries stay under 20% of requests).
    pub retry_ratio: f64,
    /// Retries always allowed per second, even with an empty bucket.
    pub min_retries_per_second: u32,
    /// The most tokens the bucket holds (bounds a burst of retries after a quiet period).
    pub max_balance: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            retry_ratio: 0.2,
            min_retries_per_second: 10,
            max_balance: 100,
        }
    }
}

/// The token bucket.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    deposit: i64,
    max_balance: i64,
    min_per_second: u32,
    balance: AtomicI64,
    /// (start of the current one-second window, retries taken from the floor in it).
    floor: Mutex<(Instant, u32)>,
}

impl RetryBudget {
    pub(crate) fn new(config: RetryBudgetConfig) -> Self {
        let ratio = if config.retry_ratio.is_finite() {
            config.retry_ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        Self {
            deposit: (ratio * SCALE as f64).round() as i64,
            max_balance: i64::from(config.max_balance) * SCALE,
            min_per_second: config.min_retries_per_second,
            balance: AtomicI64::new(0),
            floor: Mutex::new((Instant::now(), 0)),
        }
    }

    /// A request was sent.
    pub(crate) fn deposit(&self) {
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b < self.max_balance).then(|| (b + self.deposit).min(self.max_balance))
            });
    }

    /// Takes one retry from the budget; false when it is exhausted.
    pub(crate) fn withdraw(&self) -> bool {
        if self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= SCALE).then_some(b - SCALE)
            })
            .is_ok()
        {
            return true;
        }
        let mut floor = self.floor.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(floor.0) >= Duration::from_secs(1) {
            *floor = (now, 0);
        }
        if floor.1 < self.min_per_second {
            floor.1 += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_bounds_retries_to_ratio_plus_floor() {
        let budget = RetryBudget::new(RetryBudgetConfig {
            retry_ratio: 0.2,
            min_retries_per_second: 2,
            max_balance: 100,
        });
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..1000).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 20 + 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(budget.withdraw());
    }
}
