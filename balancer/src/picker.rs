//! The pick path: a deterministic weighted scheduler over an immutable snapshot.
//!
//! The scheduler is gRPC's static stride scheduler from gRFC A58 (`weighted_round_robin`,
//! grpc-go `balancer/weightedroundrobin/scheduler.go`): weights are scaled to integers with the largest at
//! [`MAX_WEIGHT`]; a shared atomic sequence counter is split into `(generation, index)`, and endpoint `index`
//! is taken in a generation when `(weight * generation + index * MAX_WEIGHT / 2) % MAX_WEIGHT` falls in the
//! top `weight` values. Over `MAX_WEIGHT` generations every endpoint is taken (up to the integer scaling)
//! exactly `weight` times, so weights are honoured over a window, not just on average, and without the skew
//! that weighted power-of-two-choices introduces. A pick is lock-free (one `fetch_add` per probe) and
//! allocation-free; the expected number of probes is `n * max_weight / sum_weights`.
//!
//! Unlike A58, zero-weight endpoints are not given the mean weight: they are left out of the scheduler, so
//! they get nothing.
//!
//! [`PickerSnapshot`] makes the pick two-level. The scheduler's pick is the first candidate; when it may be
//! chosen against (an active, non-canary endpoint), `choice_count − 1` more are drawn at random by weight
//! ([`StrideScheduler::draw`], redrawn when it names the scheduled one again) and the one with the shortest
//! expected latency wins. With `c` slots, a service time `s` and `q` requests in flight, a new request
//! waits only when every slot is busy: its expected latency is `s · max(1, (q + 1) / c)`. The client knows
//! the share (the coordinator keeps it at the capacity share, `∝ c / s`), `q` (the live queue estimate of
//! [`super::live_load`]: its own in-flight requests plus the other clients' from the endpoint's last ORCA
//! report, aged) and `c` (the agent's `named_metrics["declared_capacity"]`), so the comparison is
//! `max(c, q + 1) / share`. Without a declared capacity `c` counts as 1 and this is plain "shortest
//! expected delay" `(q + 1) / share`; with it, an idle slow path is no longer mistaken for a fast one (SED
//! prices an idle 4-slot 40 ms path like a 10 ms one). In the queueing model of the bench's scenarios
//! (`../shared/tools/queue_sim.py` extended with this rule) it cuts p99 by 9–18% against SED over every
//! backend, and two weight-drawn candidates come within 1–7% of comparing all of them. On top of the
//! weights rather than instead of them:
//! - the weights still decide who is eligible (zero weight, ejected, tripped, draining: never a candidate);
//! - an endpoint whose share is pinned — a canary (its floor and allowance), one ramping back in, one degraded
//!   (never raised) — is taken when the schedule names it and never drawn as an alternative, so it gets
//!   exactly its scheduled share;
//! - with zone preference on, the alternatives must be in the scheduled endpoint's zone, so the choice never
//!   adds cross-zone traffic.
//!
//! The choice moves traffic toward the path whose queue is shorter for its capacity, and, between idle paths,
//! toward the one with more capacity per slot of queue (the faster one): the achieved shares lean toward the
//! fast paths, as full shortest-expected-delay's do, which is what keeps the tail down (a slow path's own
//! service time is a long tail). The scheduled candidate wins ties, so equal weights on equal queues are
//! exactly round robin, and `choice_count(1)` follows the coordinator's schedule exactly. Endpoints the client has set aside as unreachable ([`super::outlier`]) or that are stalled
//! (requests outstanding and nothing answered, [`super::live_load`]) are passed over, within [`MAX_PROBES`]
//! looks. The whole pick is lock-free and allocation-free: two or three `fetch_add`s and a few relaxed loads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::endpoints::EndpointHandle;
use super::hashing::MaglevTable;
use super::split::Group;

/// The largest scaled integer weight (gRFC A58's `kMaxWeight`).
pub const MAX_WEIGHT: u64 = u16::MAX as u64;

/// How many scheduled endpoints one pick may look at in all, passing over locally ejected and stalled ones;
/// the last one looked at is used whatever its state.
pub const MAX_PROBES: usize = 8;

/// How many random draws [`StrideScheduler::draw`] tries before it falls back to the schedule.
const MAX_DRAWS: usize = 64;

