//! The policy side: turns weight snapshots into published pickers.
//!
//! One task per [`Balancer`](super::Balancer) owns the endpoint table with `&mut self`, handles events
//! (a new snapshot from the feed, the staleness deadline, an ORCA report) and publishes an immutable
//! [`PickerSnapshot`] with `arc-swap`, like tonic's `grpc/src/client/load_balancing` policies publish an `Arc`
//! picker. Requests never wait for this task.
//!
//! Snapshot rules:
//! - A snapshot is authoritative for membership: endpoints it lists but the builder did not configure are
//!   dialed at the snapshot's address (logged); configured endpoints it does not list are removed (in-flight
//!   calls on them finish: they hold the endpoint).
//! - A snapshot whose version is not above the one in use, from the same coordinator epoch, is a keep-alive:
//!   it refreshes the staleness deadline but changes nothing else. A snapshot from another epoch (the
//!   coordinator restarted, or the client now talks to another one) is taken whatever its version, since
//!   versions start again with every coordinator process. A snapshot for another service is ignored (logged).
//! - EJECTED, TRIPPED and DRAINING endpoints, and those at zero weight, get nothing. Canaries (label
//!   `track=canary`), and RAMPING and DEGRADED endpoints, have pinned shares: the pick takes them when the
//!   schedule names them and never chooses them over another candidate ([`super::picker`]).
//! - ORCA reports never change the weights; they feed the pick's queue estimate directly, and, with zone
//!   preference on, the zone's utilization (the picker is then rebuilt at most every `orca_refresh`).
//! - Staleness: when no snapshot (or keep-alive) arrives within 2 × the snapshot's `heartbeat_interval`, the
//!   last good weights stay in use, the stale flag is set, one warning is logged and
//!   `lateral_client_stale_events_total` is bumped; the next snapshot clears it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use lateral_proto::coordinator::{EndpointState, WeightSnapshot};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::endpoints::{EndpointConfig, EndpointHandle};
use super::hashing::TableCache;
use super::metrics::ClientMetrics;
use super::orca::OrcaReading;
use super::picker::{PickerSnapshot, StaticRoute, StrideScheduler};
use super::zones::{ZonePolicy, ZoneSignals, ZoneSplit, ZoneState};
use crate::Error;

/// The receiving end of a weight feed: the latest snapshot, `None` until there is one.
pub type WeightsFeed = watch::Receiver<Option<Arc<WeightSnapshot>>>;

/// The heartbeat interval assumed when a snapshot does not carry one.
const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(500);
/// The longest `heartbeat_interval` a snapshot is taken at its word for (staleness after twice this).
const MAX_HEARTBEAT: Duration = Duration::from_secs(60);

/// What the pick path and the policy task share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) service: String,
    pub(crate) picker: ArcSwap<PickerSnapshot>,
    pub(crate) metrics: Arc<ClientMetrics>,
    /// Whether zone preference is on (the only reader of ORCA utilization, through a rebuilt picker).
    pub(crate) zones_on: bool,
    /// Set by a response carrying an ORCA utilization while zones are on; the policy task republishes soon
    /// after.
    pub(crate) orca_dirty: AtomicBool,
    pub(crate) orca_notify: Notify,
    /// The zero of the call path's microsecond clock ([`Shared::now_us`]).
    pub(crate) clock_base: Instant,
}

impl Shared {
    /// Microseconds since the clock base: the one clock reading of a call, passed to the pick and the live
    /// load. Follows tokio's (pausable) clock.
    #[inline]
    pub(crate) fn now_us(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.clock_base)
                .as_micros(),
        )
        .unwrap_or(u64::MAX)
        .max(1)
    }

    /// Records an ORCA report read from a response of `endpoint` at `now_us`.
    pub(crate) fn on_orca(&self, endpoint: &EndpointHandle, reading: OrcaReading, now_us: u64) {
        if reading.is_empty() {
            return;
        }
        self.metrics.orca_reports.fetch_add(1, Ordering::Relaxed);
        if let Some(slots) = reading.slots {
            endpoint.live.on_slots(slots);
        }
        if let Some(in_flight) = reading.in_flight {
            endpoint
                .live
                .on_server_in_flight(in_flight, endpoint.in_flight(), now_us);
        }
        if let Some(utilization) = reading.utilization
            && self.zones_on
        {
            endpoint.orca.record(utilization);
            if !self.orca_dirty.swap(true, Ordering::AcqRel) {
                self.orca_notify.notify_one();
            }
        }
    }
}

