//! A deterministic simulator for tests and examples (not for production use): simulated backends with worker
//! slots and service times, an open-loop Poisson arrival stream dispatched by the engine's current shares,
//! FIFO queueing when every slot is busy, and an agent per backend sending a heartbeat with the real fields
//! every 500 ms (offset per backend), received by the engine at simulated time. Events change a backend at a
//! given time (service time, error rate, fast failure, reporting on/off, goodbye, arrival rate). The engine
//! ticks when [`Engine::next_deadline`](crate::Engine::next_deadline) asks, as the coordinator's driver does
//! (the end of a heartbeat interval, or sooner for a freshness change or a hold-off ending), so the scenario
//! tests run the timing path production runs.
//!
//! Like quinn-proto's test `Pair`: plain `#[test]`, no runtime, no sleeping, time in microseconds from a
//! `start` instant the caller passes in; all randomness comes from one seeded `SmallRng`. It is
//! discrete-event within each 1 ms step (completions and arrivals are processed at their exact times), so
//! latencies are not quantised; 60 s at a few hundred req/s runs in well under a second in debug.

pub mod scenarios;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::table::{Bounds, EndpointState, water_fill};
use super::{Alert, ConfigError, Decision, EndpointSpec, Engine, EngineConfig, LoadReport};

const STEP_US: u64 = 1_000;

/// One simulated backend.
#[derive(Debug, Clone)]
pub struct SimBackend {
    /// Endpoint id.
    pub id: String,
    /// Worker slots (requests served concurrently).
    pub slots: u32,
    /// Mean service time of a request.
    pub service_time: Duration,
    /// Service times are uniform in `service_time × (1 ± jitter)` …
    pub jitter: f64,
    /// … or exponential around `service_time` (an M/M/c-like backend, like the bench's Echo backends).
    pub exponential: bool,
    /// Probability that a request fails.
    pub error_rate: f64,
    /// Whether failures return at once (1 ms) instead of after the service time.
    pub fail_fast: bool,
    /// Labels (e.g. `track=canary`).
    pub labels: BTreeMap<String, String>,
    /// Whether heartbeats carry `declared_capacity = slots`.
    pub declare_slots: bool,
    /// Whether heartbeats carry `utilization` (busy slot-time fraction).
    pub report_utilization: bool,
}

impl SimBackend {
    /// A healthy backend that declares its slots and reports utilization.
    pub fn new(id: &str, slots: u32, service_time: Duration) -> SimBackend {
        SimBackend {
            id: id.to_string(),
            slots,
            service_time,
            jitter: 0.25,
            exponential: false,
            error_rate: 0.0,
            fail_fast: false,
            labels: BTreeMap::new(),
            declare_slots: true,
            report_utilization: true,
        }
    }

    /// Marks it a canary (`track=canary`).
    pub fn canary(mut self) -> SimBackend {
        self.labels.insert("track".into(), "canary".into());
        self
    }

    /// True capacity in req/s (slots / mean service time).
    pub fn capacity_rps(&self) -> f64 {
        f64::from(self.slots) / self.service_time.as_secs_f64()
    }
}

/// Something that happens to the simulation at a given time.
#[derive(Debug, Clone)]
pub enum SimEvent {
    /// Multiply a backend's service time.
    ServiceTimeFactor(String, f64),
    /// Change a backend's service time linearly to the given value over the given duration.
    RampServiceTime(String, Duration, Duration),
    /// Set a backend's error rate and whether failures are fast.
    Errors(String, f64, bool),
    /// The backend's agent stops sending heartbeats (the backend keeps serving).
    StopReporting(String),
    /// The agent sends heartbeats again.
    ResumeReporting(String),
    /// The agent says goodbye (draining).
    Goodbye(String),
    /// Change the offered load.
    ArrivalRate(f64),
}

/// One row of the trace, taken after each engine tick.
#[derive(Debug, Clone)]
pub struct TraceRow {
    /// Seconds since the start.
    pub t_s: f64,
    /// Share per backend, in backend order.
    pub weights: Vec<f64>,
    /// State per backend.
    pub states: Vec<EndpointState>,
    /// Ideal share per backend at that moment (capacity ratio over reporting backends, with the floor).
    pub ideal: Vec<f64>,
}

