//! The weight engine: every rule of the reference article as a pure, deterministic state machine.
//!
//! What this crate owns: turning load reports into weight shares, decision records and alerts, and the
//! simulator that drives it on simulated backends (feature `sim`). What it does not: any I/O — the
//! coordinator (`lateral-coordinator`) receives heartbeats, reads the clock, calls the engine and
//! publishes its tables. It depends on `serde` and `thiserror` only (`rand` with `sim`); the crate's
//! `clippy.toml` refuses clock reads in it.
//!
//! Sans-IO like `quinn-proto`: no tokio, tonic, quinn, sockets or clock reads in here. Every input carries
//! `now` (the coordinator's **receive** time for heartbeats); outputs are a versioned [`WeightTable`] of
//! traffic **shares** (each in [0, 1], summing to 1), [`Decision`] records and [`Alert`]s, which the driver
//! drains. Reads ([`Engine::table`], [`Engine::next_deadline`]) never mutate.
//!
//! The `Engine`'s methods live by job: `membership.rs` (endpoints, heartbeats, goodbyes), `states.rs`
//! (applies the pure state machine, [`lifecycle::next_state`], per endpoint), `estimates.rs` (windows into
//! capacity estimates, steps, canary and drift inputs), `weights.rs` (shares and their bounds), `records.rs` (the table, decision records and sentences).
//!
//! One recomputation (on [`Engine::on_tick`], and on set changes so the table is always consistent):
//! 1. **freshness** ([`freshness`]): degraded after `degraded_after_missed` missed heartbeats, ejected after
//!    `eject_after`, hold-off and ramp on return ([`readmission`]);
//! 2. **window** ([`window`]): the last `window_len` heartbeats aggregated by volume;
//! 3. **capacity** ([`capacity`]): req/s from utilization, declared slots (Little's law) or the article's
//!    latency formula, × goodput, latency and error factors; headroom shares (throughput mode) or 1/p99
//!    shares (latency mode);
//! 4. **smoothing** ([`smoothing`]) with α (or the damped α while a sawtooth is seen, [`oscillation`]);
//! 5. **bounds** and renormalisation ([`table::water_fill`]): floor 5% (canary 1%) for every live endpoint,
//!    `max_planned_utilization` of capacity, latency-mode `max_share`, ramp and canary allowance
//!    ([`canary`]); a degraded endpoint never gains; ejected, tripped and draining endpoints get 0;
//! 6. **static fallback** when no endpoint has data or none is healthy (configured static weights, or equal
//!    shares, over the live endpoints, else over every endpoint not draining or tripped: when everything is
//!    ejected the table still sums to 1 and says `static_fallback`, as the article's "fall back to static
//!    weights" asks);
//! 7. **records** ([`decision`]) when a share moved by `decision_threshold` since the endpoint's last record or
//!    its state changed, and **alerts** for drift ([`drift`]), oscillation, the canary breaker and promotion.
//!
//! The simulator in `sim` (feature `sim`) drives the engine with simulated backends for tests and examples.
//!
//! # Units
//! Shares are fractions of traffic. Capacities and loads are throughputs in requests per second;
//! `LoadReport::in_flight` is a concurrency and only converted through Little's law (see [`capacity`]).
//! Windows are aggregated by request volume (see [`window`]). Configuration durations are written as
//! milliseconds (`500`) or with a unit (`"500ms"`, `"30s"`, `"5m"`), see [`config`].
//!
//! # Driving it
//! ```
//! use std::time::{Duration, Instant};
//! use lateral_engine::{Engine, EngineConfig, EndpointSpec, LoadReport};
//!
//! # #[allow(clippy::disallowed_methods)]
//! let mut now = Instant::now(); // the driver reads the clock; the engine never does
//! let mut engine = Engine::new(EngineConfig::default()).unwrap();
//! for id in ["fast", "slow"] {
//!     engine.upsert_endpoint(now, EndpointSpec { id: id.into(), address: format!("{id}:50051"), ..Default::default() });
//! }
//! let report = |mean_ms| LoadReport {
//!     in_flight: 2, completed: 50, failed: 0, window: Duration::from_millis(500),
//!     latency_mean: Duration::from_millis(mean_ms), latency_p50: Duration::from_millis(mean_ms),
//!     latency_p99: Duration::from_millis(2 * mean_ms), accepting: true,
//!     declared_capacity: Some(8), utilization: None, oldest_in_flight: None,
//!     mean_in_flight: None,
//! };
//! for _ in 0..20 {
//!     now += Duration::from_millis(500);
//!     engine.on_heartbeat(now, "fast", report(10)).unwrap();
//!     engine.on_heartbeat(now, "slow", report(40)).unwrap();
//!     engine.on_tick(now);
//!     while let Some(decision) = engine.poll_decision() {
//!         // log decision.rule.as_str() and decision.reason
//!         # let _ = decision;
//!     }
//! }
//! assert!((engine.table().weight("fast") - 0.8).abs() < 0.02); // 4:1 capacity, 80/20 shares
//! ```
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod estimates;
mod membership;
mod records;
mod seed;
mod states;
mod weights;