/// How many times a pick redraws an alternative that came out equal to the scheduled candidate.
const MAX_REDRAWS: usize = 8;

/// The default number of candidates per pick (the scheduled one and one drawn by weight).
pub const DEFAULT_CHOICE_COUNT: usize = 2;

/// SplitMix64: a full-period mixer of a counter into well-spread random bits (Steele et al., 2014).
#[inline]
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A lock-free, allocation-free weighted scheduler (gRFC A58 static stride scheduling).
#[derive(Debug)]
pub struct StrideScheduler {
    /// Scaled integer weights, each in `1..=MAX_WEIGHT`.
    weights: Box<[u16]>,
    /// True when every weight is equal: plain round robin, one probe per pick.
    round_robin: bool,
    sequence: AtomicU64,
}

impl StrideScheduler {
    /// Builds a scheduler over `weights`; entries that are zero, negative or not finite are never picked
    /// (their index is skipped, not renumbered: [`pick`](Self::pick) returns indices into `weights`).
    ///
    /// Returns `None` when no weight is positive. `start` seeds the sequence counter (A58 starts it at a
    /// random value so that clients do not move in lockstep).
    pub fn new(weights: &[f64], start: u64) -> Option<Self> {
        let max = weights
            .iter()
            .copied()
            .filter(|w| w.is_finite())
            .fold(0.0_f64, f64::max);
        if max <= 0.0 {
            return None;
        }
        let scale = MAX_WEIGHT as f64 / max;
        let scaled: Box<[u16]> = weights
            .iter()
            .map(|&w| {
                if w.is_finite() && w > 0.0 {
                    // In 1..=MAX_WEIGHT: a positive weight never rounds to nothing.
                    (w * scale).round().clamp(1.0, MAX_WEIGHT as f64) as u16
                } else {
                    0
                }
            })
            .collect();
        let first = scaled[0];
        let round_robin = scaled.iter().all(|&w| w == first);
        Some(Self {
            weights: scaled,
            round_robin,
            sequence: AtomicU64::new(start),
        })
    }

    /// The number of slots (including never-picked zero-weight ones).
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Always false: a scheduler has at least one positive weight.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The scaled integer weights (for tests and diagnostics).
    pub fn scaled_weights(&self) -> &[u16] {
        &self.weights
    }

    /// Whether sequence number `sequence` selects an endpoint, and which. Pure: the deterministic core of
    /// [`pick`](Self::pick).
    #[inline]
    pub fn select(&self, sequence: u64) -> Option<usize> {
        let n = self.weights.len() as u64;
        let index = sequence % n;
        let weight = u64::from(self.weights[index as usize]);
        if self.round_robin {
            return Some(index as usize);
        }
        let generation = sequence / n;
        let offset = index * (MAX_WEIGHT / 2);
        let position = (weight.wrapping_mul(generation).wrapping_add(offset)) % MAX_WEIGHT;
        (position >= MAX_WEIGHT - weight).then_some(index as usize)
    }

    /// Draws an endpoint index at random in proportion to the weights, from the random word `seed` (a
    /// counter is enough: it is mixed). Rejection sampling: an index uniformly, kept with probability
    /// `weight / MAX_WEIGHT`; after [`MAX_DRAWS`] rejections it falls back to [`pick`](Self::pick).
    #[inline]
    pub fn draw(&self, seed: u64) -> usize {
        let n = self.weights.len() as u64;
        let mut state = seed;
        for _ in 0..MAX_DRAWS {
            let bits = splitmix64(state);
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let index = (bits >> 32) % n;
            if self.round_robin {
                return index as usize;
            }
            let weight = u64::from(self.weights[index as usize]);
            if (bits & 0xFFFF_FFFF) % MAX_WEIGHT < weight {
                return index as usize;
            }
        }
        self.pick()
    }

    /// Picks the next endpoint index. Lock-free and allocation-free.
    #[inline]
    pub fn pick(&self) -> usize {
        loop {
            let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
            if let Some(index) = self.select(sequence) {
                return index;
            }
        }
    }
}

