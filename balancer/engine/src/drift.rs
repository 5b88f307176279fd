//! Drift: alert when an endpoint's weight moved by more than `drift_threshold` (absolute share: 0.20 is 20
//! percentage points) within `drift_window`. Sliding minimum and maximum over the window with monotone deques,
//! so each observation is O(1) amortised and the history is bounded by the number of ticks in the window.

use std::collections::VecDeque;
use std::time::Instant;

use super::config::EngineConfig;

/// Hard bound on kept samples per deque (far above 5 min / 500 ms).
const MAX_SAMPLES: usize = 4096;

/// Per-endpoint drift detector.
#[derive(Debug, Clone, Default)]
pub struct Drift {
    max_q: VecDeque<(Instant, f64)>,
    min_q: VecDeque<(Instant, f64)>,
}

impl Drift {
    /// Observes the weight at `now`; returns `(from, to)` when it moved more than the threshold within the
    /// window (`from` is the extreme it moved away from). After an alert the history restarts at `now`.
    pub fn observe(&mut self, now: Instant, weight: f64, cfg: &EngineConfig) -> Option<(f64, f64)> {
        for q in [&mut self.max_q, &mut self.min_q] {
            while q
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > cfg.drift_window)
            {
                q.pop_front();
            }
            if q.len() >= MAX_SAMPLES {
                q.pop_front();
            }
        }
        while self.max_q.back().is_some_and(|(_, w)| *w <= weight) {
            self.max_q.pop_back();
        }
        self.max_q.push_back((now, weight));
        while self.min_q.back().is_some_and(|(_, w)| *w >= weight) {
            self.min_q.pop_back();
        }
        self.min_q.push_back((now, weight));
        let hi = self.max_q.front().map_or(weight, |x| x.1);
        let lo = self.min_q.front().map_or(weight, |x| x.1);
        if hi - lo > cfg.drift_threshold {
            let from = if (weight - hi).abs() < (weight - lo).abs() {
                lo
            } else {
                hi
            };
            self.max_q.clear();
            self.min_q.clear();
            self.max_q.push_back((now, weight));
            self.min_q.push_back((now, weight));
            return Some((from, weight));
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests need an Instant to start from
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn alerts_on_large_move_within_window_only() {
        let cfg = EngineConfig::default();
        let t0 = Instant::now();
        let mut d = Drift::default();
        assert_eq!(d.observe(t0, 0.5, &cfg), None);
        assert_eq!(d.observe(t0 + Duration::from_secs(60), 0.65, &cfg), None);
        assert_eq!(
            d.observe(t0 + Duration::from_secs(120), 0.75, &cfg),
            Some((0.5, 0.75))
        );
        // Slow moves spread over more than the window never alert.
        let mut d = Drift::default();
        for i in 0..100u64 {
            let w = 0.1 + 0.008 * i as f64;
            assert_eq!(
                d.observe(t0 + Duration::from_secs(60 * i), w, &cfg),
                None,
                "{i}"
            );
        }
    }
}
