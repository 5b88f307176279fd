//! Safe rollout of Lateral itself: only a fraction of requests follows the coordinator's (dynamic) weights,
//! the rest the static weights, and both groups' latency and errors are reported side by side.
//!
//! This is the article's "Next steps": "let the coordinator adjust weights for only 10% of traffic
//! initially, while the remaining 90% uses static weights. Compare the two groups' error rates and
//! latencies. If the dynamic group performs better or equal, gradually increase the percentage." Turn it on
//! with [`Builder::dynamic_fraction`](super::Builder::dynamic_fraction).
//!
//! - **Assignment** is by this client's request counter, spread evenly (Bresenham): request `n` is dynamic
//!   when `⌊(n+1)·f⌋ > ⌊n·f⌋` (`f` in parts per million). Of any `N` consecutive requests, `N·f` rounded
//!   up or down follow the dynamic weights, so both groups see the same mix of traffic over time. Retries
//!   stay in their request's group.
//! - **Dynamic group**: exactly what the balancer does without a split (coordinator weights, ORCA, the
//!   per-request choice by live queue, key hashing on the dynamic table).
//! - **Static group**: the weights given to [`Builder::static_weights`](super::Builder::static_weights)
//!   (equal weights when none; an endpoint the coordinator added gets the mean configured weight), over the
//!   same membership and with the same exclusions (EJECTED, TRIPPED and DRAINING endpoints get nothing in
//!   either group: health is not what is being compared; endpoints the client set aside as unreachable or
//!   stalled are passed over in both), with no ORCA and no per-request choice: the weighted round robin a
//!   team ran before Lateral, the control the dynamic group is compared with.
//! - **Metrics** ([`ClientMetrics::group`](super::ClientMetrics::group) and `render_prometheus()`):
//!   `lateral_client_group_requests_total{group}`, `lateral_client_group_errors_total{group}` (a grpc-status
//!   other than OK, a transport error, or a response body that ended without a status) and
//!   `lateral_client_group_latency_seconds{group}`, a histogram with fixed buckets
//!   ([`LATENCY_BUCKETS_MS`]) of the time from the call to the end of the response (its trailers).

use std::sync::atomic::{AtomicU64, Ordering};

use lateral_ops::prometheus::{Kind, TextWriter};
use tokio::time::Instant;

use super::metrics::ClientMetrics;

/// Which weights a request follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// The coordinator's weights (the default for every request when there is no split).
    Dynamic,
    /// The configured static weights.
    Static,
}

impl Group {
    /// The metric label value: `"dynamic"` or `"static"`.
    pub fn label(self) -> &'static str {
        match self {
            Group::Dynamic => "dynamic",
            Group::Static => "static",
        }
    }
}

/// Parts per million of the dynamic fraction.
const PPM: u64 = 1_000_000;

/// Assigns requests to groups (see the module docs). Lock-free: one `fetch_add`.
#[derive(Debug)]
pub(crate) struct Splitter {
    dynamic_ppm: u64,
    sequence: AtomicU64,
}

impl Splitter {
    /// `fraction` in [0, 1] (validated by the builder).
    pub(crate) fn new(fraction: f64) -> Self {
        Self {
            dynamic_ppm: (fraction.clamp(0.0, 1.0) * PPM as f64).round() as u64,
            sequence: AtomicU64::new(0),
        }
    }

    /// The group of the next request.
    #[inline]
    pub(crate) fn assign(&self) -> Group {
        group_of(
            self.sequence.fetch_add(1, Ordering::Relaxed),
            self.dynamic_ppm,
        )
    }
}

/// The group of request `n` at `dynamic_ppm` parts per million (pure; see the module docs).
#[inline]
fn group_of(n: u64, dynamic_ppm: u64) -> Group {
    let r = n % PPM;
    if (r + 1) * dynamic_ppm / PPM > r * dynamic_ppm / PPM {
        Group::Dynamic
    } else {
        Group::Static
    }
}

/// Upper bounds of the latency histogram's buckets, in milliseconds (then `+Inf`).
pub const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10_000];

#[derive(Debug, Default)]
struct GroupCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    sum_micros: AtomicU64,
}

/// Per-group request, error and latency counters (plain atomics).
#[derive(Debug, Default)]
pub(crate) struct SplitMetrics {
    enabled: std::sync::atomic::AtomicBool,
    groups: [GroupCounters; 2],
}

/// One group's figures, as read from [`ClientMetrics::group`](super::ClientMetrics::group).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupStats {
    /// Requests completed (successfully or not) in this group.
    pub requests: u64,
    /// Of which failed: a grpc-status other than OK, a transport error, or no status at all.
    pub errors: u64,
    /// Cumulative histogram: `(upper bound in seconds, requests at most that slow)`, the last bound `+Inf`.
    pub latency_buckets: Vec<(f64, u64)>,
    /// The sum of latencies, in seconds.
    pub latency_sum_seconds: f64,
}

