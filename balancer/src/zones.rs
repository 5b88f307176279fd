//! Zone preference with spillover: a client sends to endpoints of its own zone, and spills what its zone
//! cannot carry to the other zones when its zone is busy (all of it when unhealthy), with hysteresis so
//! that it does not flap.
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
//! - *utilisation* `u` = the ORCA utilisation of the local endpoints that reported since the last snapshot
//!   (the agents' in-flight ÷ capacity), each capped at 2 and weighted by its coordinator weight; unknown
//!   when none did (the average so far then stands).
//!
//! It keeps a *local fraction* `k`, the part of this client's traffic the local zone gets:
//! - **local** (`k = 1`): only local endpoints get requests, by their weights renormalised within the zone (a
//!   local endpoint with 10% of the global weight and one with 30% take 25% and 75%);
//! - **spill** (`k < 1`): the local endpoints get `k` of the requests between them, the other zones' endpoints
//!   the rest, each group by its weights. `k` never goes below `local_share`, the local endpoints' part of
//!   the global weights: at that floor the split *is* the global weights (a full spill).
//!
//! Utilisation is measured while the zone carries `k` of the traffic, so each reading is projected to the
//! whole of it (`u / k`) before it is averaged over time (a 2 s time constant, so a burst does not spill):
//! `ū` is the utilisation the zone would have if it took everything. Then:
//! - local → spill when `h < spill_below_healthy` (to the floor: a full spill), or when
//!   `ū ≥ spill_at_utilization`, to `k = return_below_utilization / ū`: the zone keeps what it can carry at
//!   the return threshold and spills only the deficit (Envoy's zone-aware routing likewise spills a residual
//!   fraction, not everything);
//! - while spilling, `k` follows `return_below_utilization / ū` (steps under 0.02 ignored), or stays at the
//!   floor while `h < return_at_healthy`;
//! - spill → local when `h ≥ return_at_healthy` and `ū < return_below_utilization` (or never measured), that
//!   is when the zone can take all of its traffic back below the return threshold.
//!
//! Past its capacity a zone's readings measure its queue, not its demand, and the projection overstates the
//! demand: the split then sheds more than needed, the queue drains, the readings measure demand again and
//! `k` climbs back to what the zone can carry (the cap at 2 bounds the overshoot).
//!
//! The enter and exit thresholds differ (hysteresis), and a *mode* change (local ↔ spill) is kept at least
//! `min_dwell` (tokio time) before the next one; a change held back by the dwell is re-evaluated when the
//! dwell ends. Adjusting `k` while spilling is not a mode change: the smoothing paces it. One exception to
//! the dwell: when no local endpoint can take traffic at all, the client spills at once (waiting would fail
//! requests). With no local endpoint in the set, the client is always in spill mode; with no zone
//! configured, the policy is off. `lateral_client_zone_local_fraction` reports `k`.
//!
//! **Compared with Envoy's zone-aware routing** (`common_lb_config.zone_aware_lb_config`): Envoy routes all
//! traffic locally when the local zone's share of upstream hosts is at least its share of the (calling)
//! cluster's hosts, otherwise a residual fraction proportional to the deficit spills to zones with excess
//! capacity; below `min_cluster_size` or under the panic threshold it routes across all zones. It has no
//! hysteresis: a host-count change moves the split immediately. Lateral has no view of where the other
//! clients are, but it measures the local zone's load (ORCA) and the coordinator's weights already encode
//! capacity, so it sizes the residual from the measured utilisation, spills it by the global weights, and
//! adds hysteresis and a dwell between modes.
//!
//! Choose it when cross-zone hops cost latency or money and each zone is provisioned for its own clients;
//! leave it off when zones are not symmetric in clients and capacity (the global weights do better there).
//! Key-hashed requests ignore the zone: a key has one owner across all zones.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lateral_ops::prometheus::{Kind, TextWriter};
use tokio::time::Instant;

/// The thresholds of zone preference (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZonePolicy {
    /// Spill when fewer than this fraction of the local endpoints can take traffic (default 0.5).
    pub spill_below_healthy: f64,
    /// Return when at least this fraction can (default 0.75; at least `spill_below_healthy`).
    pub return_at_healthy: f64,
    /// Spill when the local zone's ORCA utilisation, averaged over time, reaches this (default 0.85).
    pub spill_at_utilization: f64,
    /// Return when, with all the traffic back, it would be below this (default 0.65; at most
    /// `spill_at_utilization`). While spilling, the zone keeps the fraction it can carry at this level.
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
    /// Part of the traffic (the [`ZoneState::keep`] fraction) stays local, the rest goes to the other zones.
    Spill,
}