#[derive(Debug)]
struct Entry {
    handle: Arc<EndpointHandle>,
    /// The coordinator's (or the static) weight, before ORCA.
    weight: f64,
    state: EndpointState,
    /// The endpoint's zone (from the snapshot, else from the builder); empty when unknown.
    zone: String,
    /// A canary (label `track=canary`): its share is pinned.
    canary: bool,
}

/// Whether `labels` mark a canary.
fn is_canary<'a>(mut labels: impl Iterator<Item = (&'a String, &'a String)>) -> bool {
    labels.any(|(k, v)| k == "track" && v == "canary")
}

/// The routing variants a policy precomputes for the pick path.
#[derive(Debug, Default)]
pub(crate) struct RoutingOptions {
    /// Key hashing on, with this table size.
    pub(crate) hash_table_size: Option<usize>,
    /// A dynamic/static split on: publish the static group's routing too.
    pub(crate) split: bool,
    /// Zone preference on: this client's zone and the thresholds.
    pub(crate) zone: Option<(String, ZonePolicy)>,
}

/// The endpoint table and the rules that publish pickers from it.
#[derive(Debug)]
pub(crate) struct Policy {
    shared: Arc<Shared>,
    entries: Vec<Entry>,
    /// The epoch and version of the snapshot in use.
    last_version: Option<(u64, u64)>,
    stale_deadline: Option<Instant>,
    rng: SmallRng,
    choice_count: usize,
    orca_refresh: Duration,
    routing: RoutingOptions,
    /// The configured static weights by id (empty: equal), for the static group of a split.
    static_weights: HashMap<String, f64>,
    /// Zones given to the builder, by id (a snapshot that names no zone keeps these).
    configured_zones: HashMap<String, String>,
    hash_cache: TableCache,
    static_hash_cache: TableCache,
    zone_state: Option<ZoneState>,
    /// When a zone change held back by the dwell is due for another look.
    zone_recheck: Option<Instant>,
}

