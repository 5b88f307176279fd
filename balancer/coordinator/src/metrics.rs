//! What the coordinator knows about every endpoint, for operators: Prometheus gauges and counters
//! ([`CoordinatorMetrics::render_prometheus`]) and the dashboard's state with a short history per endpoint
//! ([`CoordinatorMetrics::state`]).
//!
//! The driver writes here after every heartbeat, publish, decision and alert, and the DNS and etcd source
//! tasks after every lookup or list (`lateral_coordinator_source_up`, `..._source_failures_total`: alert on
//! a source that stays down, since its endpoints are then frozen at their last known set); the HTTP server
//! reads. One
//! `Mutex`, held for a few map updates; never on a client's pick path. Times are the driver's clock (tokio's
//! `Instant`), passed in by the caller, like the engine: this module reads no clock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::ingest::IngestStats;
use crate::engine::{EndpointState, LoadReport, WeightTable};
use lateral_ops::prometheus::{Kind, TextWriter};

/// Every endpoint state, in the order the one-hot gauge lists them.
const STATES: [EndpointState; 6] = [
    EndpointState::Ramping,
    EndpointState::Active,
    EndpointState::Degraded,
    EndpointState::Ejected,
    EndpointState::Tripped,
    EndpointState::Draining,
];

/// How long an alert counts as active after it was raised (the drift window of the article).
pub const ALERT_ACTIVE_FOR: Duration = Duration::from_secs(300);
/// Time between two history samples of one endpoint (a 10-minute chart of 300 points; the dashboard's
/// `current` value is live).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// History samples kept per endpoint (10 minutes at one per two seconds).
pub const HISTORY_LEN: usize = 300;
/// Recent alerts kept for the active-alert gauge.
const RECENT_ALERTS: usize = 1024;

/// Per-endpoint gauges, counters and history of a running coordinator.
#[derive(Debug, Default)]
pub struct CoordinatorMetrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    services: BTreeMap<String, ServiceMetrics>,
    decisions: BTreeMap<(String, String), u64>,
    alerts: BTreeMap<(String, String), u64>,
    recent_alerts: VecDeque<(Instant, String, String)>,
    heartbeat_spans: u64,
    /// Dynamic endpoint sources by (service, source label): whether the last attempt worked, and how many
    /// failed.
    sources: BTreeMap<(String, String), (bool, u64)>,
    /// HA: whether this coordinator leads; `None` without `[ha]` (it leads alone).
    leader: Option<bool>,
}

#[derive(Debug, Default)]
struct ServiceMetrics {
    version: u64,
    static_fallback: bool,
    heartbeat_interval: Duration,
    endpoints: BTreeMap<String, EndpointMetrics>,
}

#[derive(Debug)]
struct EndpointMetrics {
    address: String,
    zone: String,
    weight: f64,
    state: EndpointState,
    rule: String,
    reason: String,
    last: Option<LoadReport>,
    last_rx: Option<Instant>,
    heartbeats: u64,
    history: VecDeque<StoredSample>,
    last_sample: Option<Instant>,
}

/// A history point as kept: 24 bytes where the dashboard's [`Sample`] takes 88 (whole wall-clock seconds,
/// fixed-point shares and rates, f32 latencies, and sentinels for the absent values instead of options), so
/// ten minutes of them cost 7 KiB per endpoint — at a thousand endpoints the history is the coordinator's
/// largest own per-endpoint cost after quinn's connection state.
#[derive(Debug, Clone, Copy)]
struct StoredSample {
    /// Wall clock, whole seconds since the Unix epoch (0 before it).
    t_s: u32,
    /// NaN: absent (for the three below).
    p50_ms: f32,
    p99_ms: f32,
    rps: f32,
    /// Share in [0, 1], in 1/65 534.
    weight: u16,
    /// `u16::MAX`: absent; saturates at `u16::MAX - 1`.
    in_flight: u16,
    /// In [0, 1], in 1/65 534; `u16::MAX`: absent.
    error_rate: u16,
}

