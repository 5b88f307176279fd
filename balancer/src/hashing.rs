//! Key-hashed routing for stateful services: requests that carry a configured metadata header (say
//! `x-user-id`) go to the endpoint that owns the key, as long as the endpoint set and weights stay the same.
//!
//! Turn it on with [`Builder::hash_key_header`](super::Builder::hash_key_header). Each endpoint owns a
//! share of the key space equal to its weight share, through a weighted Maglev table ([`maglev`]): Envoy's
//! `maglev` load balancer with endpoint weights, and the equivalent of the article's "consistent hashing
//! with virtual nodes, the weight of each node set by its number of virtual nodes" with O(1) lookup.
//!
//! - **Off the pick path.** The table (65 537 slots by default, [`DEFAULT_TABLE_SIZE`]) is built by the
//!   policy task when a snapshot changes the membership, the states or the coordinator's weights, and
//!   shared (`Arc`) by every picker published until the next change. ORCA republishes do not rebuild it:
//!   keys follow the coordinator's weights, which every client sees alike, never one client's ORCA nudges
//!   (which would make clients disagree on a key's owner).
//! - **On the pick path.** One hash of the header value ([`hash_key`], a fixed function, so every client and
//!   every process agrees) and one indexed load: lock-free and allocation-free.
//! - **Who owns keys.** Endpoints at zero weight and EJECTED, TRIPPED or DRAINING ones own no slot; their keys
//!   move to the others (and only theirs move, up to Maglev's small excess). A request without the header,
//!   or whose header is not valid, takes the normal weighted pick. A retry goes to another endpoint like
//!   any retry (the key's owner did not answer).
//! - **Key movement.** A weight change moves keys: at best `Σ|Δshareᵢ|/2` of them (the share that has to
//!   change hands); an endpoint leaving moves at best its own share. [`measure_disruption`] measures what the
//!   table actually moves against that minimum; `client_routing_hash` prints the figures.
//!
//! Choose it when a backend keeps per-key state (a cache, a session, an actor) and hitting the same
//! endpoint matters more than exact balance: with it, a hot key is not spread, and every coordinator weight
//! change moves some keys. Stateless services should use the default weighted pick.

pub mod maglev;

use std::fmt;
use std::sync::Arc;

pub use maglev::MaglevTable;

/// The default table size: a prime, large enough that shares are within ±0.01 of the weights for up to a
/// few hundred endpoints (Envoy's default too).
pub const DEFAULT_TABLE_SIZE: usize = 65_537;

/// The seed of [`hash_key`].
const KEY_SEED: u64 = 0x6c61_7465_7261_6c6b; // "lateralk"

/// A fixed 64-bit hash of bytes: FNV-1a over the bytes and the seed, finished with MurmurHash3's `fmix64`
/// for avalanche. Not a `Hasher` with a random state: every client must compute the same value.
#[inline]
pub(crate) fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The hash of a routing key (a header value's bytes), as the pick path computes it.
#[inline]
pub fn hash_key(key: &[u8]) -> u64 {
    hash64(key, KEY_SEED)
}

/// How much of the key space a change moved, against the least any scheme could move.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Disruption {
    /// The fraction of the key space (of the table's slots) whose owner changed.
    pub moved: f64,
    /// The theoretical minimum: `Σ|Δshareᵢ|/2` over the union of endpoints, with shares being the weights
    /// normalised over positive weights (for a removal: the leaving endpoint's share).
    pub minimum: f64,
}

impl Disruption {
    /// `moved / minimum` (1 is optimal; 1 when nothing had to move and nothing did).
    pub fn ratio(&self) -> f64 {
        if self.minimum > 0.0 {
            self.moved / self.minimum
        } else if self.moved == 0.0 {
            1.0
        } else {
            f64::INFINITY
        }
    }
}

impl fmt::Display for Disruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "moved {:.4} of keys, theoretical minimum {:.4} (×{:.3})",
            self.moved,
            self.minimum,
            self.ratio()
        )
    }
}

/// Builds the tables for `before` and `after` (`(id, weight)` lists) with `table_size` slots and reports
/// the fraction of keys whose owner changed against the theoretical minimum. `None` when either table
/// cannot be built (no positive weight, or a size that is not a prime).
pub fn measure_disruption(
    before: &[(&str, f64)],
    after: &[(&str, f64)],
    table_size: usize,
) -> Option<Disruption> {
    let a = MaglevTable::build(before, table_size)?;
    let b = MaglevTable::build(after, table_size)?;
    let moved = a
        .slots()
        .zip(b.slots())
        .filter(|&(x, y)| before[x].0 != after[y].0)
        .count() as f64
        / table_size as f64;
    let shares = |list: &[(&str, f64)], id: &str| -> f64 {
        let positive = |w: f64| if w.is_finite() && w > 0.0 { w } else { 0.0 };
        let sum: f64 = list.iter().map(|(_, w)| positive(*w)).sum();
        list.iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, w)| positive(*w) / sum)
            .sum()
    };
    let mut ids: Vec<&str> = before.iter().chain(after).map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    let minimum = ids
        .iter()
        .map(|id| (shares(after, id) - shares(before, id)).abs())
        .sum::<f64>()
        / 2.0;
    Some(Disruption { moved, minimum })
}

/// The policy task's cache of the current table: rebuilt only when its inputs change.
#[derive(Debug, Default)]
pub(crate) struct TableCache {
    inputs: Vec<(Arc<str>, f64)>,
    table: Option<Arc<MaglevTable>>,
}

impl TableCache {
    /// The table for `inputs` (ids in picker order with their effective, pre-ORCA weights), reusing the
    /// previous one when nothing changed.
    pub(crate) fn get(
        &mut self,
        inputs: Vec<(Arc<str>, f64)>,
        size: usize,
    ) -> Option<Arc<MaglevTable>> {
        if inputs != self.inputs {
            let view: Vec<(&str, f64)> = inputs.iter().map(|(id, w)| (&**id, *w)).collect();
            self.table = MaglevTable::build(&view, size).map(Arc::new);
            self.inputs = inputs;
        }
        self.table.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fixed() {
        // Every client must agree: a change of this value is a breaking change of key placement.
        assert_eq!(hash_key(b"user-1"), hash_key(b"user-1"));
        assert_ne!(hash_key(b"user-1"), hash_key(b"user-2"));
        assert_eq!(hash64(b"", 0), hash64(b"", 0));
    }

    #[test]
    fn removal_minimum_is_the_leaving_share() {
        let d = measure_disruption(
            &[("a", 1.0), ("b", 1.0), ("c", 2.0)],
            &[("a", 1.0), ("c", 2.0)],
            65_537,
        )
        .unwrap();
        assert!((d.minimum - 0.25).abs() < 1e-9);
        assert!(d.moved >= d.minimum - 0.001);
    }
}