pub mod canary;
pub mod capacity;
pub mod config;
pub mod decision;
pub mod drift;
pub mod freshness;
pub mod lifecycle;
pub mod liveness;
pub mod oscillation;
pub mod readmission;
#[cfg(feature = "sim")]
pub mod sim;
pub mod smoothing;
pub mod table;
pub mod window;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

pub use capacity::{CapacityEstimate, CapacitySource};
pub use config::{ConfigError, EngineConfig, Mode};
pub use decision::{Alert, AlertKind, Decision, Rejection, Rule};
pub use table::{EndpointState, EndpointWeight, WeightTable};

use canary::{Canary, CanaryEvent, StableMetrics};
use decision::BoundedQueue;
use drift::Drift;
use lifecycle::StateReason;
use oscillation::{Oscillation, OscillationEvent};
use readmission::Readmission;
use table::Bounds;
use window::{Aggregate, Sample, Window};

/// An endpoint as the membership source knows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EndpointSpec {
    /// Stable id (unique in the set).
    pub id: String,
    /// Address clients dial.
    pub address: String,
    /// Zone, if known.
    pub zone: Option<String>,
    /// Labels; `canary_label` (default `track=canary`) marks a canary.
    pub labels: BTreeMap<String, String>,
    /// Relative weight used in static fallback (default 1).
    pub static_weight: Option<f64>,
    /// Declared capacity in concurrent requests (slots), if configured; a heartbeat's own value wins.
    pub declared_capacity: Option<u32>,
}

/// One heartbeat's measurements (see `lateral_proto`'s `Heartbeat` for the wire form).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Requests in flight when the heartbeat was taken (a concurrency).
    pub in_flight: u32,
    /// Requests completed in `window` (successes and failures).
    pub completed: u64,
    /// Requests in `window` that failed (a subset of `completed`).
    pub failed: u64,
    /// The measurement window; throughput = completed / window.
    pub window: Duration,
    /// Mean latency of the requests completed in the window.
    pub latency_mean: Duration,
    /// Median latency.
    pub latency_p50: Duration,
    /// 99th percentile latency.
    pub latency_p99: Duration,
    /// Whether the backend accepts new requests.
    pub accepting: bool,
    /// Declared capacity in concurrent requests, if configured.
    pub declared_capacity: Option<u32>,
    /// Busy fraction in [0, ∞) (may exceed 1 when overloaded), if reported.
    pub utilization: Option<f64>,
    /// Age of the oldest request in flight when the heartbeat was taken (`None`: nothing in flight, or an
    /// agent that does not say).
    pub oldest_in_flight: Option<Duration>,
    /// Requests in flight, averaged over the window (`None`: an agent that does not say). Times the window,
    /// the request-seconds the backend held; none of them ending in a completion is a stall.
    pub mean_in_flight: Option<f64>,
}

/// Which soft bound limited a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CapKind {
    None,
    Planning,
    MaxShare,
    Canary,
    Ramp,
}

#[derive(Debug, Clone)]
struct Endpoint {
    spec: EndpointSpec,
    is_canary: bool,
    window: Window,
    added_at: Instant,
    last_rx: Option<Instant>,
    declared: Option<u32>,
    state: EndpointState,
    goodbye: bool,
    not_accepting: bool,
    fresh_data: bool,
    /// The latest heartbeat showed a stalled path ([`liveness`]): why.
    stalled: Option<String>,
    readmission: Readmission,
    canary: Option<Canary>,
    oscillation: Oscillation,
    /// When the window last restarted on a step change (latency or error rate): the regime changed.
    step_change_at: Option<Instant>,
    drift: Drift,
    agg: Aggregate,
    capacity: Option<CapacityEstimate>,
    calc: f64,
    /// A state-change rule and its sentence, set by this recomputation's state update.
    pending: Option<(Rule, String)>,
    rec_weight: f64,
    rec_state: EndpointState,
    rec_p99_s: f64,
    rec_capacity: f64,
    rec_error: f64,
}

