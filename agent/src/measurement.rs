//! The normalised report: what every way of measuring a backend (layer, proxy, poller) produces.

use std::time::Duration;

/// One measurement of a backend over one window.
///
/// Units: `in_flight` is a concurrency at the moment of measuring; `completed` and `failed` count requests
/// that finished during `window`; latencies are over the requests completed in the window.
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
    /// Utilization (e.g. CPU) as a fraction, if known.
    pub utilization: Option<f64>,
}

/// Something that can be asked for the measurement of the window that just ended.
///
/// `take_window` closes the current window and starts a new one; the reporter calls it once per heartbeat
/// interval, so every source sees exactly one caller.
pub trait MeasurementSource: Send + Sync + 'static {
    /// Closes the current window and returns its measurement.
    fn take_window(&self) -> Measurement;
}
