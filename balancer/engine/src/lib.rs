//! The weight engine: every rule of the reference article as a pure, deterministic state machine.
//!
//! What this crate owns: turning load reports into weight shares, decision records and alerts, and the
//! simulator that drives it on simulated backends (feature `sim`). What it does not: any I/O — the
//! coordinator (`lateral-balancer`'s `coordinator`) receives heartbeats, reads the clock, calls the engine and
//! publishes its tables. It depends on `serde` and `thiserror` only (`rand` with `sim`); the crate's
//! `clippy.toml` refuses clock reads in it.
//!
//! Sans-IO like `quinn-proto`: no tokio, tonic, quinn, sockets or clock reads in here. Every input carries
//! `now` (the coordinator's **receive** time for heartbeats); outputs are a versioned [`WeightTable`] of
//! traffic **shares** (each in [0, 1], summing to 1), [`Decision`] records and [`Alert`]s, which the driver
//! drains. Reads ([`Engine::table`], [`Engine::next_deadline`]) never mutate.
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

pub mod canary;
pub mod capacity;
pub mod config;
pub mod decision;
pub mod drift;
pub mod freshness;
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
use freshness::Freshness;
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

    /// Adds an endpoint, or updates its address, zone, labels, static weight and declared capacity.
    pub fn upsert_endpoint(&mut self, now: Instant, spec: EndpointSpec) {
        let (key, value) = self.config.canary_key_value();
        let is_canary = spec.labels.get(key).is_some_and(|v| v == value);
        if let Some(&i) = self.index.get(&spec.id) {
            let ep = &mut self.endpoints[i];
            if ep.spec == spec {
                // Re-resolution of an unchanged endpoint: nothing to publish.
                return;
            }
            if is_canary && ep.canary.is_none() {
                ep.canary = Some(Canary::new(&self.config));
            } else if !is_canary {
                ep.canary = None;
            }
            ep.is_canary = is_canary;
            if spec.declared_capacity.is_some() {
                ep.declared = spec.declared_capacity;
            }
            let row = &mut self.table.entries[i];
            row.address.clone_from(&spec.address);
            row.zone.clone_from(&spec.zone);
            row.labels.clone_from(&spec.labels);
            ep.spec = spec;
            self.table.version += 1;
            self.recompute(now);
            return;
        }
        let pos = self.endpoints.partition_point(|e| e.spec.id < spec.id);
        let mut readmission = Readmission::default();
        let state = if self.ever_had_data {
            readmission.start_ramp(now);
            EndpointState::Ramping
        } else {
            EndpointState::Active
        };
        let ep = Endpoint {
            is_canary,
            window: Window::new(self.config.window_len),
            added_at: now,
            last_rx: None,
            declared: spec.declared_capacity,
            state,
            goodbye: false,
            not_accepting: false,
            fresh_data: false,
            stalled: None,
            readmission,
            canary: is_canary.then(|| Canary::new(&self.config)),
            oscillation: Oscillation::default(),
            step_change_at: None,
            drift: Drift::default(),
            agg: Aggregate::default(),
            capacity: None,
            calc: 0.0,
            pending: None,
            rec_weight: 0.0,
            rec_state: state,
            rec_p99_s: 0.0,
            rec_capacity: 0.0,
            rec_error: 0.0,
            spec,
        };
        let row = EndpointWeight {
            id: ep.spec.id.clone(),
            address: ep.spec.address.clone(),
            zone: ep.spec.zone.clone(),
            labels: ep.spec.labels.clone(),
            weight: 0.0,
            state,
            rule: Rule::Added,
            reason: "added".into(),
        };
        let reason = format!(
            "endpoint {} at {} added{}{}",
            ep.spec.id,
            ep.spec.address,
            if is_canary { " as a canary" } else { "" },
            if state == EndpointState::Ramping {
                "; it ramps up from its floor"
            } else {
                ""
            }
        );
        self.decisions.push(Decision {
            at: now,
            endpoint: ep.spec.id.clone(),
            old_weight: 0.0,
            new_weight: 0.0,
            old_state: state,
            new_state: state,
            rule: Rule::Added,
            reason,
            inputs: Vec::new(),
        });
        self.endpoints.insert(pos, ep);
        self.table.entries.insert(pos, row);
        self.reindex();
        self.table.version += 1;
        self.recompute(now);
    }

    /// Removes an endpoint; returns whether it was known.
    pub fn remove_endpoint(&mut self, now: Instant, id: &str) -> bool {
        let Some(&i) = self.index.get(id) else {
            return false;
        };
        let ep = self.endpoints.remove(i);
        let row = self.table.entries.remove(i);
        self.reindex();
        self.decisions.push(Decision {
            at: now,
            endpoint: ep.spec.id,
            old_weight: row.weight,
            new_weight: 0.0,
            old_state: row.state,
            new_state: row.state,
            rule: Rule::Removed,
            reason: format!(
                "endpoint removed from the set; its share {:.3} goes to the others",
                row.weight
            ),
            inputs: vec![("share", row.weight)],
        });
        self.table.version += 1;
        self.recompute(now);
        true
    }

    fn reindex(&mut self) {
        self.index.clear();
        for (i, e) in self.endpoints.iter().enumerate() {
            self.index.insert(e.spec.id.clone(), i);
        }
    }

    fn reject(&mut self, now: Instant, id: &str, rejection: Rejection) -> Result<(), Rejection> {
        let (w, st) = self
            .index
            .get(id)
            .map_or((0.0, EndpointState::Ejected), |&i| {
                (self.table.entries[i].weight, self.table.entries[i].state)
            });
        self.decisions.push(Decision {
            at: now,
            endpoint: id.to_string(),
            old_weight: w,
            new_weight: w,
            old_state: st,
            new_state: st,
            rule: Rule::Rejected,
            reason: format!("heartbeat rejected: {rejection}"),
            inputs: Vec::new(),
        });
        Err(rejection)
    }

    /// Takes one heartbeat; `now` is the coordinator's receive time. Unknown endpoints and impossible values
    /// (failed > completed, a zero window, a NaN, infinite or negative utilization, zero declared slots) are
    /// rejected with a decision record of rule [`Rule::Rejected`] (weights unchanged; an unknown endpoint's
    /// record shows state `Ejected`). Weights change at the next tick. Does not allocate on the accepted path.
    pub fn on_heartbeat(
        &mut self,
        now: Instant,
        id: &str,
        report: LoadReport,
    ) -> Result<(), Rejection> {
        let Some(&i) = self.index.get(id) else {
            return self.reject(now, id, Rejection::UnknownEndpoint(id.to_string()));
        };
        let invalid = |field: &'static str, value: String| Rejection::Invalid { field, value };
        let problem = if report.failed > report.completed {
            Some(invalid(
                "failed",
                format!(
                    "{} failed out of {} completed (error rate above 1)",
                    report.failed, report.completed
                ),
            ))
        } else if report.window.is_zero() {
            Some(invalid(
                "window",
                "0 (throughput would divide by zero)".into(),
            ))
        } else if let Some(u) = report.utilization.filter(|u| !u.is_finite() || *u < 0.0) {
            Some(invalid(
                "utilization",
                format!("{u} (must be finite and non-negative)"),
            ))
        } else if report.declared_capacity == Some(0) {
            Some(invalid("declared_capacity", "0 slots".into()))
        } else {
            None
        };
        if let Some(r) = problem {
            return self.reject(now, id, r);
        }
        let step = self.config.step_change_factor;
        let ep = &mut self.endpoints[i];
        let recent_mean = Duration::from_secs_f64(ep.agg.mean_s.max(0.0));
        ep.stalled = liveness::stall(&report, recent_mean, &self.config);
        let received = ep.last_rx.map_or(now, |t| t.max(now));
        let restarted = ep.window.push(
            Sample {
                received,
                in_flight: f64::from(report.in_flight),
                completed: report.completed as f64,
                failed: report.failed as f64,
                window_s: report.window.as_secs_f64(),
                mean_s: report.latency_mean.as_secs_f64(),
                p50_s: report.latency_p50.as_secs_f64(),
                p99_s: report.latency_p99.as_secs_f64(),
                utilization: report.utilization,
            },
            step,
        );
        if restarted {
            ep.step_change_at = Some(received);
        }
        ep.last_rx = Some(received);
        if report.declared_capacity.is_some() {
            ep.declared = report.declared_capacity;
        }
        ep.not_accepting = !report.accepting;
        if report.accepting {
            ep.goodbye = false;
        }
        ep.fresh_data = true;
        Ok(())
    }

    /// The agent is draining: the endpoint gets 0 at once (state [`EndpointState::Draining`]) until it reports
    /// `accepting` again.
    pub fn on_goodbye(&mut self, now: Instant, id: &str) {
        if let Some(&i) = self.index.get(id) {
            self.endpoints[i].goodbye = true;
            self.recompute(now);
        }
    }

    /// Recomputes every weight. The driver calls this every `heartbeat_interval` and at [`Self::next_deadline`].
    pub fn on_tick(&mut self, now: Instant) {
        self.recompute(now);
    }

    fn update_states(&mut self, now: Instant) {
        let cfg = &self.config;
        for ep in &mut self.endpoints {
            let prev = ep.state;
            let mut next = prev;
            let mut why = String::new();
            if ep.goodbye || ep.not_accepting {
                next = EndpointState::Draining;
                why = if ep.goodbye {
                    "the agent said goodbye".into()
                } else {
                    "the backend is not accepting".into()
                };
            } else if ep.canary.as_ref().is_some_and(|c| c.tripped) {
                next = EndpointState::Tripped;
            } else if let Some(stalled) = ep.stalled.as_ref().filter(|_| {
                ep.last_rx.is_some_and(|last| {
                    matches!(freshness::classify(last, now, cfg), Freshness::Fresh(_))
                })
            }) {
                // Fresh heartbeats that say nothing completes: not live, whatever the freshness rules say.
                if matches!(prev, EndpointState::Active | EndpointState::Ramping)
                    || ep.readmission.holdoff_until.is_some()
                {
                    ep.readmission.on_outage(now, cfg);
                }
                ep.readmission.holdoff_until = None;
                next = EndpointState::Ejected;
                if prev != EndpointState::Ejected {
                    ep.pending = Some((Rule::LivenessStalled, stalled.clone()));
                }
            } else {
                match ep.last_rx {
                    None => {
                        if now.saturating_duration_since(ep.added_at) >= cfg.eject_after {
                            next = EndpointState::Ejected;
                            why =
                                format!("no heartbeat within {:?} of being added", cfg.eject_after);
                        }
                    }
                    Some(last) => match freshness::classify(last, now, cfg) {
                        Freshness::Expired => {
                            // A new outage: from a live state, or after a return (even one still held off).
                            if matches!(prev, EndpointState::Active | EndpointState::Ramping)
                                || ep.readmission.holdoff_until.is_some()
                            {
                                ep.readmission.on_outage(now, cfg);
                            }
                            ep.readmission.holdoff_until = None;
                            next = EndpointState::Ejected;
                            why = format!(
                                "no heartbeat for {:.1} s (eject_after {:?})",
                                now.saturating_duration_since(last).as_secs_f64(),
                                cfg.eject_after
                            );
                        }
                        Freshness::Degraded(m) => {
                            if matches!(prev, EndpointState::Active | EndpointState::Ramping)
                                || (prev == EndpointState::Degraded
                                    && ep.readmission.holdoff_until.is_some())
                            {
                                ep.readmission.on_outage(now, cfg);
                                next = EndpointState::Degraded;
                                why =
                                    format!("{m} heartbeats missed; share reduced, last load kept");
                            }
                        }
                        Freshness::Fresh(_) => match prev {
                            EndpointState::Active => {}
                            EndpointState::Ramping => {
                                if ep.readmission.ramp_factor(now, cfg).is_none() {
                                    next = EndpointState::Active;
                                    why = "ramp complete".into();
                                }
                            }
                            EndpointState::Degraded | EndpointState::Ejected => {
                                if ep.readmission.holdoff_until.is_none() {
                                    if prev == EndpointState::Degraded
                                        && !ep.readmission.is_flapping()
                                    {
                                        next = EndpointState::Active;
                                        why = "heartbeats resumed after a short gap".into();
                                        ep.readmission.last_holdoff = Duration::ZERO;
                                    } else {
                                        let h = ep.readmission.on_return(now, cfg);
                                        if !h.is_zero() {
                                            why = format!(
                                                "heartbeats resumed; flap {} within {:?}: re-admission held off {:.1} s",
                                                ep.readmission.outages,
                                                cfg.flap_window,
                                                h.as_secs_f64()
                                            );
                                            ep.pending = Some((Rule::Readmission, why.clone()));
                                        }
                                    }
                                }
                                if next == prev && !ep.readmission.held_off(now) {
                                    ep.readmission.start_ramp(now);
                                    next = EndpointState::Ramping;
                                    why = format!(
                                        "heartbeats resumed; ramping from {:.0}% of its share over {:?}",
                                        cfg.readmission_start * 100.0,
                                        cfg.readmission_ramp
                                    );
                                }
                            }
                            EndpointState::Draining | EndpointState::Tripped => {
                                ep.readmission.start_ramp(now);
                                next = EndpointState::Ramping;
                                why = "accepting again; ramping up".into();
                            }
                        },
                    },
                }
            }
            if next != prev {
                let rule = match next {
                    EndpointState::Degraded => Rule::FreshnessDegraded,
                    EndpointState::Ejected => Rule::FreshnessEjected,
                    EndpointState::Draining => Rule::Draining,
                    EndpointState::Tripped => Rule::CanaryBreaker,
                    EndpointState::Ramping | EndpointState::Active => Rule::Readmission,
                };
                if ep
                    .pending
                    .as_ref()
                    .is_none_or(|(r, _)| !matches!(r, Rule::CanaryBreaker | Rule::LivenessStalled))
                {
                    ep.pending = Some((rule, why));
                }
                ep.state = next;
            }
        }
    }

    fn refresh_estimates(&mut self, now: Instant) {
        let cfg = &self.config;
        for ep in &mut self.endpoints {
            if ep.fresh_data {
                ep.agg = ep.window.aggregate();
                ep.capacity = capacity::estimate(&ep.agg, ep.declared, cfg);
                if ep.capacity.is_some() {
                    self.ever_had_data = true;
                }
            }
        }
        // Canary evaluation against the stable endpoints, by volume.
        let mut stable = StableMetrics::default();
        let (mut failed, mut lat) = (0.0, 0.0);
        for ep in &self.endpoints {
            if !ep.is_canary && ep.state == EndpointState::Active {
                stable.completed += ep.agg.completed;
                failed += ep.agg.failed;
                lat += ep.agg.mean_s * ep.agg.completed;
            }
        }
        if stable.completed > 0.0 {
            stable.error_rate = failed / stable.completed;
            stable.mean_s = lat / stable.completed;
        }
        for ep in &mut self.endpoints {
            let fresh = ep.fresh_data;
            ep.fresh_data = false;
            if !ep.state.is_live() {
                continue;
            }
            let Some(c) = ep.canary.as_mut() else {
                continue;
            };
            match c.evaluate(now, &ep.agg, &stable, fresh, cfg) {
                CanaryEvent::None => {}
                CanaryEvent::Tripped(rate) => {
                    let msg = format!(
                        "canary {} error rate {:.1}% over {} requests reached the breaker threshold {:.1}%; share set to 0",
                        ep.spec.id,
                        rate * 100.0,
                        ep.agg.completed,
                        cfg.canary_error_threshold * 100.0
                    );
                    ep.pending = Some((Rule::CanaryBreaker, msg.clone()));
                    ep.state = EndpointState::Tripped;
                    self.alerts.push(Alert {
                        at: now,
                        endpoint: Some(ep.spec.id.clone()),
                        kind: AlertKind::CanaryBreaker,
                        message: msg,
                    });
                }
                CanaryEvent::Promoted(allowance) => {
                    let msg = format!(
                        "canary {} stayed at least as good as stable for {:?} (errors {:.2}% vs {:.2}%, mean {:.1} ms vs {:.1} ms); allowance raised to {:.2}",
                        ep.spec.id,
                        cfg.canary_promotion_period,
                        ep.agg.error_rate * 100.0,
                        stable.error_rate * 100.0,
                        ms(ep.agg.mean_s),
                        ms(stable.mean_s),
                        allowance
                    );
                    ep.pending = Some((Rule::CanaryPromotion, msg.clone()));
                    self.alerts.push(Alert {
                        at: now,
                        endpoint: Some(ep.spec.id.clone()),
                        kind: AlertKind::CanaryPromoted,
                        message: msg,
                    });
                }
            }
        }
    }

    fn recompute(&mut self, now: Instant) {
        let cfg_interval = self.config.heartbeat_interval;
        let dt = match self.last_tick {
            Some(t) => now.saturating_duration_since(t),
            None => cfg_interval,
        };
        if self.last_tick.is_none_or(|t| now > t) {
            self.last_tick = Some(now);
        }
        let base_alpha = if self.damped {
            self.config.oscillation_damped_alpha
        } else {
            self.config.alpha
        };
        let alpha = smoothing::alpha_for(base_alpha, dt, cfg_interval);
        let overload_alpha = smoothing::alpha_for(self.config.overload_alpha, dt, cfg_interval);
        let decay = self
            .config
            .degraded_decay
            .powf(dt.as_secs_f64() / cfg_interval.as_secs_f64());

        self.update_states(now);
        let had_data = self.ever_had_data;
        self.refresh_estimates(now);
        // The first measured weights replace the start-up guess outright: smoothing exists to keep noise
        // from walking a converged weight, and a guess (equal shares, or declared slots) is not one.
        let alpha = if had_data { alpha } else { 1.0 };

        let n = self.endpoints.len();
        self.scratch_w.clear();
        self.scratch_w.resize(n, 0.0);
        self.scratch_calc.clear();
        self.scratch_calc.resize(n, 0.0);
        self.scratch_bounds.clear();
        self.scratch_bounds.resize(
            n,
            Bounds {
                lo: 0.0,
                soft_hi: 0.0,
                hard_hi: 0.0,
            },
        );
        self.scratch_kind.clear();
        self.scratch_kind.resize(n, CapKind::None);

        let healthy = self
            .endpoints
            .iter()
            .any(|e| matches!(e.state, EndpointState::Active | EndpointState::Ramping));
        let live_with_data = self
            .endpoints
            .iter()
            .any(|e| e.state.is_live() && e.capacity.is_some());
        let fallback = n > 0 && (!healthy || !live_with_data);
        if fallback {
            self.static_weights();
            if !self.in_fallback && self.ever_had_data {
                let why = if healthy {
                    "no live endpoint has usable data"
                } else {
                    "no endpoint is healthy"
                };
                self.alerts.push(Alert {
                    at: now,
                    endpoint: None,
                    kind: AlertKind::AllUnhealthy,
                    message: format!(
                        "{why}: configured static weights (or equal shares) are in force"
                    ),
                });
            }
        } else if n > 0 {
            self.dynamic_weights(alpha, overload_alpha, decay, now);
        }
        let fallback_changed = self.in_fallback != fallback;
        if fallback {
            self.drift_from = None;
        } else if fallback_changed || self.drift_from.is_none() {
            // Drift is watched once the first dynamic weights have settled (one window after leaving fallback):
            // the move away from static weights at start-up is not drift.
            self.drift_from =
                Some(now + self.config.heartbeat_interval * self.config.window_len as u32);
        }
        self.in_fallback = fallback;
        self.publish(now, fallback, fallback_changed);
    }

    fn static_weights(&mut self) {
        let n = self.endpoints.len();
        let pick = |f: &dyn Fn(&Endpoint) -> bool, eps: &[Endpoint]| eps.iter().any(f);
        let live = |e: &Endpoint| e.state.is_live();
        let usable =
            |e: &Endpoint| !matches!(e.state, EndpointState::Draining | EndpointState::Tripped);
        let set: &dyn Fn(&Endpoint) -> bool = if pick(&live, &self.endpoints) {
            &live
        } else if pick(&usable, &self.endpoints) {
            &usable
        } else {
            &|_: &Endpoint| true
        };
        // Without configured static weights, declared slots are the best start-up guess: asymmetric paths
        // get asymmetric shares before the first measurement, never a second of equal shares.
        let configured = |e: &Endpoint| {
            e.spec
                .static_weight
                .is_some_and(|w| w.is_finite() && w > 0.0)
        };
        let by_slots = !self.endpoints.iter().any(configured)
            && self
                .endpoints
                .iter()
                .filter(|e| set(e))
                .all(|e| e.declared.is_some_and(|d| d > 0));
        let mut sum = 0.0;
        for (i, ep) in self.endpoints.iter().enumerate() {
            let w = if !set(ep) {
                0.0
            } else if by_slots {
                ep.declared.map_or(1.0, f64::from)
            } else {
                ep.spec
                    .static_weight
                    .filter(|w| w.is_finite() && *w > 0.0)
                    .unwrap_or(1.0)
            };
            self.scratch_w[i] = w;
            sum += w;
        }
        for w in &mut self.scratch_w {
            *w = if sum > 0.0 { *w / sum } else { 1.0 / n as f64 };
        }
        // A canary keeps its allowance even under static weights, and live endpoints keep their floor.
        for (i, ep) in self.endpoints.iter().enumerate() {
            let soft_hi = ep.canary.as_ref().map_or(1.0, |c| c.allowance);
            let lo = match (self.scratch_w[i] > 0.0, ep.is_canary) {
                (false, _) => 0.0,
                (true, true) => self.config.canary_floor,
                (true, false) => self.config.floor,
            };
            self.scratch_bounds[i] = Bounds {
                lo,
                soft_hi,
                hard_hi: 1.0,
            };
        }
        table::water_fill(&mut self.scratch_w, &mut self.scratch_bounds);
        for (i, ep) in self.endpoints.iter_mut().enumerate() {
            ep.calc = self.scratch_w[i];
        }
    }

    fn dynamic_weights(&mut self, alpha: f64, overload_alpha: f64, decay: f64, now: Instant) {
        let cfg = &self.config;
        // Eligible: live endpoints.
        self.scratch_idx.clear();
        let mut known_sum = 0.0;
        let mut known_n = 0usize;
        let mut score_sum = 0.0;
        let mut total_load = 0.0;
        for (i, ep) in self.endpoints.iter().enumerate() {
            if ep.state.is_live() {
                self.scratch_idx.push(i);
                if let Some(c) = ep.capacity {
                    known_sum += c.effective_rps;
                    score_sum += c.latency_score;
                    known_n += 1;
                    total_load += ep.agg.throughput;
                }
            }
        }
        let prior_cap = if known_n > 0 {
            known_sum / known_n as f64
        } else {
            1.0
        };
        let prior_score = if known_n > 0 {
            score_sum / known_n as f64
        } else {
            1.0
        };
        self.scratch_caps.clear();
        self.scratch_cur.clear();
        for &i in &self.scratch_idx {
            let ep = &self.endpoints[i];
            let v = match (cfg.mode, ep.capacity) {
                (Mode::Throughput, Some(c)) => c.effective_rps,
                (Mode::Latency, Some(c)) => c.latency_score,
                (Mode::Throughput, None) => prior_cap,
                (Mode::Latency, None) => prior_score,
            };
            self.scratch_caps.push(v);
            self.scratch_cur.push(self.table.entries[i].weight);
        }
        let m = self.scratch_idx.len();
        let mut calc = std::mem::take(&mut self.scratch_calc);
        calc.resize(m.max(calc.len()), 0.0);
        match cfg.mode {
            Mode::Throughput => capacity::headroom_shares(
                &self.scratch_caps,
                &self.scratch_cur,
                total_load,
                &mut calc[..m],
            ),
            Mode::Latency => capacity::proportional(&self.scratch_caps, &mut calc[..m]),
        }
        // The headroom rule's loop gain: with the planned load `s_i·T`, a share error `e` comes back as
        // `−e·ρ/(1 − ρ)` (ρ = T / Σcap), so a smoothing step α settles as `1 − α/(1 − ρ)`: at 70% busy the
        // default 0.3 lands in one step, near 90% it overshoots and rings (and a capacity estimate's noise is
        // amplified by 1/(1 − ρ)). A step of at most (1 − ρ) never overshoots: at exactly (1 − ρ) it lands on
        // the capacity share `cap_i / Σcap`, the rule's fixed point.
        let total_cap: f64 = self.scratch_caps.iter().sum();
        let (busy, cap_sum) = match cfg.mode {
            Mode::Throughput if total_cap > 0.0 && total_load > 0.0 => {
                ((total_load / total_cap).min(1.0), total_cap)
            }
            _ => (0.0, total_cap),
        };
        let stable_step = (1.0 - busy).max(MIN_STABLE_STEP);
        let floor = cfg.floor;
        let active_count = self
            .endpoints
            .iter()
            .filter(|e| e.state == EndpointState::Active)
            .count();
        for (k, &i) in self.scratch_idx.iter().enumerate() {
            let ep = &mut self.endpoints[i];
            let old = self.table.entries[i].weight;
            let c = calc[k];
            ep.calc = c;
            let lo = if ep.is_canary {
                cfg.canary_floor
            } else {
                floor
            };
            let mut b = Bounds {
                lo,
                soft_hi: 1.0,
                hard_hi: 1.0,
            };
            let mut kind = CapKind::None;
            let mut cap = |v: f64, k: CapKind, b: &mut Bounds| {
                if v < b.soft_hi {
                    b.soft_hi = v;
                    kind = k;
                }
            };
            match cfg.mode {
                Mode::Throughput if total_load > 0.0 => cap(
                    cfg.max_planned_utilization * self.scratch_caps[k] / total_load,
                    CapKind::Planning,
                    &mut b,
                ),
                Mode::Latency => cap(cfg.max_share, CapKind::MaxShare, &mut b),
                Mode::Throughput => {}
            }
            if let Some(cn) = &ep.canary {
                cap(cn.allowance, CapKind::Canary, &mut b);
            }
            let w = match ep.state {
                EndpointState::Degraded => {
                    b.hard_hi = old;
                    b.lo = b.lo.min(old);
                    old * decay
                }
                _ => {
                    if ep.state == EndpointState::Ramping
                        && let Some(f) = ep.readmission.ramp_factor(now, cfg)
                    {
                        let ramp = (f * c).max(lo);
                        cap(ramp, CapKind::Ramp, &mut b);
                        // With an active endpoint to absorb the rest, the ramp is firmer than the planning
                        // caps: running the others a little past 80% beats flooding a cold endpoint.
                        if active_count > 0 {
                            b.hard_hi = b.hard_hi.min(ramp.max(b.lo));
                        }
                    }
                    // Fast down, slow up: a path whose regime just changed (its window restarted on a step in
                    // latency or errors) and that is now planned past its capacity sheds load at once. Tied to
                    // a detected step, not to the capacity comparison alone, which noise crosses both ways.
                    let stepped = ep.step_change_at.is_some_and(|t| {
                        now.saturating_duration_since(t) <= cfg.heartbeat_interval * 4
                    });
                    let overloaded = cfg.mode == Mode::Throughput
                        && stepped
                        && c < old
                        && old * total_load > self.scratch_caps[k];
                    if overloaded {
                        // Shed at once, to its capacity share: its headroom share (0 when planned past its
                        // capacity) is where the rule would take it only to swing back on the next tick.
                        let target = if cap_sum > 0.0 {
                            self.scratch_caps[k] / cap_sum
                        } else {
                            c
                        };
                        smoothing::smooth(old, target.min(old), overload_alpha)
                    } else {
                        let a = smoothing::settled_alpha(alpha, c - old, cfg.settle_band)
                            .min(stable_step);
                        smoothing::smooth(old, c, a)
                    }
                }
            };
            self.scratch_w[i] = w;
            self.scratch_bounds[i] = b;
            self.scratch_kind[i] = kind;
        }
        self.scratch_calc = calc;
        // Not live: 0, held there.
        for (i, ep) in self.endpoints.iter().enumerate() {
            if !ep.state.is_live() {
                self.scratch_w[i] = 0.0;
                self.scratch_bounds[i] = Bounds {
                    lo: 0.0,
                    soft_hi: 0.0,
                    hard_hi: 0.0,
                };
            }
        }
        table::water_fill(&mut self.scratch_w, &mut self.scratch_bounds);
    }

    fn rule_for(&self, i: usize, w: f64) -> Rule {
        let ep = &self.endpoints[i];
        let b = self.scratch_bounds[i];
        if ep.state == EndpointState::Degraded {
            return Rule::FreshnessDegraded;
        }
        if b.lo > 0.0 && (w - b.lo).abs() < 1e-9 {
            return if ep.is_canary {
                Rule::CanaryFloor
            } else {
                Rule::Floor
            };
        }
        if (w - b.soft_hi).abs() < 1e-9 {
            match self.scratch_kind[i] {
                CapKind::Planning | CapKind::MaxShare => return Rule::Cap,
                CapKind::Canary => return Rule::CanaryPromotion,
                CapKind::Ramp => return Rule::Readmission,
                CapKind::None => {}
            }
        }
        if self.damped {
            return Rule::Oscillation;
        }
        match ep.capacity {
            Some(c) if c.error_factor < 0.999 => Rule::Errors,
            Some(c) if c.latency_factor < 0.999 || self.config.mode == Mode::Latency => {
                Rule::Latency
            }
            Some(_) => Rule::Capacity,
            None => Rule::Smoothing,
        }
    }

    fn sentence(
        &self,
        i: usize,
        rule: Rule,
        old_w: f64,
        new_w: f64,
        prefix: Option<&str>,
    ) -> String {
        let ep = &self.endpoints[i];
        let mut s = String::new();
        if let Some(p) = prefix {
            s.push_str(p);
            s.push_str("; ");
        }
        if let Some(c) = ep.capacity
            && ep.state.is_live()
        {
            let p99 = ms(ep.agg.p99_s);
            let old_p99 = ms(ep.rec_p99_s);
            if old_p99 > 0.0 {
                let _ = write!(
                    s,
                    "p99 {} from {:.0} ms to {:.0} ms; ",
                    direction(old_p99, p99),
                    old_p99,
                    p99
                );
            } else {
                let _ = write!(s, "p99 {p99:.0} ms; ");
            }
            if ep.rec_capacity > 0.0 {
                let _ = write!(
                    s,
                    "estimated capacity {} from {:.0} to {:.0} req/s ({}); ",
                    direction(ep.rec_capacity, c.effective_rps),
                    ep.rec_capacity,
                    c.effective_rps,
                    c.source.as_str()
                );
            } else {
                let _ = write!(
                    s,
                    "estimated capacity {:.0} req/s ({}); ",
                    c.effective_rps,
                    c.source.as_str()
                );
            }
            if ep.agg.error_rate > 0.0 || ep.rec_error > 0.0 {
                let _ = write!(
                    s,
                    "error rate {:.1}% -> {:.1}%; ",
                    ep.rec_error * 100.0,
                    ep.agg.error_rate * 100.0
                );
            }
        }
        let what = match rule {
            Rule::Floor => " (held at the floor)",
            Rule::CanaryFloor => " (held at the canary floor)",
            Rule::Cap => " (capped)",
            Rule::CanaryPromotion => " (canary allowance)",
            Rule::Readmission => " (re-admission ramp)",
            Rule::Oscillation => " (damped: sawtooth detected)",
            Rule::StaticFallback => " (static fallback)",
            _ => "",
        };
        let _ = write!(s, "share {old_w:.3} -> {new_w:.3}{what}");
        s
    }

    fn publish(&mut self, now: Instant, fallback: bool, fallback_changed: bool) {
        let mut changed = fallback_changed;
        let min_step = self.config.decision_threshold;
        let mut any_damped = false;
        for i in 0..self.endpoints.len() {
            let new_w = self.scratch_w[i];
            let old_w = self.table.entries[i].weight;
            let state = self.endpoints[i].state;
            if new_w != old_w || state != self.table.entries[i].state {
                changed = true;
            }
            // Oscillation and drift.
            let cfg = &self.config;
            let ep = &mut self.endpoints[i];
            match ep.oscillation.observe(now, old_w, new_w, min_step, cfg) {
                OscillationEvent::Detected(r) => {
                    self.alerts.push(Alert {
                        at: now,
                        endpoint: Some(ep.spec.id.clone()),
                        kind: AlertKind::Oscillation,
                        message: format!(
                            "{} reversed direction {r} times within {:?}: damping with alpha {}",
                            ep.spec.id, cfg.oscillation_window, cfg.oscillation_damped_alpha
                        ),
                    });
                }
                OscillationEvent::Relaxed | OscillationEvent::None => {}
            }
            any_damped |= ep.oscillation.damped;
            let settled = self.drift_from.is_some_and(|t| now >= t);
            if !settled {
                ep.drift = Drift::default();
            } else if let Some((from, to)) = ep.drift.observe(now, new_w, cfg) {
                self.alerts.push(Alert {
                    at: now,
                    endpoint: Some(ep.spec.id.clone()),
                    kind: AlertKind::Drift,
                    message: format!(
                        "{} share moved from {:.3} to {:.3} ({:+.0} percentage points) within {:?}",
                        ep.spec.id,
                        from,
                        to,
                        (to - from) * 100.0,
                        cfg.drift_window
                    ),
                });
            }
            // Records.
            let rec_w = ep.rec_weight;
            let rec_state = ep.rec_state;
            let pending = ep.pending.take();
            // A record when the share moved by the threshold since the last record, the state changed, or a
            // rule left a note (a promotion, a hold-off) this round.
            if state != rec_state || (new_w - rec_w).abs() >= min_step || pending.is_some() {
                let (rule, prefix) = match pending {
                    Some((r, why)) => (r, Some(why)),
                    None if fallback => (Rule::StaticFallback, None),
                    None => (self.rule_for(i, new_w), None),
                };
                let reason = self.sentence(i, rule, rec_w, new_w, prefix.as_deref());
                let ep = &self.endpoints[i];
                let (cap, raw) = ep
                    .capacity
                    .map_or((0.0, 0.0), |c| (c.effective_rps, c.raw_rps));
                let inputs = vec![
                    ("capacity_rps", cap),
                    ("raw_capacity_rps", raw),
                    ("throughput_rps", ep.agg.throughput),
                    ("in_flight", ep.agg.in_flight),
                    ("mean_ms", ms(ep.agg.mean_s)),
                    ("p99_ms", ms(ep.agg.p99_s)),
                    ("error_rate", ep.agg.error_rate),
                    ("calculated_share", ep.calc),
                    ("holdoff_s", ep.readmission.last_holdoff.as_secs_f64()),
                ];
                let decision = Decision {
                    at: now,
                    endpoint: ep.spec.id.clone(),
                    old_weight: rec_w,
                    new_weight: new_w,
                    old_state: rec_state,
                    new_state: state,
                    rule,
                    reason: reason.clone(),
                    inputs,
                };
                let (p99, er) = (ep.agg.p99_s, ep.agg.error_rate);
                let row = &mut self.table.entries[i];
                row.rule = rule;
                row.reason = reason;
                self.decisions.push(decision);
                let ep = &mut self.endpoints[i];
                ep.rec_weight = new_w;
                ep.rec_state = state;
                ep.rec_p99_s = p99;
                ep.rec_capacity = cap;
                ep.rec_error = er;
                changed = true;
            }
        }
        self.damped = any_damped;
        for (row, (ep, &w)) in self
            .table
            .entries
            .iter_mut()
            .zip(self.endpoints.iter().zip(&self.scratch_w))
        {
            row.weight = w;
            row.state = ep.state;
        }
        self.table.static_fallback = fallback;
        if changed {
            self.table.version += 1;
        }
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
