//! Every rule's knob, with the reference article's defaults, and their validation.
//!
//! Durations deserialize from either an integer number of **milliseconds** (`heartbeat_interval = 500`) or a
//! string with a unit suffix: `"250us"`, `"500ms"`, `"30s"`, `"5m"`, `"1h"` (`heartbeat_interval = "500ms"`).
//! Shares and fractions are plain numbers in `[0, 1]`; capacities are requests per second.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// How the engine turns measurements into shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Capacity first (headroom shares); latency matters only past [`EngineConfig::latency_threshold`].
    #[default]
    Throughput,
    /// Share ∝ 1/p99, capped at [`EngineConfig::max_share`].
    Latency,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Throughput => "throughput",
            Mode::Latency => "latency",
        })
    }
}

/// The engine's configuration. `Default` gives the article's values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// How often agents send heartbeats (and the driver ticks). Default 500 ms.
    #[serde(deserialize_with = "duration::deserialize")]
    pub heartbeat_interval: Duration,
    /// Heartbeats per endpoint in the sliding window, 5..=10. Default 8.
    pub window_len: usize,
    /// Throughput (default) or latency mode.
    pub mode: Mode,
    /// Latency the article's capacity estimate aims for: `capacity = max(load × target_latency / observed,
    /// min_capacity)`, used when a backend reports neither utilization nor declared capacity. Default 100 ms.
    #[serde(deserialize_with = "duration::deserialize")]
    pub target_latency: Duration,
    /// Smallest capacity estimate, in requests per second, so a cold or idle endpoint is not zero. Default 1.
    pub min_capacity: f64,
    /// Never plan more than this fraction of an endpoint's estimated capacity. Default 0.8.
    pub max_planned_utilization: f64,
    /// Throughput mode: past this p99 the capacity estimate is scaled by `latency_threshold / p99`. Default 500 ms.
    #[serde(deserialize_with = "duration::deserialize")]
    pub latency_threshold: Duration,
    /// Latency mode: the largest share one endpoint may get. Default 0.8.
    pub max_share: f64,
    /// Errors cost weight: effective capacity = goodput capacity × max(0, 1 − error_penalty × error_rate)
    /// (named after gRPC WRR's `error_utilization_penalty`). Default 2.0.
    pub error_penalty: f64,
    /// Smoothing factor in `new = α·calculated + (1−α)·old`, in (0, 1]. Default 0.3. In throughput mode the
    /// step is also held to `1 − ρ` (ρ = measured load / estimated capacity, at least 0.05): the headroom
    /// rule's loop gain is ρ/(1 − ρ), so a larger step overshoots and rings near saturation.
    pub alpha: f64,
    /// Minimum share of every live endpoint; must be below 1/2 (it is lowered to 1/n at run time when n
    /// endpoints cannot all get it). Default 0.05.
    pub floor: f64,
    /// Missed heartbeats before an endpoint is degraded. Default 3.
    pub degraded_after_missed: u32,
    /// Per tick, a degraded endpoint's share is multiplied by this (it never gains). Default 0.8.
    pub degraded_decay: f64,
    /// Silence after which an endpoint is ejected (share 0). Default 5 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub eject_after: Duration,
    /// Liveness from completions: a heartbeat with requests in flight, none completed in its window, and its
    /// oldest in-flight request older than `stall_latency_multiple` × the endpoint's recent mean latency (at
    /// least `min_stall`) says the path completes nothing: share 0 at once, no floor (rule
    /// `liveness.stalled`), re-admitted by the usual ramp when it completes again. Default 10; 0 disables.
    pub stall_latency_multiple: f64,
    /// The shortest stall bound (see `stall_latency_multiple`). Default 250 ms.
    #[serde(deserialize_with = "duration::deserialize")]
    pub min_stall: Duration,
    /// A returning endpoint starts at this fraction of its share (Envoy's `slow_start` aggression). Default 0.1.
    pub readmission_start: f64,
    /// Time to ramp from `readmission_start` to the full share. Default 30 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub readmission_ramp: Duration,
    /// An outage that starts within this long of the previous one counts as a flap. Default 60 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub flap_window: Duration,
    /// Hold-off before re-admitting a flapping endpoint: base × 2^(flaps−1). Default 2 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub flap_backoff_base: Duration,
    /// Cap on that hold-off. Default 60 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub flap_backoff_cap: Duration,
    /// Label `key=value` that marks a canary. Default `track=canary`.
    pub canary_label: String,
    /// A canary's fixed floor (and its starting share). Default 0.01.
    pub canary_floor: f64,
    /// Canary error rate over the window that trips its breaker (share 0, alert). Default 0.05.
    pub canary_error_threshold: f64,
    /// Requests the canary's window must hold before the breaker may trip or a promotion count. Default 5
    /// (the breaker also needs the 95% Wilson lower bound of the error rate past the threshold).
    pub canary_min_requests: u64,
    /// How long a canary must stay at least as good as the stable endpoints before each promotion step.
    /// Default 10 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub canary_promotion_period: Duration,
    /// Share added to the canary's allowance at each promotion. Default 0.05.
    pub canary_step: f64,
    /// The canary's share never exceeds this. Default 0.5.
    pub canary_max_share: f64,
    /// Window in which direction reversals of a weight are counted. Default 10 s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub oscillation_window: Duration,
    /// Reversals within the window that make a sawtooth. Default 4.
    pub oscillation_min_reversals: usize,
    /// α for an endpoint whose window just restarted on a step change (see `step_change_factor`), whose
    /// planned load is now past its estimated capacity and whose share must fall: fast down, slow up.
    /// Smoothing exists to stop oscillation between paths with close metrics; a path that just became slower
    /// builds a queue every tick it keeps its share, so for two seconds after the step it sheds load at this
    /// rate, toward its capacity share (not its headroom share, which is 0 for a path planned past its
    /// capacity). Default 0.7.
    pub overload_alpha: f64,
    /// Gap (calculated − current share) below which smoothing slows in proportion, down to α/4, so that
    /// estimate noise does not walk a converged weight around; 0 disables. Default 0.05.
    pub settle_band: f64,
    /// A reversal counts toward a sawtooth only if the swing it ends is at least this large (in share).
    /// Default 0.04 (4 percentage points): smaller wobbles are measurement noise.
    pub oscillation_min_swing: f64,
    /// α used while a sawtooth is detected (damping harder). Default 0.1.
    pub oscillation_damped_alpha: f64,
    /// Drift alert when a weight moves more than this (in share, 0.20 = 20 percentage points) ... Default 0.20.
    pub drift_threshold: f64,
    /// ... within this window. Default 5 min.
    #[serde(deserialize_with = "duration::deserialize")]
    pub drift_window: Duration,
    /// Smallest weight change (since the endpoint's last record) worth a decision record. Default 0.01.
    pub decision_threshold: f64,
    /// Decision records and alerts kept for the driver; older ones are dropped and counted. Default 4096.
    pub queue_len: usize,
    /// A new heartbeat whose mean latency differs from the rest of the window by this factor (either way)
    /// restarts the window, so a step change is followed at once rather than blended for N heartbeats.
    /// Default 2.0; 0 disables.
    pub step_change_factor: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            heartbeat_interval: Duration::from_millis(500),
            window_len: 8,
            mode: Mode::Throughput,
            target_latency: Duration::from_millis(100),
            min_capacity: 1.0,
            max_planned_utilization: 0.8,
            latency_threshold: Duration::from_millis(500),
            max_share: 0.8,
            error_penalty: 2.0,
            alpha: 0.3,
            floor: 0.05,
            degraded_after_missed: 3,
            degraded_decay: 0.8,
            eject_after: Duration::from_secs(5),
            stall_latency_multiple: 10.0,
            min_stall: Duration::from_millis(250),
            readmission_start: 0.1,
            readmission_ramp: Duration::from_secs(30),
            flap_window: Duration::from_secs(60),
            flap_backoff_base: Duration::from_secs(2),
            flap_backoff_cap: Duration::from_secs(60),
            canary_label: "track=canary".to_string(),
            canary_floor: 0.01,
            canary_error_threshold: 0.05,
            canary_min_requests: 5,
            canary_promotion_period: Duration::from_secs(10),
            canary_step: 0.05,
            canary_max_share: 0.5,
            oscillation_window: Duration::from_secs(10),
            oscillation_min_reversals: 4,
            oscillation_damped_alpha: 0.1,
            oscillation_min_swing: 0.04,
            settle_band: 0.05,
            overload_alpha: 0.7,
            drift_threshold: 0.20,
            drift_window: Duration::from_secs(300),
            decision_threshold: 0.01,
            queue_len: 4096,
            step_change_factor: 2.0,
        }
    }
}

