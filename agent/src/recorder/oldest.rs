//! The start of the oldest request in flight, in bounded memory: [`OldestTracker`].
//!
//! # Structure
//! Time is counted in ticks of [`TICK`] (1 ms) since the tracker's epoch. A request is counted, by its
//! start tick `s`, in one bucket of one of [`LEVELS`] levels; level `L` is a ring of [`RING`] buckets of
//! `2^L` ticks each, covering the bucket indices `(h_L − RING, h_L]`, where `h_0` is the current tick and
//! `h_{L+1} = (h_L − RING) >> 1`. A request lives in the lowest level whose window holds `s >> L`; as time
//! passes, buckets that leave a level's window are merged into the next, coarser level (their counts add),
//! and beyond the last level into one overflow counter that remembers the smallest bucket start it took.
//! Where a request is counted is therefore a function of its start and the current tick alone, so finishing (or
//! cancelling) it decrements exactly the bucket it is in, without a per-request record.
//!
//! Memory: `LEVELS × RING` counters (6 KiB), allocated once; no allocation per request. Work per event: at
//! most one bucket per level per elapsed tick is merged (amortised O(1); after an idle gap with requests in
//! flight, at most `LEVELS × RING` buckets once), and a query scans one level.
//!
//! # Error bound
//! The oldest start reported is the start of the oldest non-empty bucket, so the age derived from it is an
//! **upper bound** of the true age of the oldest request in flight, above it by less than the width of that
//! bucket. A request in level `L ≥ 1` has left level `L − 1`, so its age exceeds `(RING − 1) · 2^(L−1)` ticks
//! while its bucket is `2^L` ticks wide. Hence
//!
//! `true age ≤ reported age < true age + max(1 ms, 2 · true age / 63)`
//!
//! i.e. within 1 ms for ages under 64 ms and within ~3.2% of the age beyond, for ages up to about
//! `RING · 2^LEVELS` ticks (~12 days). Requests older than that share the overflow counter, whose reported
//! start is the oldest start it ever took since it was last empty: still an upper bound of the age, but no
//! longer a tight one once its oldest request has finished.

use std::time::Duration;

use tokio::time::Instant;

/// Width of a level-0 bucket.
pub(super) const TICK: Duration = Duration::from_millis(1);
/// Buckets per level.
pub(super) const RING: usize = 64;
/// Number of levels; level `L` has buckets of `2^L` ticks.
pub(super) const LEVELS: usize = 24;

const RING_I: i64 = RING as i64;

/// See the [module docs](self).
#[derive(Debug)]
pub(super) struct OldestTracker {
    epoch: Instant,
    /// `h_0`: the tick the tracker was last advanced to.
    head: i64,
    counts: Box<[[u32; RING]; LEVELS]>,
    level_totals: [u32; LEVELS],
    overflow: u32,
    /// Smallest start tick taken by the overflow counter since it was last empty (meaningful when
    /// `overflow > 0`).
    overflow_min: i64,
    total: u32,
}

fn heads(h0: i64) -> [i64; LEVELS] {
    let mut h = [0i64; LEVELS];
    h[0] = h0;
    for l in 1..LEVELS {
        h[l] = (h[l - 1] - RING_I) >> 1;
    }
    h
}

fn slot(index: i64) -> usize {
    // `rem_euclid` of a positive modulus is in 0..RING.
    index.rem_euclid(RING_I) as usize
}