#[derive(Debug)]
struct Running {
    finish_us: u64,
    arrival_us: u64,
    failed: bool,
}

#[derive(Debug)]
struct Backend {
    spec: SimBackend,
    running: Vec<Running>,
    queue: VecDeque<u64>,
    reporting: bool,
    ramp: Option<(u64, f64, f64, u64)>,
    next_heartbeat_us: u64,
    completed: u64,
    failed: u64,
    latency_sum_us: f64,
    latencies: Vec<u64>,
    busy_slot_us: f64,
    last_change_us: u64,
}

impl Backend {
    fn service_us(&self, now_us: u64, rng: &mut SmallRng) -> f64 {
        let base = self.current_service_us(now_us);
        if self.spec.exponential {
            // Inverse transform; 1 − u is in (0, 1], so the logarithm is finite.
            return -base * (1.0 - rng.random::<f64>()).ln();
        }
        let j = self.spec.jitter.clamp(0.0, 0.99);
        base * (1.0 + j * (2.0 * rng.random::<f64>() - 1.0))
    }

    fn account_busy(&mut self, now_us: u64) {
        self.busy_slot_us +=
            self.running.len() as f64 * now_us.saturating_sub(self.last_change_us) as f64;
        self.last_change_us = now_us;
    }

    fn start(&mut self, arrival_us: u64, start_us: u64, rng: &mut SmallRng) {
        self.account_busy(start_us);
        let failed = rng.random::<f64>() < self.spec.error_rate;
        let dur = if failed && self.spec.fail_fast {
            1_000.0
        } else {
            self.service_us(start_us, rng)
        };
        self.running.push(Running {
            finish_us: start_us + dur.max(1.0) as u64,
            arrival_us,
            failed,
        });
    }

    fn earliest_finish(&self) -> Option<(usize, u64)> {
        self.running
            .iter()
            .enumerate()
            .map(|(i, r)| (i, r.finish_us))
            .min_by_key(|x| x.1)
    }

    fn complete(&mut self, i: usize, rng: &mut SmallRng) {
        let r = self.running.swap_remove(i);
        let now = r.finish_us;
        self.busy_slot_us +=
            now.saturating_sub(self.last_change_us) as f64 * (self.running.len() + 1) as f64;
        self.last_change_us = now;
        let lat = now - r.arrival_us;
        self.completed += 1;
        if r.failed {
            self.failed += 1;
        }
        self.latency_sum_us += lat as f64;
        self.latencies.push(lat);
        if let Some(a) = self.queue.pop_front() {
            self.start(a, now, rng);
        }
    }

    fn report(&mut self, now_us: u64, window_us: u64) -> LoadReport {
        self.account_busy(now_us);
        self.latencies.sort_unstable();
        let pct = |p: f64, v: &[u64]| -> u64 {
            if v.is_empty() {
                0
            } else {
                v[((v.len() as f64 - 1.0) * p).round() as usize]
            }
        };
        let mean = if self.completed > 0 {
            self.latency_sum_us / self.completed as f64
        } else {
            0.0
        };
        let util = self.busy_slot_us / (f64::from(self.spec.slots) * window_us as f64);
        let r = LoadReport {
            in_flight: (self.running.len() + self.queue.len()) as u32,
            completed: self.completed,
            failed: self.failed,
            window: Duration::from_micros(window_us),
            latency_mean: Duration::from_micros(mean as u64),
            latency_p50: Duration::from_micros(pct(0.5, &self.latencies)),
            latency_p99: Duration::from_micros(pct(0.99, &self.latencies)),
            accepting: true,
            declared_capacity: self.spec.declare_slots.then_some(self.spec.slots),
            utilization: self.spec.report_utilization.then_some(util),
            oldest_in_flight: None,
            mean_in_flight: None,
        };
        self.completed = 0;
        self.failed = 0;
        self.latency_sum_us = 0.0;
        self.latencies.clear();
        self.busy_slot_us = 0.0;
        r
    }
}