/// The weight engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    endpoints: Vec<Endpoint>,
    index: HashMap<String, usize>,
    table: WeightTable,
    decisions: BoundedQueue<Decision>,
    alerts: BoundedQueue<Alert>,
    last_tick: Option<Instant>,
    damped: bool,
    ever_had_data: bool,
    in_fallback: bool,
    /// Shares to start from until the first measurement ([`Engine::seed`]); `None` once data arrived.
    seed: Option<HashMap<String, f64>>,
    /// This recomputation published seeded shares.
    seeding: bool,
    drift_from: Option<Instant>,
    scratch_w: Vec<f64>,
    scratch_calc: Vec<f64>,
    scratch_caps: Vec<f64>,
    scratch_cur: Vec<f64>,
    scratch_bounds: Vec<Bounds>,
    scratch_kind: Vec<CapKind>,
    scratch_idx: Vec<usize>,
}

fn ms(s: f64) -> f64 {
    s * 1e3
}

fn direction(old: f64, new: f64) -> &'static str {
    if new > old * 1.02 {
        "rose"
    } else if new < old * 0.98 {
        "fell"
    } else {
        "held"
    }
}

/// The smallest smoothing step the headroom rule's stability bound leaves (at ρ ≥ 95% busy).
const MIN_STABLE_STEP: f64 = 0.05;

