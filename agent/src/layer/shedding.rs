//! Overload shedding: refusing, before any work, a request the backend cannot serve in reasonable time.
//!
//! # The rule
//! With a declared capacity of `k` requests at once and a queue allowance `q`, the layer refuses a request,
//! answering at once with `UNAVAILABLE` and a message that says why (`overloaded: ...`), when the backend
//! already has in flight (serving or queued):
//! - at least `k + ceil(2q · k)` (the *hard bound*: the queue never grows past two allowances), or
//! - at least `k + ceil(q · k)` (the *standing bound*) and every arrival for the last [`STANDING_QUEUE`] found
//!   it that full: a standing queue, which only a load above capacity keeps up. A burst that fills the
//!   queue and drains again (at 85 % busy they come every few seconds) is served, as CoDel tells a standing
//!   queue from a burst by its minimum over an interval rather than its peak.
//!
//! The count is sampled at arrivals (a drain between two arrivals that ends above the bound goes unseen;
//! in the model below that changes the refusals at 90 % load from 0.07 % to 0.10 %), so departures cost
//! nothing here. A refused request is not measured (it costs the backend nothing) and is refused *before*
//! the request-id dedup check, so a retry of it elsewhere — or here, later — is not taken for a duplicate.
//! The refusal carries `x-lateral-refused: overloaded` ([`lateral_proto::headers::REFUSED_HEADER`]): the
//! client's balancer may send such a request elsewhere whatever the method (nothing was processed), on up to
//! three endpoints in all, within its retry budget; what is still refused then reaches the caller as a clear,
//! immediate status instead of a timeout.
//!
//! # Why here, and why this bound
//! The refusal lives in the agent's layer because it is the only place that sees the backend's whole queue:
//! each of many client instances sees only its own requests (an eighth of the load with eight clients), so a
//! client-side limit must split the queue allowance between clients and refuses whenever one client's share
//! bursts, although the backend has room. `examples/scripts/shed_sim.py` (the model of `queue_sim.py` with
//! 8 clients, admission and one retry; two fast and two slow backends, 6:1 each) gives, as refused = lost
//! after the retry:
//!
//! | offered load | rule | goodput / capacity | refused | p50 ms | p99 ms |
//! |--:|---|--:|--:|--:|--:|
//! | 0.6 | agent, allowance 2.0, at the bound | 60.0% | 0.00% | 8.4 | 93 |
//! | 0.6 | standing, allowance 2.0 | 60.0% | 0.00% | 8.4 | 93 |
//! | 0.6 | client, allowance 1.0 | 58.8% | 1.40% | 8.2 | 93 |
//! | 0.9 | agent, allowance 2.0, at the bound | 89.4% | 0.43% | 14.8 | 110 |
//! | 0.9 | standing, allowance 2.0 | 89.8% | 0.07% | 16.7 | 112 |
//! | 0.85, one fast backend lost | agent, allowance 2.0, at the bound | 84.4% | 0.19% | 15.7 | 139 |
//! | 0.85, one fast backend lost | standing, allowance 2.0 | 84.9% | 0.02% | 16.1 | 137 |
//! | 1.3 | none | — | 0% | 6,458 | 11,416 |
//! | 1.3 | agent, allowance 2.0, at the bound | 100.3% | 22.9% | 27.7 | 186 |
//! | 1.3 | standing, allowance 2.0 | 99.7% | 23.4% | 45.8 | 245 |
//!
//! Refusing at the standing bound alone (the first rule shipped) lost 0.8–1.2 % of requests in the fault
//! matrix's faults, where the two surviving backends run near 85 % busy and bursts reach the bound on both
//! the first attempt and its retry, and up to 0.9 % in the bench's spike, failfast and split scenarios. The
//! standing rule keeps the overload behaviour (goodput at capacity, the excess refused in milliseconds) and
//! refuses about ten times less below capacity, for a longer queue while overloaded (up to `2q` per slot).
//! Without a declared capacity the layer has no bound to compare with and never sheds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Response;
use http_body::Body;
use lateral_proto::headers::{REFUSED_HEADER, REFUSED_OVERLOADED};
use tokio::time::Instant;

use super::LoadBody;

/// The default queue allowance: two queued requests per slot (see the [module docs](self)).
pub const DEFAULT_QUEUE_ALLOWANCE: f64 = 2.0;

/// How long every arrival must have found the backend at its standing bound before requests are refused
/// there (CoDel's interval: several service times of a typical RPC backend).
pub const STANDING_QUEUE: Duration = Duration::from_millis(100);

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The queue reached the hard bound (`limit`).
    Full { in_flight: u32, limit: u64 },
    /// The queue stood at the standing bound (`limit`) for at least `for_ms`.
    Standing {
        in_flight: u32,
        limit: u64,
        for_ms: u64,
    },
}

/// The shedding rule of a [`super::LoadLayer`] and its counter; see the [module docs](self).
#[derive(Debug)]
pub(super) struct Shedding {
    queue_allowance: f64,
    /// The instant `above_since_us` counts from.
    epoch: Instant,
    /// Since when (µs after `epoch`, plus one) every arrival found the backend at its standing bound; 0: the
    /// last arrival found it below.
    above_since_us: AtomicU64,
}