/// An immutable view the pick path reads: the endpoints that may take traffic, their scheduler, and why
/// there are none when there are none. Published with `arc-swap`; never mutated after publication (apart
/// from the scheduler's counters and the endpoints' own counters).
#[derive(Debug)]
pub(crate) struct PickerSnapshot {
    /// Endpoints in scheduler order (zero-weight ones included but never scheduled).
    pub(crate) endpoints: Vec<Arc<EndpointHandle>>,
    /// Each endpoint's share of the effective weights, in [0, 1].
    pub(crate) shares: Vec<f64>,
    pub(crate) scheduler: Option<StrideScheduler>,
    /// Why no endpoint can be picked (only meaningful when `scheduler` is `None`).
    pub(crate) why_empty: String,
    /// Per endpoint: whether the pick may choose it over the scheduled one, or the scheduled one over it
    /// (false for pinned shares: canary, ramping, degraded; see the module docs).
    pub(crate) choosable: Vec<bool>,
    /// Per endpoint: its locality group; alternatives must share the scheduled endpoint's (all 0 without
    /// zone preference).
    pub(crate) locality: Vec<u32>,
    /// Candidates per pick: 1 follows the schedule alone.
    pub(crate) choice_count: usize,
    /// The counter the random draws are mixed from (seeded per snapshot).
    pub(crate) draws: AtomicU64,
    /// The key-hash table over `endpoints` (coordinator weights), when key hashing is on.
    pub(crate) hash: Option<Arc<MaglevTable>>,
    /// The static-weight group's routing, when a dynamic/static split is on.
    pub(crate) static_group: Option<StaticRoute>,
}

/// How the static group of a split routes: static weights over the same endpoints.
#[derive(Debug)]
pub(crate) struct StaticRoute {
    pub(crate) scheduler: Option<StrideScheduler>,
    /// The key-hash table on static weights, when key hashing is on.
    pub(crate) hash: Option<Arc<MaglevTable>>,
}

impl PickerSnapshot {
    /// A snapshot with nothing to pick (before the first publication).
    pub(crate) fn empty() -> Self {
        Self {
            endpoints: Vec::new(),
            shares: Vec::new(),
            scheduler: None,
            why_empty: String::new(),
            choosable: Vec::new(),
            locality: Vec::new(),
            choice_count: 1,
            draws: AtomicU64::new(0),
            hash: None,
            static_group: None,
        }
    }

    /// Whether endpoint `i` can take a request now: not set aside locally (nor on probation with one of
    /// ours outstanding), not stalled.
    #[inline]
    fn usable(&self, i: usize, now_us: u64) -> bool {
        let endpoint = &self.endpoints[i];
        let in_flight = endpoint.in_flight();
        endpoint.local_ejection.admits(in_flight) && !endpoint.live.is_stalled(in_flight, now_us)
    }

    /// The expected latency of a new request on endpoint `i`, up to a common factor:
    /// `max(c, q + 1) / share` (see the module docs).
    #[inline]
    fn expected_delay(&self, i: usize, now_us: u64) -> f64 {
        let endpoint = &self.endpoints[i];
        let q = endpoint.live.queue(endpoint.in_flight(), now_us);
        (q + 1.0).max(endpoint.live.slots()) / self.shares[i].max(f64::MIN_POSITIVE)
    }

    /// The scheduler's next usable endpoint, passing over unusable ones within [`MAX_PROBES`] looks, and
    /// whether it is usable (the last one looked at is returned when none is).
    #[inline]
    fn scheduled_usable(&self, scheduler: &StrideScheduler, now_us: u64) -> (usize, bool) {
        let mut index = scheduler.pick();
        for _ in 1..MAX_PROBES {
            if self.usable(index, now_us) {
                return (index, true);
            }
            index = scheduler.pick();
        }
        (index, self.usable(index, now_us))
    }

