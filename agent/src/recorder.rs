//! The shared measurement state every in-band way of measuring (the tower layer, the h2c proxy) writes into.
//!
//! A [`Recorder`] is cheap to clone (one `Arc`) and is shared by every request handler and by the reporter:
//!
//! - a request calls [`Recorder::begin`] and gets an [`InFlightGuard`]; the in-flight count is an atomic;
//! - the guard's [`InFlightGuard::finish`] records the latency (from `begin` to `finish`, on the recorder's
//!   [`Clock`]) into the current window's HDR histogram and counts a success or a failure. Those three
//!   updates share one short `Mutex` so a window's counts and its histogram always agree; the lock is held
//!   for a histogram increment and is never on a client's pick path (the agent runs beside the backend);
//! - a guard dropped without `finish` is **cancelled**: the client went away (RST_STREAM, its deadline,
//!   a disconnect) before the response ended. It leaves the in-flight count and is counted in
//!   [`Recorder::cancelled_total`], but it is *not* counted as completed or failed and its latency is not
//!   recorded: the backend did not fail, and the partial latency measures the client's patience, not the
//!   backend's service time. (A backend that is so slow that clients give up still shows in `in_flight`
//!   and in the latency of the requests that do complete.)
//! - [`MeasurementSource::take_window`] closes the window: it swaps the histogram for a spare one,
//!   reads mean/p50/p99 outside the lock, and remembers the window's rates (requests and errors per
//!   second) for the ORCA trailer ([`Recorder::last_rates`]).
//!
//! Time is read only through the [`Clock`] seam: [`TokioClock`] (the default) reads
//! `tokio::time::Instant`, so `#[tokio::test(start_paused = true)]` tests control it; [`ManualClock`]
//! is for tests without a runtime. `std::time::Instant` is never read here.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::measurement::{Measurement, MeasurementSource};

/// Where the measuring code reads the time. Read once per event, at the edge.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The default clock: `tokio::time::Instant::now()`, which follows tokio's paused test time.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to; for deterministic tests without a runtime.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Instant>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How a finished request ended, from the backend's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend served the request (including client errors such as `INVALID_ARGUMENT`).
    Success,
    /// The backend failed the request (e.g. `UNAVAILABLE`, `INTERNAL`); see [`crate::layer`] for the list.
    Failure,
}

/// Requests and errors per second over the most recently closed window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowRates {
    /// Completed requests per second (successes and failures).
    pub rps: f64,
    /// Failed requests per second.
    pub eps: f64,
}

/// Latencies are recorded in microseconds, from 1 µs to one hour, with two significant digits.
const HIST_MAX_MICROS: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy hdrhistogram's preconditions (low >= 1, high >= 2 * low,
    // sigfig <= 5), so this cannot fail on any input.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, HIST_MAX_MICROS, 2).expect("constant histogram bounds are valid")
}

#[derive(Debug)]
struct Window {
    started: Instant,
    completed: u64,
    failed: u64,
    latencies: Histogram<u64>,
    /// A reset histogram kept to swap in on `take_window`, so closing a window does not allocate.
    spare: Option<Histogram<u64>>,
}

/// Sentinel for "not set" in the option-valued atomics.
const UNSET: u64 = u64::MAX;

struct Inner {
    clock: Arc<dyn Clock>,
    in_flight: AtomicU32,
    cancelled_total: AtomicU64,
    accepting: AtomicBool,
    /// `UNSET` or a `u32` capacity.
    declared_capacity: AtomicU64,
    /// `UNSET` or the bits of an `f64` in 0..=1.
    utilization: AtomicU64,
    /// Bits of the last closed window's `f64` rates.
    last_rps: AtomicU64,
    last_eps: AtomicU64,
    window: Mutex<Window>,
}