impl GroupStats {
    /// The error rate in [0, 1] (0 with no requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The mean latency in seconds (0 with no requests).
    pub fn mean_latency_seconds(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.latency_sum_seconds / self.requests as f64
        }
    }

    /// An upper bound on quantile `q` (e.g. 0.99): the first bucket bound holding at least `q` of the
    /// requests (`+Inf` when it is past the last finite bucket; 0 with no requests).
    pub fn latency_quantile_upper_bound(&self, q: f64) -> f64 {
        let target = (q.clamp(0.0, 1.0) * self.requests as f64).ceil() as u64;
        if self.requests == 0 {
            return 0.0;
        }
        self.latency_buckets
            .iter()
            .find(|(_, c)| *c >= target)
            .map_or(f64::INFINITY, |(le, _)| *le)
    }
}

impl SplitMetrics {
    fn counters(&self, group: Group) -> &GroupCounters {
        match group {
            Group::Dynamic => &self.groups[0],
            Group::Static => &self.groups[1],
        }
    }

    pub(crate) fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Records one finished request.
    pub(crate) fn record(&self, group: Group, latency: std::time::Duration, ok: bool) {
        let c = self.counters(group);
        c.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|&le| micros <= le * 1000)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        c.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        c.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// One group's figures.
    pub(crate) fn stats(&self, group: Group) -> GroupStats {
        let c = self.counters(group);
        let mut cumulative = 0;
        let latency_buckets = c
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                cumulative += b.load(Ordering::Relaxed);
                let le = LATENCY_BUCKETS_MS
                    .get(i)
                    .map_or(f64::INFINITY, |ms| *ms as f64 / 1000.0);
                (le, cumulative)
            })
            .collect();
        GroupStats {
            requests: c.requests.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            latency_buckets,
            latency_sum_seconds: c.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    /// Appends the per-group series (only when a split is configured).
    pub(crate) fn render(&self, w: &mut TextWriter, service: &str) {
        if !self.enabled() {
            return;
        }
        let groups = [Group::Dynamic, Group::Static].map(|g| (g.label(), self.stats(g)));
        let name = "lateral_client_group_requests_total";
        w.family(
            name,
            Kind::Counter,
            "Requests completed per rollout group (dynamic or static weights).",
        );
        for (label, s) in &groups {
            w.sample(
                name,
                &[("service", service), ("group", label)],
                s.requests as f64,
            );
        }
        let name = "lateral_client_group_errors_total";
        w.family(name, Kind::Counter, "Failed requests per rollout group.");
        for (label, s) in &groups {
            w.sample(
                name,
                &[("service", service), ("group", label)],
                s.errors as f64,
            );
        }
        let name = "lateral_client_group_latency_seconds";
        w.family(
            name,
            Kind::Histogram,
            "Time from the call to the end of the response, per rollout group.",
        );
        for (label, s) in &groups {
            w.histogram(
                name,
                &[("service", service), ("group", label)],
                &s.latency_buckets,
                s.latency_sum_seconds,
                s.requests,
            );
        }
    }
}

pub(crate) fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

/// A request not yet counted: its group, when it started and the status its response headers carried.
/// The call's response body ([`super::response`]) finishes it when the response ends.
#[derive(Debug)]
pub(crate) struct Pending {
    group: Group,
    started: Instant,
    header_status: Option<i32>,
}

impl Pending {
    pub(crate) fn new(group: Group, started: Instant, headers: &http::HeaderMap) -> Self {
        Self {
            group,
            started,
            header_status: grpc_status(headers),
        }
    }

    /// The `grpc-status` of the response headers (a trailers-only answer).
    pub(crate) fn header_status(&self) -> Option<i32> {
        self.header_status
    }

    /// Counts the request as ended with `status` (`None`: no status, an error).
    pub(crate) fn finish(self, metrics: &ClientMetrics, status: Option<i32>) {
        metrics
            .split
            .record(self.group, self.started.elapsed(), status == Some(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_percent_is_exact_over_every_window() {
        let ppm = 100_000;
        let dynamic = |from: u64, n: u64| {
            (from..from + n)
                .filter(|&i| group_of(i, ppm) == Group::Dynamic)
                .count() as u64
        };
        assert_eq!(dynamic(0, 1000), 100);
        for start in [0, 7, 999_995, 12_345_678] {
            let d = dynamic(start, 37);
            assert!((3..=4).contains(&d), "{start}: {d}");
        }
        assert_eq!(dynamic(0, 50), 5);
        assert!((0..100).all(|i| group_of(i, PPM) == Group::Dynamic));
        assert!((0..100).all(|i| group_of(i, 0) == Group::Static));
    }

    #[test]
    fn histogram_is_cumulative() {
        let m = SplitMetrics::default();
        m.record(Group::Static, std::time::Duration::from_micros(1500), true);
        m.record(Group::Static, std::time::Duration::from_millis(30), false);
        m.record(Group::Static, std::time::Duration::from_secs(60), true);
        let s = m.stats(Group::Static);
        assert_eq!((s.requests, s.errors), (3, 1));
        assert_eq!(s.latency_buckets[0], (0.001, 0));
        assert_eq!(s.latency_buckets[1], (0.002, 1));
        assert_eq!(s.latency_buckets[5], (0.05, 2));
        assert_eq!(s.latency_buckets.last().map(|b| b.1), Some(3));
        assert_eq!(s.latency_quantile_upper_bound(0.5), 0.05);
        assert_eq!(m.stats(Group::Dynamic).requests, 0);
    }
}
