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
//! [`PickerSnapshot`] adds an optional refinement by the client's own in-flight count per endpoint: when the
//! scheduled endpoint already carries far more of this client's in-flight requests than its weighted share
//! (`in_flight > share * total_in_flight * 2 + 4`), the pick moves on to the next scheduled endpoint, at most
//! [`MAX_INFLIGHT_SKIPS`] times. This absorbs bursts faster than the 500 ms heartbeat; in steady state (no
//! endpoint lagging) it never fires, so the weights stay exact. Endpoints the client has set aside as
//! unreachable ([`super::outlier`]) are passed over too, within [`MAX_PROBES`] looks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::endpoints::EndpointHandle;
use super::hashing::MaglevTable;
use super::split::Group;

/// The largest scaled integer weight (gRFC A58's `kMaxWeight`).
pub const MAX_WEIGHT: u64 = u16::MAX as u64;

/// How many scheduled endpoints the in-flight refinement may pass over in one pick.
pub const MAX_INFLIGHT_SKIPS: usize = 2;

/// How many scheduled endpoints one pick may look at in all, passing over locally ejected ones
/// ([`super::outlier`]) and crowded ones; the last one looked at is used whatever its state.
pub const MAX_PROBES: usize = 8;

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
/// from the scheduler's sequence counter and the endpoints' own counters).
#[derive(Debug)]
pub(crate) struct PickerSnapshot {
    /// Endpoints in scheduler order (zero-weight ones included but never scheduled).
    pub(crate) endpoints: Vec<Arc<EndpointHandle>>,
    /// Each endpoint's share of the effective weights, in [0, 1].
    pub(crate) shares: Vec<f64>,
    pub(crate) scheduler: Option<StrideScheduler>,
    /// Why no endpoint can be picked (only meaningful when `scheduler` is `None`).
    pub(crate) why_empty: String,
    /// The client's in-flight requests over all endpoints (shared across snapshots).
    pub(crate) total_in_flight: Arc<AtomicUsize>,
    /// Whether the in-flight refinement is on.
    pub(crate) refine_by_in_flight: bool,
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
    /// Picks an endpoint (see the module docs), or `None` when every endpoint is excluded.
    #[inline]
    pub(crate) fn pick(&self) -> Option<&Arc<EndpointHandle>> {
        let scheduler = self.scheduler.as_ref()?;
        let mut index = scheduler.pick();
        let total = if self.refine_by_in_flight {
            self.total_in_flight.load(Ordering::Relaxed) as f64
        } else {
            0.0
        };
        let mut crowded_skips = 0;
        for _ in 0..MAX_PROBES {
            let endpoint = &self.endpoints[index];
            if endpoint.local_ejection.is_ejected() {
                // Set aside locally (unreachable): always look further, within MAX_PROBES.
            } else if self.refine_by_in_flight
                && crowded_skips < MAX_INFLIGHT_SKIPS
                && endpoint.in_flight() as f64 > self.shares[index] * total * 2.0 + 4.0
            {
                crowded_skips += 1;
            } else {
                break;
            }
            index = scheduler.pick();
        }
        self.endpoints.get(index)
    }

    /// Picks an endpoint for a request of `group` whose routing key hashes to `key` (if it has one): the
    /// key's owner in the group's hash table when key hashing is on, else the group's weighted pick.
    /// Lock-free and allocation-free.
    #[inline]
    pub(crate) fn pick_for(&self, key: Option<u64>, group: Group) -> Option<&Arc<EndpointHandle>> {
        if let (Group::Static, Some(route)) = (group, &self.static_group) {
            if let (Some(key), Some(table)) = (key, &route.hash) {
                return self.endpoints.get(table.lookup(key));
            }
            let scheduler = route.scheduler.as_ref()?;
            return self.endpoints.get(scheduler.pick());
        }
        if let (Some(key), Some(table)) = (key, &self.hash) {
            return self.endpoints.get(table.lookup(key));
        }
        self.pick()
    }

    /// Picks an endpoint other than `avoid` for a retry of a request of `group`.
    pub(crate) fn pick_other_for(
        &self,
        avoid: &EndpointHandle,
        group: Group,
    ) -> Option<&Arc<EndpointHandle>> {
        match (group, &self.static_group) {
            (Group::Static, Some(route)) => self.pick_other_in(route.scheduler.as_ref()?, avoid),
            _ => self.pick_other(avoid),
        }
    }

    /// Picks an endpoint other than `avoid` (for a retry), trying a bounded number of times.
    pub(crate) fn pick_other(&self, avoid: &EndpointHandle) -> Option<&Arc<EndpointHandle>> {
        self.pick_other_in(self.scheduler.as_ref()?, avoid)
    }

    fn pick_other_in<'a>(
        &'a self,
        scheduler: &StrideScheduler,
        avoid: &EndpointHandle,
    ) -> Option<&'a Arc<EndpointHandle>> {
        // Each distinct positive-weight endpoint appears within `len` selections of a generation sweep in
        // expectation; bound the probing so a pick never spins.
        let mut fallback = None;
        for _ in 0..(4 * scheduler.len() + 8) {
            let candidate = &self.endpoints[scheduler.pick()];
            if candidate.id() != avoid.id() {
                if !candidate.local_ejection.is_ejected() {
                    return Some(candidate);
                }
                fallback.get_or_insert(candidate);
            }
        }
        fallback
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
    fn zero_and_invalid_weights_never_picked() {
        let freq = frequencies(&[0.0, 0.7, f64::NAN, 0.3, -1.0], 10_000);
        assert_eq!(freq[0], 0.0);
        assert_eq!(freq[2], 0.0);
        assert_eq!(freq[4], 0.0);
        assert!(StrideScheduler::new(&[0.0, 0.0], 0).is_none());
    }
}
