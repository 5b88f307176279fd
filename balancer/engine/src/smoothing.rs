//! Smoothing: `new = α·calculated + (1−α)·old`, with α per heartbeat interval. Ticks at other spacings use
//! the equivalent `α_dt = 1 − (1−α)^(dt/interval)`, so an extra tick (an endpoint added between ticks) does not
//! speed the loop up and a late tick does not slow it down.

use std::time::Duration;

/// α for a tick `dt` after the previous one.
pub fn alpha_for(alpha: f64, dt: Duration, interval: Duration) -> f64 {
    if dt.is_zero() || interval.is_zero() {
        return 0.0;
    }
    let steps = (dt.as_secs_f64() / interval.as_secs_f64()).min(100.0);
    (1.0 - (1.0 - alpha).powf(steps)).clamp(0.0, 1.0)
}

/// α for a move of `gap` (calculated − current share): the full α for gaps of `band` or more, less in
/// proportion for smaller ones, down to a quarter of α. Near its target a weight follows only what persists:
/// heartbeat-to-heartbeat noise in the estimates (a point or two of share) no longer walks it around, while a
/// real change, which opens a wide gap, is followed at the full rate. `band = 0` turns this off.
pub fn settled_alpha(alpha: f64, gap: f64, band: f64) -> f64 {
    if band <= 0.0 || !gap.is_finite() {
        return alpha;
    }
    alpha * (gap.abs() / band).clamp(0.25, 1.0)
}

/// One smoothing step.
pub fn smooth(old: f64, calculated: f64, alpha: f64) -> f64 {
    alpha * calculated + (1.0 - alpha) * old
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_scales_with_tick_spacing() {
        let i = Duration::from_millis(500);
        assert!((alpha_for(0.3, i, i) - 0.3).abs() < 1e-12);
        assert!((alpha_for(0.3, i * 2, i) - 0.51).abs() < 1e-12);
        assert_eq!(alpha_for(0.3, Duration::ZERO, i), 0.0);
        assert!((smooth(0.5, 1.0, 0.3) - 0.65).abs() < 1e-12);
    }

    #[test]
    fn small_gaps_move_slowly_large_ones_at_full_alpha() {
        assert_eq!(settled_alpha(0.3, 0.2, 0.05), 0.3);
        assert_eq!(settled_alpha(0.3, -0.05, 0.05), 0.3);
        assert!((settled_alpha(0.3, 0.025, 0.05) - 0.15).abs() < 1e-12);
        assert!((settled_alpha(0.3, 0.001, 0.05) - 0.075).abs() < 1e-12);
        assert_eq!(settled_alpha(0.3, 0.001, 0.0), 0.3);
    }
}
