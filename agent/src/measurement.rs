//! The normalised report: what every way of measuring a backend (layer, proxy, poller) produces.

use std::time::Duration;

/// One measurement of a backend over one window.
///
/// Units: `in_flight` is a concurrency at the moment of measuring and `mean_in_flight` the same averaged over
/// time; `completed` and `failed` count requests that finished during `window`; latencies are over the
/// requests completed in the window; `busy_fraction` and `utilization` are fractions.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Requests in flight at the moment of measuring.
    pub in_flight: u32,
    /// Requests that finished in the window (successes and failures).
    pub completed: u64,
    /// Requests that finished in the window with a failure status.
    pub failed: u64,
    /// The length of the window.
    pub window: Duration,
    /// Mean latency over the window (zero when nothing completed).
    pub latency_mean: Duration,
    /// Median latency over the window.
    pub latency_p50: Duration,
    /// 99th-percentile latency over the window.
    pub latency_p99: Duration,
    /// Whether the backend accepts new requests.
    pub accepting: bool,
    /// Declared capacity in concurrent requests, if configured.
    pub declared_capacity: Option<u32>,
    /// Utilization (e.g. CPU) as a fraction, if known: the backend's own figure, not derived from the
    /// in-flight count (see `busy_fraction` for that).
    pub utilization: Option<f64>,
    /// Time-averaged number of requests in flight over the window, `∫ N(t) dt / window` (≥ 0; above the
    /// declared capacity when requests queue). The recorder measures it exactly; the JSON poller, which only
    /// sees snapshots, reports its snapshot of the in-flight count here.
    pub mean_in_flight: f64,
    /// Fraction of the declared slots busy over the window, `∫ min(N(t), k) dt / (k · window)` in [0, 1]
    /// for a declared capacity of `k` slots; `None` without a declared capacity or when the source cannot integrate
    /// over time (the JSON poller). 1.0 means every slot was busy the whole window (queueing shows in
    /// `mean_in_flight > k`, not here).
    pub busy_fraction: Option<f64>,
    /// Age of the oldest request still in flight at the moment of measuring; `None` when nothing is in flight
    /// or the source does not know (the JSON poller). The recorder's figure is an upper bound, above the true
    /// age by less than `max(1 ms, 2 · age / 63)` (see [`crate::recorder`]).
    pub oldest_in_flight: Option<Duration>,
}

/// Something that can be asked for the measurement of the window that just ended.
///
/// `take_window` closes the current window and starts a new one; the reporter calls it once per heartbeat
/// interval, so every source sees exactly one caller.
pub trait MeasurementSource: Send + Sync + 'static {
    /// Closes the current window and returns its measurement.
    fn take_window(&self) -> Measurement;
}
