//! A small metrics registry for the client, rendered as Prometheus text.
//!
//! Plain atomics; no metrics crate. Counters for endpoints that a snapshot removed stay in the registry
//! (Prometheus counters must not vanish); the set is bounded by the distinct endpoint ids ever seen.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The client's metrics. Obtain it with [`Balancer::metrics`](super::Balancer::metrics).
#[derive(Debug)]
pub struct ClientMetrics {
    service: String,
    pub(crate) requests: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) budget_exhausted: AtomicU64,
    pub(crate) no_endpoint: AtomicU64,
    pub(crate) stale: AtomicBool,
    pub(crate) stale_events: AtomicU64,
    pub(crate) snapshot_version: AtomicU64,
    pub(crate) snapshots: AtomicU64,
    pub(crate) orca_reports: AtomicU64,
    /// Attempts that found their endpoint stalled (answering nothing past its stall bound).
    pub(crate) stalled: AtomicU64,
    picks: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    /// The dynamic/static split's per-group series (rendered only with a split).
    pub(crate) split: super::split::SplitMetrics,
    /// Zone preference's mode (rendered only with a zone policy).
    pub(crate) zones: super::zones::ZoneMetrics,
}

impl ClientMetrics {
    pub(crate) fn new(service: &str) -> Self {
        Self {
            service: service.to_string(),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            budget_exhausted: AtomicU64::new(0),
            no_endpoint: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            stale_events: AtomicU64::new(0),
            snapshot_version: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            orca_reports: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
            picks: Mutex::new(BTreeMap::new()),
            split: Default::default(),
            zones: Default::default(),
        }
    }

    /// The pick counter of endpoint `id` (created on first use; not on the pick path).
    pub(crate) fn picks_counter(&self, id: &str) -> Arc<AtomicU64> {
        let mut picks = self.picks.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(picks.entry(id.to_string()).or_default())
    }

    /// Requests handled (not counting retries).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Retries sent.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Retries refused because the retry budget was exhausted.
    pub fn budget_exhausted(&self) -> u64 {
        self.budget_exhausted.load(Ordering::Relaxed)
    }

    /// Requests failed fast because no endpoint could take them.
    pub fn no_endpoint(&self) -> u64 {
        self.no_endpoint.load(Ordering::Relaxed)
    }

    /// Whether the weights are stale (no snapshot within two heartbeat intervals).
    pub fn stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// How many times the weights went stale.
    pub fn stale_events(&self) -> u64 {
        self.stale_events.load(Ordering::Relaxed)
    }

    /// The version of the snapshot in use (0: none yet, static or equal weights).
    pub fn snapshot_version(&self) -> u64 {
        self.snapshot_version.load(Ordering::Relaxed)
    }

    /// Snapshots applied.
    pub fn snapshots(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }

    /// Attempts cancelled or flagged because their endpoint answered nothing past its stall bound.
    pub fn stalled(&self) -> u64 {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Picks per endpoint id (includes retries).
    pub fn picks(&self) -> BTreeMap<String, u64> {
        let picks = self.picks.lock().unwrap_or_else(|e| e.into_inner());
        picks
            .iter()
            .map(|(id, c)| (id.clone(), c.load(Ordering::Relaxed)))
            .collect()
    }

    /// One rollout group's requests, errors and latency histogram (all zero without a
    /// [`dynamic_fraction`](super::Builder::dynamic_fraction)).
    pub fn group(&self, group: super::split::Group) -> super::split::GroupStats {
        self.split.stats(group)
    }

    /// Whether zone preference is spilling out of the local zone.
    pub fn zone_spilling(&self) -> bool {
        self.zones.spilling()
    }

    /// The fraction of requests the local zone gets: 1 in local mode, less while spilling (with a zone
    /// policy; 1 without).
    pub fn zone_local_fraction(&self) -> f64 {
        self.zones.local_fraction()
    }

    /// Changes between local and spill mode so far.
    pub fn zone_transitions(&self) -> u64 {
        self.zones.transitions()
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let service = escape(&self.service);
        let mut scalar = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{service=\"{service}\"}} {value}"
            );
        };
        scalar(
            "lateral_client_requests_total",
            "counter",
            "Requests handled (not counting retries).",
            self.requests(),
        );
        scalar(
            "lateral_client_retries_total",
            "counter",
            "Retries sent on another endpoint.",
            self.retries(),
        );
        scalar(
            "lateral_client_retry_budget_exhausted_total",
            "counter",
            "Retries refused by the retry budget.",
            self.budget_exhausted(),
        );
        scalar(
            "lateral_client_no_endpoint_total",
            "counter",
            "Requests failed fast with no endpoint available.",
            self.no_endpoint(),
        );
        scalar(
            "lateral_client_weights_stale",
            "gauge",
            "1 when no snapshot arrived within two heartbeat intervals.",
            u64::from(self.stale()),
        );
        scalar(
            "lateral_client_stale_events_total",
            "counter",
            "Times the weights went stale.",
            self.stale_events(),
        );
        scalar(
            "lateral_client_snapshot_version",
            "gauge",
            "Version of the weight snapshot in use.",
            self.snapshot_version(),
        );
        scalar(
            "lateral_client_snapshots_total",
            "counter",
            "Weight snapshots applied.",
            self.snapshots(),
        );
        scalar(
            "lateral_client_orca_reports_total",
            "counter",
            "ORCA load reports read from responses.",
            self.orca_reports.load(Ordering::Relaxed),
        );
        scalar(
            "lateral_client_stalled_attempts_total",
            "counter",
            "Attempts whose endpoint answered nothing past its stall bound (set aside locally).",
            self.stalled(),
        );
        let _ = writeln!(
            out,
            "# HELP lateral_client_picks_total Picks per endpoint.\n# TYPE lateral_client_picks_total counter"
        );
        for (id, picks) in self.picks() {
            let _ = writeln!(
                out,
                "lateral_client_picks_total{{service=\"{service}\",endpoint=\"{}\"}} {picks}",
                escape(&id)
            );
        }
        self.split.render(&mut out, &service);
        self.zones.render(&mut out, &service);
        out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
