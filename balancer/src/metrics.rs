//! A small metrics registry for the client, rendered as Prometheus text.
//!
//! Plain atomics; the text is written by `lateral_ops::prometheus::TextWriter`, the one writer the agent and
//! the coordinator use too. Counters for endpoints that a snapshot removed stay in the registry
//! (Prometheus counters must not vanish); the set is bounded by the distinct endpoint ids ever seen.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lateral_ops::prometheus::{Kind, TextWriter};

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
    /// Attempts an agent refused before its backend saw them (`x-lateral-refused`: overload shedding).
    pub(crate) refused: AtomicU64,
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
            refused: AtomicU64::new(0),
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

    /// Attempts an agent refused unprocessed (overload shedding); each may have gone elsewhere.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
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
        let mut w = TextWriter::default();
        let service = [("service", self.service.as_str())];
        for (name, kind, help, value) in [
            (
                "lateral_client_requests_total",
                Kind::Counter,
                "Requests handled (not counting retries).",
                self.requests(),
            ),
            (
                "lateral_client_retries_total",
                Kind::Counter,
                "Retries sent on another endpoint.",
                self.retries(),
            ),
            (
                "lateral_client_retry_budget_exhausted_total",
                Kind::Counter,
                "Retries refused by the retry budget.",
                self.budget_exhausted(),
            ),
            (
                "lateral_client_no_endpoint_total",
                Kind::Counter,
                "Requests failed fast with no endpoint available.",
                self.no_endpoint(),
            ),
            (
                "lateral_client_weights_stale",
                Kind::Gauge,
                "1 when no snapshot arrived within two heartbeat intervals.",
                u64::from(self.stale()),
            ),
            (
                "lateral_client_stale_events_total",
                Kind::Counter,
                "Times the weights went stale.",
                self.stale_events(),
            ),
            (
                "lateral_client_snapshot_version",
                Kind::Gauge,
                "Version of the weight snapshot in use.",
                self.snapshot_version(),
            ),
            (
                "lateral_client_snapshots_total",
                Kind::Counter,
                "Weight snapshots applied.",
                self.snapshots(),
            ),
            (
                "lateral_client_orca_reports_total",
                Kind::Counter,
                "ORCA load reports read from responses.",
                self.orca_reports.load(Ordering::Relaxed),
            ),
            (
                "lateral_client_stalled_attempts_total",
                Kind::Counter,
                "Attempts whose endpoint answered nothing past its stall bound (set aside locally).",
                self.stalled(),
            ),
            (
                "lateral_client_refused_attempts_total",
                Kind::Counter,
                "Attempts an agent refused before its backend saw them (overload shedding).",
                self.refused(),
            ),
        ] {
            w.family(name, kind, help);
            w.sample(name, &service, value as f64);
        }
        let name = "lateral_client_picks_total";
        w.family(name, Kind::Counter, "Picks per endpoint.");
        for (id, picks) in self.picks() {
            w.sample(
                name,
                &[("service", &self.service), ("endpoint", &id)],
                picks as f64,
            );
        }
        self.split.render(&mut w, &self.service);
        self.zones.render(&mut w, &self.service);
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::split::Group;
    use super::*;

    /// The exposition is what the hand-written writer produced before `TextWriter` took over, byte for byte:
    /// dashboards and alert rules read these names, labels and types.
    #[test]
    fn the_exposition_keeps_its_names_labels_types_and_order() {
        let metrics = ClientMetrics::new("a\"b");
        metrics.requests.fetch_add(3, Ordering::Relaxed);
        metrics.picks_counter("e1").fetch_add(2, Ordering::Relaxed);
        metrics.split.enable();
        metrics
            .split
            .record(Group::Dynamic, Duration::from_millis(3), true);
        metrics
            .split
            .record(Group::Static, Duration::from_millis(20), false);
        metrics.zones.enable();
        let mut expected = String::new();
        for (name, kind, help, value) in [
            (
                "lateral_client_requests_total",
                "counter",
                "Requests handled (not counting retries).",
                3,
            ),
            (
                "lateral_client_retries_total",
                "counter",
                "Retries sent on another endpoint.",
                0,
            ),
            (
                "lateral_client_retry_budget_exhausted_total",
                "counter",
                "Retries refused by the retry budget.",
                0,
            ),
            (
                "lateral_client_no_endpoint_total",
                "counter",
                "Requests failed fast with no endpoint available.",
                0,
            ),
            (
                "lateral_client_weights_stale",
                "gauge",
                "1 when no snapshot arrived within two heartbeat intervals.",
                0,
            ),
            (
                "lateral_client_stale_events_total",
                "counter",
                "Times the weights went stale.",
                0,
            ),
            (
                "lateral_client_snapshot_version",
                "gauge",
                "Version of the weight snapshot in use.",
                0,
            ),
            (
                "lateral_client_snapshots_total",
                "counter",
                "Weight snapshots applied.",
                0,
            ),
            (
                "lateral_client_orca_reports_total",
                "counter",
                "ORCA load reports read from responses.",
                0,
            ),
            (
                "lateral_client_stalled_attempts_total",
                "counter",
                "Attempts whose endpoint answered nothing past its stall bound (set aside locally).",
                0,
            ),
            (
                "lateral_client_refused_attempts_total",
                "counter",
                "Attempts an agent refused before its backend saw them (overload shedding).",
                0,
            ),
        ] {
            expected.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{service=\"a\\\"b\"}} {value}\n"
            ));
        }
        expected.push_str(concat!(
            "# HELP lateral_client_picks_total Picks per endpoint.\n",
            "# TYPE lateral_client_picks_total counter\n",
            "lateral_client_picks_total{service=\"a\\\"b\",endpoint=\"e1\"} 2\n",
            "# HELP lateral_client_group_requests_total Requests completed per rollout group (dynamic or static weights).\n",
            "# TYPE lateral_client_group_requests_total counter\n",
            "lateral_client_group_requests_total{service=\"a\\\"b\",group=\"dynamic\"} 1\n",
            "lateral_client_group_requests_total{service=\"a\\\"b\",group=\"static\"} 1\n",
            "# HELP lateral_client_group_errors_total Failed requests per rollout group.\n",
            "# TYPE lateral_client_group_errors_total counter\n",
            "lateral_client_group_errors_total{service=\"a\\\"b\",group=\"dynamic\"} 0\n",
            "lateral_client_group_errors_total{service=\"a\\\"b\",group=\"static\"} 1\n",
            "# HELP lateral_client_group_latency_seconds Time from the call to the end of the response, per rollout group.\n",
            "# TYPE lateral_client_group_latency_seconds histogram\n",
        ));
        let bounds = [
            "0.001", "0.002", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
            "10", "+Inf",
        ];
        for (group, first_full, sum) in [("dynamic", 2, "0.003"), ("static", 4, "0.02")] {
            let labels = format!("service=\"a\\\"b\",group=\"{group}\"");
            for (i, le) in bounds.iter().enumerate() {
                let count = u8::from(i >= first_full);
                expected.push_str(&format!(
                    "lateral_client_group_latency_seconds_bucket{{{labels},le=\"{le}\"}} {count}\n"
                ));
            }
            expected.push_str(&format!(
                "lateral_client_group_latency_seconds_sum{{{labels}}} {sum}\n\
                 lateral_client_group_latency_seconds_count{{{labels}}} 1\n"
            ));
        }
        expected.push_str(concat!(
            "# HELP lateral_client_zone_spilling 1 while requests spill out of the local zone.\n",
            "# TYPE lateral_client_zone_spilling gauge\n",
            "lateral_client_zone_spilling{service=\"a\\\"b\"} 0\n",
            "# HELP lateral_client_zone_local_fraction The fraction of requests the local zone gets (1 in local mode).\n",
            "# TYPE lateral_client_zone_local_fraction gauge\n",
            "lateral_client_zone_local_fraction{service=\"a\\\"b\"} 1\n",
            "# HELP lateral_client_zone_transitions_total Changes between local and spill mode.\n",
            "# TYPE lateral_client_zone_transitions_total counter\n",
            "lateral_client_zone_transitions_total{service=\"a\\\"b\"} 0\n",
        ));
        assert_eq!(metrics.render_prometheus(), expected);
    }
}