    /// Picks an endpoint (see the module docs), or `None` when every endpoint is excluded. `now_us` is the
    /// caller's clock reading (µs since the balancer's clock base).
    #[inline]
    pub(crate) fn pick(&self, now_us: u64) -> Option<&Arc<EndpointHandle>> {
        let scheduler = self.scheduler.as_ref()?;
        let (first, first_usable) = self.scheduled_usable(scheduler, now_us);
        if self.choice_count < 2 || !self.choosable[first] || !first_usable {
            return self.endpoints.get(first);
        }
        let (mut best, mut best_delay) = (first, self.expected_delay(first, now_us));
        for _ in 1..self.choice_count {
            // An alternative is drawn by weight among the *other* endpoints of the scheduled one's locality
            // (a few redraws): drawing the scheduled one again wastes the choice, and with one dominant
            // weight that would be most draws, just when the dominant path has the queue; drawing one in
            // another zone wastes it too (it may not be chosen), and while spilling that is half the draws,
            // just when the local zone is short of capacity.
            let mut candidate = first;
            for _ in 0..MAX_REDRAWS {
                candidate = scheduler.draw(self.draws.fetch_add(1, Ordering::Relaxed));
                if candidate != first && self.locality[candidate] == self.locality[first] {
                    break;
                }
            }
            if candidate == best
                || !self.choosable[candidate]
                || self.locality[candidate] != self.locality[first]
                || !self.usable(candidate, now_us)
            {
                continue;
            }
            let delay = self.expected_delay(candidate, now_us);
            if delay < best_delay {
                (best, best_delay) = (candidate, delay);
            }
        }
        self.endpoints.get(best)
    }

    /// Picks an endpoint for a request of `group` whose routing key hashes to `key` (if it has one): the
    /// key's owner in the group's hash table when key hashing is on, else the group's weighted pick.
    /// Lock-free and allocation-free.
    #[inline]
    pub(crate) fn pick_for(
        &self,
        key: Option<u64>,
        group: Group,
        now_us: u64,
    ) -> Option<&Arc<EndpointHandle>> {
        if let (Group::Static, Some(route)) = (group, &self.static_group) {
            if let (Some(key), Some(table)) = (key, &route.hash) {
                return self.endpoints.get(table.lookup(key));
            }
            let (index, _) = self.scheduled_usable(route.scheduler.as_ref()?, now_us);
            return self.endpoints.get(index);
        }
        if let (Some(key), Some(table)) = (key, &self.hash) {
            return self.endpoints.get(table.lookup(key));
        }
        self.pick(now_us)
    }

    /// Picks an endpoint other than `avoid` for a retry of a request of `group`.
    pub(crate) fn pick_other_for(
        &self,
        avoid: &EndpointHandle,
        group: Group,
        now_us: u64,
    ) -> Option<&Arc<EndpointHandle>> {
        match (group, &self.static_group) {
            (Group::Static, Some(route)) => {
                self.pick_other_in(route.scheduler.as_ref()?, avoid, now_us)
            }
            _ => self.pick_other(avoid, now_us),
        }
    }

    /// Picks an endpoint other than `avoid` (for a retry), trying a bounded number of times.
    pub(crate) fn pick_other(
        &self,
        avoid: &EndpointHandle,
        now_us: u64,
    ) -> Option<&Arc<EndpointHandle>> {
        self.pick_other_in(self.scheduler.as_ref()?, avoid, now_us)
    }

    fn pick_other_in<'a>(
        &'a self,
        scheduler: &StrideScheduler,
        avoid: &EndpointHandle,
        now_us: u64,
    ) -> Option<&'a Arc<EndpointHandle>> {
        // Each distinct positive-weight endpoint appears within `len` selections of a generation sweep in
        // expectation; bound the probing so a pick never spins.
        let mut fallback = None;
        for _ in 0..(4 * scheduler.len() + 8) {
            let index = scheduler.pick();
            let candidate = &self.endpoints[index];
            if candidate.id() != avoid.id() {
                if self.usable(index, now_us) {
                    return Some(candidate);
                }
                fallback.get_or_insert(candidate);
            }
        }
        // A small weight can go unseen by the probes (1 in 1,000 of the picks): any other endpoint with a
        // weight, the usable ones first, rather than no retry at all.
        let weighted = |i: &usize| {
            self.endpoints[*i].id() != avoid.id() && self.shares.get(*i).is_some_and(|s| *s > 0.0)
        };
        fallback.or_else(|| {
            (0..self.endpoints.len())
                .filter(weighted)
                .find(|i| self.usable(*i, now_us))
                .or_else(|| (0..self.endpoints.len()).find(weighted))
                .map(|i| &self.endpoints[i])
        })
    }
}

/// The real two-level pick over lazily-connected endpoints that are never dialed, for the criterion bench
/// (`benches/pick.rs`); not part of the API. Needs a tokio runtime (the lazy channels).
#[doc(hidden)]
#[derive(Debug)]
pub struct PickBench(PickerSnapshot);

