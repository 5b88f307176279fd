//! Zone preference with spillover: a client sends to endpoints of its own zone, and spills to every zone
//! when its zone is unhealthy or busy, with hysteresis so that it does not flap.
//!
//! Turn it on with [`Builder::zone`](super::Builder::zone) (this client's zone) and
//! [`Builder::zone_policy`](super::Builder::zone_policy). Endpoints carry their zone in the snapshot
//! (`EndpointWeight.zone`) or in the builder's [`endpoint`](super::Builder::endpoint) (the snapshot wins when
//! it names one).
//!
//! **The policy, precisely.** The policy task evaluates two signals of the local zone (the endpoints whose
//! zone equals the client's) whenever it publishes a picker (a snapshot, an ORCA refresh, a dwell deadline):
//! - *health* `h` = local endpoints that can take traffic (weight > 0 and RAMPING, ACTIVE or unspecified;
//!   DEGRADED, EJECTED, TRIPPED, DRAINING do not count) ÷ local endpoints;
//! - *utilisation* `u` = the mean ORCA utilisation of the local endpoints that reported since the last
//!   snapshot (the agents' in-flight ÷ capacity); unknown when none did.
//!
//! It is in one of two modes:
//! - **local**: only local endpoints get requests, by their weights renormalised within the zone (a local
//!   endpoint with 10% of the global weight and one with 30% take 25% and 75%);
//! - **spill**: every endpoint of every zone gets requests by the global weights (the coordinator's weights
//!   already express each endpoint's capacity; the local zone keeps its global share).
//!
//! local → spill when `h < spill_below_healthy` or `u ≥ spill_at_utilization` (`u` is the local mean ORCA
//! utilisation averaged over time with a 2 s time constant, so a burst does not spill); spill → local when
//! `h ≥ return_at_healthy` and `u < return_below_utilization` (or unknown). The enter and exit thresholds
//! differ (hysteresis), and a mode is kept at least `min_dwell` (tokio time) before the next change; a change
//! held back by the dwell is re-evaluated when the dwell ends. One exception: when no local endpoint can take
//! traffic at all, the client spills at once (waiting would fail requests). With no local endpoint in the
//! set, the client is always in spill mode; with no zone configured, the policy is off.
//!
//! **Compared with Envoy's zone-aware routing** (`common_lb_config.zone_aware_lb_config`): Envoy routes all
//! traffic locally when the local zone's share of upstream hosts is at least its share of the (calling)
//! cluster's hosts, otherwise a continuous residual fraction spills to zones with excess capacity; below
//! `min_cluster_size` or under the panic threshold it routes across all zones. It has no hysteresis: a
//! host-count change moves the split immediately. Lateral has no view of where the other clients are, but it
//! has per-endpoint weights that already encode capacity, so it uses a two-state switch on health and
//! utilisation, with hysteresis and a dwell, and defers to the global weights when spilling.
//!
//! Choose it when cross-zone hops cost latency or money and each zone is provisioned for its own clients;
//! leave it off when zones are not symmetric in clients and capacity (the global weights do better there).
//! Key-hashed requests ignore the zone: a key has one owner across all zones.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The thresholds of zone preference (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZonePolicy {
    /// Spill when fewer than this fraction of the local endpoints can take traffic (default 0.5).
    pub spill_below_healthy: f64,
    /// Return when at least this fraction can (default 0.75; at least `spill_below_healthy`).
    pub return_at_healthy: f64,
    /// Spill when the local zone's mean ORCA utilisation reaches this (default 0.85).
    pub spill_at_utilization: f64,
    /// Return when it is below this (default 0.65; at most `spill_at_utilization`).
    pub return_below_utilization: f64,
    /// The least time between two mode changes (default 10 s).
    pub min_dwell: Duration,
}

impl Default for ZonePolicy {
    fn default() -> Self {
        Self {
            spill_below_healthy: 0.5,
            return_at_healthy: 0.75,
            spill_at_utilization: 0.85,
            return_below_utilization: 0.65,
            min_dwell: Duration::from_secs(10),
        }
    }
}

impl ZonePolicy {
    /// Why the thresholds are inconsistent, if they are.
    pub(crate) fn invalid(&self) -> Option<String> {
        let unit = |x: f64| x.is_finite() && (0.0..=1.0).contains(&x);
        let all = [
            self.spill_below_healthy,
            self.return_at_healthy,
            self.spill_at_utilization,
            self.return_below_utilization,
        ];
        if !all.iter().all(|x| unit(*x)) {
            return Some(format!("thresholds in [0, 1], found {all:?}"));
        }
        if self.return_at_healthy < self.spill_below_healthy {
            return Some("return_at_healthy ≥ spill_below_healthy".into());
        }
        if self.return_below_utilization > self.spill_at_utilization {
            return Some("return_below_utilization ≤ spill_at_utilization".into());
        }
        None
    }
}

