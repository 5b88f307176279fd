//! Scenarios as data: backends, clients, load, duration and timed events, read from TOML.
//!
//! ```toml
//! name = "spike"
//! description = "one of three equal backends becomes 5x slower for a while"
//! duration_s = 18          # measured traffic; --duration rescales the whole timeline
//! warmup_s = 1             # backends, agents and coordinators up before traffic starts (not measured)
//! load = 0.6               # open-loop Poisson arrivals at this fraction of Σ slots / mean service time
//! clients = 1              # independent client instances, each with its own balancer (and coordinator)
//! request_timeout_ms = 2000
//!
//! [[backend]]
//! name = "a"
//! slots = 6
//! service_time_ms = 15
//! distribution = "exponential"   # or "constant"
//! error_rate = 0.0
//! error_latency_ms = 1
//! labels = { track = "canary" }  # optional, passed to the coordinator and the balancer
//!
//! [[event]]
//! at_s = 6
//! backend = "a"
//! kind = "multiply_service_time"  # service time = base × factor (factor 1 restores it)
//! factor = 5.0
//! ```
//!
//! Routing variants of Lateral's `Balancer` (optional; applied to `lateral`, and where meaningful to
//! `static_oracle`):
//!
//! ```toml
//! [routing]
//! hash_keys = 10000                # requests carry `x-lateral-key`, one of this many keys (seeded)
//! key_distribution = "zipf"        # or "uniform" (default "zipf")
//! zipf_exponent = 1.0              # P(key k) ∝ 1 / k^s (default 1.0)
//! client_zone = "a"                # the clients' zone; backends give theirs with `zone = "a"` or label `zone`
//! zone_policy = { spill_below_healthy = 0.5, return_at_healthy = 0.75, spill_at_utilization = 0.85,
//!                 return_below_utilization = 0.65, min_dwell_s = 10 }   # every field optional
//! dynamic_fraction = 0.1           # lateral: this fraction on the coordinator's weights, the rest static
//! ```
//!
//! Event kinds: `multiply_service_time { factor }`, `error_rate { rate, latency_ms? }`, `blackhole { on }`,
//! `kill`, `restart`, `flap { period_s, until_s }` (down for the first half of each period, up for the second,
//! until `until_s`), `ramp { param = "service_time_factor" | "error_rate", from, to, over_s }`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::echo_service::ServiceTime;

/// A scenario error: which file (or built-in) and what is wrong with it.
#[derive(Debug)]
pub struct ScenarioError {
    /// The file or built-in scenario name.
    pub source_name: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scenario {}: {}", self.source_name, self.message)
    }
}

impl std::error::Error for ScenarioError {}

/// One benchmark scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name used in reports.
    pub name: String,
    /// One sentence about what it shows.
    #[serde(default)]
    pub description: String,
    /// Seconds of measured traffic.
    pub duration_s: f64,
    /// Seconds between start-up and the first request (not measured).
    #[serde(default = "default_warmup")]
    pub warmup_s: f64,
    /// Offered load as a fraction of the total capacity Σ slots / mean service time.
    pub load: f64,
    /// Independent client instances; the arrivals are split evenly (at random) between them.
    #[serde(default = "default_clients")]
    pub clients: u32,
    /// A request not answered within this long counts as an error (a timeout).
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
    /// The backends.
    #[serde(rename = "backend")]
    pub backends: Vec<BackendModel>,
    /// Timed events.
    #[serde(rename = "event", default)]
    pub events: Vec<Event>,
    /// Engine configuration for lateral's coordinators (every field optional; defaults otherwise).
    #[serde(default)]
    pub engine: Option<toml::Table>,
    /// Routing variants of Lateral's balancer (key hashing, zones, dynamic/static split).
    #[serde(default)]
    pub routing: Option<Routing>,
}

