//! Weighted Maglev: a lookup table of a prime number of slots, each owned by one endpoint, in which each
//! endpoint owns a share of the slots that follows its weight.
//!
//! The algorithm is Maglev's table population (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, §3.4, Pseudocode 1) with the weighting of Envoy's `maglev` load
//! balancer (`source/extensions/load_balancing_policies/maglev/maglev_lb.cc`): every endpoint walks its own
//! permutation of the slots (`offset + next·skip mod M`, both from a hash of its id) and takes the first free
//! slot on its turn; an endpoint with the largest weight gets a turn on every round, one with a third of it
//! on every third round. The table is full after about `M / Σ(wᵢ/w_max)` rounds.
//!
//! Properties the client relies on (tested in `balancer/tests/client_routing_hash.rs`):
//! - deterministic: the same `(id, weight)` set gives the same table in every client, whatever the input
//!   order (entries are sorted by id before population; ids hash with a fixed function, not `RandomState`);
//! - a share of the slots within about `n/M` of each endpoint's weight share (±0.1% at 65537 slots);
//! - close to minimal disruption: removing an endpoint or changing weights moves a little more than the
//!   theoretical minimum of keys (see [`measure_disruption`](super::measure_disruption)).

use super::hash64;

/// Seeds of the two hashes of an endpoint id (offset and skip), fixed so that every client agrees.
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

/// Marks a slot not yet taken during population.
const FREE: u32 = u32::MAX;

/// A populated weighted Maglev table. Immutable: built off the pick path, looked up lock-free.
#[derive(Debug, Clone, PartialEq)]
pub struct MaglevTable {
    /// Slot → index into the endpoint list the table was built from.
    slots: Box<[u32]>,
}

struct BuildEntry {
    index: u32,
    offset: u64,
    skip: u64,
    next: u64,
    weight: f64,
    target: f64,
}

impl MaglevTable {
    /// Builds a table of `size` slots over `endpoints` (`(id, weight)`); [`lookup`](Self::lookup) returns
    /// indices into `endpoints`. Endpoints whose weight is zero, negative or not finite own no slot.
    ///
    /// Returns `None` when no weight is positive, or when `size` is not a prime at least as large as the
    /// number of endpoints (the permutations only cover every slot when `size` is prime).
    pub fn build(endpoints: &[(&str, f64)], size: usize) -> Option<Self> {
        if !is_prime(size) || size < endpoints.len() || size >= FREE as usize {
            return None;
        }
        let max = endpoints
            .iter()
            .map(|(_, w)| *w)
            .filter(|w| w.is_finite() && *w > 0.0)
            .fold(0.0_f64, f64::max);
        if max <= 0.0 {
            return None;
        }
        let m = size as u64;
        let mut entries: Vec<BuildEntry> = endpoints
            .iter()
            .enumerate()
            .filter(|(_, (_, w))| w.is_finite() && *w > 0.0)
            .map(|(index, (id, w))| BuildEntry {
                index: index as u32,
                offset: hash64(id.as_bytes(), OFFSET_SEED) % m,
                skip: hash64(id.as_bytes(), SKIP_SEED) % (m - 1) + 1,
                next: 0,
                weight: w / max,
                target: 0.0,
            })
            .collect();
        // Population order must not depend on the order the snapshot listed the endpoints in.
        entries.sort_by(|a, b| {
            endpoints[a.index as usize]
                .0
                .cmp(endpoints[b.index as usize].0)
        });
        let mut slots = vec![FREE; size].into_boxed_slice();
        let mut filled = 0usize;
        let mut round = 1u64;
        while filled < size {
            for entry in &mut entries {
                if filled == size {
                    break;
                }
                // The largest weight (1.0) takes a turn every round; weight w every 1/w rounds.
                if (round as f64) * entry.weight < entry.target {
                    continue;
                }
                entry.target += 1.0;
                let mut slot = (entry.offset + entry.next * entry.skip) % m;
                while slots[slot as usize] != FREE {
                    entry.next += 1;
                    slot = (entry.offset + entry.next * entry.skip) % m;
                }
                slots[slot as usize] = entry.index;
                entry.next += 1;
                filled += 1;
            }
            round += 1;
        }
        Some(Self { slots })
    }

    /// The endpoint index owning the key whose hash is `key_hash`. Lock-free, allocation-free, O(1).
    #[inline]
    pub fn lookup(&self, key_hash: u64) -> usize {
        // `build` only returns full tables of at least one slot.
        self.slots[(key_hash % self.slots.len() as u64) as usize] as usize
    }

    /// The number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always false: a built table has at least one slot.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The owner of every slot (for measurements and tests).
    pub fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots.iter().map(|&s| s as usize)
    }

    /// How many slots each of `n` endpoint indices owns.
    pub fn slot_counts(&self, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for s in self.slots() {
            if let Some(c) = counts.get_mut(s) {
                *c += 1;
            }
        }
        counts
    }
}

/// Whether `n` is prime (trial division; `n` is a table size, at most a few million).
pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(2));
        assert!(!is_prime(65536));
        assert!(!is_prime(1));
        assert!(MaglevTable::build(&[("a", 1.0)], 100).is_none());
    }

    #[test]
    fn small_table_is_full_and_weighted() {
        let table = MaglevTable::build(&[("a", 3.0), ("b", 1.0), ("c", 0.0)], 65537).unwrap();
        let counts = table.slot_counts(3);
        assert_eq!(counts.iter().sum::<usize>(), 65537);
        assert_eq!(counts[2], 0);
        let share = counts[0] as f64 / 65537.0;
        assert!((share - 0.75).abs() < 0.001, "{counts:?}");
    }

    #[test]
    fn order_does_not_matter() {
        let a = MaglevTable::build(&[("a", 2.0), ("b", 1.0), ("c", 0.5)], 251).unwrap();
        let b = MaglevTable::build(&[("c", 0.5), ("a", 2.0), ("b", 1.0)], 251).unwrap();
        fn names(t: &MaglevTable, ids: [&'static str; 3]) -> Vec<&'static str> {
            t.slots().map(|i| ids[i]).collect()
        }
        assert_eq!(names(&a, ["a", "b", "c"]), names(&b, ["c", "a", "b"]));
    }
}