/// A configuration field is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid engine configuration: `{field}`: expected {expected}")]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What was expected, and what was found.
    pub expected: String,
}

fn fraction(field: &'static str, v: f64, lo_open: bool, hi: f64) -> Result<(), ConfigError> {
    let ok = v.is_finite() && (if lo_open { v > 0.0 } else { v >= 0.0 }) && v <= hi;
    if ok {
        Ok(())
    } else {
        let lo = if lo_open { "(0" } else { "[0" };
        Err(ConfigError {
            field,
            expected: format!("a number in {lo}, {hi}], found {v}"),
        })
    }
}

fn positive(field: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(ConfigError {
            field,
            expected: "a positive duration, found 0".into(),
        })
    } else {
        Ok(())
    }
}

impl EngineConfig {
    /// Checks every field; the first bad one is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("heartbeat_interval", self.heartbeat_interval)?;
        if !(5..=10).contains(&self.window_len) {
            return Err(ConfigError {
                field: "window_len",
                expected: format!("5..=10 heartbeats, found {}", self.window_len),
            });
        }
        positive("target_latency", self.target_latency)?;
        if !(self.min_capacity.is_finite() && self.min_capacity > 0.0) {
            return Err(ConfigError {
                field: "min_capacity",
                expected: format!("a positive number of req/s, found {}", self.min_capacity),
            });
        }
        fraction(
            "max_planned_utilization",
            self.max_planned_utilization,
            true,
            1.0,
        )?;
        positive("latency_threshold", self.latency_threshold)?;
        fraction("alpha", self.alpha, true, 1.0)?;
        fraction(
            "oscillation_damped_alpha",
            self.oscillation_damped_alpha,
            true,
            1.0,
        )?;
        if !(self.oscillation_min_swing.is_finite()
            && (0.0..1.0).contains(&self.oscillation_min_swing))
        {
            return Err(ConfigError {
                field: "oscillation_min_swing",
                expected: format!("a share in [0, 1), found {}", self.oscillation_min_swing),
            });
        }
        fraction("overload_alpha", self.overload_alpha, true, 1.0)?;
        if !(self.settle_band.is_finite() && (0.0..0.5).contains(&self.settle_band)) {
            return Err(ConfigError {
                field: "settle_band",
                expected: format!("a share in [0, 0.5), found {}", self.settle_band),
            });
        }
        if self.overload_alpha < self.alpha {
            return Err(ConfigError {
                field: "overload_alpha",
                expected: format!(
                    "at least alpha ({}), found {}",
                    self.alpha, self.overload_alpha
                ),
            });
        }
        if self.oscillation_damped_alpha > self.alpha {
            return Err(ConfigError {
                field: "oscillation_damped_alpha",
                expected: format!(
                    "at most alpha ({}), found {}",
                    self.alpha, self.oscillation_damped_alpha
                ),
            });
        }
        if !(self.floor.is_finite() && (0.0..0.5).contains(&self.floor)) {
            return Err(ConfigError {
                field: "floor",
                expected: format!(
                    "a share in [0, 0.5) (below 1/n for n ≥ 2 endpoints), found {}",
                    self.floor
                ),
            });
        }
        fraction("max_share", self.max_share, true, 1.0)?;
        if self.max_share <= self.floor {
            return Err(ConfigError {
                field: "max_share",
                expected: format!("above floor ({})", self.floor),
            });
        }
        if !(self.error_penalty.is_finite() && self.error_penalty >= 0.0) {
            return Err(ConfigError {
                field: "error_penalty",
                expected: format!("a non-negative number, found {}", self.error_penalty),
            });
        }
        if self.degraded_after_missed == 0 {
            return Err(ConfigError {
                field: "degraded_after_missed",
                expected: "at least 1, found 0".into(),
            });
        }
        fraction("degraded_decay", self.degraded_decay, false, 1.0)?;
        let Some(degraded_at) = self
            .heartbeat_interval
            .checked_mul(self.degraded_after_missed)
        else {
            return Err(ConfigError {
                field: "degraded_after_missed",
                expected: format!(
                    "a count whose product with heartbeat_interval ({:?}) fits in a duration, found {}",
                    self.heartbeat_interval, self.degraded_after_missed
                ),
            });
        };
        if self.eject_after <= degraded_at {
            return Err(ConfigError {
                field: "eject_after",
                expected: format!(
                    "longer than degraded_after_missed × heartbeat_interval ({degraded_at:?}), found {:?}",
                    self.eject_after
                ),
            });
        }
        if !(self.stall_latency_multiple.is_finite() && self.stall_latency_multiple >= 0.0) {
            return Err(ConfigError {
                field: "stall_latency_multiple",
                expected: format!(
                    "a non-negative number (0 disables), found {}",
                    self.stall_latency_multiple
                ),
            });
        }
        fraction("readmission_start", self.readmission_start, true, 1.0)?;
        positive("flap_window", self.flap_window)?;
        if self.flap_backoff_cap < self.flap_backoff_base {
            return Err(ConfigError {
                field: "flap_backoff_cap",
                expected: format!("at least flap_backoff_base ({:?})", self.flap_backoff_base),
            });
        }
        match self.canary_label.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => {
                return Err(ConfigError {
                    field: "canary_label",
                    expected: format!("`key=value`, found `{}`", self.canary_label),
                });
            }
        }
        fraction("canary_floor", self.canary_floor, false, 0.5)?;
        fraction(
            "canary_error_threshold",
            self.canary_error_threshold,
            true,
            1.0,
        )?;
        fraction("canary_step", self.canary_step, true, 1.0)?;
        fraction("canary_max_share", self.canary_max_share, true, 1.0)?;
        if self.canary_max_share < self.canary_floor {
            return Err(ConfigError {
                field: "canary_max_share",
                expected: format!("at least canary_floor ({})", self.canary_floor),
            });
        }
        positive("oscillation_window", self.oscillation_window)?;
        if self.oscillation_min_reversals < 2 {
            return Err(ConfigError {
                field: "oscillation_min_reversals",
                expected: format!("at least 2, found {}", self.oscillation_min_reversals),
            });
        }
        fraction("drift_threshold", self.drift_threshold, true, 1.0)?;
        positive("drift_window", self.drift_window)?;
        fraction("decision_threshold", self.decision_threshold, false, 1.0)?;
        if self.queue_len == 0 {
            return Err(ConfigError {
                field: "queue_len",
                expected: "at least 1, found 0".into(),
            });
        }
        if !(self.step_change_factor == 0.0
            || (self.step_change_factor.is_finite() && self.step_change_factor > 1.0))
        {
            return Err(ConfigError {
                field: "step_change_factor",
                expected: format!(
                    "0 (off) or a factor above 1, found {}",
                    self.step_change_factor
                ),
            });
        }
        Ok(())
    }

    /// The canary label split into key and value.
    pub fn canary_key_value(&self) -> (&str, &str) {
        self.canary_label
            .split_once('=')
            .unwrap_or((self.canary_label.as_str(), ""))
    }
}

