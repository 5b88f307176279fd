//! The arrival schedule: open-loop Poisson arrivals, generated once per scenario from the seed, so that every
//! policy meets exactly the same requests at the same intended times.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::scenario::KeyDistribution;

/// One request: when it is meant to be sent (from the start of traffic) and by which client instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    /// Intended send time, from the start of traffic.
    pub at: Duration,
    /// Index of the client instance that sends it.
    pub client: u32,
}

/// Exponential gaps at `rate_rps` over `duration`, each arrival given to one of `clients` uniformly at random
/// (so each client sees its own Poisson stream at `rate_rps / clients`).
pub fn poisson(rate_rps: f64, duration: Duration, clients: u32, seed: u64) -> Vec<Arrival> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity((rate_rps * duration.as_secs_f64() * 1.05) as usize + 16);
    let end = duration.as_secs_f64();
    let mut t = 0.0;
    loop {
        // Inverse transform sampling; 1 - u is in (0, 1], so ln is finite.
        t += -(1.0 - rng.random::<f64>()).ln() / rate_rps.max(1e-9);
        if t >= end {
            return out;
        }
        out.push(Arrival {
            at: Duration::from_secs_f64(t),
            client: rng.random_range(0..clients.max(1)),
        });
    }
}

/// The routing key of each of `count` requests: one of `keys` keys (0-based; key 0 the hottest under Zipf),
/// drawn from its own seeded stream so the arrivals do not change when keys are added.
pub fn keys(
    count: usize,
    keys: u32,
    distribution: KeyDistribution,
    exponent: f64,
    seed: u64,
) -> Vec<u32> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6b65_7973_6b65_7973);
    let n = keys.max(1);
    match distribution {
        KeyDistribution::Uniform => (0..count).map(|_| rng.random_range(0..n)).collect(),
        KeyDistribution::Zipf => {
            // Inverse transform on the cumulative distribution of P(k) ∝ 1 / (k+1)^s.
            let mut cdf = Vec::with_capacity(n as usize);
            let mut sum = 0.0;
            for k in 0..n {
                sum += 1.0 / f64::from(k + 1).powf(exponent);
                cdf.push(sum);
            }
            (0..count)
                .map(|_| {
                    let u = rng.random::<f64>() * sum;
                    let i = cdf.partition_point(|&c| c < u);
                    (i as u32).min(n - 1)
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_seeded_and_zipf_is_skewed() {
        let a = keys(20_000, 1000, KeyDistribution::Zipf, 1.0, 7);
        assert_eq!(a, keys(20_000, 1000, KeyDistribution::Zipf, 1.0, 7));
        assert!(a.iter().all(|&k| k < 1000));
        let hot = a.iter().filter(|&&k| k == 0).count();
        let cold = a.iter().filter(|&&k| k == 999).count();
        assert!(hot > 50 * cold.max(1), "{hot} vs {cold}");
        let u = keys(20_000, 1000, KeyDistribution::Uniform, 1.0, 7);
        assert!(u.iter().all(|&k| k < 1000));
    }

    #[test]
    fn same_seed_same_schedule_and_rate_close() {
        let a = poisson(1000.0, Duration::from_secs(10), 4, 7);
        let b = poisson(1000.0, Duration::from_secs(10), 4, 7);
        assert_eq!(a, b);
        assert!((9_500..10_500).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(a.iter().all(|x| x.client < 4));
    }
}
