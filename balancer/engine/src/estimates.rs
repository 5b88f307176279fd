//! Per-endpoint windows aggregated into capacity estimates, latency steps, canary comparisons and drift.

use super::*;

impl Engine {
    pub(crate) fn refresh_estimates(&mut self, now: Instant) {
        let cfg = &self.config;
        for ep in &mut self.endpoints {
            if ep.fresh_data {
                ep.agg = ep.window.aggregate();
                ep.capacity = capacity::estimate(&ep.agg, ep.declared, cfg);
                if ep.capacity.is_some() {
                    self.ever_had_data = true;
                }
            }
        }
        // Canary evaluation against the stable endpoints, by volume.
        let mut stable = StableMetrics::default();
        let (mut failed, mut lat) = (0.0, 0.0);
        for ep in &self.endpoints {
            if !ep.is_canary && ep.state == EndpointState::Active {
                stable.completed += ep.agg.completed;
                failed += ep.agg.failed;
                lat += ep.agg.mean_s * ep.agg.completed;
            }
        }
        if stable.completed > 0.0 {
            stable.error_rate = failed / stable.completed;
            stable.mean_s = lat / stable.completed;
        }
        for ep in &mut self.endpoints {
            let fresh = ep.fresh_data;
            ep.fresh_data = false;
            if !ep.state.is_live() {
                continue;
            }
            let Some(c) = ep.canary.as_mut() else {
                continue;
            };
            match c.evaluate(now, &ep.agg, &stable, fresh, cfg) {
                CanaryEvent::None => {}
                CanaryEvent::Tripped(rate) => {
                    let msg = format!(
                        "canary {} error rate {:.1}% over {} requests reached the breaker threshold {:.1}%; share set to 0",
                        ep.spec.id,
                        rate * 100.0,
                        ep.agg.completed,
                        cfg.canary_error_threshold * 100.0
                    );
                    ep.pending = Some((Rule::CanaryBreaker, msg.clone()));
                    ep.state = EndpointState::Tripped;
                    self.alerts.push(Alert {
                        at: now,
                        endpoint: Some(ep.spec.id.clone()),
                        kind: AlertKind::CanaryBreaker,
                        message: msg,
                    });
                }
                CanaryEvent::Promoted(allowance) => {
                    let msg = format!(
                        "canary {} stayed at least as good as stable for {:?} (errors {:.2}% vs {:.2}%, mean {:.1} ms vs {:.1} ms); allowance raised to {:.2}",
                        ep.spec.id,
                        cfg.canary_promotion_period,
                        ep.agg.error_rate * 100.0,
                        stable.error_rate * 100.0,
                        ms(ep.agg.mean_s),
                        ms(stable.mean_s),
                        allowance
                    );
                    ep.pending = Some((Rule::CanaryPromotion, msg.clone()));
                    self.alerts.push(Alert {
                        at: now,
                        endpoint: Some(ep.spec.id.clone()),
                        kind: AlertKind::CanaryPromoted,
                        message: msg,
                    });
                }
            }
        }
    }
}