/// The shared measurement state; see the [module docs](self).
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("in_flight", &self.in_flight())
            .field("accepting", &self.accepting())
            .field("declared_capacity", &self.declared_capacity())
            .field("utilization", &self.utilization())
            .finish_non_exhaustive()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder on the [`TokioClock`], accepting, with no declared capacity or utilization.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(TokioClock))
    }

    /// A recorder reading time from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        let started = clock.now();
        Self {
            inner: Arc::new(Inner {
                clock,
                in_flight: AtomicU32::new(0),
                cancelled_total: AtomicU64::new(0),
                accepting: AtomicBool::new(true),
                declared_capacity: AtomicU64::new(UNSET),
                utilization: AtomicU64::new(UNSET),
                last_rps: AtomicU64::new(0f64.to_bits()),
                last_eps: AtomicU64::new(0f64.to_bits()),
                window: Mutex::new(Window {
                    started,
                    completed: 0,
                    failed: 0,
                    latencies: new_histogram(),
                    spare: Some(new_histogram()),
                }),
            }),
        }
    }

    /// The recorder's clock reading.
    pub fn now(&self) -> Instant {
        self.inner.clock.now()
    }

    /// A request starts: counts it in flight until the returned guard is finished or dropped.
    pub fn begin(&self) -> InFlightGuard {
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            inner: Arc::clone(&self.inner),
            started: self.inner.clock.now(),
            finished: false,
        }
    }

    /// Requests in flight right now.
    pub fn in_flight(&self) -> u32 {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Requests whose guard was dropped without `finish` since the recorder was created.
    pub fn cancelled_total(&self) -> u64 {
        self.inner.cancelled_total.load(Ordering::Relaxed)
    }

    /// Sets whether the backend accepts new requests (drain sets `false`).
    pub fn set_accepting(&self, accepting: bool) {
        self.inner.accepting.store(accepting, Ordering::Relaxed);
    }

    /// Whether the backend accepts new requests.
    pub fn accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::Relaxed)
    }

    /// Sets (or clears) the declared capacity, in concurrent requests. `Some(0)` is treated as unset.
    pub fn set_declared_capacity(&self, capacity: Option<u32>) {
        let v = match capacity {
            Some(c) if c > 0 => u64::from(c),
            _ => UNSET,
        };
        self.inner.declared_capacity.store(v, Ordering::Relaxed);
    }

    /// The declared capacity, if set.
    pub fn declared_capacity(&self) -> Option<u32> {
        match self.inner.declared_capacity.load(Ordering::Relaxed) {
            UNSET => None,
            v => u32::try_from(v).ok(),
        }
    }

    /// Sets (or clears) the utilization (e.g. CPU) as a fraction; clamped to 0..=1, NaN clears it.
    pub fn set_utilization(&self, utilization: Option<f64>) {
        let v = match utilization {
            Some(u) if !u.is_nan() => u.clamp(0.0, 1.0).to_bits(),
            _ => UNSET,
        };
        self.inner.utilization.store(v, Ordering::Relaxed);
    }

    /// The utilization, if set.
    pub fn utilization(&self) -> Option<f64> {
        match self.inner.utilization.load(Ordering::Relaxed) {
            UNSET => None,
            v => Some(f64::from_bits(v)),
        }
    }

    /// Requests and errors per second over the window most recently closed by `take_window`
    /// (zeros before the first one).
    pub fn last_rates(&self) -> WindowRates {
        WindowRates {
            rps: f64::from_bits(self.inner.last_rps.load(Ordering::Relaxed)),
            eps: f64::from_bits(self.inner.last_eps.load(Ordering::Relaxed)),
        }
    }

    fn lock_window(&self) -> std::sync::MutexGuard<'_, Window> {
        lock_window(&self.inner)
    }
}

fn lock_window(inner: &Inner) -> std::sync::MutexGuard<'_, Window> {
    // A panic while holding this lock can only come from a histogram bug; the counts stay usable.
    inner.window.lock().unwrap_or_else(PoisonError::into_inner)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl MeasurementSource for Recorder {
    fn take_window(&self) -> Measurement {
        let now = self.now();
        let (mut closed, started, completed, failed) = {
            let mut w = self.lock_window();
            let fresh = w.spare.take().unwrap_or_else(new_histogram);
            let closed = std::mem::replace(&mut w.latencies, fresh);
            let started = std::mem::replace(&mut w.started, now);
            let completed = std::mem::take(&mut w.completed);
            let failed = std::mem::take(&mut w.failed);
            (closed, started, completed, failed)
        };
        let window = now.saturating_duration_since(started);
        let (mean, p50, p99) = if closed.is_empty() {
            (Duration::ZERO, Duration::ZERO, Duration::ZERO)
        } else {
            (
                // `mean` is finite and non-negative for a non-empty histogram of u64 values.
                Duration::from_micros(closed.mean().round() as u64),
                Duration::from_micros(closed.value_at_quantile(0.5)),
                Duration::from_micros(closed.value_at_quantile(0.99)),
            )
        };
        closed.reset();
        self.lock_window().spare = Some(closed);

        let secs = window.as_secs_f64();
        let (rps, eps) = if secs > 0.0 {
            (completed as f64 / secs, failed as f64 / secs)
        } else {
            (0.0, 0.0)
        };
        self.inner.last_rps.store(rps.to_bits(), Ordering::Relaxed);
        self.inner.last_eps.store(eps.to_bits(), Ordering::Relaxed);

        Measurement {
            in_flight: self.in_flight(),
            completed,
            failed,
            window,
            latency_mean: mean,
            latency_p50: p50,
            latency_p99: p99,
            accepting: self.accepting(),
            declared_capacity: self.declared_capacity(),
            utilization: self.utilization(),
        }
    }
}