/// The fixed-point scale of a stored share or rate.
const UNIT_SCALE: f64 = 65_534.0;

impl StoredSample {
    const EMPTY: StoredSample = StoredSample {
        t_s: 0,
        p50_ms: f32::NAN,
        p99_ms: f32::NAN,
        rps: f32::NAN,
        weight: 0,
        in_flight: u16::MAX,
        error_rate: u16::MAX,
    };

    fn store(s: &Sample) -> StoredSample {
        let f = |v: Option<f64>| v.map_or(f32::NAN, |v| v as f32);
        // `as` saturates (and maps NaN to 0); the clamps keep the sentinels free.
        let unit = |v: f64| (v.clamp(0.0, 1.0) * UNIT_SCALE).round() as u16;
        StoredSample {
            t_s: (s.t.max(0) / 1_000).min(i64::from(u32::MAX)) as u32,
            p50_ms: f(s.p50_ms),
            p99_ms: f(s.p99_ms),
            rps: f(s.rps),
            weight: unit(s.weight),
            in_flight: s
                .in_flight
                .map_or(u16::MAX, |v| v.min(u32::from(u16::MAX - 1)) as u16),
            error_rate: s.error_rate.map_or(u16::MAX, unit),
        }
    }

    fn load(&self) -> Sample {
        let f = |v: f32| (!v.is_nan()).then_some(f64::from(v));
        let unit = |v: u16| f64::from(v) / UNIT_SCALE;
        Sample {
            t: i64::from(self.t_s) * 1_000,
            weight: unit(self.weight),
            in_flight: (self.in_flight != u16::MAX).then_some(u32::from(self.in_flight)),
            p50_ms: f(self.p50_ms),
            p99_ms: f(self.p99_ms),
            error_rate: (self.error_rate != u16::MAX).then(|| unit(self.error_rate)),
            rps: f(self.rps),
        }
    }
}

/// An empty history with room for [`HISTORY_LEN`] points, its memory written once: the endpoint's history
/// costs what it will cost from its first sample (no doubling to 1 024 slots, no resident set that creeps
/// up for ten minutes and reads like a leak in a soak).
fn presized_history() -> VecDeque<StoredSample> {
    let mut history = VecDeque::from(vec![StoredSample::EMPTY; HISTORY_LEN]);
    history.clear();
    history
}

impl EndpointMetrics {
    fn new() -> Self {
        Self {
            address: String::new(),
            zone: String::new(),
            weight: 0.0,
            state: EndpointState::Ramping,
            rule: String::new(),
            reason: String::new(),
            last: None,
            last_rx: None,
            heartbeats: 0,
            history: VecDeque::new(),
            last_sample: None,
        }
    }

    /// The last report, if it is recent enough (three intervals) to describe the endpoint now.
    fn fresh(&self, now: Instant, interval: Duration) -> Option<&LoadReport> {
        let age = now.checked_duration_since(self.last_rx?)?;
        (age <= interval * 3).then_some(self.last.as_ref()?)
    }
}

/// One point of an endpoint's history, for the dashboard's charts.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub t: i64,
    /// Weight share in [0, 1].
    pub weight: f64,
    /// In-flight requests (absent when the endpoint is silent).
    pub in_flight: Option<u32>,
    /// Median latency in milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th-percentile latency in milliseconds.
    pub p99_ms: Option<f64>,
    /// Failed / completed over the last window.
    pub error_rate: Option<f64>,
    /// Completed requests per second over the last window.
    pub rps: Option<f64>,
}

