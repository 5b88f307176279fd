//! Oscillation: a sawtooth is `oscillation_min_reversals` direction reversals of an endpoint's weight within
//! `oscillation_window` (moves smaller than the decision threshold are not directions). While any endpoint
//! oscillates, the engine smooths with `oscillation_damped_alpha` instead of `alpha` (damping harder); once no
//! reversal has been seen for a whole window it relaxes back.

use std::collections::VecDeque;
use std::time::Instant;

use super::config::EngineConfig;

/// Per-endpoint sawtooth detector.
#[derive(Debug, Clone, Default)]
pub struct Oscillation {
    last_direction: i8,
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
        delta: f64,
        min_step: f64,
        cfg: &EngineConfig,
    ) -> OscillationEvent {
        if delta.abs() >= min_step && min_step > 0.0 {
            let dir: i8 = if delta > 0.0 { 1 } else { -1 };
            if self.last_direction != 0 && dir != self.last_direction {
                self.reversals.push_back(now);
            }
            self.last_direction = dir;
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
