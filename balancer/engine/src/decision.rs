//! Decision records, alerts and rejections: what the engine tells the outside world, and why.

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use super::table::EndpointState;

/// The rule that fired for a change. `as_str` gives the stable name used in logs and on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// The endpoint joined the set.
    Added,
    /// The endpoint left the set.
    Removed,
    /// Throughput mode: headroom over the estimated capacity.
    Capacity,
    /// Latency acted: mean past `target_latency`, p99 past `latency_threshold`, or latency mode (1/p99).
    Latency,
    /// The error penalty cut the effective capacity.
    Errors,
    /// The smoothed weight is still moving toward its calculated value.
    Smoothing,
    /// Held at the floor of a live endpoint.
    Floor,
    /// Held at a cap: `max_planned_utilization` of capacity, or `max_share` in latency mode.
    Cap,
    /// Missed heartbeats: reduced, never raised.
    FreshnessDegraded,
    /// Silent past `eject_after`: share 0.
    FreshnessEjected,
    /// Requests in flight and none completing past the stall bound (liveness from completions): share 0.
    LivenessStalled,
    /// Returning endpoint: hold-off, then a ramp from `readmission_start` to its full share.
    Readmission,
    /// Held at the canary floor.
    CanaryFloor,
    /// The canary's error rate tripped its breaker: share 0.
    CanaryBreaker,
    /// The canary's allowance (progressive delivery) bounds its share, or grew a step.
    CanaryPromotion,
    /// A sawtooth was detected; damping harder.
    Oscillation,
    /// No usable data, or every endpoint unhealthy: configured static weights (or equal shares).
    StaticFallback,
    /// No measurement yet: the shares a previous coordinator last published ([`crate::Engine::seed`]).
    Seeded,
    /// The agent said goodbye or reports it is not accepting: share 0.
    Draining,
    /// A heartbeat was rejected.
    Rejected,
}

impl Rule {
    /// Stable name, e.g. `"freshness.degraded"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Rule::Added => "added",
            Rule::Removed => "removed",
            Rule::Capacity => "capacity",
            Rule::Latency => "latency",
            Rule::Errors => "errors",
            Rule::Smoothing => "smoothing",
            Rule::Floor => "floor",
            Rule::Cap => "cap",
            Rule::FreshnessDegraded => "freshness.degraded",
            Rule::FreshnessEjected => "freshness.ejected",
            Rule::LivenessStalled => "liveness.stalled",
            Rule::Readmission => "readmission",
            Rule::CanaryFloor => "canary.floor",
            Rule::CanaryBreaker => "canary.breaker",
            Rule::CanaryPromotion => "canary.promotion",
            Rule::Oscillation => "oscillation",
            Rule::StaticFallback => "static_fallback",
            Rule::Seeded => "seeded",
            Rule::Draining => "draining",
            Rule::Rejected => "rejected",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of one endpoint's weight or state, with the inputs that mattered and a sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// When (the `now` of the input that caused it).
    pub at: Instant,
    /// Endpoint id.
    pub endpoint: String,
    /// Share at the endpoint's previous record.
    pub old_weight: f64,
    /// Share now.
    pub new_weight: f64,
    /// State at the previous record.
    pub old_state: EndpointState,
    /// State now.
    pub new_state: EndpointState,
    /// The rule that fired.
    pub rule: Rule,
    /// A sentence a person understands.
    pub reason: String,
    /// The inputs, by name with units in the name (`p99_ms`, `capacity_rps`, `error_rate`, ...).
    pub inputs: Vec<(&'static str, f64)>,
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AlertKind {
    /// A weight moved more than `drift_threshold` within `drift_window`.
    Drift,
    /// A sawtooth was detected (the engine damps harder until it stops).
    Oscillation,
    /// A canary's breaker tripped.
    CanaryBreaker,
    /// A canary's allowance grew a step.
    CanaryPromoted,
    /// No endpoint is healthy: static weights are in force.
    AllUnhealthy,
}

impl AlertKind {
    /// Stable name, e.g. `"canary_breaker"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertKind::Drift => "drift",
            AlertKind::Oscillation => "oscillation",
            AlertKind::CanaryBreaker => "canary_breaker",
            AlertKind::CanaryPromoted => "canary_promoted",
            AlertKind::AllUnhealthy => "all_unhealthy",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a person should look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// When.
    pub at: Instant,
    /// The endpoint concerned, if one.
    pub endpoint: Option<String>,
    /// What kind.
    pub kind: AlertKind,
    /// A sentence.
    pub message: String,
}

/// Why a heartbeat was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The endpoint is not in the set (add it with `upsert_endpoint` first).
    #[error("unknown endpoint `{0}`")]
    UnknownEndpoint(String),
    /// A field holds an impossible value (NaN, infinite, negative, failed > completed, zero window).
    #[error("impossible value for `{field}`: {value}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The value, and why it is impossible.
        value: String,
    },
}

/// A FIFO that keeps the newest `cap` items and counts what it dropped.
#[derive(Debug, Clone)]
pub struct BoundedQueue<T> {
    items: VecDeque<T>,
    cap: usize,
    dropped: u64,
}

impl<T> BoundedQueue<T> {
    /// An empty queue holding at most `cap` items.
    pub fn new(cap: usize) -> Self {
        BoundedQueue {
            items: VecDeque::new(),
            cap: cap.max(1),
            dropped: 0,
        }
    }

    /// Appends, dropping the oldest when full.
    pub fn push(&mut self, item: T) {
        if self.items.len() >= self.cap {
            self.items.pop_front();
            self.dropped += 1;
        }
        self.items.push_back(item);
    }

    /// Takes the oldest.
    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    /// Items dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}
