//! Canary rules: a fixed floor (`canary_floor`), a breaker that drops the canary to 0 and alerts when its
//! window error rate reaches `canary_error_threshold` (judged by the lower bound of its 95% Wilson interval, so a
//! handful of requests is not over-read), and progressive delivery: while its metrics stay at
//! least as good as the stable endpoints' (error rate no higher, request-weighted mean latency no higher) for
//! `canary_promotion_period`, its allowance grows by `canary_step`, up to `canary_max_share`.

use std::time::Instant;

use super::config::EngineConfig;
use super::window::Aggregate;

/// The stable (non-canary, active) endpoints' metrics, aggregated by volume.
#[derive(Debug, Clone, Copy, Default)]
pub struct StableMetrics {
    /// Requests in their windows.
    pub completed: f64,
    /// Σ failed / Σ completed.
    pub error_rate: f64,
    /// Request-weighted mean latency, seconds.
    pub mean_s: f64,
}

/// Lower bound of the 95% Wilson score interval of a failure proportion: a canary at 1% of traffic sees few
/// requests, and one failure in eight must not read as a 12% error rate, while eight failures in eight must.
pub fn wilson_lower_bound(failed: f64, total: f64) -> f64 {
    if total <= 0.0 {
        return 0.0;
    }
    const Z: f64 = 1.96;
    let p = (failed / total).clamp(0.0, 1.0);
    let z2 = Z * Z;
    let centre = p + z2 / (2.0 * total);
    let margin = Z * (p * (1.0 - p) / total + z2 / (4.0 * total * total)).sqrt();
    ((centre - margin) / (1.0 + z2 / total)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_needs_evidence() {
        assert!(wilson_lower_bound(1.0, 8.0) < 0.05);
        assert!(wilson_lower_bound(8.0, 8.0) > 0.5);
        assert!(wilson_lower_bound(30.0, 200.0) > 0.05);
        assert_eq!(wilson_lower_bound(0.0, 0.0), 0.0);
    }
}

/// What a canary evaluation decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CanaryEvent {
    /// Nothing changed.
    None,
    /// The breaker tripped at this error rate.
    Tripped(f64),
    /// The allowance grew to this share.
    Promoted(f64),
}

/// Per-canary state.
#[derive(Debug, Clone)]
pub struct Canary {
    /// The largest share the canary may have now.
    pub allowance: f64,
    /// Since when the canary has been at least as good as stable.
    pub good_since: Option<Instant>,
    /// Whether the breaker is open (share 0).
    pub tripped: bool,
}

impl Canary {
    /// A fresh canary at its floor.
    pub fn new(cfg: &EngineConfig) -> Canary {
        Canary {
            allowance: cfg.canary_floor,
            good_since: None,
            tripped: false,
        }
    }

    /// Evaluates the canary's window against the stable endpoints'.
    pub fn evaluate(
        &mut self,
        now: Instant,
        canary: &Aggregate,
        stable: &StableMetrics,
        fresh_data: bool,
        cfg: &EngineConfig,
    ) -> CanaryEvent {
        if self.tripped {
            return CanaryEvent::None;
        }
        if canary.completed >= cfg.canary_min_requests as f64
            && wilson_lower_bound(canary.failed, canary.completed) >= cfg.canary_error_threshold
        {
            self.tripped = true;
            self.good_since = None;
            return CanaryEvent::Tripped(canary.error_rate);
        }
        if !fresh_data
            || canary.completed < cfg.canary_min_requests as f64
            || stable.completed <= 0.0
        {
            return CanaryEvent::None;
        }
        let good = canary.error_rate <= stable.error_rate + 1e-9 && canary.mean_s <= stable.mean_s;
        if !good {
            self.good_since = None;
            return CanaryEvent::None;
        }
        let since = *self.good_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= cfg.canary_promotion_period
            && self.allowance < cfg.canary_max_share
        {
            self.allowance = (self.allowance + cfg.canary_step).min(cfg.canary_max_share);
            self.good_since = Some(now);
            return CanaryEvent::Promoted(self.allowance);
        }
        CanaryEvent::None
    }
}