/// The simulation: backends, arrivals, an engine and a trace.
#[derive(Debug)]
pub struct Sim {
    engine: Engine,
    start: Instant,
    now_us: u64,
    rng: SmallRng,
    backends: Vec<Backend>,
    arrival_rps: f64,
    next_arrival_us: u64,
    events: Vec<(u64, SimEvent)>,
    next_tick_us: u64,
    cumulative: Vec<f64>,
    trace: Vec<TraceRow>,
    decisions: Vec<Decision>,
    alerts: Vec<Alert>,
    dispatched: Vec<u64>,
}

fn at(start: Instant, us: u64) -> Instant {
    start + Duration::from_micros(us)
}

impl Sim {
    /// A simulation starting at `start` (simulated time 0), with the given engine configuration, offered
    /// load in requests per second, backends and RNG seed. Every backend is added to the engine at time 0.
    pub fn new(
        start: Instant,
        config: EngineConfig,
        arrival_rps: f64,
        backends: Vec<SimBackend>,
        seed: u64,
    ) -> Result<Sim, ConfigError> {
        let mut engine = Engine::new(config)?;
        let n = backends.len().max(1) as u64;
        let backends: Vec<Backend> = backends
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                engine.upsert_endpoint(
                    start,
                    EndpointSpec {
                        id: spec.id.clone(),
                        address: format!("10.0.0.{}:50051", i + 1),
                        zone: None,
                        labels: spec.labels.clone(),
                        static_weight: None,
                        declared_capacity: None,
                    },
                );
                // Heartbeats spread over the interval, none exactly on a tick.
                let phase_us = 500_000 * (i as u64 + 1) / (n + 1);
                Backend {
                    spec,
                    running: Vec::new(),
                    queue: VecDeque::new(),
                    reporting: true,
                    ramp: None,
                    next_heartbeat_us: phase_us,
                    completed: 0,
                    failed: 0,
                    latency_sum_us: 0.0,
                    latencies: Vec::new(),
                    busy_slot_us: 0.0,
                    last_change_us: 0,
                }
            })
            .collect();
        let mut rng = SmallRng::seed_from_u64(seed);
        let first = exp_us(&mut rng, arrival_rps);
        let dispatched = vec![0; backends.len()];
        let mut sim = Sim {
            engine,
            start,
            now_us: 0,
            rng,
            backends,
            arrival_rps,
            next_arrival_us: first,
            events: Vec::new(),
            next_tick_us: 500_000,
            cumulative: Vec::new(),
            trace: Vec::new(),
            decisions: Vec::new(),
            alerts: Vec::new(),
            dispatched,
        };
        sim.refresh_routing();
        sim.drain();
        Ok(sim)
    }

    /// Schedules an event at simulated time `t`.
    pub fn at(&mut self, t: Duration, event: SimEvent) -> &mut Sim {
        self.events.push((t.as_micros() as u64, event));
        self.events.sort_by_key(|e| e.0);
        self
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        Duration::from_micros(self.now_us)
    }

    /// Backend ids, in backend order (the order of trace columns).
    pub fn ids(&self) -> Vec<String> {
        self.backends.iter().map(|b| b.spec.id.clone()).collect()
    }

    /// The trace so far (one row per engine tick).
    pub fn trace(&self) -> &[TraceRow] {
        &self.trace
    }

    /// Decision records so far.
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }

    /// Alerts so far.
    pub fn alerts(&self) -> &[Alert] {
        &self.alerts
    }

    /// Requests dispatched to each backend so far.
    pub fn dispatched(&self) -> &[u64] {
        &self.dispatched
    }

    /// The ideal shares now: true capacity (slots / current mean service time, × success rate) over the
    /// backends whose agent reports, with the floor applied by the same renormalisation as the engine.
    pub fn ideal_shares(&self) -> Vec<f64> {
        let floor = self.engine.config().floor;
        let mut w: Vec<f64> = self
            .backends
            .iter()
            .map(|b| {
                if !b.reporting {
                    return 0.0;
                }
                let svc = b.current_service_us(self.now_us);
                f64::from(b.spec.slots) / (svc / 1e6) * (1.0 - b.spec.error_rate)
            })
            .collect();
        let mut bounds: Vec<Bounds> = w
            .iter()
            .map(|&x| {
                if x > 0.0 {
                    Bounds {
                        lo: floor,
                        ..Bounds::FREE
                    }
                } else {
                    Bounds {
                        lo: 0.0,
                        soft_hi: 0.0,
                        hard_hi: 0.0,
                    }
                }
            })
            .collect();
        water_fill(&mut w, &mut bounds);
        w
    }

    /// Runs until simulated time `t`.
    pub fn run_until(&mut self, t: Duration) {
        let end = t.as_micros() as u64;
        while self.now_us < end {
            self.step();
        }
    }

    /// Runs for `d` more.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now() + d);
    }

    /// Advances 1 ms: events, arrivals and completions in time order, heartbeats, ticks.
    pub fn step(&mut self) {
        let to = self.now_us + STEP_US;
        while self.events.first().is_some_and(|e| e.0 <= to) {
            let (t, ev) = self.events.remove(0);
            self.apply(t, ev);
        }
        loop {
            let completion = self
                .backends
                .iter()
                .enumerate()
                .filter_map(|(b, be)| be.earliest_finish().map(|(i, f)| (b, i, f)))
                .min_by_key(|x| x.2);
            let arrival = self.next_arrival_us;
            match completion {
                Some((b, i, f)) if f <= to && f <= arrival => {
                    self.backends[b].complete(i, &mut self.rng)
                }
                _ if arrival <= to => {
                    self.dispatch(arrival);
                    self.next_arrival_us = arrival + exp_us(&mut self.rng, self.arrival_rps);
                }
                _ => break,
            }
        }
        self.now_us = to;
        for i in 0..self.backends.len() {
            if self.backends[i].next_heartbeat_us <= to {
                let window = 500_000;
                self.backends[i].next_heartbeat_us += window;
                let report = self.backends[i].report(to, window);
                if self.backends[i].reporting {
                    let id = self.backends[i].spec.id.clone();
                    let _ = self.engine.on_heartbeat(at(self.start, to), &id, report);
                }
            }
        }
        if self.next_tick_us <= to {
            self.engine.on_tick(at(self.start, to));
            // The next tick when the engine asks for it, as the coordinator's driver schedules it (the end
            // of a heartbeat interval, or sooner: a freshness change, a hold-off ending).
            self.next_tick_us = self
                .engine
                .next_deadline()
                .and_then(|d| d.checked_duration_since(self.start))
                .map_or(to + 500_000, |d| d.as_micros() as u64)
                .max(to + STEP_US);
            self.refresh_routing();
            self.drain();
            let table = self.engine.table();
            let weights = self
                .backends
                .iter()
                .map(|b| table.weight(&b.spec.id))
                .collect();
            let states = self
                .backends
                .iter()
                .map(|b| {
                    table
                        .get(&b.spec.id)
                        .map_or(EndpointState::Ejected, |e| e.state)
                })
                .collect();
            let ideal = self.ideal_shares();
            self.trace.push(TraceRow {
                t_s: to as f64 / 1e6,
                weights,
                states,
                ideal,
            });
        }
    }

    fn apply(&mut self, t_us: u64, ev: SimEvent) {
        let find = |backends: &[Backend], id: &str| backends.iter().position(|b| b.spec.id == id);
        match ev {
            SimEvent::ServiceTimeFactor(id, f) => {
                if let Some(i) = find(&self.backends, &id) {
                    let b = &mut self.backends[i];
                    b.spec.service_time = b.spec.service_time.mul_f64(f);
                    b.ramp = None;
                }
            }
            SimEvent::RampServiceTime(id, to, over) => {
                if let Some(i) = find(&self.backends, &id) {
                    let b = &mut self.backends[i];
                    let from = b.current_service_us(t_us);
                    b.ramp = Some((t_us, from, to.as_secs_f64() * 1e6, over.as_micros() as u64));
                    b.spec.service_time = to;
                }
            }
            SimEvent::Errors(id, rate, fast) => {
                if let Some(i) = find(&self.backends, &id) {
                    self.backends[i].spec.error_rate = rate;
                    self.backends[i].spec.fail_fast = fast;
                }
            }
            SimEvent::StopReporting(id) => {
                if let Some(i) = find(&self.backends, &id) {
                    self.backends[i].reporting = false;
                }
            }
            SimEvent::ResumeReporting(id) => {
                if let Some(i) = find(&self.backends, &id) {
                    self.backends[i].reporting = true;
                }
            }
            SimEvent::Goodbye(id) => {
                if let Some(i) = find(&self.backends, &id) {
                    self.backends[i].reporting = false;
                    self.engine.on_goodbye(at(self.start, t_us), &id);
                    self.refresh_routing();
                }
            }
            SimEvent::ArrivalRate(r) => {
                self.arrival_rps = r;
                // From no traffic (the next arrival parked far away): the stream starts now.
                if self.next_arrival_us >= u64::MAX / 8 {
                    self.next_arrival_us = self.now_us + exp_us(&mut self.rng, r);
                }
            }
        }
    }

    fn refresh_routing(&mut self) {
        let table = self.engine.table();
        self.cumulative.clear();
        let mut acc = 0.0;
        for b in &self.backends {
            acc += table.weight(&b.spec.id).max(0.0);
            self.cumulative.push(acc);
        }
    }

    fn dispatch(&mut self, arrival_us: u64) {
        let n = self.backends.len();
        if n == 0 {
            return;
        }
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let u = self.rng.random::<f64>();
        let i = if total > 0.0 {
            let x = u * total;
            self.cumulative.iter().position(|&c| x < c).unwrap_or(n - 1)
        } else {
            ((u * n as f64) as usize).min(n - 1)
        };
        self.dispatched[i] += 1;
        let b = &mut self.backends[i];
        if b.running.len() < b.spec.slots as usize {
            b.start(arrival_us, arrival_us, &mut self.rng);
        } else {
            b.queue.push_back(arrival_us);
        }
    }

    fn drain(&mut self) {
        while let Some(d) = self.engine.poll_decision() {
            self.decisions.push(d);
        }
        while let Some(a) = self.engine.poll_alert() {
            self.alerts.push(a);
        }
    }
}