impl PickBench {
    /// A snapshot over `weights` (all choosable, one locality) with `choice_count` candidates per pick.
    pub fn new(weights: &[f64], choice_count: usize) -> Option<Self> {
        let sum: f64 = weights.iter().sum();
        let endpoints = (0..weights.len())
            .map(|i| {
                EndpointHandle::new(&format!("e{i}"), "127.0.0.1:9", Arc::default())
                    .map(Arc::new)
                    .ok()
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self(PickerSnapshot {
            endpoints,
            shares: weights.iter().map(|w| w / sum).collect(),
            scheduler: StrideScheduler::new(weights, 0),
            why_empty: String::new(),
            choosable: vec![true; weights.len()],
            locality: vec![0; weights.len()],
            choice_count,
            draws: AtomicU64::new(1),
            hash: None,
            static_group: None,
        }))
    }

    /// One pick at `now_us`; the index of the endpoint.
    pub fn pick(&self, now_us: u64) -> usize {
        self.0
            .pick(now_us)
            .and_then(|e| self.0.endpoints.iter().position(|x| Arc::ptr_eq(x, e)))
            .unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frequencies(weights: &[f64], picks: usize) -> Vec<f64> {
        let scheduler = StrideScheduler::new(weights, 12345).unwrap();
        let mut counts = vec![0usize; weights.len()];
        for _ in 0..picks {
            counts[scheduler.pick()] += 1;
        }
        counts.iter().map(|&c| c as f64 / picks as f64).collect()
    }

    #[test]
    fn equal_weights_are_round_robin() {
        let scheduler = StrideScheduler::new(&[1.0, 1.0, 1.0], 0).unwrap();
        let picks: Vec<usize> = (0..6).map(|_| scheduler.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_honoured_within_one_percent_over_100k_picks() {
        let weights = [0.5, 0.3, 0.15, 0.05];
        let freq = frequencies(&weights, 100_000);
        for (f, w) in freq.iter().zip(weights) {
            assert!(
                (f - w).abs() / w < 0.01,
                "frequency {f} vs weight {w}: {freq:?}"
            );
        }
    }

    #[test]
    fn draws_follow_the_weights() {
        let scheduler = StrideScheduler::new(&[0.6, 0.3, 0.1, 0.0], 1).unwrap();
        let mut counts = [0usize; 4];
        for k in 0..100_000u64 {
            counts[scheduler.draw(k)] += 1;
        }
        for (c, w) in counts.iter().zip([0.6, 0.3, 0.1, 0.0]) {
            let f = *c as f64 / 100_000.0;
            assert!((f - w).abs() < 0.01, "{counts:?}");
        }
    }

    fn snapshot(shares: &[f64], choosable: &[bool], choice_count: usize) -> PickerSnapshot {
        let endpoints = (0..shares.len())
            .map(|i| {
                Arc::new(
                    EndpointHandle::new(
                        &format!("e{i}"),
                        &format!("127.0.0.1:{}", 1 + i),
                        Arc::default(),
                    )
                    .unwrap(),
                )
            })
            .collect();
        PickerSnapshot {
            endpoints,
            shares: shares.to_vec(),
            scheduler: StrideScheduler::new(shares, 3),
            why_empty: String::new(),
            choosable: choosable.to_vec(),
            locality: vec![0; shares.len()],
            choice_count,
            draws: AtomicU64::new(11),
            hash: None,
            static_group: None,
        }
    }

    fn picked(picker: &PickerSnapshot, n: usize) -> Vec<usize> {
        let mut counts = vec![0; picker.endpoints.len()];
        for _ in 0..n {
            let e = picker.pick(1_000).unwrap();
            let i = picker
                .endpoints
                .iter()
                .position(|x| Arc::ptr_eq(x, e))
                .unwrap();
            counts[i] += 1;
        }
        counts
    }

    #[tokio::test]
    async fn a_retry_finds_an_endpoint_whose_weight_the_probes_rarely_see() {
        let picker = snapshot(&[0.999, 0.001, 0.0], &[true, true, true], 2);
        let avoid = Arc::clone(&picker.endpoints[0]);
        for _ in 0..100 {
            let other = picker.pick_other(&avoid, 1_000).map(|e| e.id().to_string());
            assert_eq!(other.as_deref(), Some("e1"), "never the weightless e2");
        }
        let only = snapshot(&[1.0, 0.0], &[true, true], 2);
        let avoid = Arc::clone(&only.endpoints[0]);
        assert!(
            only.pick_other(&avoid, 1_000).is_none(),
            "no weighted other"
        );
    }

    #[tokio::test]
    async fn equal_weights_and_queues_are_round_robin_and_a_queue_turns_traffic_away() {
        let picker = snapshot(&[0.5, 0.5], &[true, true], 2);
        assert_eq!(picked(&picker, 1000), [500, 500]);
        // e0 carries 6 of our requests: the alternative (e1, idle) wins every comparison (but the rare
        // pick whose redraws all named e0 again: 0.5^8).
        let _held: Vec<_> = (0..6).map(|_| picker.endpoints[0].start(1)).collect();
        assert!(picked(&picker, 1000)[0] <= 10);
        // The other clients' queue at e1, from an ORCA report, outweighs our own 6 at e0.
        picker.endpoints[1].live.on_server_in_flight(20.0, 0, 1_000);
        assert!(picked(&picker, 1000)[1] <= 10);
    }

    #[tokio::test]
    async fn idle_paths_lean_to_the_larger_share_and_pinned_shares_are_exact() {
        // 80/20 on idle paths: the small one is chosen only when scheduled and drawn against itself.
        let picker = snapshot(&[0.8, 0.2], &[true, true], 2);
        let counts = picked(&picker, 10_000);
        assert!(counts[1] < 500, "{counts:?}");
        // The same path pinned (a canary, a ramp): exactly its scheduled share, whatever the queues.
        let picker = snapshot(&[0.8, 0.2], &[true, false], 2);
        let counts = picked(&picker, 10_000);
        assert!((counts[1] as i64 - 2_000).abs() <= 2, "{counts:?}");
        // choice_count 1: the schedule alone.
        let picker = snapshot(&[0.8, 0.2], &[true, true], 1);
        let counts = picked(&picker, 10_000);
        assert!((counts[1] as i64 - 2_000).abs() <= 2, "{counts:?}");
    }

    #[tokio::test]
    async fn while_spilling_the_alternative_is_drawn_in_the_scheduled_ones_zone() {
        // Two local endpoints with a tenth of the weight each, a remote one with the rest (a spill). e0 has
        // a queue: when the schedule names it, the alternative must be e1 (its zone), not the remote e2 that
        // most draws name and that may not be chosen.
        let mut picker = snapshot(&[0.1, 0.1, 0.8], &[true, true, true], 2);
        picker.locality = vec![1, 1, 0];
        let _held: Vec<_> = (0..6).map(|_| picker.endpoints[0].start(1)).collect();
        let counts = picked(&picker, 10_000);
        // e0 is scheduled 1 000 times; it keeps only the picks whose 8 redraws all missed e1 (0.9^8 ≈ 43%
        // of them would have been every pick when a remote draw wasted the choice).
        assert!(counts[0] < 600, "{counts:?}");
        assert!(counts[1] > 1_400, "{counts:?}");
        // The remote endpoint gets exactly its schedule: a local one is never chosen over it, nor it over them.
        assert!((counts[2] as i64 - 8_000).abs() <= 2, "{counts:?}");
    }

    #[tokio::test]
    async fn the_static_group_passes_over_an_endpoint_set_aside_locally() {
        let mut picker = snapshot(&[0.5, 0.5], &[true, true], 2);
        picker.static_group = Some(StaticRoute {
            scheduler: StrideScheduler::new(&[0.5, 0.5], 5),
            hash: None,
        });
        assert!(picker.endpoints[0].local_ejection.on_stalled().is_some());
        assert!(picker.endpoints[0].local_ejection.is_ejected());
        for _ in 0..1_000 {
            let e = picker.pick_for(None, Group::Static, 1_000).unwrap();
            assert!(Arc::ptr_eq(e, &picker.endpoints[1]));
        }
    }

    #[test]
    fn zero_and_invalid_weights_never_picked() {
        let freq = frequencies(&[0.0, 0.7, f64::NAN, 0.3, -1.0], 10_000);
        assert_eq!(freq[0], 0.0);
        assert_eq!(freq[2], 0.0);
        assert_eq!(freq[4], 0.0);
        assert!(StrideScheduler::new(&[0.0, 0.0], 0).is_none());
    }
}
