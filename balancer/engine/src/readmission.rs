//! Re-admission (Envoy's `slow_start`): a returning endpoint starts at `readmission_start` of its share and
//! ramps linearly to its full share over `readmission_ramp`. An endpoint that flaps — an outage starting within
//! `flap_window` of the previous one — is first held off for `flap_backoff_base × 2^(flaps − 2)` (capped at
//! `flap_backoff_cap`): the first flap waits the base, each further one twice as long.

use std::time::{Duration, Instant};

use super::config::EngineConfig;

/// Per-endpoint re-admission state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readmission {
    last_outage: Option<Instant>,
    /// Consecutive outages, each within `flap_window` of the previous.
    pub outages: u32,
    /// No ramp before this instant.
    pub holdoff_until: Option<Instant>,
    /// The ramp started here (after any hold-off).
    pub ramp_start: Option<Instant>,
    /// The hold-off chosen at the latest return.
    pub last_holdoff: Duration,
}

impl Readmission {
    /// An outage began (degraded or ejected from a live state).
    pub fn on_outage(&mut self, now: Instant, cfg: &EngineConfig) {
        self.outages = match self.last_outage {
            Some(t) if now.saturating_duration_since(t) <= cfg.flap_window => {
                self.outages.saturating_add(1)
            }
            _ => 1,
        };
        self.last_outage = Some(now);
        self.ramp_start = None;
        self.holdoff_until = None;
    }

    /// Whether the current outage makes the endpoint a flapper (needs a hold-off and a ramp).
    pub fn is_flapping(&self) -> bool {
        self.outages >= 2
    }

    /// The endpoint is back: picks the hold-off and returns it.
    pub fn on_return(&mut self, now: Instant, cfg: &EngineConfig) -> Duration {
        let holdoff = if self.outages >= 2 {
            let exp = (self.outages - 2).min(30);
            cfg.flap_backoff_base
                .saturating_mul(1u32 << exp)
                .min(cfg.flap_backoff_cap)
        } else {
            Duration::ZERO
        };
        self.last_holdoff = holdoff;
        self.holdoff_until = Some(now + holdoff);
        self.ramp_start = None;
        holdoff
    }

    /// Whether a hold-off is still running at `now`.
    pub fn held_off(&self, now: Instant) -> bool {
        self.holdoff_until.is_some_and(|t| now < t)
    }

    /// Starts the ramp.
    pub fn start_ramp(&mut self, now: Instant) {
        self.holdoff_until = None;
        self.ramp_start = Some(now);
    }

    /// The fraction of its full share the endpoint may have at `now`, or `None` once the ramp is over.
    pub fn ramp_factor(&self, now: Instant, cfg: &EngineConfig) -> Option<f64> {
        let start = self.ramp_start?;
        let ramp = cfg.readmission_ramp.as_secs_f64();
        let t = if ramp > 0.0 {
            now.saturating_duration_since(start).as_secs_f64() / ramp
        } else {
            1.0
        };
        if t >= 1.0 {
            None
        } else {
            Some(cfg.readmission_start + (1.0 - cfg.readmission_start) * t)
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests need an Instant to start from
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cfg = EngineConfig::default();
        let t0 = Instant::now();
        let mut r = Readmission::default();
        let mut holdoffs = Vec::new();
        for i in 0..8u64 {
            let t = t0 + Duration::from_secs(i * 5);
            r.on_outage(t, &cfg);
            holdoffs.push(r.on_return(t + Duration::from_secs(1), &cfg).as_secs());
        }
        assert_eq!(holdoffs, vec![0, 2, 4, 8, 16, 32, 60, 60]);
        let mut r = Readmission::default();
        r.start_ramp(t0);
        assert_eq!(r.ramp_factor(t0, &cfg), Some(0.1));
        assert!((r.ramp_factor(t0 + Duration::from_secs(15), &cfg).unwrap() - 0.55).abs() < 1e-9);
        assert_eq!(r.ramp_factor(t0 + Duration::from_secs(30), &cfg), None);
    }
}