/// The dashboard's view of one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    /// Endpoint id.
    pub id: String,
    /// Address clients dial.
    pub address: String,
    /// Zone ("" when unknown).
    pub zone: String,
    /// Weight share in [0, 1].
    pub weight: f64,
    /// State name (`active`, `degraded`, ...).
    pub state: &'static str,
    /// The rule behind the current weight.
    pub rule: String,
    /// Its sentence.
    pub reason: String,
    /// Milliseconds since the last heartbeat (absent before the first).
    pub heartbeat_age_ms: Option<f64>,
    /// No heartbeat for three intervals.
    pub stale: bool,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// The newest history point.
    pub current: Option<Sample>,
    /// History, oldest first.
    pub history: Vec<Sample>,
}

/// The dashboard's view of one service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    /// Service name.
    pub name: String,
    /// Published weights version.
    pub version: u64,
    /// Static weights in force (no usable data).
    pub static_fallback: bool,
    /// The heartbeat interval, milliseconds.
    pub heartbeat_interval_ms: f64,
    /// Endpoints by id.
    pub endpoints: Vec<EndpointView>,
}

impl CoordinatorMetrics {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Only plain map updates happen under this lock: a panic cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A heartbeat from `endpoint` arrived at `at` (and the engine accepted it).
    pub(crate) fn on_heartbeat(
        &self,
        service: &str,
        endpoint: &str,
        at: Instant,
        report: &LoadReport,
    ) {
        let mut inner = self.lock();
        let service = inner.services.entry(service.to_string()).or_default();
        let e = service
            .endpoints
            .entry(endpoint.to_string())
            .or_insert_with(EndpointMetrics::new);
        e.last = Some(report.clone());
        e.last_rx = Some(at);
        e.heartbeats += 1;
    }

    /// Counts a heartbeat exported as a span; returns whether this one should be (one in `every`).
    pub(crate) fn heartbeat_span_due(&self, every: u32) -> bool {
        if every == 0 {
            return false;
        }
        let mut inner = self.lock();
        inner.heartbeat_spans += 1;
        inner.heartbeat_spans % u64::from(every) == 1 || every == 1
    }

    /// The engine's current table for `service` (endpoints not in it are forgotten).
    pub(crate) fn on_table(
        &self,
        service: &str,
        version: u64,
        interval: Duration,
        table: &WeightTable,
    ) {
        let mut inner = self.lock();
        let s = inner.services.entry(service.to_string()).or_default();
        s.version = version;
        s.static_fallback = table.static_fallback;
        s.heartbeat_interval = interval;
        s.endpoints
            .retain(|id, _| table.entries.iter().any(|e| e.id == *id));
        for entry in &table.entries {
            let e = s
                .endpoints
                .entry(entry.id.clone())
                .or_insert_with(EndpointMetrics::new);
            e.address.clone_from(&entry.address);
            e.zone = entry.zone.clone().unwrap_or_default();
            e.weight = entry.weight;
            e.state = entry.state;
            e.rule = entry.rule.as_str().to_string();
            e.reason.clone_from(&entry.reason);
        }
    }

    /// Forgets services that are no longer configured.
    pub(crate) fn retain_services(&self, keep: impl Fn(&str) -> bool) {
        let mut inner = self.lock();
        inner.services.retain(|name, _| keep(name));
        inner.sources.retain(|(name, _), _| keep(name));
    }

    /// Records whether a dynamic endpoint source (`dns[0]`, `etcd[1]`) just listed its endpoints (`ok`) or
    /// failed to (it keeps the last ones).
    /// HA: this coordinator now leads (`true`) or stands by.
    pub(crate) fn set_leader(&self, leading: bool) {
        self.lock().leader = Some(leading);
    }

    pub(crate) fn on_source(&self, service: &str, source: &str, ok: bool) {
        let mut inner = self.lock();
        let entry = inner
            .sources
            .entry((service.to_string(), source.to_string()))
            .or_default();
        entry.0 = ok;
        if !ok {
            entry.1 += 1;
        }
    }

    /// Counts a decision by rule.
    pub(crate) fn on_decision(&self, service: &str, rule: &str) {
        *self
            .lock()
            .decisions
            .entry((service.to_string(), rule.to_string()))
            .or_default() += 1;
    }

