//! The scheduler honours weights: deterministic over 100k picks, and exactly (up to integer scaling) over
//! a full cycle for random weights.

use lateral_balancer::internals::{MAX_WEIGHT, StrideScheduler};
use proptest::prelude::*;

#[test]
fn weights_honoured_within_one_percent_over_100k_picks() {
    let weights = [0.42, 0.25, 0.2, 0.1, 0.02, 0.01];
    for seed in [0, 1, 99, u64::MAX / 3] {
        let scheduler = StrideScheduler::new(&weights, seed).unwrap();
        let mut counts = [0usize; 6];
        for _ in 0..100_000 {
            counts[scheduler.pick()] += 1;
        }
        for (i, w) in weights.iter().enumerate() {
            let share = counts[i] as f64 / 100_000.0;
            assert!(
                (share - w).abs() <= 0.01 * w,
                "seed {seed}: endpoint {i}: {share} vs {w} ({counts:?})"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_full_cycle_matches_the_scaled_weights(
        weights in prop::collection::vec(prop_oneof![1 => Just(0.0), 4 => 0.001f64..1.0], 2..10)
    ) {
        let positive = weights.iter().filter(|w| **w > 0.0).count();
        prop_assume!(positive > 0);
        let scheduler = StrideScheduler::new(&weights, 0).unwrap();
        let n = weights.len() as u64;
        let mut counts = vec![0u64; weights.len()];
        // A full cycle: MAX_WEIGHT generations of n sequence numbers.
        for sequence in 0..n * MAX_WEIGHT {
            if let Some(i) = scheduler.select(sequence) {
                counts[i] += 1;
            }
        }
        let scaled = scheduler.scaled_weights();
        let max = weights.iter().cloned().fold(0.0, f64::max);
        for i in 0..weights.len() {
            if weights[i] == 0.0 {
                prop_assert_eq!(counts[i], 0, "zero weight picked");
                continue;
            }
            // Each endpoint is taken as many times as its scaled weight, up to gcd(weight, MAX_WEIGHT).
            let w = u64::from(scaled[i]);
            let g = gcd(w, MAX_WEIGHT);
            prop_assert!(counts[i].abs_diff(w) <= g, "endpoint {}: {} picks vs scaled {}", i, counts[i], w);
            // And the scaled weight is the input up to rounding to 1/MAX_WEIGHT of the largest.
            let ideal = weights[i] / max * MAX_WEIGHT as f64;
            prop_assert!((w as f64 - ideal).abs() <= 1.0);
        }
    }

    #[test]
    fn zero_weight_is_never_picked(weights in prop::collection::vec(prop_oneof![Just(0.0), 0.01f64..1.0], 1..20)) {
        if let Some(scheduler) = StrideScheduler::new(&weights, 3) {
            for _ in 0..2_000 {
                prop_assert!(weights[scheduler.pick()] > 0.0);
            }
        } else {
            prop_assert!(weights.iter().all(|w| *w == 0.0));
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}
