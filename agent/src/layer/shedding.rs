//! Overload shedding: refusing, before any work, a request the backend cannot serve in reasonable time.
//!
//! # The rule
//! With a declared capacity of `k` requests at once, the layer refuses a request when the backend already has
//! `k + ceil(queue_allowance · k)` requests in flight (serving or queued), answering at once with
//! `UNAVAILABLE` and a message that says so (`overloaded: ...`). A refused request is not measured (it costs
//! the backend nothing) and is refused *before* the request-id dedup check, so a retry of it elsewhere — or
//! here, later — is not taken for a duplicate. The client's balancer retries an `UNAVAILABLE` answer once on
//! another endpoint for idempotent methods, within its retry budget; what is still refused then reaches the
//! caller as a clear, immediate status instead of a timeout.
//!
//! # Why here, and why this bound
//! The refusal lives in the agent's layer because it is the only place that sees the backend's whole queue:
//! each of many client instances sees only its own requests (an eighth of the load with eight clients), so a
//! client-side limit must split the queue allowance between clients and refuses whenever one client's share
//! bursts, although the backend has room. `examples/scripts/shed_sim.py` (the model of
//! `queue_sim.py` with 8 clients, admission and one retry; two fast and two slow backends, 6:1 each) gives:
//!
//! | offered load | rule | goodput / capacity | refused | p50 ms | p99 ms |
//! |--:|---|--:|--:|--:|--:|
//! | 0.6 | agent, allowance 1.0 | 59.9% | 0.01% | 8.4 | 93 |
//! | 0.6 | agent, allowance 2.0 | 60.0% | 0.00% | 8.4 | 93 |
//! | 0.6 | client, allowance 1.0 | 58.8% | 1.40% | 8.2 | 93 |
//! | 0.9 | agent, allowance 1.0 | 87.9% | 2.08% | 12.3 | 114 |
//! | 0.9 | agent, allowance 2.0 | 89.4% | 0.43% | 14.8 | 110 |
//! | 1.3 | none (today) | — | 0% | 6,458 | 11,416 |
//! | 1.3 | agent, allowance 1.0 | 99.5% | 23.4% | 17.2 | 143 |
//! | 1.3 | agent, allowance 2.0 | 100.3% | 22.9% | 27.7 | 186 |
//!
//! The default allowance is two queued requests per slot: goodput stays at capacity past overload while a
//! served request waits at most about two service times in the queue, and at normal load it does not
//! engage (0.00% at 0.6 in the model). One per slot was tried first: on a loaded 2-core machine the fault
//! matrix's fault-free run at half capacity (4-slot backends, scheduling bursts) then shed 76 requests, 4 of
//! which were refused again after their retry — a change of routing at normal load, which this rule must not
//! make. Without a declared capacity the layer has no bound to compare with and never sheds.

use std::sync::atomic::{AtomicU64, Ordering};

use http::Response;
use http_body::Body;

use super::LoadBody;

/// The default queue allowance: two queued requests per slot (see the [module docs](self)).
pub const DEFAULT_QUEUE_ALLOWANCE: f64 = 2.0;

/// The shedding rule of a [`super::LoadLayer`] and its counter; see the [module docs](self).
#[derive(Debug)]
pub(super) struct Shedding {
    queue_allowance: f64,
    refused: AtomicU64,
}

impl Shedding {
    /// Sheds past `declared · (1 + queue_allowance)` in flight (a negative or non-finite allowance is 0).
    pub(super) fn new(queue_allowance: f64) -> Self {
        let queue_allowance = if queue_allowance.is_finite() {
            queue_allowance.max(0.0)
        } else {
            0.0
        };
        Self {
            queue_allowance,
            refused: AtomicU64::new(0),
        }
    }

    /// The in-flight count at which requests are refused, for a declared capacity.
    pub(super) fn limit(&self, declared: u32) -> u64 {
        let queue = (self.queue_allowance * f64::from(declared)).ceil();
        // Finite and ≥ 0 by construction; `as` saturates.
        u64::from(declared.max(1)) + queue as u64
    }

    /// Whether a request arriving with `in_flight` already in flight is refused (and counts it if so).
    pub(super) fn refuses(&self, in_flight: u32, declared: Option<u32>) -> Option<(u32, u64)> {
        let declared = declared?;
        let limit = self.limit(declared);
        if u64::from(in_flight) >= limit {
            self.refused.fetch_add(1, Ordering::Relaxed);
            Some((in_flight, limit))
        } else {
            None
        }
    }

    /// Requests refused so far.
    pub(super) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub(super) fn queue_allowance(&self) -> f64 {
        self.queue_allowance
    }
}

/// The immediate answer to a refused request: `UNAVAILABLE`, trailers-only, saying why.
pub(super) fn refusal<B: Body>(in_flight: u32, limit: u64) -> Response<LoadBody<B>> {
    tonic::Status::unavailable(format!(
        "overloaded: refused before processing ({in_flight} in flight, limit {limit}); \
         safe to retry elsewhere"
    ))
    .into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_capacity_plus_two_queued_per_slot_by_default() {
        let s = Shedding::new(DEFAULT_QUEUE_ALLOWANCE);
        assert_eq!(s.limit(6), 18);
        assert_eq!(s.limit(1), 3);
        assert_eq!(Shedding::new(0.5).limit(5), 8);
        assert_eq!(Shedding::new(f64::NAN).limit(4), 4);
        assert_eq!(Shedding::new(-3.0).limit(4), 4);
    }

    #[test]
    fn refuses_only_at_the_limit_and_only_with_a_declared_capacity() {
        let s = Shedding::new(1.0);
        assert_eq!(s.refuses(11, Some(6)), None);
        assert_eq!(s.refuses(12, Some(6)), Some((12, 12)));
        assert_eq!(s.refuses(1_000, None), None);
        assert_eq!(s.refused(), 1);
    }
}