/// The `[routing]` table: which of the balancer's routing variants a scenario exercises.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// Key-hashed routing: every request carries [`KEY_HEADER`] with one of this many keys.
    pub hash_keys: Option<u32>,
    /// How keys are drawn.
    #[serde(default)]
    pub key_distribution: KeyDistribution,
    /// The Zipf exponent `s` (P(key k) ∝ 1/k^s); only with `key_distribution = "zipf"`.
    pub zipf_exponent: Option<f64>,
    /// The clients' zone.
    pub client_zone: Option<String>,
    /// Zone preference with spillover (needs `client_zone`).
    pub zone_policy: Option<ZonePolicyModel>,
    /// lateral: the fraction of requests on the coordinator's weights (the rest on static weights).
    pub dynamic_fraction: Option<f64>,
}

/// The header carrying a request's routing key in scenarios with `hash_keys`.
pub const KEY_HEADER: &str = "x-lateral-key";

/// How routing keys are drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyDistribution {
    /// Zipf: a few hot keys, a long tail.
    #[default]
    Zipf,
    /// Every key equally likely.
    Uniform,
}

/// `zone_policy = { ... }`: the fields of `lateral_balancer::ZonePolicy`, each optional.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZonePolicyModel {
    /// Spill when fewer than this fraction of the local endpoints can take traffic.
    pub spill_below_healthy: Option<f64>,
    /// Return when at least this fraction can.
    pub return_at_healthy: Option<f64>,
    /// Spill when the local zone's mean ORCA utilisation reaches this.
    pub spill_at_utilization: Option<f64>,
    /// Return when it is below this.
    pub return_below_utilization: Option<f64>,
    /// The least time between two mode changes, seconds (scaled with the timeline by `--duration`).
    pub min_dwell_s: Option<f64>,
}

impl ZonePolicyModel {
    /// The balancer's policy: the given fields over its defaults.
    pub fn policy(&self) -> lateral_balancer::ZonePolicy {
        let d = lateral_balancer::ZonePolicy::default();
        lateral_balancer::ZonePolicy {
            spill_below_healthy: self.spill_below_healthy.unwrap_or(d.spill_below_healthy),
            return_at_healthy: self.return_at_healthy.unwrap_or(d.return_at_healthy),
            spill_at_utilization: self.spill_at_utilization.unwrap_or(d.spill_at_utilization),
            return_below_utilization: self
                .return_below_utilization
                .unwrap_or(d.return_below_utilization),
            min_dwell: self
                .min_dwell_s
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map_or(d.min_dwell, std::time::Duration::from_secs_f64),
        }
    }
}

fn default_warmup() -> f64 {
    1.0
}
fn default_clients() -> u32 {
    1
}
fn default_timeout() -> u64 {
    2000
}

/// One simulated backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendModel {
    /// Endpoint id and the name it signs replies with.
    pub name: String,
    /// Requests served at once.
    pub slots: u32,
    /// Mean service time, milliseconds.
    pub service_time_ms: f64,
    /// Service-time distribution.
    #[serde(default)]
    pub distribution: ServiceTime,
    /// Fraction of requests that fail (UNAVAILABLE) from the start.
    #[serde(default)]
    pub error_rate: f64,
    /// How long a failing request takes, milliseconds.
    #[serde(default = "default_error_latency")]
    pub error_latency_ms: f64,
    /// Labels (e.g. `track = "canary"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Whether the agent declares `slots` as its capacity (default true).
    #[serde(default = "default_true")]
    pub declare_capacity: bool,
    /// The backend's zone (or the label `zone`).
    #[serde(default)]
    pub zone: Option<String>,
}

fn default_error_latency() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}

impl BackendModel {
    /// Capacity in requests per second at the base service time: slots / mean.
    pub fn capacity_rps(&self) -> f64 {
        f64::from(self.slots) / (self.service_time_ms / 1000.0)
    }

    /// The backend's zone: its `zone` field, else its label `zone`.
    pub fn zone(&self) -> Option<&str> {
        self.zone
            .as_deref()
            .or_else(|| self.labels.get("zone").map(String::as_str))
            .filter(|z| !z.is_empty())
    }
}