/// Where requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneMode {
    /// Only the local zone's endpoints, weights renormalised within it.
    Local,
    /// Every zone, by the global weights.
    Spill,
}

/// What the policy task measured of the local zone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZoneSignals {
    /// Local endpoints in the set.
    pub local: usize,
    /// Of which can take traffic.
    pub healthy: usize,
    /// Mean ORCA utilisation of the local endpoints that reported, if any did.
    pub utilization: Option<f64>,
    /// The local endpoints' part of the global weights: the fraction of traffic they get while spilling.
    pub local_share: f64,
}

/// The mode and the hysteresis state. Pure: time comes in as `now`.
#[derive(Debug, Clone)]
pub struct ZoneState {
    policy: ZonePolicy,
    mode: ZoneMode,
    /// When the mode last changed (`None`: never, no dwell to respect).
    since: Option<Instant>,
    /// The local utilisation smoothed over time, and when it was last updated.
    utilization: Option<(f64, Instant)>,
}

/// Time constant of the utilisation average the thresholds compare against. ORCA utilisation arrives with
/// every response and is an instant in-flight count (the responding request included), so one burst would
/// otherwise cross the spill threshold; a zone spills on sustained load, not on a burst.
pub const UTILIZATION_TIME_CONSTANT: Duration = Duration::from_secs(2);

impl ZoneState {
    /// Starts in local mode.
    pub fn new(policy: ZonePolicy) -> Self {
        Self {
            policy,
            mode: ZoneMode::Local,
            since: None,
            utilization: None,
        }
    }

    /// The current mode.
    pub fn mode(&self) -> ZoneMode {
        self.mode
    }

    /// Updates the mode from `signals` at `now`. Returns when to look again if a change is held back by the
    /// dwell (the caller re-evaluates then, with fresh signals).
    pub fn observe(&mut self, mut signals: ZoneSignals, now: Instant) -> Option<Instant> {
        signals.utilization = signals.utilization.map(|u| self.smooth_utilization(u, now));
        let p = &self.policy;
        let h = if signals.local == 0 {
            0.0
        } else {
            signals.healthy as f64 / signals.local as f64
        };
        let wanted = match self.mode {
            ZoneMode::Local => {
                let busy = signals
                    .utilization
                    .is_some_and(|u| u >= p.spill_at_utilization);
                (h < p.spill_below_healthy || busy).then_some(ZoneMode::Spill)
            }
            ZoneMode::Spill => {
                // While spilling the local zone carries only `local_share` of the traffic, so its utilisation
                // reads low; judge the return by what it would carry with all of it back.
                let calm = signals.utilization.is_none_or(|u| {
                    u / signals.local_share.clamp(0.05, 1.0) < p.return_below_utilization
                });
                (signals.healthy > 0 && h >= p.return_at_healthy && calm).then_some(ZoneMode::Local)
            }
        }?;
        let dwell_end = self.since.map(|s| s + p.min_dwell);
        let urgent = wanted == ZoneMode::Spill && signals.healthy == 0;
        match dwell_end {
            Some(end) if now < end && !urgent => Some(end),
            _ => {
                self.mode = wanted;
                self.since = Some(now);
                None
            }
        }
    }
}

impl ZoneState {
    /// Folds a utilisation reading into the time-weighted average (time constant
    /// [`UTILIZATION_TIME_CONSTANT`]) and returns the average.
    fn smooth_utilization(&mut self, u: f64, now: Instant) -> f64 {
        let u = if u.is_finite() { u.max(0.0) } else { 0.0 };
        let smoothed = match self.utilization {
            // No history: start from an idle zone, so spilling needs evidence that lasts, not the first
            // reading (often a start-up burst on cold connections).
            None => 0.0,
            Some((old, at)) => {
                let dt = now.saturating_duration_since(at).as_secs_f64();
                let weight = 1.0 - (-dt / UTILIZATION_TIME_CONSTANT.as_secs_f64()).exp();
                old + (u - old) * weight
            }
        };
        self.utilization = Some((smoothed, now));
        smoothed
    }
}

/// The zone gauges.
#[derive(Debug, Default)]
pub(crate) struct ZoneMetrics {
    enabled: AtomicBool,
    spilling: AtomicBool,
    transitions: AtomicU64,
}