impl Policy {
    /// The table from static configuration: `weights` by id (all configured endpoints or none: equal).
    pub(crate) fn new(
        shared: Arc<Shared>,
        configured: &[EndpointConfig],
        weights: &HashMap<String, f64>,
        seed: Option<u64>,
        choice_count: usize,
        orca_refresh: Duration,
        routing: RoutingOptions,
    ) -> Result<Self, Error> {
        let rng = match seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_rng(&mut rand::rng()),
        };
        let mut entries = Vec::with_capacity(configured.len());
        for config in configured {
            let weight = if weights.is_empty() {
                1.0
            } else {
                weights.get(&config.id).copied().unwrap_or(0.0)
            };
            let handle = EndpointHandle::new(
                &config.id,
                &config.address,
                shared.metrics.picks_counter(&config.id),
            )?;
            entries.push(Entry {
                handle: Arc::new(handle),
                weight,
                state: EndpointState::Active,
                zone: config.zone.clone(),
                canary: is_canary(config.labels.iter()),
            });
        }
        if routing.split {
            shared.metrics.split.enable();
        }
        if routing.zone.is_some() {
            shared.metrics.zones.enable();
        }
        let zone_state = routing.zone.as_ref().map(|(_, p)| ZoneState::new(*p));
        let mut policy = Self {
            shared,
            entries,
            last_version: None,
            stale_deadline: None,
            rng,
            choice_count,
            orca_refresh,
            routing,
            static_weights: weights.clone(),
            configured_zones: configured
                .iter()
                .map(|c| (c.id.clone(), c.zone.clone()))
                .collect(),
            hash_cache: TableCache::default(),
            static_hash_cache: TableCache::default(),
            zone_state,
            zone_recheck: None,
        };
        policy.publish();
        Ok(policy)
    }

    /// Applies a snapshot (see the module docs). `now` is the receive time.
    pub(crate) fn apply(&mut self, snapshot: &WeightSnapshot, now: Instant) {
        let service = &self.shared.service;
        if !snapshot.service.is_empty() && snapshot.service != *service {
            tracing::warn!(%service, got = %snapshot.service, "ignoring a weight snapshot for another service");
            return;
        }
        let heartbeat = snapshot
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_HEARTBEAT);
        if heartbeat > MAX_HEARTBEAT {
            tracing::warn!(%service, ?heartbeat, max = ?MAX_HEARTBEAT, "a weight snapshot's heartbeat_interval is implausibly long; staleness is judged on the maximum");
        }
        // Bounded, so that a coordinator that sends nonsense cannot overflow the deadline (it panicked).
        self.stale_deadline = Some(now + 2 * heartbeat.min(MAX_HEARTBEAT));
        if self.shared.metrics.stale.swap(false, Ordering::Relaxed) {
            tracing::info!(%service, version = snapshot.version, "weight snapshots resumed; weights fresh again");
        }
        match self.last_version {
            Some((epoch, v)) if epoch == snapshot.epoch && snapshot.version <= v => return,
            Some((epoch, _)) if epoch != snapshot.epoch => {
                tracing::info!(%service, version = snapshot.version, "weight snapshots from a new coordinator epoch (a restart or another coordinator); taking its weights");
            }
            _ => {}
        }
        self.last_version = Some((snapshot.epoch, snapshot.version));

        let mut old: HashMap<String, Arc<EndpointHandle>> = self
            .entries
            .drain(..)
            .map(|e| (e.handle.id().to_string(), e.handle))
            .collect();
        let mut entries = Vec::with_capacity(snapshot.endpoints.len());
        for ew in &snapshot.endpoints {
            if entries.iter().any(|e: &Entry| e.handle.id() == ew.id) {
                tracing::warn!(%service, endpoint = %ew.id, "duplicate endpoint id in a weight snapshot; first kept");
                continue;
            }
            let address = lateral_proto::grpc_uri(&ew.address);
            let handle = match old.remove(&ew.id) {
                Some(h) if ew.address.is_empty() || h.address() == address => h,
                previous => {
                    if ew.address.is_empty() {
                        tracing::warn!(%service, endpoint = %ew.id, "snapshot endpoint without an address; skipped");
                        continue;
                    }
                    match EndpointHandle::new(
                        &ew.id,
                        &ew.address,
                        self.shared.metrics.picks_counter(&ew.id),
                    ) {
                        Ok(h) => {
                            if previous.is_some() {
                                tracing::info!(%service, endpoint = %ew.id, %address, "endpoint moved; dialing its new address");
                            } else {
                                tracing::info!(%service, endpoint = %ew.id, %address, "endpoint added by the coordinator; dialing the snapshot's address");
                            }
                            Arc::new(h)
                        }
                        Err(e) => {
                            tracing::warn!(%service, endpoint = %ew.id, error = %e, "cannot use a snapshot endpoint");
                            continue;
                        }
                    }
                }
            };
            let weight = if ew.weight.is_finite() && ew.weight > 0.0 {
                ew.weight
            } else {
                f64::from(ew.load_balancing_weight) / 1e6
            };
            let state = EndpointState::try_from(ew.state).unwrap_or(EndpointState::Unspecified);
            let zone = if ew.zone.is_empty() {
                self.configured_zones
                    .get(&ew.id)
                    .cloned()
                    .unwrap_or_default()
            } else {
                ew.zone.clone()
            };
            entries.push(Entry {
                handle,
                weight,
                state,
                zone,
                canary: is_canary(ew.labels.iter()),
            });
        }
        for id in old.keys() {
            tracing::info!(%service, endpoint = %id, "endpoint removed by the coordinator; in-flight calls finish");
        }
        self.entries = entries;
        for e in &self.entries {
            e.handle.orca.reset();
        }
        self.shared.orca_dirty.store(false, Ordering::Relaxed);
        self.shared
            .metrics
            .snapshot_version
            .store(snapshot.version, Ordering::Relaxed);
        self.shared
            .metrics
            .snapshots
            .fetch_add(1, Ordering::Relaxed);
        self.publish();
    }

    /// Marks the weights stale if the deadline passed (once per stale period).
    pub(crate) fn check_stale(&mut self, now: Instant) {
        if self.stale_deadline.is_some_and(|d| now >= d)
            && !self.shared.metrics.stale.swap(true, Ordering::Relaxed)
        {
            self.shared
                .metrics
                .stale_events
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                service = %self.shared.service,
                version = self.last_version.map_or(0, |(_, v)| v),
                "no weight snapshot within two heartbeat intervals: keeping the last good weights (stale)"
            );
        }
    }

    fn excluded(state: EndpointState) -> Option<&'static str> {
        match state {
            EndpointState::Ejected => Some("ejected"),
            EndpointState::Tripped => Some("tripped"),
            EndpointState::Draining => Some("draining"),
            _ => None,
        }
    }

    /// Builds and publishes a picker from the table, with the routing variants' precomputed parts (hash
    /// tables, the static group, the zone mode from the ORCA utilizations).
    pub(crate) fn publish(&mut self) {
        // The coordinator's weights with the exclusions: what the hash tables follow.
        let base: Vec<f64> = self
            .entries
            .iter()
            .map(|e| {
                if Self::excluded(e.state).is_some() || !e.weight.is_finite() {
                    0.0
                } else {
                    e.weight.max(0.0)
                }
            })
            .collect();
        let utilizations: Vec<Option<f64>> = self
            .entries
            .iter()
            .map(|e| e.handle.orca.utilization())
            .collect();
        let mut weights = base.clone();
        let zones = self.zone_split(&base, &utilizations);
        if let Some(zones) = &zones {
            zones.apply(&mut weights);
        }
        let hash = self.routing.hash_table_size.and_then(|size| {
            let inputs = self.table_inputs(&base);
            self.hash_cache.get(inputs, size)
        });
        let static_group = self
            .routing
            .split
            .then(|| self.static_route(zones.as_ref()));
        let scheduler = StrideScheduler::new(&weights, self.rng.random());
        let sum: f64 = weights.iter().sum();
        let shares = weights
            .iter()
            .map(|w| if sum > 0.0 { w / sum } else { 0.0 })
            .collect();
        let why_empty = if scheduler.is_some() {
            String::new()
        } else {
            self.why_empty()
        };
        let choosable = self
            .entries
            .iter()
            .map(|e| {
                !e.canary && matches!(e.state, EndpointState::Active | EndpointState::Unspecified)
            })
            .collect();
        let locality = match &zones {
            Some(zones) => zones.local.iter().map(|&l| u32::from(l)).collect(),
            None => vec![0; self.entries.len()],
        };
        let picker = PickerSnapshot {
            endpoints: self.entries.iter().map(|e| Arc::clone(&e.handle)).collect(),
            shares,
            scheduler,
            why_empty,
            choosable,
            locality,
            choice_count: self.choice_count,
            draws: AtomicU64::new(self.rng.random()),
            hash,
            static_group,
        };
        self.shared.picker.store(Arc::new(picker));
    }

    /// `(id, weight)` in table order, the input of a hash table.
    fn table_inputs(&self, weights: &[f64]) -> Vec<(Arc<str>, f64)> {
        self.entries
            .iter()
            .zip(weights)
            .map(|(e, w)| (Arc::from(e.handle.id()), *w))
            .collect()
    }

    /// The static group of a split: configured static weights (an endpoint the builder did not weigh gets
    /// their mean; equal weights when none were given), the same exclusions, the same zone split.
    fn static_route(&mut self, zones: Option<&ZoneSplit>) -> StaticRoute {
        let mean = if self.static_weights.is_empty() {
            1.0
        } else {
            self.static_weights.values().sum::<f64>() / self.static_weights.len() as f64
        };
        let weights: Vec<f64> = self
            .entries
            .iter()
            .map(|e| {
                if Self::excluded(e.state).is_some() {
                    0.0
                } else if self.static_weights.is_empty() {
                    1.0
                } else {
                    self.static_weights
                        .get(e.handle.id())
                        .copied()
                        .unwrap_or(mean)
                }
            })
            .collect();
        let hash = self.routing.hash_table_size.and_then(|size| {
            let inputs = self.table_inputs(&weights);
            self.static_hash_cache.get(inputs, size)
        });
        let mut split = weights;
        if let Some(zones) = zones {
            zones.apply(&mut split);
        }
        StaticRoute {
            scheduler: StrideScheduler::new(&split, self.rng.random()),
            hash,
        }
    }

    /// Evaluates zone preference (see [`zones`](super::zones)): which endpoints are local and the fraction
    /// of traffic they get; `None` with zone preference off.
    fn zone_split(&mut self, base: &[f64], utilizations: &[Option<f64>]) -> Option<ZoneSplit> {
        let (zone, _) = self.routing.zone.as_ref()?;
        let local: Vec<bool> = self.entries.iter().map(|e| e.zone == *zone).collect();
        let total: f64 = base.iter().sum();
        let local_weight: f64 = base
            .iter()
            .zip(&local)
            .filter(|(_, l)| **l)
            .map(|(w, _)| w)
            .sum();
        let mut signals = ZoneSignals {
            local: 0,
            healthy: 0,
            utilization: None,
            local_share: if total > 0.0 {
                local_weight / total
            } else {
                1.0
            },
        };
        // The zone's utilisation: the reports weighted by the coordinator's weights (which follow capacity),
        // each capped at 2 (a queue of twice the capacity already says "overloaded"; uncapped, one deep queue
        // reading 20 would make the projection in `ZoneState` spill everything; capped at 1, an overload
        // would take seconds to show through the time average).
        let (mut sum, mut weight) = (0.0, 0.0);
        for (i, e) in self.entries.iter().enumerate() {
            if !local[i] {
                continue;
            }
            signals.local += 1;
            let serving = matches!(
                e.state,
                EndpointState::Active | EndpointState::Ramping | EndpointState::Unspecified
            );
            if serving && base[i] > 0.0 {
                signals.healthy += 1;
            }
            if let Some(u) = utilizations[i] {
                sum += base[i] * u.clamp(0.0, 2.0);
                weight += base[i];
            }
        }
        if weight > 0.0 {
            signals.utilization = Some(sum / weight);
        }
        let state = self.zone_state.as_mut()?;
        let (before, keep_before) = (state.mode(), state.keep());
        self.zone_recheck = state.observe(signals, Instant::now());
        let mode = state.mode();
        let keep = state.keep();
        if keep != keep_before {
            tracing::debug!(
                service = %self.shared.service,
                %zone,
                healthy = signals.healthy,
                utilization = signals.utilization.unwrap_or(f64::NAN),
                projected = state.projected_utilization().unwrap_or(f64::NAN),
                local_fraction = keep,
                "zone local fraction"
            );
        }
        if mode != before {
            tracing::info!(
                service = %self.shared.service,
                %zone,
                local = signals.local,
                healthy = signals.healthy,
                utilization = signals.utilization.unwrap_or(f64::NAN),
                local_fraction = keep,
                ?mode,
                "zone preference changed mode"
            );
        }
        self.shared.metrics.zones.set(state);
        Some(ZoneSplit { local, keep })
    }

    fn why_empty(&self) -> String {
        let service = &self.shared.service;
        if self.entries.is_empty() {
            return match self.last_version {
                Some((_, v)) => format!(
                    "the latest weight snapshot (version {v}) lists no endpoints of `{service}`"
                ),
                None => format!("no endpoints of `{service}` are configured"),
            };
        }
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for e in &self.entries {
            let why = Self::excluded(e.state).unwrap_or("at zero weight");
            match counts.iter_mut().find(|(w, _)| *w == why) {
                Some((_, n)) => *n += 1,
                None => counts.push((why, 1)),
            }
        }
        let kinds: Vec<&str> = counts.iter().map(|(w, _)| *w).collect();
        let detail: Vec<String> = counts.iter().map(|(w, n)| format!("{n} {w}")).collect();
        format!(
            "all {} endpoints of `{service}` are {} ({})",
            self.entries.len(),
            kinds.join(" or "),
            detail.join(", ")
        )
    }

    /// Runs the policy until `cancel` fires: applies snapshots from `feed`, watches staleness, republishes
    /// after ORCA reports (at most every `orca_refresh`).
    pub(crate) async fn run(mut self, feed: Option<WeightsFeed>, cancel: CancellationToken) {
        let mut feed = feed;
        if let Some(rx) = feed.as_mut() {
            let current = rx.borrow_and_update().clone();
            if let Some(snapshot) = current {
                self.apply(&snapshot, Instant::now());
            }
        }
        let far = || Instant::now() + Duration::from_secs(86_400 * 365);
        let mut rebuild_at: Option<Instant> = None;
        loop {
            let stale_at = match self.stale_deadline {
                Some(d) if !self.shared.metrics.stale() => Some(d),
                _ => None,
            };
            let changed = async {
                match feed.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                open = changed => {
                    if open {
                        let current = feed.as_mut().and_then(|rx| rx.borrow_and_update().clone());
                        if let Some(snapshot) = current {
                            self.apply(&snapshot, Instant::now());
                        }
                    } else {
                        tracing::info!(service = %self.shared.service, "weight feed closed; keeping the last weights");
                        feed = None;
                    }
                }
                _ = sleep_until(stale_at.unwrap_or_else(far)), if stale_at.is_some() => {
                    self.check_stale(Instant::now());
                }
                _ = self.shared.orca_notify.notified(), if rebuild_at.is_none() => {
                    rebuild_at = Some(Instant::now() + self.orca_refresh);
                }
                _ = sleep_until(self.zone_recheck.unwrap_or_else(far)), if self.zone_recheck.is_some() => {
                    self.zone_recheck = None;
                    self.publish();
                }
                _ = sleep_until(rebuild_at.unwrap_or_else(far)), if rebuild_at.is_some() => {
                    rebuild_at = None;
                    if self.shared.orca_dirty.swap(false, Ordering::AcqRel) {
                        self.publish();
                    }
                }
            }
        }
    }
}