/// What the policy task measured of the local zone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZoneSignals {
    /// Local endpoints in the set.
    pub local: usize,
    /// Of which can take traffic.
    pub healthy: usize,
    /// Mean ORCA utilisation of the local endpoints that reported, if any did, measured while the zone
    /// carried the [`ZoneState::keep`] fraction of this client's traffic.
    pub utilization: Option<f64>,
    /// The local endpoints' part of the global weights: the least fraction the zone keeps (a full spill).
    pub local_share: f64,
}

/// The mode, the local fraction and the hysteresis state. Pure: time comes in as `now`.
#[derive(Debug, Clone)]
pub struct ZoneState {
    policy: ZonePolicy,
    /// The fraction of traffic the local zone gets: 1 in local mode, `[local_share, 1)` while spilling.
    keep: f64,
    /// When the mode last changed (`None`: never, no dwell to respect).
    since: Option<Instant>,
    /// The utilisation the local zone would have with all the traffic, smoothed over time, and when it was
    /// last updated.
    utilization: Option<(f64, Instant)>,
}

/// Time constant of the utilisation average the thresholds compare against. ORCA utilisation arrives with
/// every response and is an instant in-flight count (the responding request included), so one burst would
/// otherwise cross the spill threshold; a zone spills on sustained load, not on a burst.
pub const UTILIZATION_TIME_CONSTANT: Duration = Duration::from_secs(2);

/// The smallest change of the local fraction worth republishing while spilling (finer steps are noise of
/// the utilisation signal).
pub const KEEP_STEP: f64 = 0.02;

/// Below this fraction the measured utilisation is not scaled up further (a nearly empty zone's readings
/// say little about full load).
const MIN_PROJECTION_KEEP: f64 = 0.05;

impl ZoneState {
    /// Starts in local mode.
    pub fn new(policy: ZonePolicy) -> Self {
        Self {
            policy,
            keep: 1.0,
            since: None,
            utilization: None,
        }
    }

    /// The current mode.
    pub fn mode(&self) -> ZoneMode {
        if self.keep >= 1.0 {
            ZoneMode::Local
        } else {
            ZoneMode::Spill
        }
    }

    /// The fraction of this client's traffic the local zone gets (1 in local mode).
    pub fn keep(&self) -> f64 {
        self.keep
    }

    /// The smoothed utilisation the local zone would have with all the traffic, once there is a reading.
    pub fn projected_utilization(&self) -> Option<f64> {
        self.utilization.map(|(u, _)| u)
    }

