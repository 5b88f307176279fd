//! The sliding window of the last N heartbeats of one endpoint, and its aggregate.
//!
//! Units: `in_flight` is a concurrency (a sample, averaged over heartbeats); `completed` and `failed` are
//! counts, so throughput is `Σ completed / Σ window` in requests per second. Latencies are aggregated **by
//! volume**: the mean is request-weighted; the p99 of the window is the largest p99 of heartbeats that carry at
//! least 1% of the window's requests (the p99 of a union of samples never exceeds the largest p99 of its parts,
//! so this is a conservative bound, and near-empty heartbeats cannot dominate it); the p50 is a request-weighted
//! blend (approximate, only used for display). The window is a fixed ring: pushing a heartbeat never allocates.

use std::time::{Duration, Instant};

/// Most heartbeats a window may hold (the configuration allows 5..=10).
pub const MAX_WINDOW: usize = 10;

/// An error-rate jump (absolute) between a new heartbeat and its window that restarts the window. At 20
/// requests a jump of 0.10 is about three standard deviations of a 5% error rate.
pub const STEP_ERROR_RATE: f64 = 0.10;

/// One heartbeat, as kept in the window (seconds as `f64`).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Coordinator receive time.
    pub received: Instant,
    /// Concurrency when sent.
    pub in_flight: f64,
    /// Requests completed in the heartbeat's window (successes and failures).
    pub completed: f64,
    /// Requests that failed.
    pub failed: f64,
    /// The heartbeat's measurement window, seconds.
    pub window_s: f64,
    /// Mean latency, seconds.
    pub mean_s: f64,
    /// Median latency, seconds.
    pub p50_s: f64,
    /// 99th percentile latency, seconds.
    pub p99_s: f64,
    /// Utilization in [0, ∞), if reported.
    pub utilization: Option<f64>,
}

/// The last `len` samples of one endpoint.
#[derive(Debug, Clone)]
pub struct Window {
    ring: [Option<Sample>; MAX_WINDOW],
    next: usize,
    capacity: usize,
    count: usize,
}

/// A window reduced to the numbers the rules use.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Aggregate {
    /// Heartbeats aggregated.
    pub heartbeats: usize,
    /// Σ completed.
    pub completed: f64,
    /// Σ failed.
    pub failed: f64,
    /// Σ window seconds.
    pub window_s: f64,
    /// Throughput, requests per second.
    pub throughput: f64,
    /// failed / completed, 0 when nothing completed.
    pub error_rate: f64,
    /// Request-weighted mean latency, seconds (0 when nothing completed).
    pub mean_s: f64,
    /// Request-weighted p50 blend, seconds.
    pub p50_s: f64,
    /// Largest p99 of heartbeats holding ≥ 1% of the requests, seconds.
    pub p99_s: f64,
    /// Mean in-flight concurrency.
    pub in_flight: f64,
    /// Busy fraction: `Σ utilization·window / Σ window` over heartbeats that report it.
    pub utilization: Option<f64>,
    /// Σ utilization·window, seconds (busy time, for `completed / busy`).
    pub busy_s: f64,
    /// Σ completed over heartbeats that report utilization.
    pub completed_with_utilization: f64,
}

impl Window {
    /// An empty window of `len` heartbeats (clamped to 1..=MAX_WINDOW).
    pub fn new(len: usize) -> Window {
        Window {
            ring: [None; MAX_WINDOW],
            next: 0,
            capacity: len.clamp(1, MAX_WINDOW),
            count: 0,
        }
    }

    /// Adds a sample, dropping the oldest once full. With `step_change_factor > 1`, a sample whose mean
    /// latency differs from the window's by more than that factor (and that carries at least 10 requests), or
    /// whose error rate differs from the window's by more than [`STEP_ERROR_RATE`] and three standard errors
    /// (with at least 20 requests),
    /// first clears the window: the estimate then follows the new regime at once. Returns whether it did.
    pub fn push(&mut self, sample: Sample, step_change_factor: f64) -> bool {
        let mut restarted = false;
        if step_change_factor > 1.0 && self.count > 0 && sample.completed >= 10.0 {
            let agg = self.aggregate();
            if agg.completed >= 10.0 && agg.mean_s > 0.0 && sample.mean_s > 0.0 {
                let ratio = sample.mean_s / agg.mean_s;
                // The jump must also be well outside sampling noise: three standard errors of the window's
                // rate at this sample's size (a steady 15% error rate over 40 requests wobbles by ±0.06).
                let p = agg.error_rate.clamp(0.01, 0.99);
                let noise = 3.0 * (p * (1.0 - p) / sample.completed).sqrt();
                let error_jump = sample.completed >= 20.0
                    && (sample.failed / sample.completed - agg.error_rate).abs()
                        > STEP_ERROR_RATE.max(noise);
                if ratio > step_change_factor || ratio < 1.0 / step_change_factor || error_jump {
                    self.clear();
                    restarted = true;
                }
            }
        }
        self.ring[self.next] = Some(sample);
        self.next = (self.next + 1) % self.capacity;
        self.count = (self.count + 1).min(self.capacity);
        restarted
    }

