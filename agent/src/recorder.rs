//! The shared measurement state every in-band way of measuring (the tower layer, the h2c proxy) writes into.
//!
//! A [`Recorder`] is cheap to clone (one `Arc`) and is shared by every request handler and by the reporter:
//!
//! - a request calls [`Recorder::begin`] and gets an [`InFlightGuard`]; the in-flight count is an atomic
//!   (read without a lock by [`Recorder::in_flight`]);
//! - the guard's [`InFlightGuard::finish`] records the latency (from `begin` to `finish`, on the recorder's
//!   [`Clock`]) into the current window's HDR histogram and counts a success or a failure. Those updates
//!   share one short `Mutex` so a window's counts and its histogram always agree; the lock is held for a
//!   histogram increment and a few counter updates and is never on a client's pick path (the agent runs
//!   beside the backend);
//! - every change of the in-flight count (begin, finish, cancel) takes the same lock, reads the clock under
//!   it and advances the window's **time integrals**: `∫ N(t) dt` (N the in-flight count) and, while a capacity
//!   `k` is declared, `∫ min(N(t), k)/k dt`. The window's [`Measurement::mean_in_flight`] is the first over
//!   the window's length, its [`Measurement::busy_fraction`] the second over the time a capacity was declared
//!   (with a constant `k`: `∫ min(N, k) dt / (k · window)`). The same lock keeps the **oldest in-flight
//!   request**: a bucketed count of in-flight requests by start time (fixed memory, 6 KiB, allocated
//!   once; no allocation per request; see `recorder/oldest.rs` for the structure and the proof of the
//!   bound) gives [`Recorder::oldest_in_flight_age`] and [`Measurement::oldest_in_flight`], an upper bound
//!   of the true age, above it by less than `max(1 ms, 2 · age / 63)` (~3.2%) for ages up to ~12 days;
//! - a guard dropped without `finish` is **cancelled**: the client went away (RST_STREAM, its deadline,
//!   a disconnect) before the response ended. It leaves the in-flight count and is counted in
//!   [`Recorder::cancelled_total`], but it is *not* counted as completed or failed and its latency is not
//!   recorded: the backend did not fail, and the partial latency measures the client's patience, not the
//!   backend's service time. (A backend that is so slow that clients give up still shows in `in_flight`
//!   and in the latency of the requests that do complete.)
//! - [`MeasurementSource::take_window`] closes the window: it swaps the histogram for a spare one,
//!   reads mean/p50/p99 outside the lock, and remembers the window's rates (requests and errors per
//!   second, [`Recorder::last_rates`]) and mean in-flight ([`Recorder::mean_in_flight`]) for the ORCA
//!   trailer.
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

mod oldest;

use oldest::OldestTracker;

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
    /// The in-flight count as the integrals see it (changed under this lock, with the clock read under it).
    n: u32,
    /// The instant the integrals were last advanced to.
    last: Instant,
    /// `∫ N dt` over the window so far, in request-nanoseconds.
    area_ns: u128,
    /// `∫ min(N, k)/k dt` over the window so far, in nanoseconds, while a capacity `k` was declared.
    busy_ns: f64,
    /// The time within the window during which a capacity was declared, in nanoseconds.
    declared_ns: u128,
    /// The start times of the requests in flight, bucketed.
    oldest: OldestTracker,
}

impl Window {
    /// Advances the integrals to `now` with the in-flight count and capacity that held since the last change
    /// (never backwards), and the oldest-request buckets with them.
    fn advance(&mut self, now: Instant, capacity: Option<u32>) {
        if now > self.last {
            let dt = (now - self.last).as_nanos();
            self.area_ns += u128::from(self.n) * dt;
            if let Some(k) = capacity {
                self.busy_ns += f64::from(self.n.min(k)) / f64::from(k) * dt as f64;
                self.declared_ns += dt;
            }
            self.last = now;
        }
        self.oldest.advance(now);
    }