/// Humane durations: an integer is milliseconds; a string carries a unit (`us`, `ms`, `s`, `m`, `h`).
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
            Raw::Text(s) => parse(&s).ok_or_else(|| {
                D::Error::custom(format!(
                    "expected a duration like \"500ms\", \"30s\" or \"5m\", found {s:?}"
                ))
            }),
        }
    }

    pub(super) fn parse(s: &str) -> Option<Duration> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().ok()?;
        let secs = match unit.trim() {
            "us" | "µs" => n / 1e6,
            "ms" => n / 1e3,
            "s" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            _ => return None,
        };
        Duration::try_from_secs_f64(secs).ok()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn parses_units() {
            assert_eq!(
                super::parse("500ms"),
                Some(std::time::Duration::from_millis(500))
            );
            assert_eq!(
                super::parse("5m"),
                Some(std::time::Duration::from_secs(300))
            );
            assert_eq!(
                super::parse("1.5s"),
                Some(std::time::Duration::from_millis(1500))
            );
            assert_eq!(super::parse("5 parsecs"), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        EngineConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        let c = EngineConfig {
            window_len: 4,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "window_len");
        let c = EngineConfig {
            alpha: 0.0,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "alpha");
        let c = EngineConfig {
            floor: 0.6,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("floor"));
    }

    /// Found by the `coordinator_config` fuzz target: `degraded_after_missed × heartbeat_interval` overflowed
    /// `Duration` and `validate` panicked instead of naming the field.
    #[test]
    fn an_overflowing_degraded_at_is_an_error() {
        let c: EngineConfig = serde_json::from_str(
            r#"{"heartbeat_interval": "5000000000h", "degraded_after_missed": 4294967295}"#,
        )
        .unwrap();
        assert_eq!(c.validate().unwrap_err().field, "degraded_after_missed");
    }

    #[test]
    fn deserializes_humane_durations() {
        let c: EngineConfig = serde_json::from_str(
            r#"{"heartbeat_interval": "250ms", "eject_after": 4000, "mode": "latency"}"#,
        )
        .unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(c.eject_after, Duration::from_secs(4));
        assert_eq!(c.mode, Mode::Latency);
        assert!(serde_json::from_str::<EngineConfig>(r#"{"nope": 1}"#).is_err());
    }
}
