//! Freshness by the coordinator's **receive** time (never the sender's clock).
//!
//! A heartbeat is missed once a quarter interval has passed beyond its due time (so a heartbeat arriving at
//! the same instant as a tick is never a miss). Nothing happens on one miss; after `degraded_after_missed` the
//! endpoint is degraded (its share is reduced, never raised, and its last load is kept: silence is not zero
//! load); after `eject_after` of silence it is ejected (share 0).

use std::time::{Duration, Instant};

use super::config::EngineConfig;

/// How fresh an endpoint's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Fewer than `degraded_after_missed` heartbeats missed (the number is given).
    Fresh(u32),
    /// At least `degraded_after_missed` missed.
    Degraded(u32),
    /// Silent for at least `eject_after`.
    Expired,
}

fn grace(cfg: &EngineConfig) -> Duration {
    cfg.heartbeat_interval / 4
}

/// Heartbeats missed since `last` at `now`.
pub fn missed(last: Instant, now: Instant, cfg: &EngineConfig) -> u32 {
    let elapsed = now.saturating_duration_since(last);
    let g = grace(cfg);
    if elapsed <= cfg.heartbeat_interval + g {
        return 0;
    }
    let n = (elapsed - g).as_nanos() / cfg.heartbeat_interval.as_nanos().max(1);
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Classifies an endpoint last heard from at `last`.
pub fn classify(last: Instant, now: Instant, cfg: &EngineConfig) -> Freshness {
    if now.saturating_duration_since(last) >= cfg.eject_after {
        return Freshness::Expired;
    }
    let m = missed(last, now, cfg);
    if m >= cfg.degraded_after_missed {
        Freshness::Degraded(m)
    } else {
        Freshness::Fresh(m)
    }
}

/// The next instant at which `classify` changes for an endpoint last heard from at `last`.
pub fn next_change(last: Instant, now: Instant, cfg: &EngineConfig) -> Option<Instant> {
    let degraded_at = last + cfg.heartbeat_interval * cfg.degraded_after_missed + grace(cfg);
    let ejected_at = last + cfg.eject_after;
    [degraded_at, ejected_at]
        .into_iter()
        .filter(|t| *t > now)
        .min()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests need an Instant to start from
mod tests {
    use super::*;

    #[test]
    fn one_miss_is_nothing_three_degrade_timeout_ejects() {
        let cfg = EngineConfig::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(classify(t0, t0 + ms(500), &cfg), Freshness::Fresh(0));
        assert_eq!(classify(t0, t0 + ms(1000), &cfg), Freshness::Fresh(1));
        assert_eq!(classify(t0, t0 + ms(1500), &cfg), Freshness::Fresh(2));
        assert_eq!(classify(t0, t0 + ms(1650), &cfg), Freshness::Degraded(3));
        assert_eq!(classify(t0, t0 + ms(5000), &cfg), Freshness::Expired);
        assert_eq!(next_change(t0, t0, &cfg), Some(t0 + ms(1625)));
    }
}