    /// Counts an alert by kind and remembers it as active for [`ALERT_ACTIVE_FOR`].
    pub(crate) fn on_alert(&self, service: &str, kind: &str, at: Instant) {
        let mut inner = self.lock();
        *inner
            .alerts
            .entry((service.to_string(), kind.to_string()))
            .or_default() += 1;
        if inner.recent_alerts.len() == RECENT_ALERTS {
            inner.recent_alerts.pop_front();
        }
        inner
            .recent_alerts
            .push_back((at, service.to_string(), kind.to_string()));
    }

    /// Appends a history point to every endpoint whose last one is [`SAMPLE_EVERY`] old; `wall_ms` is `now`
    /// on the wall clock.
    pub(crate) fn sample(&self, now: Instant, wall_ms: i64) {
        let mut inner = self.lock();
        for service in inner.services.values_mut() {
            let interval = service.heartbeat_interval;
            for e in service.endpoints.values_mut() {
                let due = e
                    .last_sample
                    .is_none_or(|t| now.saturating_duration_since(t) >= SAMPLE_EVERY);
                if !due {
                    continue;
                }
                e.last_sample = Some(now);
                let sample = StoredSample::store(&sample_of(e, now, interval, wall_ms));
                if e.history.capacity() < HISTORY_LEN {
                    e.history = presized_history();
                }
                if e.history.len() == HISTORY_LEN {
                    e.history.pop_front();
                }
                e.history.push_back(sample);
            }
        }
    }