impl Engine {
    /// An engine with no endpoint, after validating every field of `config`.
    pub fn new(config: EngineConfig) -> Result<Engine, ConfigError> {
        config.validate()?;
        let q = config.queue_len;
        Ok(Engine {
            config,
            endpoints: Vec::new(),
            index: HashMap::new(),
            table: WeightTable::default(),
            decisions: BoundedQueue::new(q),
            alerts: BoundedQueue::new(q),
            last_tick: None,
            damped: false,
            ever_had_data: false,
            in_fallback: false,
            seed: None,
            seeding: false,
            drift_from: None,
            scratch_w: Vec::new(),
            scratch_calc: Vec::new(),
            scratch_caps: Vec::new(),
            scratch_cur: Vec::new(),
            scratch_bounds: Vec::new(),
            scratch_kind: Vec::new(),
            scratch_idx: Vec::new(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The current table (a read: never mutates).
    pub fn table(&self) -> &WeightTable {
        &self.table
    }

    /// The next decision record, oldest first.
    pub fn poll_decision(&mut self) -> Option<Decision> {
        self.decisions.pop()
    }

    /// The next alert, oldest first.
    pub fn poll_alert(&mut self) -> Option<Alert> {
        self.alerts.pop()
    }

    /// Decision records dropped because the driver did not drain them.
    pub fn dropped_decisions(&self) -> u64 {
        self.decisions.dropped()
    }

    /// Alerts dropped because the driver did not drain them.
    pub fn dropped_alerts(&self) -> u64 {
        self.alerts.dropped()
    }

    /// Whether the damped α is in force (a sawtooth was seen).
    pub fn is_damped(&self) -> bool {
        self.damped
    }

    /// The latest capacity estimate of `id`.
    pub fn capacity(&self, id: &str) -> Option<CapacityEstimate> {
        self.index.get(id).and_then(|&i| self.endpoints[i].capacity)
    }

    /// The window aggregate of `id`.
    pub fn aggregate(&self, id: &str) -> Option<Aggregate> {
        self.index.get(id).map(|&i| self.endpoints[i].agg)
    }

    /// The hold-off chosen at `id`'s latest return (zero unless it flaps).
    pub fn readmission_holdoff(&self, id: &str) -> Option<Duration> {
        self.index
            .get(id)
            .map(|&i| self.endpoints[i].readmission.last_holdoff)
    }

    /// The canary allowance of `id`, if it is a canary.
    pub fn canary_allowance(&self, id: &str) -> Option<f64> {
        self.index
            .get(id)
            .and_then(|&i| self.endpoints[i].canary.as_ref().map(|c| c.allowance))
    }

    /// Closes a tripped canary breaker (an operator decision); the canary restarts at its floor with a ramp.
    pub fn reset_canary(&mut self, now: Instant, id: &str) -> bool {
        let Some(&i) = self.index.get(id) else {
            return false;
        };
        let cfg = &self.config;
        let ep = &mut self.endpoints[i];
        let Some(c) = ep.canary.as_mut() else {
            return false;
        };
        *c = Canary::new(cfg);
        ep.window.clear();
        ep.agg = Aggregate::default();
        ep.capacity = None;
        self.recompute(now);
        true
    }

    /// The earliest instant at which the table may change without any input: the next tick, a freshness
    /// transition, or the end of a hold-off or ramp.
    pub fn next_deadline(&self) -> Option<Instant> {
        let now = self.last_tick?;
        let mut next = now + self.config.heartbeat_interval;
        for ep in &self.endpoints {
            if let Some(last) = ep.last_rx
                && let Some(t) = freshness::next_change(last, now, &self.config)
            {
                next = next.min(t);
            }
            if let Some(t) = ep.readmission.holdoff_until
                && t > now
            {
                next = next.min(t);
            }
        }
        Some(next)
    }

    /// Recomputes every weight. The driver calls this every `heartbeat_interval` and at [`Self::next_deadline`].
    pub fn on_tick(&mut self, now: Instant) {
        self.recompute(now);
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests need an Instant to start from
mod tests {
    use super::*;

    fn spec(id: &str) -> EndpointSpec {
        EndpointSpec {
            id: id.into(),
            address: format!("{id}:50051"),
            ..Default::default()
        }
    }

    fn report(completed: u64, mean_ms: u64) -> LoadReport {
        LoadReport {
            in_flight: 2,
            completed,
            failed: 0,
            window: Duration::from_millis(500),
            latency_mean: Duration::from_millis(mean_ms),
            latency_p50: Duration::from_millis(mean_ms),
            latency_p99: Duration::from_millis(mean_ms * 2),
            accepting: true,
            declared_capacity: Some(8),
            utilization: None,
            oldest_in_flight: None,
            mean_in_flight: None,
        }
    }

    #[test]
    fn starts_static_then_follows_capacity() {
        let t0 = Instant::now();
        let mut e = Engine::new(EngineConfig::default()).unwrap();
        e.upsert_endpoint(t0, spec("a"));
        e.upsert_endpoint(t0, spec("b"));
        assert!(e.table().static_fallback);
        assert!((e.table().total() - 1.0).abs() < 1e-12);
        let mut t = t0;
        for _ in 0..40 {
            t += Duration::from_millis(500);
            e.on_heartbeat(t, "a", report(40, 10)).unwrap();
            e.on_heartbeat(t, "b", report(10, 40)).unwrap();
            e.on_tick(t);
        }
        assert!(!e.table().static_fallback);
        assert!(
            (e.table().weight("a") - 0.8).abs() < 0.01,
            "{:?}",
            e.table()
        );
        while let Some(d) = e.poll_decision() {
            assert!(!d.reason.is_empty());
        }
    }

    #[test]
    fn impossible_reports_are_rejected_with_a_record() {
        let t0 = Instant::now();
        let mut e = Engine::new(EngineConfig::default()).unwrap();
        e.upsert_endpoint(t0, spec("a"));
        while e.poll_decision().is_some() {}
        let bad = LoadReport {
            failed: 50,
            ..report(40, 10)
        };
        assert!(matches!(
            e.on_heartbeat(t0, "a", bad),
            Err(Rejection::Invalid {
                field: "failed",
                ..
            })
        ));
        let bad = LoadReport {
            utilization: Some(f64::NAN),
            oldest_in_flight: None,
            mean_in_flight: None,
            ..report(40, 10)
        };
        assert!(e.on_heartbeat(t0, "a", bad).is_err());
        assert!(matches!(
            e.on_heartbeat(t0, "zz", report(1, 1)),
            Err(Rejection::UnknownEndpoint(_))
        ));
        let rules: Vec<Rule> = std::iter::from_fn(|| e.poll_decision())
            .map(|d| d.rule)
            .collect();
        assert_eq!(rules, vec![Rule::Rejected; 3]);
    }

    #[test]
    fn config_is_validated() {
        let c = EngineConfig {
            alpha: 1.5,
            ..Default::default()
        };
        assert_eq!(Engine::new(c).unwrap_err().field, "alpha");
    }
}