    /// Forgets every sample.
    pub fn clear(&mut self) {
        self.ring = [None; MAX_WINDOW];
        self.next = 0;
        self.count = 0;
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no sample is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&Sample> {
        if self.count == 0 {
            return None;
        }
        self.ring[(self.next + self.capacity - 1) % self.capacity].as_ref()
    }

    /// Receive time of the newest sample.
    pub fn last_received(&self) -> Option<Instant> {
        self.latest().map(|s| s.received)
    }

    /// Reduces the window by volume (see the module docs).
    pub fn aggregate(&self) -> Aggregate {
        let mut a = Aggregate::default();
        let mut mean_num = 0.0;
        let mut p50_num = 0.0;
        let mut util_time = 0.0;
        let mut util_window = 0.0;
        for s in self.ring.iter().take(self.capacity).flatten() {
            a.heartbeats += 1;
            a.completed += s.completed;
            a.failed += s.failed;
            a.window_s += s.window_s;
            a.in_flight += s.in_flight;
            mean_num += s.completed * s.mean_s;
            p50_num += s.completed * s.p50_s;
            if let Some(u) = s.utilization {
                util_time += u * s.window_s;
                util_window += s.window_s;
                a.completed_with_utilization += s.completed;
            }
        }
        if a.heartbeats == 0 {
            return a;
        }
        a.in_flight /= a.heartbeats as f64;
        if a.window_s > 0.0 {
            a.throughput = a.completed / a.window_s;
        }
        if a.completed > 0.0 {
            a.error_rate = (a.failed / a.completed).clamp(0.0, 1.0);
            a.mean_s = mean_num / a.completed;
            a.p50_s = p50_num / a.completed;
            let min_volume = 0.01 * a.completed;
            a.p99_s = self
                .ring
                .iter()
                .take(self.capacity)
                .flatten()
                .filter(|s| s.completed >= min_volume && s.completed > 0.0)
                .map(|s| s.p99_s)
                .fold(0.0, f64::max);
        }
        if util_window > 0.0 {
            a.utilization = Some(util_time / util_window);
            a.busy_s = util_time;
        }
        a
    }
}

/// Seconds of a duration as `f64`.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests need an Instant to start from
mod tests {
    use super::*;

    fn sample(t: Instant, completed: f64, mean_ms: f64, p99_ms: f64) -> Sample {
        Sample {
            received: t,
            in_flight: 1.0,
            completed,
            failed: 0.0,
            window_s: 0.5,
            mean_s: mean_ms / 1e3,
            p50_s: mean_ms / 1e3,
            p99_s: p99_ms / 1e3,
            utilization: None,
        }
    }

    #[test]
    fn aggregates_by_volume() {
        let t = Instant::now();
        let mut w = Window::new(5);
        w.push(sample(t, 90.0, 10.0, 20.0), 0.0);
        w.push(sample(t, 10.0, 20.0, 50.0), 0.0);
        w.push(sample(t, 0.5, 20.0, 900.0), 0.0); // under 1% of the volume: its p99 is ignored
        let a = w.aggregate();
        assert!((a.throughput - 100.5 / 1.5).abs() < 1e-9);
        assert!((a.mean_s - (90.0 * 0.010 + 10.5 * 0.020) / 100.5).abs() < 1e-12);
        assert!((a.p99_s - 0.050).abs() < 1e-12);
    }

    #[test]
    fn ring_drops_oldest_and_restarts_on_step_change() {
        let t = Instant::now();
        let mut w = Window::new(5);
        for _ in 0..7 {
            w.push(sample(t, 50.0, 10.0, 20.0), 2.0);
        }
        assert_eq!(w.len(), 5);
        assert!(w.push(sample(t, 50.0, 50.0, 90.0), 2.0));
        assert_eq!(w.len(), 1);
        assert!((w.aggregate().mean_s - 0.050).abs() < 1e-12);
    }

    #[test]
    fn error_rate_noise_does_not_restart_but_a_real_step_does() {
        let t = Instant::now();
        let with_errors = |failed: f64| Sample {
            failed,
            ..sample(t, 40.0, 10.0, 20.0)
        };
        let mut w = Window::new(8);
        for failed in [6.0, 6.0, 6.0, 6.0] {
            w.push(with_errors(failed), 2.0);
        }
        // 15% steady; one heartbeat at 30% (12 of 40) is within three standard errors of sampling noise.
        assert!(!w.push(with_errors(12.0), 2.0));
        // 80% is a step.
        assert!(w.push(with_errors(32.0), 2.0));
    }
}