    /// The running mean in-flight of the open window at `now` (after `advance(now)`): the instantaneous
    /// count when no time has passed.
    fn running_mean(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.started).as_nanos();
        if elapsed == 0 {
            f64::from(self.n)
        } else {
            self.area_ns as f64 / elapsed as f64
        }
    }
}

/// Sentinel for "not set" in the option-valued atomics.
const UNSET: u64 = u64::MAX;

struct Inner {
    clock: Arc<dyn Clock>,
    in_flight: AtomicU32,
    cancelled_total: AtomicU64,
    shed_total: AtomicU64,
    accepting: AtomicBool,
    /// `UNSET` or a `u32` capacity.
    declared_capacity: AtomicU64,
    /// `UNSET` or the bits of an `f64` in 0..=1.
    utilization: AtomicU64,
    /// Bits of the last closed window's `f64` rates.
    last_rps: AtomicU64,
    last_eps: AtomicU64,
    /// `UNSET` before the first window closes, then the bits of the last closed window's mean in-flight.
    last_mean_in_flight: AtomicU64,
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
                shed_total: AtomicU64::new(0),
                accepting: AtomicBool::new(true),
                declared_capacity: AtomicU64::new(UNSET),
                utilization: AtomicU64::new(UNSET),
                last_rps: AtomicU64::new(0f64.to_bits()),
                last_eps: AtomicU64::new(0f64.to_bits()),
                last_mean_in_flight: AtomicU64::new(UNSET),
                window: Mutex::new(Window {
                    started,
                    completed: 0,
                    failed: 0,
                    latencies: new_histogram(),
                    spare: Some(new_histogram()),
                    n: 0,
                    last: started,
                    area_ns: 0,
                    busy_ns: 0.0,
                    declared_ns: 0,
                    oldest: OldestTracker::new(started),
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
        let started = {
            let mut w = self.lock_window();
            let now = self.inner.clock.now();
            w.advance(now, self.declared_capacity());
            w.n = w.n.saturating_add(1);
            w.oldest.insert(now);
            self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
            now
        };
        InFlightGuard {
            inner: Arc::clone(&self.inner),
            started,
            finished: false,
        }
    }

    /// The age of the oldest request in flight right now, or `None` when nothing is in flight.
    ///
    /// Bucketed: an upper bound of the true age, above it by less than 1 ms or ~3.2% of the age
    /// (`2 · age / 63`), whichever is larger, for ages up to ~12 days (see the
    /// [module docs](crate::recorder)); beyond that still an upper bound. Takes the recorder's lock briefly.
    pub fn oldest_in_flight_age(&self) -> Option<Duration> {
        let mut w = self.lock_window();
        let now = self.inner.clock.now();
        w.advance(now, self.declared_capacity());
        w.oldest.oldest_age(now)
    }

    /// The time-averaged in-flight count over the window most recently closed by `take_window`.
    ///
    /// Before the first window closes it is the running average of the open window so far (`∫ N dt` since
    /// the recorder started / the time elapsed; the instantaneous count when no time has elapsed), so the
    /// first reports already show load. After that it is a lock-free read.
    pub fn mean_in_flight(&self) -> f64 {
        match self.inner.last_mean_in_flight.load(Ordering::Relaxed) {
            UNSET => {
                let mut w = self.lock_window();
                let now = self.inner.clock.now();
                w.advance(now, self.declared_capacity());
                w.running_mean(now)
            }
            bits => f64::from_bits(bits),
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

    /// Counts a request the load layer refused before it started (overload shedding): never in flight, never
    /// measured, only counted.
    pub fn count_shed(&self) {
        self.inner.shed_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests refused by overload shedding ([`crate::layer::shedding`]) since the recorder was created.
    pub fn shed_total(&self) -> u64 {
        self.inner.shed_total.load(Ordering::Relaxed)
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
    ///
    /// The window's busy integral is advanced with the old capacity up to now first.
    pub fn set_declared_capacity(&self, capacity: Option<u32>) {
        let v = match capacity {
            Some(c) if c > 0 => u64::from(c),
            _ => UNSET,
        };
        let mut w = self.lock_window();
        w.advance(self.inner.clock.now(), self.declared_capacity());
        self.inner.declared_capacity.store(v, Ordering::Relaxed);
    }

    /// The declared capacity, if set.
    pub fn declared_capacity(&self) -> Option<u32> {
        declared_capacity(&self.inner)
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

fn declared_capacity(inner: &Inner) -> Option<u32> {
    match inner.declared_capacity.load(Ordering::Relaxed) {
        UNSET => None,
        v => u32::try_from(v).ok(),
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
        let (now, capacity, mut closed, started, completed, failed, load) = {
            let mut w = self.lock_window();
            let now = self.inner.clock.now();
            let capacity = self.declared_capacity();
            w.advance(now, capacity);
            let load = WindowLoad {
                n: w.n,
                area_ns: std::mem::take(&mut w.area_ns),
                busy_ns: std::mem::take(&mut w.busy_ns),
                declared_ns: std::mem::take(&mut w.declared_ns),
                oldest: w.oldest.oldest_age(now),
            };
            let fresh = w.spare.take().unwrap_or_else(new_histogram);
            let closed = std::mem::replace(&mut w.latencies, fresh);
            let started = std::mem::replace(&mut w.started, now);
            let completed = std::mem::take(&mut w.completed);
            let failed = std::mem::take(&mut w.failed);
            (now, capacity, closed, started, completed, failed, load)
        };
        let window = now.saturating_duration_since(started);
        let (mean_in_flight, busy_fraction) = load.averages(window, capacity);
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
        self.inner
            .last_mean_in_flight
            .store(mean_in_flight.to_bits(), Ordering::Relaxed);

        Measurement {
            in_flight: self.in_flight(),
            completed,
            failed,
            window,
            latency_mean: mean,
            latency_p50: p50,
            latency_p99: p99,
            accepting: self.accepting(),
            declared_capacity: capacity,
            utilization: self.utilization(),
            mean_in_flight,
            busy_fraction,
            oldest_in_flight: load.oldest,
        }
    }
}

/// What `take_window` reads of the integrals under the lock.
struct WindowLoad {
    /// In-flight count at the close.
    n: u32,
    area_ns: u128,
    busy_ns: f64,
    declared_ns: u128,
    oldest: Option<Duration>,
}

impl WindowLoad {
    /// `(mean_in_flight, busy_fraction)` over a window of length `window` closed with `capacity` declared.
    /// A zero-length window gives the instantaneous values (the limit of the averages).
    fn averages(&self, window: Duration, capacity: Option<u32>) -> (f64, Option<f64>) {
        let window_ns = window.as_nanos();
        let mean = if window_ns == 0 {
            f64::from(self.n)
        } else {
            self.area_ns as f64 / window_ns as f64
        };
        let busy = capacity.map(|k| {
            let busy = if self.declared_ns == 0 {
                f64::from(self.n.min(k)) / f64::from(k)
            } else {
                self.busy_ns / self.declared_ns as f64
            };
            busy.clamp(0.0, 1.0)
        });
        (mean, busy)
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
        let (mut w, now) = self.leave();
        let latency = now.saturating_duration_since(self.started);
        w.latencies.saturating_record(micros(latency).max(1));
        w.completed += 1;
        if outcome == Outcome::Failure {
            w.failed += 1;
        }
        // `Drop` runs next and does nothing more.
    }

    /// Takes the request out of the in-flight count, the integrals and the oldest-request buckets, at the
    /// clock's current reading (read under the lock); returns the held lock and that reading.
    fn leave(&self) -> (std::sync::MutexGuard<'_, Window>, Instant) {
        let mut w = lock_window(&self.inner);
        let now = self.inner.clock.now();
        w.advance(now, declared_capacity(&self.inner));
        w.n = w.n.saturating_sub(1);
        w.oldest.remove(self.started);
        self.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        (w, now)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if !self.finished {
            drop(self.leave().0);
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn two_requests_for_half_a_window_on_four_slots() {
        let (rec, clock) = recorder();
        rec.set_declared_capacity(Some(4));
        let a = rec.begin();
        let b = rec.begin();
        clock.advance(ms(250));
        a.finish(Outcome::Success);
        drop(b); // cancelled: it leaves the integrals all the same
        clock.advance(ms(250));
        let m = rec.take_window();
        assert_eq!(m.window, ms(500));
        assert_eq!(m.mean_in_flight, 1.0);
        assert_eq!(m.busy_fraction, Some(0.25));
        assert_eq!(m.oldest_in_flight, None);
        assert_eq!(rec.mean_in_flight(), 1.0);
        assert_eq!(rec.oldest_in_flight_age(), None);

        // The next window starts from zero.
        clock.advance(ms(500));
        let m = rec.take_window();
        assert_eq!((m.mean_in_flight, m.busy_fraction), (0.0, Some(0.0)));
    }

    #[test]
    fn a_queue_longer_than_capacity_is_fully_busy_and_shows_in_the_mean() {
        let (rec, clock) = recorder();
        rec.set_declared_capacity(Some(4));
        let guards: Vec<_> = (0..10).map(|_| rec.begin()).collect();
        clock.advance(ms(400));
        let m = rec.take_window();
        assert_eq!(m.busy_fraction, Some(1.0));
        assert_eq!(m.mean_in_flight, 10.0);
        assert!(m.mean_in_flight > 4.0);
        assert_eq!(m.in_flight, 10);
        assert_eq!(m.oldest_in_flight, Some(ms(400)));
        // Requests in flight across the close count in the next window too.
        clock.advance(ms(100));
        for g in guards {
            g.finish(Outcome::Success);
        }
        clock.advance(ms(100));
        let m = rec.take_window();
        assert_eq!(m.mean_in_flight, 5.0);
        assert_eq!(m.busy_fraction, Some(0.5));
        assert_eq!(m.completed, 10);
        assert!(m.latency_p50.abs_diff(ms(500)) <= ms(5), "{m:?}");
    }

    #[test]
    fn no_busy_fraction_without_a_capacity_and_capacity_changes_split_the_integral() {
        let (rec, clock) = recorder();
        let _a = rec.begin();
        clock.advance(ms(100));
        let m = rec.take_window();
        assert_eq!((m.mean_in_flight, m.busy_fraction), (1.0, None));
        // Declared for the second half of the window only: busy over the declared time.
        clock.advance(ms(100));
        rec.set_declared_capacity(Some(2));
        let _b = rec.begin();
        clock.advance(ms(100));
        let m = rec.take_window();
        assert_eq!(m.mean_in_flight, 1.5);
        assert_eq!(m.busy_fraction, Some(1.0));
        // A zero-length window reads the instantaneous values.
        let m = rec.take_window();
        assert_eq!((m.mean_in_flight, m.busy_fraction), (2.0, Some(1.0)));
    }

    #[test]
    fn mean_in_flight_runs_until_the_first_window_closes() {
        let (rec, clock) = recorder();
        assert_eq!(rec.mean_in_flight(), 0.0);
        let a = rec.begin();
        assert_eq!(
            rec.mean_in_flight(),
            1.0,
            "no time yet: the instantaneous count"
        );
        clock.advance(ms(100));
        let b = rec.begin();
        clock.advance(ms(100));
        assert_eq!(rec.mean_in_flight(), 1.5);
        drop(a);
        drop(b);
        clock.advance(ms(100));
        let m = rec.take_window();
        assert_eq!(m.mean_in_flight, 1.0);
        // From now on the closed window's value, whatever happens in the open one.
        let _c = rec.begin();
        clock.advance(ms(100));
        assert_eq!(rec.mean_in_flight(), 1.0);
    }

    #[test]
    fn oldest_in_flight_follows_finishes_and_cancels() {
        let (rec, clock) = recorder();
        assert_eq!(rec.oldest_in_flight_age(), None);
        let a = rec.begin();
        clock.advance(ms(30));
        let b = rec.begin();
        clock.advance(ms(20));
        assert_eq!(rec.oldest_in_flight_age(), Some(ms(50)));
        drop(a); // cancelled
        assert_eq!(rec.oldest_in_flight_age(), Some(ms(20)));
        assert_eq!(rec.cancelled_total(), 1);
        let m = rec.take_window();
        assert_eq!(m.oldest_in_flight, Some(ms(20)));
        b.finish(Outcome::Failure);
        assert_eq!(rec.oldest_in_flight_age(), None);
        assert_eq!(rec.in_flight(), 0);
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Begin,
            Finish(usize),
            Cancel(usize),
            Advance(u64),
            Close,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => Just(Op::Begin),
                2 => any::<usize>().prop_map(Op::Finish),
                1 => any::<usize>().prop_map(Op::Cancel),
                // Microseconds: short steps and, now and then, minutes.
                3 => (0u64..20_000).prop_map(Op::Advance),
                1 => (0u64..600_000_000).prop_map(Op::Advance),
                1 => Just(Op::Close),
            ]
        }

        proptest! {
            /// Against a model that keeps every start time: the oldest age is within the documented bound,
            /// the window integrals equal the model's, and busy stays in [0, 1].
            #[test]
            fn recorder_matches_a_model(ops in proptest::collection::vec(op(), 1..150), k in 1u32..6) {
                let (rec, clock) = recorder();
                rec.set_declared_capacity(Some(k));
                let mut now = Duration::ZERO;
                let mut live: Vec<(InFlightGuard, Duration)> = Vec::new();
                let (mut area, mut busy, mut window_start) = (0f64, 0f64, Duration::ZERO);
                for op in ops {
                    match op {
                        Op::Begin => live.push((rec.begin(), now)),
                        Op::Finish(i) | Op::Cancel(i) if live.is_empty() => { let _ = i; }
                        Op::Finish(i) => live.swap_remove(i % live.len()).0.finish(Outcome::Success),
                        Op::Cancel(i) => drop(live.swap_remove(i % live.len()).0),
                        Op::Advance(us) => {
                            let dt = Duration::from_micros(us);
                            let n = live.len() as f64;
                            area += n * dt.as_secs_f64();
                            busy += n.min(f64::from(k)) / f64::from(k) * dt.as_secs_f64();
                            clock.advance(dt);
                            now += dt;
                        }
                        Op::Close => {
                            let m = rec.take_window();
                            let window = (now - window_start).as_secs_f64();
                            window_start = now;
                            let (mean, b) = if window > 0.0 {
                                (area / window, busy / window)
                            } else {
                                let n = live.len() as f64;
                                (n, n.min(f64::from(k)) / f64::from(k))
                            };
                            let err = (m.mean_in_flight - mean).abs();
                            prop_assert!(err <= 1e-6 * mean.max(1.0), "{m:?} vs {mean}");
                            let got = m.busy_fraction.unwrap();
                            prop_assert!((0.0..=1.0).contains(&got));
                            prop_assert!((got - b).abs() <= 1e-6, "{got} vs {b}");
                            area = 0.0;
                            busy = 0.0;
                        }
                    }
                    prop_assert_eq!(rec.in_flight() as usize, live.len());
                    let truth = live.iter().map(|(_, s)| now - *s).max();
                    match (rec.oldest_in_flight_age(), truth) {
                        (None, None) => {}
                        (Some(r), Some(t)) => {
                            let slack = ms(1).max(t * 2 / 63);
                            prop_assert!(r >= t && r - t <= slack, "reported {r:?}, true {t:?}");
                        }
                        other => prop_assert!(false, "{other:?}"),
                    }
                }
            }
        }
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