/// A timed event.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawEvent")]
pub struct Event {
    /// Seconds after traffic starts.
    pub at_s: f64,
    /// Which backend.
    pub backend: String,
    /// What happens.
    pub action: Action,
}

/// An event as written: every parameter optional, unknown fields refused, then checked against its `kind`.
/// (serde cannot combine `flatten` with `deny_unknown_fields`, and internally tagged unit variants would accept
/// stray fields silently.)
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at_s: f64,
    backend: String,
    kind: String,
    factor: Option<f64>,
    rate: Option<f64>,
    latency_ms: Option<f64>,
    on: Option<bool>,
    period_s: Option<f64>,
    until_s: Option<f64>,
    param: Option<RampParam>,
    from: Option<f64>,
    to: Option<f64>,
    over_s: Option<f64>,
}

impl TryFrom<RawEvent> for Event {
    type Error = String;

    fn try_from(r: RawEvent) -> Result<Self, String> {
        let kind = r.kind.clone();
        let need = |v: Option<f64>, field: &str| {
            v.ok_or_else(|| format!("event kind `{kind}` needs field `{field}`"))
        };
        let given: Vec<&str> = [
            ("factor", r.factor.is_some()),
            ("rate", r.rate.is_some()),
            ("latency_ms", r.latency_ms.is_some()),
            ("on", r.on.is_some()),
            ("period_s", r.period_s.is_some()),
            ("until_s", r.until_s.is_some()),
            ("param", r.param.is_some()),
            ("from", r.from.is_some()),
            ("to", r.to.is_some()),
            ("over_s", r.over_s.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect();
        let (action, allowed): (Action, &[&str]) = match r.kind.as_str() {
            "multiply_service_time" => (
                Action::MultiplyServiceTime {
                    factor: need(r.factor, "factor")?,
                },
                &["factor"],
            ),
            "error_rate" => (
                Action::ErrorRate {
                    rate: need(r.rate, "rate")?,
                    latency_ms: r.latency_ms,
                },
                &["rate", "latency_ms"],
            ),
            "blackhole" => (
                Action::Blackhole {
                    on: r.on.unwrap_or(true),
                },
                &["on"],
            ),
            "kill" => (Action::Kill, &[]),
            "restart" => (Action::Restart, &[]),
            "flap" => (
                Action::Flap {
                    period_s: need(r.period_s, "period_s")?,
                    until_s: need(r.until_s, "until_s")?,
                },
                &["period_s", "until_s"],
            ),
            "ramp" => (
                Action::Ramp {
                    param: r
                        .param
                        .ok_or_else(|| "event kind `ramp` needs field `param`".to_string())?,
                    from: need(r.from, "from")?,
                    to: need(r.to, "to")?,
                    over_s: need(r.over_s, "over_s")?,
                },
                &["param", "from", "to", "over_s"],
            ),
            other => {
                return Err(format!(
                    "unknown event kind `{other}`: expected multiply_service_time, error_rate, blackhole, kill, \
                     restart, flap or ramp"
                ));
            }
        };
        if let Some(extra) = given.iter().find(|f| !allowed.contains(f)) {
            return Err(format!("event kind `{kind}` takes no field `{extra}`"));
        }
        Ok(Event {
            at_s: r.at_s,
            backend: r.backend,
            action,
        })
    }
}

/// What an event does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Service time = base × factor.
    MultiplyServiceTime {
        /// Factor on the base service time (1 restores it).
        factor: f64,
    },
    /// Sets the error rate (and how long a failure takes).
    ErrorRate {
        /// Fraction in [0, 1].
        rate: f64,
        /// Milliseconds a failure takes (default: the backend's `error_latency_ms`).
        latency_ms: Option<f64>,
    },
    /// Accept requests and never answer (`on = true`), or stop doing so.
    Blackhole {
        /// On or off.
        on: bool,
    },
    /// Crash: every connection dropped, the agent gone.
    Kill,
    /// Start again on the same addresses.
    Restart,
    /// Kill and restart repeatedly: down for the first half of each period, up for the second.
    Flap {
        /// Seconds per down+up cycle.
        period_s: f64,
        /// Seconds after traffic start when flapping stops (the backend is left up).
        until_s: f64,
    },
    /// Moves a parameter linearly from `from` to `to` over `over_s` seconds.
    Ramp {
        /// The parameter.
        param: RampParam,
        /// Start value.
        from: f64,
        /// End value.
        to: f64,
        /// Seconds.
        over_s: f64,
    },
}

/// A parameter a ramp moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RampParam {
    /// The factor on the base service time.
    ServiceTimeFactor,
    /// The error rate.
    ErrorRate,
}