impl OldestTracker {
    /// An empty tracker whose tick 0 is `epoch`.
    pub(super) fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            head: 0,
            counts: Box::new([[0; RING]; LEVELS]),
            level_totals: [0; LEVELS],
            overflow: 0,
            overflow_min: 0,
            total: 0,
        }
    }

    fn tick(&self, at: Instant) -> i64 {
        let ticks = at.saturating_duration_since(self.epoch).as_nanos() / TICK.as_nanos();
        // Far beyond any uptime; keeps the shifts and subtractions below clear of overflow.
        i64::try_from(ticks).unwrap_or(i64::MAX).min(i64::MAX / 4)
    }

    fn tick_start(&self, tick: i64) -> Instant {
        let tick_ns = u64::try_from(TICK.as_nanos()).unwrap_or(u64::MAX);
        let nanos = u64::try_from(tick).unwrap_or(0).saturating_mul(tick_ns);
        self.epoch + Duration::from_nanos(nanos)
    }

    /// Where a request that started at tick `s` is counted now: `Some((level, slot))` or `None` for overflow.
    fn locate(s: i64, heads: &[i64; LEVELS]) -> Option<(usize, usize)> {
        (0..LEVELS).find_map(|l| {
            let index = s >> l;
            (index > heads[l] - RING_I).then(|| (l, slot(index)))
        })
    }

    fn add(&mut self, s: i64, count: u32, heads: &[i64; LEVELS]) {
        match Self::locate(s, heads) {
            Some((l, k)) => {
                self.counts[l][k] += count;
                self.level_totals[l] += count;
            }
            None => {
                self.overflow_min = if self.overflow == 0 {
                    s
                } else {
                    self.overflow_min.min(s)
                };
                self.overflow += count;
            }
        }
    }

    /// Moves the current tick forward to `now` (never back), merging the buckets that leave each level.
    pub(super) fn advance(&mut self, now: Instant) {
        let h0 = self.tick(now);
        if h0 <= self.head {
            return;
        }
        if self.total == 0 {
            self.head = h0;
            return;
        }
        let old = heads(self.head);
        let new = heads(h0);
        self.head = h0;
        // Top-down: a level's leaving buckets are merged into levels already advanced, whose slots for their
        // entering indices have been emptied.
        for l in (0..LEVELS).rev() {
            if self.level_totals[l] == 0 {
                continue;
            }
            let lo = old[l] - RING_I + 1;
            let hi = old[l].min(new[l] - RING_I);
            let mut index = lo;
            while index <= hi && self.level_totals[l] > 0 {
                let k = slot(index);
                let count = std::mem::take(&mut self.counts[l][k]);
                if count > 0 {
                    self.level_totals[l] -= count;
                    // A non-empty bucket has a non-negative index (no request starts before the epoch).
                    self.add(index << l, count, &new);
                }
                index += 1;
            }
        }
    }

    /// Counts a request that started at `started`.
    pub(super) fn insert(&mut self, started: Instant) {
        self.advance(started);
        let s = self.tick(started);
        let h = heads(self.head);
        self.add(s, 1, &h);
        self.total += 1;
    }

    /// Forgets a request that started at `started` (finished or cancelled).
    pub(super) fn remove(&mut self, started: Instant) {
        let s = self.tick(started);
        let h = heads(self.head);
        let removed = match Self::locate(s, &h) {
            Some((l, k)) if self.counts[l][k] > 0 => {
                self.counts[l][k] -= 1;
                self.level_totals[l] -= 1;
                true
            }
            None if self.overflow > 0 => {
                self.overflow -= 1;
                true
            }
            _ => false,
        };
        debug_assert!(removed, "removing a request the tracker does not count");
        if removed {
            self.total -= 1;
        }
    }

    /// The start of the oldest non-empty bucket: a lower bound of the oldest in-flight request's start (see
    /// the [module docs](self) for the bound). `None` when nothing is in flight.
    pub(super) fn oldest_start(&self) -> Option<Instant> {
        if self.total == 0 {
            return None;
        }
        if self.overflow > 0 {
            return Some(self.tick_start(self.overflow_min));
        }
        let h = heads(self.head);
        let l = (0..LEVELS).rev().find(|&l| self.level_totals[l] > 0)?;
        (h[l] - RING_I + 1..=h[l])
            .find(|&index| self.counts[l][slot(index)] > 0)
            .map(|index| self.tick_start(index << l))
    }

    /// The age at `now` of the oldest request in flight (an upper bound, see the [module docs](self)).
    pub(super) fn oldest_age(&self, now: Instant) -> Option<Duration> {
        self.oldest_start()
            .map(|start| now.saturating_duration_since(start))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The documented bound: reported − true < max(1 ms, 2 · true / 63).
    fn within_bound(reported: Duration, truth: Duration) -> bool {
        let slack = TICK.max(truth * 2 / (RING as u32 - 1));
        reported >= truth && reported - truth <= slack
    }

    #[test]
    fn exact_to_the_millisecond_while_young_and_empty_when_idle() {
        let t0 = Instant::now();
        let mut t = OldestTracker::new(t0);
        assert_eq!(t.oldest_age(t0), None);
        let a = t0 + Duration::from_micros(10_400);
        t.advance(a);
        t.insert(a);
        let b = t0 + Duration::from_millis(30);
        t.advance(b);
        t.insert(b);
        let now = t0 + Duration::from_millis(50);
        t.advance(now);
        // Bucket of 1 ms: the age of `a` (39.6 ms), rounded up to its bucket start.
        assert_eq!(t.oldest_age(now), Some(Duration::from_millis(40)));
        t.remove(a);
        assert_eq!(t.oldest_age(now), Some(Duration::from_millis(20)));
        t.remove(b);
        assert_eq!(t.oldest_age(now), None);
    }

    #[test]
    fn an_old_request_survives_many_merges_and_a_long_idle_gap() {
        let t0 = Instant::now();
        let mut t = OldestTracker::new(t0);
        t.insert(t0 + Duration::from_millis(3));
        for step in 1..2_000u64 {
            let now = t0 + Duration::from_millis(step * 7);
            t.advance(now);
            let age = now - (t0 + Duration::from_millis(3));
            assert!(within_bound(t.oldest_age(now).unwrap(), age), "{step}");
        }
        // An hour of nothing but the one request, then a day.
        for gap in [Duration::from_secs(3_600), Duration::from_secs(86_400)] {
            let now = t0 + gap;
            t.advance(now);
            let age = now - (t0 + Duration::from_millis(3));
            let reported = t.oldest_age(now).unwrap();
            assert!(within_bound(reported, age), "{reported:?} vs {age:?}");
        }
        t.remove(t0 + Duration::from_millis(3));
        assert_eq!(t.oldest_age(t0 + Duration::from_secs(86_400)), None);
        assert_eq!(t.total, 0);
    }

    #[test]
    fn beyond_the_last_level_the_overflow_keeps_an_upper_bound() {
        let t0 = Instant::now();
        let mut t = OldestTracker::new(t0);
        t.insert(t0);
        let far = t0 + Duration::from_secs(30 * 86_400);
        t.advance(far);
        t.insert(far);
        assert_eq!(t.overflow, 1);
        assert_eq!(t.oldest_age(far), Some(far - t0));
        t.remove(t0);
        assert_eq!(t.oldest_age(far), Some(Duration::ZERO));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Begin,
        Finish(usize),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Begin),
            3 => any::<usize>().prop_map(Op::Finish),
            // Microseconds: up to 3 ms, up to 3 s, up to an hour.
            1 => (0u64..3_000).prop_map(Op::Advance),
            2 => (0u64..3_000_000).prop_map(Op::Advance),
            1 => (0u64..3_600_000_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// For random begin/finish sequences (finishing in any order) and time steps from microseconds to
        /// an hour, the reported age is within the documented bound of the true oldest start.
        #[test]
        fn reported_age_is_within_the_bound(ops in proptest::collection::vec(op(), 1..120)) {
            let t0 = Instant::now();
            let mut t = OldestTracker::new(t0);
            let mut now = t0;
            let mut live: Vec<Instant> = Vec::new();
            for op in ops {
                match op {
                    Op::Begin => {
                        t.advance(now);
                        t.insert(now);
                        live.push(now);
                    }
                    Op::Finish(i) if !live.is_empty() => {
                        let started = live.swap_remove(i % live.len());
                        t.advance(now);
                        t.remove(started);
                    }
                    Op::Finish(_) => {}
                    Op::Advance(micros) => now += Duration::from_micros(micros),
                }
                t.advance(now);
                let truth = live.iter().min().map(|s| now - *s);
                let reported = t.oldest_age(now);
                match (reported, truth) {
                    (None, None) => {}
                    (Some(r), Some(tr)) => prop_assert!(within_bound(r, tr), "reported {r:?}, true {tr:?}"),
                    other => prop_assert!(false, "{other:?}"),
                }
                prop_assert_eq!(t.total as usize, live.len());
            }
        }
    }
}