impl ZoneMetrics {
    pub(crate) fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Records the mode after an evaluation.
    pub(crate) fn set(&self, mode: ZoneMode) {
        let spilling = mode == ZoneMode::Spill;
        if self.spilling.swap(spilling, Ordering::Relaxed) != spilling {
            self.transitions.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn spilling(&self) -> bool {
        self.spilling.load(Ordering::Relaxed)
    }

    pub(crate) fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    /// Appends the zone series (only when zone preference is on).
    pub(crate) fn render(&self, out: &mut String, service: &str) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP lateral_client_zone_spilling 1 while requests spill out of the local zone.\n# TYPE lateral_client_zone_spilling gauge\nlateral_client_zone_spilling{{service=\"{service}\"}} {}",
            u64::from(self.spilling())
        );
        let _ = writeln!(
            out,
            "# HELP lateral_client_zone_transitions_total Changes between local and spill mode.\n# TYPE lateral_client_zone_transitions_total counter\nlateral_client_zone_transitions_total{{service=\"{service}\"}} {}",
            self.transitions()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals(local: usize, healthy: usize, utilization: Option<f64>) -> ZoneSignals {
        ZoneSignals {
            local,
            healthy,
            utilization,
            local_share: 1.0,
        }
    }

    #[test]
    fn the_return_is_judged_by_the_load_the_zone_would_carry_back() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut z = ZoneState::new(ZonePolicy {
            min_dwell: Duration::ZERO,
            ..ZonePolicy::default()
        });
        z.observe(signals(2, 2, Some(0.95)), t0);
        assert_eq!(
            z.mode(),
            ZoneMode::Local,
            "one reading is not sustained load"
        );
        z.observe(signals(2, 2, Some(0.95)), at(10));
        assert_eq!(z.mode(), ZoneMode::Spill);
        // Spilling, the zone gets half the traffic and reads 0.5: with all of it back it would be at 1.0.
        let half = ZoneSignals {
            local_share: 0.5,
            ..signals(2, 2, Some(0.5))
        };
        z.observe(half, at(20));
        assert_eq!(z.mode(), ZoneMode::Spill);
        // Reading 0.3 at half the traffic: 0.6 with all of it, below 0.65: return.
        let calm = ZoneSignals {
            local_share: 0.5,
            ..signals(2, 2, Some(0.3))
        };
        z.observe(calm, at(40));
        assert_eq!(z.mode(), ZoneMode::Local);
    }

    #[test]
    fn hysteresis_and_dwell() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut z = ZoneState::new(ZonePolicy::default());
        assert_eq!(z.observe(signals(4, 4, Some(0.5)), t0), None);
        assert_eq!(z.mode(), ZoneMode::Local);
        // Busy for a sustained while: spill (first change, no dwell yet).
        z.observe(signals(4, 4, Some(0.9)), at(10));
        assert_eq!(z.mode(), ZoneMode::Spill);
        // Between the thresholds: stay.
        z.observe(signals(4, 4, Some(0.7)), at(30));
        assert_eq!(z.mode(), ZoneMode::Spill);
        // Calmer for a second: the average falls below 0.65 and the dwell since t0 + 10 s is over: return.
        z.observe(signals(4, 4, Some(0.5)), at(31));
        assert_eq!(z.mode(), ZoneMode::Local);
        // Busy again soon after: held back until the dwell (10 s from t0 + 31 s) ends.
        let again = z.observe(signals(4, 4, Some(0.95)), at(40));
        assert_eq!(again, Some(at(41)));
        assert_eq!(z.mode(), ZoneMode::Local);
        // Unless nothing local can take traffic.
        z.observe(signals(4, 0, None), at(40));
        assert_eq!(z.mode(), ZoneMode::Spill);
    }

    #[test]
    fn a_burst_of_utilization_does_not_spill() {
        let t0 = Instant::now();
        let mut z = ZoneState::new(ZonePolicy {
            min_dwell: Duration::ZERO,
            ..ZonePolicy::default()
        });
        let mut now = t0;
        for k in 0..100 {
            now += Duration::from_millis(100);
            // Mostly 0.5, with a response at full utilisation every second.
            let u = if k % 10 == 9 { 1.0 } else { 0.5 };
            z.observe(signals(4, 4, Some(u)), now);
            assert_eq!(z.mode(), ZoneMode::Local, "spilled on a burst at step {k}");
        }
        // Sustained load does spill.
        for _ in 0..30 {
            now += Duration::from_millis(100);
            z.observe(signals(4, 4, Some(0.95)), now);
        }
        assert_eq!(z.mode(), ZoneMode::Spill);
    }

    #[test]
    fn health_thresholds() {
        let t0 = Instant::now();
        let mut z = ZoneState::new(ZonePolicy {
            min_dwell: Duration::ZERO,
            ..ZonePolicy::default()
        });
        z.observe(signals(4, 2, None), t0); // h = 0.5: not below 0.5
        assert_eq!(z.mode(), ZoneMode::Local);
        z.observe(signals(4, 1, None), t0); // 0.25 < 0.5
        assert_eq!(z.mode(), ZoneMode::Spill);
        z.observe(signals(4, 2, None), t0); // 0.5 < 0.75: stay
        assert_eq!(z.mode(), ZoneMode::Spill);
        z.observe(signals(4, 3, None), t0);
        assert_eq!(z.mode(), ZoneMode::Local);
        z.observe(signals(0, 0, None), t0);
        assert_eq!(z.mode(), ZoneMode::Spill);
    }
}