/// The built-in scenarios, by name, as TOML text.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "steady-4to1",
        include_str!("../../scenarios/steady-4to1.toml"),
    ),
    ("spike", include_str!("../../scenarios/spike.toml")),
    ("failure", include_str!("../../scenarios/failure.toml")),
    (
        "degradation",
        include_str!("../../scenarios/degradation.toml"),
    ),
    ("flapping", include_str!("../../scenarios/flapping.toml")),
    ("failfast", include_str!("../../scenarios/failfast.toml")),
    (
        "canary-bad",
        include_str!("../../scenarios/canary-bad.toml"),
    ),
    (
        "many-clients",
        include_str!("../../scenarios/many-clients.toml"),
    ),
    ("hashing", include_str!("../../scenarios/hashing.toml")),
    ("zones", include_str!("../../scenarios/zones.toml")),
    ("split", include_str!("../../scenarios/split.toml")),
    ("blackhole", include_str!("../../scenarios/blackhole.toml")),
];

impl Scenario {
    /// A built-in scenario by name, or a TOML file by path.
    pub fn load(name_or_path: &str) -> Result<Self, ScenarioError> {
        if let Some((name, text)) = BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(text, &format!("built-in `{name}`"));
        }
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            source_name: name_or_path.to_string(),
            message: format!(
                "is neither a built-in scenario ({}) nor a readable file: {e}",
                BUILT_IN
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })?;
        scenario.validate(source_name)?;
        Ok(scenario)
    }

    fn validate(&self, source_name: &str) -> Result<(), ScenarioError> {
        let err = |field: &str, expected: &str| ScenarioError {
            source_name: source_name.to_string(),
            message: format!("field `{field}`: expected {expected}"),
        };
        if !(self.duration_s.is_finite() && self.duration_s > 0.0) {
            return Err(err("duration_s", "a positive number of seconds"));
        }
        if !(self.warmup_s.is_finite() && self.warmup_s >= 0.0) {
            return Err(err("warmup_s", "a number of seconds ≥ 0"));
        }
        if !(self.load.is_finite() && self.load > 0.0 && self.load <= 2.0) {
            return Err(err("load", "a fraction of total capacity in (0, 2]"));
        }
        if self.clients == 0 || self.clients > 64 {
            return Err(err("clients", "1..=64 client instances"));
        }
        if self.request_timeout_ms == 0 {
            return Err(err(
                "request_timeout_ms",
                "a positive number of milliseconds",
            ));
        }
        if self.backends.is_empty() {
            return Err(err("backend", "at least one [[backend]]"));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            let field = |f: &str| format!("backend[{i}].{f}");
            if b.name.is_empty() || !names.insert(b.name.as_str()) {
                return Err(err(
                    &field("name"),
                    "a non-empty name unique among backends",
                ));
            }
            if b.slots == 0 {
                return Err(err(&field("slots"), "at least 1 slot"));
            }
            if !(b.service_time_ms.is_finite() && b.service_time_ms > 0.0) {
                return Err(err(
                    &field("service_time_ms"),
                    "a positive number of milliseconds",
                ));
            }
            if !(0.0..=1.0).contains(&b.error_rate) {
                return Err(err(&field("error_rate"), "a fraction in [0, 1]"));
            }
            if !(b.error_latency_ms.is_finite() && b.error_latency_ms >= 0.0) {
                return Err(err(&field("error_latency_ms"), "milliseconds ≥ 0"));
            }
        }
        for (i, e) in self.events.iter().enumerate() {
            let field = |f: &str| format!("event[{i}].{f}");
            if !names.contains(e.backend.as_str()) {
                return Err(err(
                    &field("backend"),
                    &format!("one of the backends' names, not `{}`", e.backend),
                ));
            }
            if !(e.at_s.is_finite() && e.at_s >= 0.0) {
                return Err(err(&field("at_s"), "seconds ≥ 0"));
            }
            match &e.action {
                Action::MultiplyServiceTime { factor }
                    if !(factor.is_finite() && *factor > 0.0) =>
                {
                    return Err(err(&field("factor"), "a positive factor"));
                }
                Action::ErrorRate { rate, .. } if !(0.0..=1.0).contains(rate) => {
                    return Err(err(&field("rate"), "a fraction in [0, 1]"));
                }
                Action::Flap { period_s, until_s }
                    if !(period_s.is_finite() && *period_s > 0.0 && *until_s > e.at_s) =>
                {
                    return Err(err(
                        &field("period_s"),
                        "a positive period and until_s after at_s",
                    ));
                }
                Action::Ramp {
                    param,
                    from,
                    to,
                    over_s,
                } => {
                    if !(over_s.is_finite() && *over_s > 0.0) {
                        return Err(err(&field("over_s"), "a positive number of seconds"));
                    }
                    let ok = match param {
                        RampParam::ServiceTimeFactor => *from > 0.0 && *to > 0.0,
                        RampParam::ErrorRate => {
                            (0.0..=1.0).contains(from) && (0.0..=1.0).contains(to)
                        }
                    };
                    if !ok {
                        return Err(err(
                            &field("from"),
                            "positive factors (service_time_factor) or fractions in [0, 1] (error_rate)",
                        ));
                    }
                }
                _ => {}
            }
        }
        if let Some(routing) = &self.routing {
            self.validate_routing(routing, &err)?;
        }
        if let Some(engine) = &self.engine {
            self.engine_config_from(engine).map_err(|e| ScenarioError {
                source_name: source_name.to_string(),
                message: format!("field `engine`: {e}"),
            })?;
        }
        Ok(())
    }

    fn validate_routing(
        &self,
        r: &Routing,
        err: &dyn Fn(&str, &str) -> ScenarioError,
    ) -> Result<(), ScenarioError> {
        if let Some(n) = r.hash_keys
            && n == 0
        {
            return Err(err("routing.hash_keys", "at least 1 key"));
        }
        if let Some(s) = r.zipf_exponent {
            if !(s.is_finite() && (0.0..=10.0).contains(&s)) {
                return Err(err("routing.zipf_exponent", "an exponent in [0, 10]"));
            }
            if r.key_distribution != KeyDistribution::Zipf || r.hash_keys.is_none() {
                return Err(err(
                    "routing.zipf_exponent",
                    "no exponent unless hash_keys is set with key_distribution = \"zipf\"",
                ));
            }
        }
        if let Some(f) = r.dynamic_fraction
            && !(f.is_finite() && (0.0..=1.0).contains(&f))
        {
            return Err(err("routing.dynamic_fraction", "a fraction in [0, 1]"));
        }
        if let Some(zone) = &r.client_zone
            && !self
                .backends
                .iter()
                .any(|b| b.zone() == Some(zone.as_str()))
        {
            return Err(err(
                "routing.client_zone",
                &format!("a zone that some backend is in (`zone = \"{zone}\"` or label `zone`)"),
            ));
        }
        if let Some(p) = &r.zone_policy {
            if r.client_zone.is_none() {
                return Err(err(
                    "routing.zone_policy",
                    "no zone policy without routing.client_zone",
                ));
            }
            let fields = [
                ("spill_below_healthy", p.spill_below_healthy),
                ("return_at_healthy", p.return_at_healthy),
                ("spill_at_utilization", p.spill_at_utilization),
                ("return_below_utilization", p.return_below_utilization),
            ];
            for (name, v) in fields {
                if let Some(v) = v
                    && !(v.is_finite() && (0.0..=1.0).contains(&v))
                {
                    return Err(err(
                        &format!("routing.zone_policy.{name}"),
                        "a fraction in [0, 1]",
                    ));
                }
            }
            if let Some(s) = p.min_dwell_s
                && !(s.is_finite() && s >= 0.0)
            {
                return Err(err("routing.zone_policy.min_dwell_s", "seconds ≥ 0"));
            }
            let policy = p.policy();
            if policy.return_at_healthy < policy.spill_below_healthy {
                return Err(err(
                    "routing.zone_policy.return_at_healthy",
                    "at least spill_below_healthy",
                ));
            }
            if policy.return_below_utilization > policy.spill_at_utilization {
                return Err(err(
                    "routing.zone_policy.return_below_utilization",
                    "at most spill_at_utilization",
                ));
            }
        }
        Ok(())
    }

    /// The zone of the clients, if the scenario has one.
    pub fn client_zone(&self) -> Option<&str> {
        self.routing.as_ref().and_then(|r| r.client_zone.as_deref())
    }

    fn engine_config_from(
        &self,
        table: &toml::Table,
    ) -> Result<lateral_coordinator::engine::EngineConfig, String> {
        let config: lateral_coordinator::engine::EngineConfig = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// The engine configuration lateral's coordinators use.
    pub fn engine_config(&self) -> lateral_coordinator::engine::EngineConfig {
        self.engine
            .as_ref()
            .and_then(|t| self.engine_config_from(t).ok())
            .unwrap_or_default()
    }

    /// Total capacity at base service times, requests per second.
    pub fn capacity_rps(&self) -> f64 {
        self.backends.iter().map(BackendModel::capacity_rps).sum()
    }

    /// Offered arrival rate, requests per second.
    pub fn rate_rps(&self) -> f64 {
        self.load * self.capacity_rps()
    }

    /// Changes the duration and scales every event time (and flap/ramp length) with it.
    pub fn rescale(&mut self, duration_s: f64) {
        let k = duration_s / self.duration_s;
        self.duration_s = duration_s;
        for e in &mut self.events {
            e.at_s *= k;
            match &mut e.action {
                Action::Flap { period_s, until_s } => {
                    *until_s *= k;
                    // Keep at least a few cycles in a short run, but never below one heartbeat-scale second.
                    *period_s = (*period_s * k).max(1.0);
                }
                Action::Ramp { over_s, .. } => *over_s *= k,
                _ => {}
            }
        }
        // The zone policy's dwell is part of the timeline: a shortened run keeps the same number of
        // possible mode changes (never below half a second).
        if let Some(p) = self
            .routing
            .as_mut()
            .and_then(|r| r.zone_policy.as_mut())
            .and_then(|p| p.min_dwell_s.as_mut())
        {
            *p = (*p * k).max(0.5);
        }
    }

    /// The state the scenario puts every backend in at `t` seconds after traffic starts.
    pub fn truth_at(&self, t: f64) -> Vec<BackendTruth> {
        self.backends
            .iter()
            .map(|b| {
                let mut s = BackendTruth {
                    up: true,
                    blackhole: false,
                    service_factor: 1.0,
                    error_rate: b.error_rate,
                    error_latency_ms: b.error_latency_ms,
                };
                let mut events: Vec<&Event> = self
                    .events
                    .iter()
                    .filter(|e| e.backend == b.name && e.at_s <= t)
                    .collect();
                events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
                for e in events {
                    match &e.action {
                        Action::MultiplyServiceTime { factor } => s.service_factor = *factor,
                        Action::ErrorRate { rate, latency_ms } => {
                            s.error_rate = *rate;
                            if let Some(ms) = latency_ms {
                                s.error_latency_ms = *ms;
                            }
                        }
                        Action::Blackhole { on } => s.blackhole = *on,
                        Action::Kill => s.up = false,
                        Action::Restart => s.up = true,
                        Action::Flap { period_s, until_s } => {
                            s.up = if t >= *until_s {
                                true
                            } else {
                                ((t - e.at_s) / period_s).fract() >= 0.5
                            };
                        }
                        Action::Ramp {
                            param,
                            from,
                            to,
                            over_s,
                        } => {
                            let x = ((t - e.at_s) / over_s).clamp(0.0, 1.0);
                            let v = from + (to - from) * x;
                            match param {
                                RampParam::ServiceTimeFactor => s.service_factor = v,
                                RampParam::ErrorRate => s.error_rate = v,
                            }
                        }
                    }
                }
                s
            })
            .collect()
    }

    /// The ideal share per backend at `t`: capacity (slots / current mean) of the healthy backends, normalised.
    /// Healthy = up, not blackholed, error rate ≤ 5%. If none is healthy, the live ones by capacity.
    pub fn ideal_share_at(&self, t: f64) -> Vec<f64> {
        let truth = self.truth_at(t);
        let cap = |healthy_only: bool| -> Vec<f64> {
            self.backends
                .iter()
                .zip(&truth)
                .map(|(b, s)| {
                    let live = s.up && !s.blackhole;
                    if live && (!healthy_only || s.error_rate <= 0.05) {
                        b.capacity_rps() / s.service_factor
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let mut c = cap(true);
        if c.iter().sum::<f64>() <= 0.0 {
            c = cap(false);
        }
        let total: f64 = c.iter().sum();
        if total <= 0.0 {
            return vec![0.0; c.len()];
        }
        c.iter().map(|x| x / total).collect()
    }

    /// The times at which convergence is measured: every event except flaps (whose target keeps moving), a
    /// ramp at its end; the start of traffic when there is no such event.
    pub fn convergence_marks(&self) -> Vec<f64> {
        let mut marks: Vec<f64> = self
            .events
            .iter()
            .filter_map(|e| match &e.action {
                Action::Flap { .. } => None,
                Action::Ramp { over_s, .. } => Some(e.at_s + over_s),
                _ => Some(e.at_s),
            })
            .collect();
        if marks.is_empty()
            && !self
                .events
                .iter()
                .any(|e| matches!(e.action, Action::Flap { .. }))
        {
            marks.push(0.0);
        }
        marks.sort_by(f64::total_cmp);
        marks.dedup();
        marks
    }

    /// Static weights at the true goodput capacity ratio at the start: slots / mean × (1 − error rate).
    pub fn oracle_weights(&self) -> Vec<(String, f64)> {
        self.backends
            .iter()
            .map(|b| {
                (
                    b.name.clone(),
                    b.capacity_rps() * (1.0 - b.error_rate).max(0.0),
                )
            })
            .collect()
    }
}

/// A backend's state under the scenario at some time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendTruth {
    /// Running.
    pub up: bool,
    /// Accepting and never answering.
    pub blackhole: bool,
    /// Service time = base × this.
    pub service_factor: f64,
    /// Current error rate.
    pub error_rate: f64,
    /// How long a failure takes, milliseconds.
    pub error_latency_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error `text` (named `file`) is refused with; empty if it parses.
    fn error_of(text: &str, file: &str) -> String {
        Scenario::parse(text, file)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn built_ins_parse() {
        for (name, _) in BUILT_IN {
            let s = Scenario::load(name);
            assert!(s.is_ok(), "{name}: {:?}", s.err());
        }
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = error_of(
            "name='x'\nduration_s=1\nload=0.5\n[[backend]]\nname='a'\nslots=0\nservice_time_ms=5\n",
            "x.toml",
        );
        assert!(
            e.contains("x.toml") && e.contains("backend[0].slots"),
            "{e}"
        );
        let e = error_of(
            "name='x'\nduration_s=1\nload=0.5\nbogus=1\n[[backend]]\nname='a'\nslots=1\nservice_time_ms=5\n",
            "y.toml",
        );
        assert!(e.contains("y.toml") && e.contains("bogus"), "{e}");
        let e = error_of(
            "name='x'\nduration_s=1\nload=0.5\n[[backend]]\nname='a'\nslots=1\nservice_time_ms=5\n\
             [[event]]\nat_s=0\nbackend='a'\nkind='kill'\nfactr=2\n",
            "z.toml",
        );
        assert!(e.contains("z.toml") && e.contains("factr"), "{e}");
        let e = error_of(
            "name='x'\nduration_s=1\nload=0.5\n[[backend]]\nname='a'\nslots=1\nservice_time_ms=5\n\
             [[event]]\nat_s=0\nbackend='a'\nkind='kill'\nfactor=2\n",
            "w.toml",
        );
        assert!(
            e.contains("w.toml") && e.contains("no field `factor`"),
            "{e}"
        );
    }

    #[test]
    fn routing_is_checked_with_file_and_field() {
        let base = "name='x'\nduration_s=10\nload=0.5\n[[backend]]\nname='a'\nzone='z1'\nslots=1\n\
                    service_time_ms=5\n[[backend]]\nname='b'\nlabels={zone='z2'}\nslots=1\nservice_time_ms=5\n";
        let ok = Scenario::parse(
            &format!(
                "{base}[routing]\nhash_keys=10\nclient_zone='z2'\ndynamic_fraction=0.1\n\
                 zone_policy={{min_dwell_s=2, spill_at_utilization=0.9}}\n"
            ),
            "r.toml",
        );
        let Ok(ok) = ok else { panic!("{:?}", ok.err()) };
        assert_eq!(ok.backends[1].zone(), Some("z2"));
        assert_eq!(ok.client_zone(), Some("z2"));
        let mut scaled = ok.clone();
        scaled.rescale(5.0);
        let dwell = scaled
            .routing
            .and_then(|r| r.zone_policy)
            .and_then(|p| p.min_dwell_s);
        assert_eq!(dwell, Some(1.0));
        for (routing, field) in [
            ("hash_keys=0", "routing.hash_keys"),
            ("dynamic_fraction=1.5", "routing.dynamic_fraction"),
            ("client_zone='nowhere'", "routing.client_zone"),
            ("zone_policy={min_dwell_s=1}", "routing.zone_policy"),
            (
                "client_zone='z1'\nzone_policy={spill_at_utilization=2.0}",
                "routing.zone_policy.spill_at_utilization",
            ),
            ("hash_key=5", "hash_key"),
            ("client_zone='z1'\nzone_policy={dwell=1}", "dwell"),
        ] {
            let e = error_of(&format!("{base}[routing]\n{routing}\n"), "r.toml");
            assert!(e.contains("r.toml") && e.contains(field), "{routing}: {e}");
        }
    }

    #[test]
    fn flap_truth_alternates() {
        let s = Scenario::parse(
            "name='x'\nduration_s=20\nload=0.5\n[[backend]]\nname='a'\nslots=1\nservice_time_ms=5\n\
             [[event]]\nat_s=2\nbackend='a'\nkind='flap'\nperiod_s=4\nuntil_s=10\n",
            "t",
        )
        .map_err(|e| e.to_string());
        let Ok(s) = s else { panic!("{s:?}") };
        assert!(s.truth_at(1.0)[0].up);
        assert!(!s.truth_at(3.0)[0].up);
        assert!(s.truth_at(5.0)[0].up);
        assert!(!s.truth_at(6.5)[0].up);
        assert!(s.truth_at(11.0)[0].up);
    }
}