    /// The dashboard's view; `history` limits the points per endpoint.
    pub fn state(&self, now: Instant, wall_ms: i64, history: usize) -> Vec<ServiceView> {
        let inner = self.lock();
        inner
            .services
            .iter()
            .map(|(name, s)| ServiceView {
                name: name.clone(),
                version: s.version,
                static_fallback: s.static_fallback,
                heartbeat_interval_ms: s.heartbeat_interval.as_secs_f64() * 1e3,
                endpoints: s
                    .endpoints
                    .iter()
                    .map(|(id, e)| {
                        let age = e
                            .last_rx
                            .map(|rx| now.saturating_duration_since(rx).as_secs_f64() * 1e3);
                        EndpointView {
                            id: id.clone(),
                            address: e.address.clone(),
                            zone: e.zone.clone(),
                            weight: e.weight,
                            state: e.state.as_str(),
                            rule: e.rule.clone(),
                            reason: e.reason.clone(),
                            heartbeat_age_ms: age,
                            stale: e.fresh(now, s.heartbeat_interval).is_none(),
                            heartbeats: e.heartbeats,
                            current: Some(sample_of(e, now, s.heartbeat_interval, wall_ms)),
                            history: e
                                .history
                                .iter()
                                .skip(e.history.len().saturating_sub(history))
                                .map(StoredSample::load)
                                .collect(),
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// The Prometheus text exposition of everything above plus the ingest counters.
    pub fn render_prometheus(&self, now: Instant, ingest: &IngestStats) -> String {
        let inner = self.lock();
        let mut w = TextWriter::default();
        let endpoints = || {
            inner.services.iter().flat_map(|(s, svc)| {
                svc.endpoints
                    .iter()
                    .map(move |(id, e)| (s.as_str(), id.as_str(), svc, e))
            })
        };

        let name = "lateral_coordinator_endpoint_weight";
        w.family(
            name,
            Kind::Gauge,
            "Published weight share of the endpoint, in [0, 1].",
        );
        for (s, id, _, e) in endpoints() {
            w.sample(name, &[("service", s), ("endpoint", id)], e.weight);
        }
        let name = "lateral_coordinator_endpoint_state";
        w.family(
            name,
            Kind::Gauge,
            "Endpoint state, one-hot: 1 for the current state, 0 for the others.",
        );
        for (s, id, _, e) in endpoints() {
            for state in STATES {
                let v = if state == e.state { 1.0 } else { 0.0 };
                w.sample(
                    name,
                    &[("service", s), ("endpoint", id), ("state", state.as_str())],
                    v,
                );
            }
        }
        let name = "lateral_coordinator_endpoint_in_flight";
        w.family(
            name,
            Kind::Gauge,
            "Requests in flight at the endpoint, from its last fresh heartbeat.",
        );
        for (s, id, svc, e) in endpoints() {
            if let Some(r) = e.fresh(now, svc.heartbeat_interval) {
                w.sample(
                    name,
                    &[("service", s), ("endpoint", id)],
                    f64::from(r.in_flight),
                );
            }
        }
        let name = "lateral_coordinator_endpoint_latency_seconds";
        w.family(
            name,
            Kind::Gauge,
            "Latency quantiles over the endpoint's last heartbeat window, seconds.",
        );
        for (s, id, svc, e) in endpoints() {
            if let Some(r) = e.fresh(now, svc.heartbeat_interval) {
                for (q, v) in [("0.5", r.latency_p50), ("0.99", r.latency_p99)] {
                    w.sample(
                        name,
                        &[("service", s), ("endpoint", id), ("quantile", q)],
                        v.as_secs_f64(),
                    );
                }
            }
        }
        let name = "lateral_coordinator_endpoint_latency_mean_seconds";
        w.family(
            name,
            Kind::Gauge,
            "Mean latency over the endpoint's last heartbeat window, seconds.",
        );
        for (s, id, svc, e) in endpoints() {
            if let Some(r) = e.fresh(now, svc.heartbeat_interval) {
                w.sample(
                    name,
                    &[("service", s), ("endpoint", id)],
                    r.latency_mean.as_secs_f64(),
                );
            }
        }
        let name = "lateral_coordinator_endpoint_error_ratio";
        w.family(
            name,
            Kind::Gauge,
            "Failed / completed requests over the endpoint's last heartbeat window.",
        );
        for (s, id, svc, e) in endpoints() {
            if let Some(r) = e.fresh(now, svc.heartbeat_interval) {
                w.sample(name, &[("service", s), ("endpoint", id)], error_rate(r));
            }
        }
        let name = "lateral_coordinator_endpoint_requests_per_second";
        w.family(
            name,
            Kind::Gauge,
            "Completed requests per second over the endpoint's last heartbeat window.",
        );
        for (s, id, svc, e) in endpoints() {
            if let Some(r) = e.fresh(now, svc.heartbeat_interval) {
                w.sample(name, &[("service", s), ("endpoint", id)], rps(r));
            }
        }
        let name = "lateral_coordinator_endpoint_heartbeat_age_seconds";
        w.family(
            name,
            Kind::Gauge,
            "Seconds since the coordinator received the endpoint's last heartbeat.",
        );
        for (s, id, _, e) in endpoints() {
            if let Some(rx) = e.last_rx {
                w.sample(
                    name,
                    &[("service", s), ("endpoint", id)],
                    now.saturating_duration_since(rx).as_secs_f64(),
                );
            }
        }
        let name = "lateral_coordinator_endpoint_heartbeats_total";
        w.family(
            name,
            Kind::Counter,
            "Heartbeats received from the endpoint's agent and applied.",
        );
        for (s, id, _, e) in endpoints() {
            w.sample(
                name,
                &[("service", s), ("endpoint", id)],
                e.heartbeats as f64,
            );
        }
        let name = "lateral_coordinator_weights_version";
        w.family(
            name,
            Kind::Gauge,
            "Version of the service's published weight snapshot.",
        );
        for (s, svc) in &inner.services {
            w.sample(name, &[("service", s)], svc.version as f64);
        }
        let name = "lateral_coordinator_static_fallback";
        w.family(
            name,
            Kind::Gauge,
            "1 when the service runs on static weights (no usable data).",
        );
        for (s, svc) in &inner.services {
            w.sample(
                name,
                &[("service", s)],
                if svc.static_fallback { 1.0 } else { 0.0 },
            );
        }
        let name = "lateral_coordinator_leader";
        w.family(
            name,
            Kind::Gauge,
            "1 while this coordinator leads (always, without [ha]), 0 while it stands by.",
        );
        w.sample(
            name,
            &[],
            if inner.leader.unwrap_or(true) {
                1.0
            } else {
                0.0
            },
        );
        let name = "lateral_coordinator_source_up";
        w.family(
            name,
            Kind::Gauge,
            "1 while a DNS or etcd endpoint source answers, 0 while it fails (its last endpoints are kept).",
        );
        for ((s, source), (up, _)) in &inner.sources {
            w.sample(
                name,
                &[("service", s), ("source", source)],
                if *up { 1.0 } else { 0.0 },
            );
        }
        let name = "lateral_coordinator_source_failures_total";
        w.family(
            name,
            Kind::Counter,
            "Failed lookups, lists or watches of a DNS or etcd endpoint source.",
        );
        for ((s, source), (_, failures)) in &inner.sources {
            w.sample(
                name,
                &[("service", s), ("source", source)],
                *failures as f64,
            );
        }
        let name = "lateral_coordinator_decisions_total";
        w.family(
            name,
            Kind::Counter,
            "Weight or state decisions, by the rule that fired.",
        );
        for ((s, rule), n) in &inner.decisions {
            w.sample(name, &[("service", s), ("rule", rule)], *n as f64);
        }
        let name = "lateral_coordinator_alerts_total";
        w.family(name, Kind::Counter, "Alerts raised, by kind.");
        for ((s, kind), n) in &inner.alerts {
            w.sample(name, &[("service", s), ("kind", kind)], *n as f64);
        }
        let name = "lateral_coordinator_alerts_active";
        w.family(
            name,
            Kind::Gauge,
            "Alerts raised in the last 5 minutes, by kind.",
        );
        let mut active: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (s, kind) in inner.alerts.keys() {
            active.insert((s, kind), 0);
        }
        for (at, s, kind) in &inner.recent_alerts {
            if now.saturating_duration_since(*at) <= ALERT_ACTIVE_FOR {
                *active.entry((s, kind)).or_default() += 1;
            }
        }
        for ((s, kind), n) in active {
            w.sample(name, &[("service", s), ("kind", kind)], n as f64);
        }
        for (name, help, value) in [
            (
                "lateral_coordinator_ingest_heartbeats_total",
                "Heartbeats accepted from agents and queued for the engine.",
                &ingest.heartbeats,
            ),
            (
                "lateral_coordinator_ingest_dropped_total",
                "Heartbeats dropped because the driver's queue was full.",
                &ingest.dropped,
            ),
            (
                "lateral_coordinator_ingest_discarded_total",
                "Heartbeats queued but then discarded by the driver (service gone, or refused by the engine).",
                &ingest.discarded,
            ),
            (
                "lateral_coordinator_ingest_missed_total",
                "Heartbeats agents numbered that never arrived (sequence gaps: lost across a reconnect, measured while disconnected, skipped by a lagging stream).",
                &ingest.missed,
            ),
            (
                "lateral_coordinator_ingest_rejected_total",
                "Frames or streams rejected (bad frame, wrong endpoint id, protocol order).",
                &ingest.rejected,
            ),
            (
                "lateral_coordinator_ingest_connections_total",
                "Agent connections established (Hello accepted).",
                &ingest.connections,
            ),
        ] {
            w.family(name, Kind::Counter, help);
            w.sample(name, &[], value.load(Ordering::Relaxed) as f64);
        }
        w.finish()
    }
}

fn error_rate(r: &LoadReport) -> f64 {
    if r.completed == 0 {
        0.0
    } else {
        r.failed as f64 / r.completed as f64
    }
}

fn rps(r: &LoadReport) -> f64 {
    let s = r.window.as_secs_f64();
    if s > 0.0 { r.completed as f64 / s } else { 0.0 }
}

fn sample_of(e: &EndpointMetrics, now: Instant, interval: Duration, wall_ms: i64) -> Sample {
    let fresh = e.fresh(now, interval);
    Sample {
        t: wall_ms,
        weight: e.weight,
        in_flight: fresh.map(|r| r.in_flight),
        p50_ms: fresh.map(|r| r.latency_p50.as_secs_f64() * 1e3),
        p99_ms: fresh.map(|r| r.latency_p99.as_secs_f64() * 1e3),
        error_rate: fresh.map(error_rate),
        rps: fresh.map(rps),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_sample_keeps_absent_values_absent_and_present_ones_close() {
        let full = Sample {
            t: 1_700_000_000_123,
            weight: 0.8,
            in_flight: Some(7),
            p50_ms: Some(12.5),
            p99_ms: Some(70.25),
            error_rate: Some(0.01),
            rps: Some(640.0),
        };
        let back = StoredSample::store(&full).load();
        assert_eq!(back.t, 1_700_000_000_000, "whole seconds");
        assert_eq!(back.in_flight, Some(7));
        assert_eq!(back.p99_ms, Some(70.25));
        assert!((back.weight - 0.8).abs() < 1e-4, "{}", back.weight);
        assert!(
            (back.error_rate.unwrap() - 0.01).abs() < 1e-4,
            "{:?}",
            back.error_rate
        );
        let extreme = Sample {
            t: -5,
            weight: 7.0,
            in_flight: Some(1_000_000),
            error_rate: Some(f64::NAN),
            ..full.clone()
        };
        let back = StoredSample::store(&extreme).load();
        assert_eq!(back.t, 0);
        assert_eq!(back.weight, 1.0);
        assert_eq!(
            back.in_flight,
            Some(u32::from(u16::MAX - 1)),
            "saturated, not absent"
        );
        assert_eq!(back.error_rate, Some(0.0), "NaN is not a rate");
        let silent = Sample {
            in_flight: None,
            p50_ms: None,
            p99_ms: None,
            error_rate: None,
            rps: None,
            ..full
        };
        let back = StoredSample::store(&silent).load();
        assert_eq!(
            (
                back.in_flight,
                back.p50_ms,
                back.p99_ms,
                back.error_rate,
                back.rps
            ),
            (None, None, None, None, None)
        );
    }

    #[test]
    fn the_history_is_allocated_once_at_its_full_length() {
        let metrics = CoordinatorMetrics::default();
        let start = Instant::now();
        let report = LoadReport {
            in_flight: 1,
            completed: 10,
            failed: 0,
            window: Duration::from_millis(500),
            latency_mean: Duration::from_millis(10),
            latency_p50: Duration::from_millis(10),
            latency_p99: Duration::from_millis(20),
            accepting: true,
            declared_capacity: None,
            utilization: None,
            oldest_in_flight: None,
            mean_in_flight: None,
        };
        metrics.on_heartbeat("svc", "a", start, &report);
        for i in 0..(3 * HISTORY_LEN as u64) {
            metrics.sample(start + SAMPLE_EVERY * i as u32, i as i64 * 1_000);
            let inner = metrics.lock();
            let e = &inner.services["svc"].endpoints["a"];
            assert_eq!(e.history.capacity(), HISTORY_LEN, "sample {i}: reallocated");
        }
        let now = start + SAMPLE_EVERY * (3 * HISTORY_LEN as u32);
        let view = metrics.state(now, 0, HISTORY_LEN);
        let history = &view[0].endpoints[0].history;
        assert_eq!(history.len(), HISTORY_LEN);
        assert_eq!(
            history.last().map(|s| s.t),
            Some((3 * HISTORY_LEN as i64 - 1) * 1_000)
        );
        assert_eq!(std::mem::size_of::<StoredSample>(), 24);
    }
}
