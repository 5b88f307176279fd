//! Oscillation: a sawtooth is `oscillation_min_reversals` direction reversals of an endpoint's weight within
//! `oscillation_window` (moves smaller than the decision threshold are not directions, and a reversal counts
//! only when the swing it ends, from the previous turning point to this one, is at least
//! `oscillation_min_swing`: measurement noise wobbles a weight by a point or two without being a sawtooth,
//! and damping on noise would slow the reaction to a real change). While any endpoint
//! oscillates, the engine smooths with `oscillation_damped_alpha` instead of `alpha` (damping harder); once no
//! reversal has been seen for a whole window it relaxes back.

use std::collections::VecDeque;
use std::time::Instant;

use super::config::EngineConfig;

/// Per-endpoint sawtooth detector.
#[derive(Debug, Clone, Default)]
pub struct Oscillation {
    last_direction: i8,
    /// The weight at the last turning point, and the extreme reached since.
    turn: Option<(f64, f64)>,
    reversals: VecDeque<Instant>,
    /// Whether a sawtooth is in force for this endpoint.
    pub damped: bool,
}

/// A change of an endpoint's damping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OscillationEvent {
    /// Nothing changed.
    None,
    /// A sawtooth was detected with this many reversals.
    Detected(usize),
    /// The sawtooth stopped.
    Relaxed,
}

impl Oscillation {
    /// Observes one tick's weight change.
    pub fn observe(
        &mut self,
        now: Instant,
        old: f64,
        new: f64,
        min_step: f64,
        cfg: &EngineConfig,
    ) -> OscillationEvent {
        let delta = new - old;
        let (turned_at, extreme) = *self.turn.get_or_insert((old, old));
        if delta.abs() >= min_step && min_step > 0.0 {
            let dir: i8 = if delta > 0.0 { 1 } else { -1 };
            if self.last_direction != 0 && dir != self.last_direction {
                // `old` is the turning point; the swing that just ended went from `turned_at` to it.
                if (extreme - turned_at).abs() >= cfg.oscillation_min_swing {
                    self.reversals.push_back(now);
                }
                self.turn = Some((extreme, new));
            } else {
                self.turn = Some((turned_at, new));
            }
            self.last_direction = dir;
        } else if let Some((_, e)) = &mut self.turn {
            // Small moves extend the current swing without changing its direction.
            if (self.last_direction > 0 && new > *e) || (self.last_direction < 0 && new < *e) {
                *e = new;
            }
        }
        while self
            .reversals
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > cfg.oscillation_window)
        {
            self.reversals.pop_front();
        }
        // Bounded: never more entries than needed to decide.
        while self.reversals.len() > 4 * cfg.oscillation_min_reversals.max(1) {
            self.reversals.pop_front();
        }
        if !self.damped && self.reversals.len() >= cfg.oscillation_min_reversals {
            self.damped = true;
            return OscillationEvent::Detected(self.reversals.len());
        }
        if self.damped && self.reversals.is_empty() {
            self.damped = false;
            return OscillationEvent::Relaxed;
        }
        OscillationEvent::None
    }

    /// Reversals within the window.
    pub fn reversals(&self) -> usize {
        self.reversals.len()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests need an Instant to start from
mod tests {
    use super::*;
    use std::time::Duration;

    fn run(weights: &[f64]) -> (Oscillation, bool) {
        let cfg = EngineConfig::default();
        let start = Instant::now();
        let mut o = Oscillation::default();
        let mut detected = false;
        for (k, pair) in weights.windows(2).enumerate() {
            let now = start + Duration::from_millis(500 * k as u64);
            detected |= matches!(
                o.observe(now, pair[0], pair[1], cfg.decision_threshold, &cfg),
                OscillationEvent::Detected(_)
            );
        }
        (o, detected)
    }

    #[test]
    fn noise_of_a_point_or_two_is_not_a_sawtooth() {
        let noisy: Vec<f64> = (0..30)
            .map(|k| 0.67 + if k % 2 == 0 { 0.012 } else { -0.012 })
            .collect();
        let (o, detected) = run(&noisy);
        assert!(!detected && o.reversals() == 0);
    }

    #[test]
    fn large_swings_back_and_forth_are_a_sawtooth() {
        let saw: Vec<f64> = (0..30)
            .map(|k| if (k / 2) % 2 == 0 { 0.5 } else { 0.7 })
            .collect();
        let (o, detected) = run(&saw);
        assert!(detected && o.damped);
    }
}