/// One request in flight; see [`Recorder::begin`].
///
/// [`finish`](Self::finish) it with the request's outcome; dropping it unfinished counts the request as
/// cancelled (see the [module docs](self)).
#[must_use = "dropping the guard immediately counts the request as cancelled"]
pub struct InFlightGuard {
    inner: Arc<Inner>,
    started: Instant,
    finished: bool,
}

impl std::fmt::Debug for InFlightGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlightGuard")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl InFlightGuard {
    /// When the request started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The request ended with `outcome`: records its latency and counts it.
    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        let latency = self
            .inner
            .clock
            .now()
            .saturating_duration_since(self.started);
        let mut w = lock_window(&self.inner);
        w.latencies.saturating_record(micros(latency).max(1));
        w.completed += 1;
        if outcome == Outcome::Failure {
            w.failed += 1;
        }
        // `Drop` runs next and leaves the in-flight count.
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.finished {
            self.inner.cancelled_total.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> (Recorder, ManualClock) {
        let clock = ManualClock::new(Instant::now());
        (Recorder::with_clock(Arc::new(clock.clone())), clock)
    }

    #[test]
    fn counts_latency_and_outcomes_per_window() {
        let (rec, clock) = recorder();
        let a = rec.begin();
        let b = rec.begin();
        let c = rec.begin();
        assert_eq!(rec.in_flight(), 3);
        clock.advance(Duration::from_millis(10));
        a.finish(Outcome::Success);
        clock.advance(Duration::from_millis(20));
        b.finish(Outcome::Failure);
        drop(c);
        assert_eq!(rec.in_flight(), 0);
        assert_eq!(rec.cancelled_total(), 1);
        clock.advance(Duration::from_millis(470));

        let m = rec.take_window();
        assert_eq!(m.window, Duration::from_millis(500));
        assert_eq!((m.completed, m.failed, m.in_flight), (2, 1, 0));
        assert!(
            m.latency_p50 >= Duration::from_millis(9) && m.latency_p50 <= Duration::from_millis(11)
        );
        assert!(
            m.latency_p99 >= Duration::from_millis(29)
                && m.latency_p99 <= Duration::from_millis(31)
        );
        // Two significant digits: within 1%.
        assert!(m.latency_mean.abs_diff(Duration::from_millis(20)) <= Duration::from_micros(200));
        assert!(m.accepting);
        let rates = rec.last_rates();
        assert!((rates.rps - 4.0).abs() < 1e-9 && (rates.eps - 2.0).abs() < 1e-9);

        // The next window starts empty.
        clock.advance(Duration::from_millis(500));
        let m = rec.take_window();
        assert_eq!((m.completed, m.failed), (0, 0));
        assert_eq!(m.latency_p99, Duration::ZERO);
    }

    #[test]
    fn settable_fields() {
        let (rec, _clock) = recorder();
        rec.set_accepting(false);
        rec.set_declared_capacity(Some(64));
        rec.set_utilization(Some(1.7));
        let m = rec.take_window();
        assert!(!m.accepting);
        assert_eq!(m.declared_capacity, Some(64));
        assert_eq!(m.utilization, Some(1.0));
        rec.set_declared_capacity(Some(0));
        rec.set_utilization(Some(f64::NAN));
        assert_eq!(rec.declared_capacity(), None);
        assert_eq!(rec.utilization(), None);
    }
}