    /// Updates the mode and the local fraction from `signals` at `now`. Returns when to look again if a
    /// mode change is held back by the dwell (the caller re-evaluates then, with fresh signals).
    pub fn observe(&mut self, signals: ZoneSignals, now: Instant) -> Option<Instant> {
        let floor = if signals.local_share.is_finite() {
            signals.local_share.clamp(0.0, 1.0)
        } else {
            0.0
        };
        // The zone carried `keep` of the traffic when it reported: project to all of it. No report since
        // the last snapshot (a spilled zone gets few requests): the average so far stands.
        let full = match signals.utilization {
            Some(u) => {
                let projected = u / self.keep.max(MIN_PROJECTION_KEEP);
                Some(self.smooth_utilization(projected, now))
            }
            None => self.projected_utilization(),
        };
        let p = self.policy;
        let h = if signals.local == 0 {
            0.0
        } else {
            signals.healthy as f64 / signals.local as f64
        };
        // What the zone can carry at the return threshold, as a fraction of all the traffic.
        let carried = |u: f64| {
            if u > 0.0 {
                (p.return_below_utilization / u).min(1.0)
            } else {
                1.0
            }
        };
        let wanted = match self.mode() {
            ZoneMode::Local => {
                if h < p.spill_below_healthy {
                    floor
                } else {
                    match full {
                        Some(u) if u >= p.spill_at_utilization => carried(u).max(floor),
                        _ => 1.0,
                    }
                }
            }
            ZoneMode::Spill => {
                if signals.healthy == 0 || h < p.return_at_healthy {
                    floor
                } else {
                    full.map_or(1.0, carried).max(floor)
                }
            }
        };
        // A spill that keeps (nearly) everything is no spill: zones whose local share is the whole
        // weight have nowhere to spill to.
        let wanted = if wanted >= 1.0 - KEEP_STEP / 2.0 {
            1.0
        } else {
            wanted
        };
        let changes_mode = (wanted >= 1.0) != (self.keep >= 1.0);
        if !changes_mode {
            if (wanted - self.keep).abs() >= KEEP_STEP || wanted == floor || self.keep < floor {
                self.keep = wanted;
            }
            return None;
        }
        let dwell_end = self.since.map(|s| s + p.min_dwell);
        let urgent = wanted < 1.0 && signals.healthy == 0;
        match dwell_end {
            Some(end) if now < end && !urgent => {
                // Held back: a spill keeps at least the zone's share of the global weights.
                self.keep = self.keep.max(floor);
                Some(end)
            }
            _ => {
                self.keep = wanted;
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

/// Which endpoints are local and the fraction of traffic they get: how a published picker splits weights
/// between zones.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ZoneSplit {
    /// Per endpoint, in table order: in the client's zone.
    pub(crate) local: Vec<bool>,
    /// The local zone's fraction of the traffic.
    pub(crate) keep: f64,
}

impl ZoneSplit {
    /// Rescales `weights` (in table order) so that the local endpoints carry `keep` of the total and the
    /// others the rest, each group keeping its internal proportions. A group without weight cannot carry
    /// its part: the other group gets everything (nothing local to keep, or nowhere to spill).
    pub(crate) fn apply(&self, weights: &mut [f64]) {
        let (mut local, mut remote) = (0.0, 0.0);
        for (w, l) in weights.iter().zip(&self.local) {
            if *l {
                local += *w;
            } else {
                remote += *w;
            }
        }
        if local <= 0.0 || remote <= 0.0 {
            return;
        }
        let keep = self.keep.clamp(0.0, 1.0);
        for (w, l) in weights.iter_mut().zip(&self.local) {
            *w *= if *l {
                keep / local
            } else {
                (1.0 - keep) / remote
            };
        }
    }
}

/// The zone gauges.
#[derive(Debug)]
pub(crate) struct ZoneMetrics {
    enabled: AtomicBool,
    transitions: AtomicU64,
    /// The local fraction, as `f64` bits (spilling is `< 1`).
    keep_bits: AtomicU64,
}

impl Default for ZoneMetrics {
    fn default() -> Self {
        Self {
            enabled: AtomicBool::new(false),
            transitions: AtomicU64::new(0),
            keep_bits: AtomicU64::new(1.0f64.to_bits()),
        }
    }
}

impl ZoneMetrics {
    pub(crate) fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Records the state after an evaluation; a change of mode (local ↔ spill) counts as a transition.
    pub(crate) fn set(&self, state: &ZoneState) {
        let old = f64::from_bits(
            self.keep_bits
                .swap(state.keep().to_bits(), Ordering::Relaxed),
        );
        if (old < 1.0) != (state.mode() == ZoneMode::Spill) {
            self.transitions.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn spilling(&self) -> bool {
        self.local_fraction() < 1.0
    }

    pub(crate) fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    pub(crate) fn local_fraction(&self) -> f64 {
        f64::from_bits(self.keep_bits.load(Ordering::Relaxed))
    }

    /// Appends the zone series (only when zone preference is on).
    pub(crate) fn render(&self, w: &mut TextWriter, service: &str) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        for (name, kind, help, value) in [
            (
                "lateral_client_zone_spilling",
                Kind::Gauge,
                "1 while requests spill out of the local zone.",
                f64::from(u8::from(self.spilling())),
            ),
            (
                "lateral_client_zone_local_fraction",
                Kind::Gauge,
                "The fraction of requests the local zone gets (1 in local mode).",
                self.local_fraction(),
            ),
            (
                "lateral_client_zone_transitions_total",
                Kind::Counter,
                "Changes between local and spill mode.",
                self.transitions() as f64,
            ),
        ] {
            w.family(name, kind, help);
            w.sample(name, &[("service", service)], value);
        }
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
            local_share: 0.4,
        }
    }

    /// Feeds `u` (as measured under the state's current local fraction) every 100 ms for `secs`.
    fn hold(z: &mut ZoneState, now: &mut Instant, secs: u64, share: f64, u_full: f64) {
        for _ in 0..secs * 10 {
            *now += Duration::from_millis(100);
            let measured = u_full * z.keep();
            let s = ZoneSignals {
                local_share: share,
                ..signals(2, 2, Some(measured))
            };
            z.observe(s, *now);
        }
    }

    #[test]
    fn a_busy_zone_spills_only_its_deficit_and_follows_it() {
        let mut now = Instant::now();
        let mut z = ZoneState::new(ZonePolicy {
            min_dwell: Duration::from_secs(3),
            ..ZonePolicy::default()
        });
        // Below the spill threshold: local.
        hold(&mut z, &mut now, 10, 0.5, 0.8);
        assert_eq!(z.mode(), ZoneMode::Local);
        // The zone would run at 1.3 with all the traffic: it keeps 0.65 / 1.3 = 50%.
        hold(&mut z, &mut now, 20, 0.3, 1.3);
        assert_eq!(z.mode(), ZoneMode::Spill);
        assert!((z.keep() - 0.5).abs() < 0.03, "keep {}", z.keep());
        // The measured utilisation is scaled by the local fraction, so holding the same demand holds the
        // same fraction: no alternation between local and spill.
        let keep = z.keep();
        hold(&mut z, &mut now, 30, 0.3, 1.3);
        assert!((z.keep() - keep).abs() < 0.03);
        // Demand eases to 0.9 with all the traffic: the zone takes more back, still spilling.
        hold(&mut z, &mut now, 20, 0.3, 0.9);
        assert_eq!(z.mode(), ZoneMode::Spill);
        assert!((z.keep() - 0.65 / 0.9).abs() < 0.03, "keep {}", z.keep());
        // Never below the zone's share of the global weights.
        hold(&mut z, &mut now, 20, 0.6, 3.0);
        assert!((z.keep() - 0.6).abs() < 1e-9, "keep {}", z.keep());
        // Demand falls below the return threshold: back to local.
        hold(&mut z, &mut now, 20, 0.3, 0.5);
        assert_eq!(z.mode(), ZoneMode::Local);
        assert_eq!(z.keep(), 1.0);
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
        let keep = z.keep();
        assert!((keep - 0.65 / 0.95).abs() < 0.01, "keep {keep}");
        // Carrying `keep` of the traffic the zone reads 0.6: with all of it back it would be at 0.6 / keep.
        z.observe(signals(2, 2, Some(0.6)), at(20));
        assert_eq!(z.mode(), ZoneMode::Spill);
        // Reading 0.3 at that fraction: below 0.65 with all of it: return.
        z.observe(signals(2, 2, Some(0.3)), at(40));
        assert_eq!(z.mode(), ZoneMode::Local);
    }

    #[test]
    fn a_split_keeps_each_groups_proportions() {
        let split = ZoneSplit {
            local: vec![true, true, false, false],
            keep: 0.6,
        };
        let mut w = vec![0.1, 0.3, 0.2, 0.4];
        split.apply(&mut w);
        let expected = [0.15, 0.45, 0.4 / 3.0, 0.8 / 3.0];
        for (a, b) in w.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{w:?}");
        }
        // Local mode: nothing leaves the zone.
        let mut w = vec![0.1, 0.3, 0.2, 0.4];
        ZoneSplit {
            keep: 1.0,
            ..split.clone()
        }
        .apply(&mut w);
        assert_eq!(&w[2..], &[0.0, 0.0]);
        // Nothing local can take traffic: everything goes out, whatever the fraction.
        let mut w = vec![0.0, 0.0, 0.2, 0.4];
        ZoneSplit { keep: 1.0, ..split }.apply(&mut w);
        assert_eq!(w, vec![0.0, 0.0, 0.2, 0.4]);
    }

    proptest::proptest! {
        #[test]
        fn the_local_fraction_stays_between_the_share_and_one_and_modes_respect_the_dwell(
            steps in proptest::collection::vec(
                (
                    0usize..5,
                    0usize..5,
                    proptest::option::of(proptest::prop_oneof![
                        -1.0f64..30.0,
                        proptest::strategy::Just(f64::NAN),
                        proptest::strategy::Just(f64::INFINITY),
                    ]),
                    proptest::prop_oneof![0.0f64..=1.0, proptest::strategy::Just(f64::NAN)],
                    0u64..3_000,
                ),
                1..200,
            )
        ) {
            let dwell = Duration::from_secs(3);
            let mut z = ZoneState::new(ZonePolicy { min_dwell: dwell, ..ZonePolicy::default() });
            let mut now = Instant::now();
            let mut last_change: Option<Instant> = None;
            for (local, healthy, utilization, share, ms) in steps {
                now += Duration::from_millis(ms);
                let healthy = healthy.min(local);
                let before = z.mode();
                let signals = ZoneSignals { local, healthy, utilization, local_share: share };
                let recheck = z.observe(signals, now);
                let floor = if share.is_finite() { share } else { 0.0 };
                proptest::prop_assert!(z.keep().is_finite());
                proptest::prop_assert!(z.keep() <= 1.0 && z.keep() >= floor, "keep {} share {share}", z.keep());
                proptest::prop_assert!(recheck.is_none_or(|at| at > now));
                if z.mode() != before {
                    let urgent = healthy == 0 && z.mode() == ZoneMode::Spill;
                    if let Some(at) = last_change {
                        proptest::prop_assert!(urgent || now >= at + dwell);
                    }
                    last_change = Some(now);
                }
            }
        }

        #[test]
        fn a_split_gives_the_local_group_its_fraction_and_keeps_proportions(
            weights in proptest::collection::vec((0.0f64..10.0, proptest::bool::ANY), 1..12),
            keep in 0.0f64..=1.0,
        ) {
            let split = ZoneSplit { local: weights.iter().map(|(_, l)| *l).collect(), keep };
            let mut w: Vec<f64> = weights.iter().map(|(w, _)| *w).collect();
            split.apply(&mut w);
            let sum = |w: &[f64], local: bool| -> f64 {
                w.iter().zip(&split.local).filter(|(_, l)| **l == local).map(|(w, _)| w).sum()
            };
            let before: Vec<f64> = weights.iter().map(|(w, _)| *w).collect();
            let (local, remote) = (sum(&before, true), sum(&before, false));
            proptest::prop_assert!(w.iter().all(|x| x.is_finite() && *x >= 0.0));
            if local > 0.0 && remote > 0.0 {
                let total = sum(&w, true) + sum(&w, false);
                proptest::prop_assert!((sum(&w, true) / total - keep).abs() < 1e-9);
                for (i, (b, l)) in weights.iter().enumerate() {
                    let group = if *l { local } else { remote };
                    let part = if *l { keep } else { 1.0 - keep };
                    proptest::prop_assert!((w[i] - b / group * part).abs() < 1e-9);
                }
            } else {
                proptest::prop_assert_eq!(w, before);
            }
        }
    }

    #[test]
    fn hysteresis_and_dwell() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut z = ZoneState::new(ZonePolicy::default());
        // Readings as the zone measures them: the load it would carry with everything, times its fraction.
        let busy = |z: &ZoneState, full: f64| signals(4, 4, Some(full * z.keep()));
        assert_eq!(z.observe(busy(&z, 0.5), t0), None);
        assert_eq!(z.mode(), ZoneMode::Local);
        // Busy for a sustained while: spill (first change, no dwell yet).
        z.observe(busy(&z, 0.9), at(10));
        assert_eq!(z.mode(), ZoneMode::Spill);
        // Between the thresholds: stay.
        z.observe(busy(&z, 0.7), at(30));
        assert_eq!(z.mode(), ZoneMode::Spill);
        // Calmer for a second: the average falls below 0.65 and the dwell since t0 + 10 s is over: return.
        z.observe(busy(&z, 0.5), at(31));
        assert_eq!(z.mode(), ZoneMode::Local);
        // Busy again soon after: held back until the dwell (10 s from t0 + 31 s) ends.
        let again = z.observe(busy(&z, 0.95), at(40));
        assert_eq!(again, Some(at(41)));
        assert_eq!(z.mode(), ZoneMode::Local);
        // Unless nothing local can take traffic.
        z.observe(signals(4, 0, None), at(40));
        assert_eq!(z.mode(), ZoneMode::Spill);
        assert_eq!(z.keep(), 0.4, "a full spill: the global weights");
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