impl Backend {
    fn current_service_us(&self, now_us: u64) -> f64 {
        match self.ramp {
            Some((start, from, to, dur)) => {
                let f = if dur == 0 {
                    1.0
                } else {
                    (now_us.saturating_sub(start) as f64 / dur as f64).min(1.0)
                };
                from + (to - from) * f
            }
            None => self.spec.service_time.as_secs_f64() * 1e6,
        }
    }
}

fn exp_us(rng: &mut SmallRng, rate_per_s: f64) -> u64 {
    if rate_per_s <= 0.0 {
        return u64::MAX / 4;
    }
    let u: f64 = rng.random::<f64>();
    (-(1.0 - u).ln() / rate_per_s * 1e6).max(1.0) as u64
}

/// How a share approached its ideal after a change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Convergence {
    /// Seconds from the change until the share first entered the band (None: never did).
    pub time_s: Option<f64>,
    /// Excursions out of the band after first entering it.
    pub excursions: usize,
    /// Largest distance past the ideal on the far side of the approach, in share.
    pub overshoot: f64,
}

/// Measures convergence of backend `idx` from time `from_s` to `to_s` against the trace's ideal, with a band of
/// `rel` × ideal (at least `min_abs`).
pub fn convergence(
    trace: &[TraceRow],
    idx: usize,
    from_s: f64,
    to_s: f64,
    rel: f64,
    min_abs: f64,
) -> Convergence {
    let rows: Vec<&TraceRow> = trace
        .iter()
        .filter(|r| r.t_s > from_s && r.t_s <= to_s)
        .collect();
    let mut out = Convergence {
        time_s: None,
        excursions: 0,
        overshoot: 0.0,
    };
    let Some(first) = rows.first() else {
        return out;
    };
    let start_side = (first.weights[idx] - first.ideal[idx]).signum();
    let mut inside = false;
    for r in rows {
        let ideal = r.ideal[idx];
        let band = (rel * ideal).max(min_abs);
        let d = r.weights[idx] - ideal;
        let now_inside = d.abs() <= band;
        if out.time_s.is_none() {
            if now_inside {
                out.time_s = Some(r.t_s - from_s);
                inside = true;
            }
            continue;
        }
        if d.signum() != start_side && start_side != 0.0 {
            out.overshoot = out.overshoot.max(d.abs());
        }
        if inside && !now_inside {
            out.excursions += 1;
        }
        inside = now_inside;
    }
    out
}