impl Shedding {
    /// Sheds as the module docs say, with `queue_allowance` queued requests per slot (a negative or
    /// non-finite allowance is 0: refuse at the declared capacity). `now`: the layer clock's reading.
    pub(super) fn new(queue_allowance: f64, now: Instant) -> Self {
        let queue_allowance = if queue_allowance.is_finite() {
            queue_allowance.max(0.0)
        } else {
            0.0
        };
        Self {
            queue_allowance,
            epoch: now,
            above_since_us: AtomicU64::new(0),
        }
    }

    /// The standing and the hard bound on the in-flight count, for a declared capacity.
    pub(super) fn limits(&self, declared: u32) -> (u64, u64) {
        let slots = f64::from(declared.max(1));
        let bound = |allowance: f64| {
            // Finite and ≥ 0 by construction; `as` saturates.
            u64::from(declared.max(1)) + (allowance * slots).ceil() as u64
        };
        (
            bound(self.queue_allowance),
            bound(2.0 * self.queue_allowance),
        )
    }

    /// Whether a request arriving at `now` with `in_flight` already in flight is refused (the caller counts it).
    pub(super) fn refuses(
        &self,
        in_flight: u32,
        declared: Option<u32>,
        now: Instant,
    ) -> Option<Refusal> {
        let declared = declared?;
        let (standing, hard) = self.limits(declared);
        let count = u64::from(in_flight);
        if count >= hard {
            Some(Refusal::Full {
                in_flight,
                limit: hard,
            })
        } else if count < standing {
            self.above_since_us.store(0, Ordering::Relaxed);
            None
        } else {
            let now_us = now.saturating_duration_since(self.epoch).as_micros() as u64 + 1;
            // The first arrival to find it full starts the interval; later ones read it.
            let since = match self.above_since_us.compare_exchange(
                0,
                now_us,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => now_us,
                Err(since) => since,
            };
            let stood = Duration::from_micros(now_us.saturating_sub(since));
            (stood >= STANDING_QUEUE).then_some(Refusal::Standing {
                in_flight,
                limit: standing,
                for_ms: stood.as_millis() as u64,
            })
        }
    }

    pub(super) fn queue_allowance(&self) -> f64 {
        self.queue_allowance
    }
}

/// The immediate answer to a refused request: `UNAVAILABLE`, trailers-only, saying why.
pub(super) fn refusal<B: Body>(refusal: Refusal) -> Response<LoadBody<B>> {
    let why = match refusal {
        Refusal::Full { in_flight, limit } => format!("{in_flight} in flight, limit {limit}"),
        Refusal::Standing {
            in_flight,
            limit,
            for_ms,
        } => format!("{in_flight} in flight, at or above {limit} for {for_ms} ms"),
    };
    let mut response = tonic::Status::unavailable(format!(
        "overloaded: refused before processing ({why}); safe to retry elsewhere"
    ))
    .into_http();
    response.headers_mut().insert(
        REFUSED_HEADER,
        http::HeaderValue::from_static(REFUSED_OVERLOADED),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn bounds_are_one_and_two_allowances_past_capacity() {
        let now = Instant::now();
        let s = Shedding::new(DEFAULT_QUEUE_ALLOWANCE, now);
        assert_eq!(s.limits(6), (18, 30));
        assert_eq!(s.limits(1), (3, 5));
        assert_eq!(Shedding::new(0.5, now).limits(5), (8, 10));
        assert_eq!(Shedding::new(f64::NAN, now).limits(4), (4, 4));
        assert_eq!(Shedding::new(-3.0, now).limits(4), (4, 4));
    }

    #[test]
    fn the_hard_bound_refuses_at_once() {
        let t = Instant::now();
        let s = Shedding::new(1.0, t);
        assert_eq!(s.refuses(17, Some(6), t), None);
        assert_eq!(
            s.refuses(18, Some(6), t),
            Some(Refusal::Full {
                in_flight: 18,
                limit: 18
            })
        );
        assert_eq!(s.refuses(1_000, None, t), None, "no capacity, no bound");
    }

    #[test]
    fn a_burst_at_the_standing_bound_is_served_a_standing_queue_is_refused() {
        let t = Instant::now();
        let s = Shedding::new(1.0, t);
        // Limit 12 of capacity 6: a burst reaches it and drains within the interval.
        assert_eq!(s.refuses(12, Some(6), at(t, 0)), None);
        assert_eq!(s.refuses(13, Some(6), at(t, 60)), None);
        assert_eq!(s.refuses(11, Some(6), at(t, 90)), None, "drained below");
        assert_eq!(
            s.refuses(12, Some(6), at(t, 150)),
            None,
            "a new interval starts"
        );
        assert_eq!(s.refuses(12, Some(6), at(t, 249)), None);
        assert_eq!(
            s.refuses(14, Some(6), at(t, 250)),
            Some(Refusal::Standing {
                in_flight: 14,
                limit: 12,
                for_ms: 100
            }),
            "every arrival for 100 ms found it full"
        );
        assert_eq!(s.refuses(3, Some(6), at(t, 260)), None, "room again");
        assert_eq!(s.refuses(12, Some(6), at(t, 270)), None);
    }

    #[test]
    fn with_no_allowance_the_capacity_is_the_bound() {
        let t = Instant::now();
        let s = Shedding::new(0.0, t);
        assert!(matches!(
            s.refuses(4, Some(4), t),
            Some(Refusal::Full { limit: 4, .. })
        ));
        assert_eq!(s.refuses(3, Some(4), t), None);
    }
}
