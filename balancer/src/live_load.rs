//! What the client knows, per request, about an endpoint's queue and whether it is completing anything.
//!
//! The coordinator's weights say who may take traffic and in what long-run shares; they move every 500 ms at
//! best. Between them, the pick ([`super::picker`]) looks at a live estimate of each candidate's queue, and
//! the call path at whether the endpoint still completes requests. Both are kept here, in plain atomics
//! (racing writers may lose an update, which is fine for a hint; nothing here is ever locked):
//!
//! - **The queue estimate** `q = own + others · H / (H + age)`. `own` is this client's in-flight count on the
//!   endpoint (exact). `others` is what the endpoint's last ORCA report said was in flight there
//!   (`named_metrics["in_flight"]`) minus what this client itself had in flight at that moment: the requests
//!   of every *other* client, the global view a client-local count lacks (Prequal, NSDI'24, probes the same
//!   requests-in-flight signal). It ages hyperbolically with the report's age (`H` =
//!   [`SERVER_LOAD_HALF_LIFE`]): half its weight after `H`, since other clients' queues move while we do not
//!   hear from the endpoint.
//! - **Liveness from completions.** `progress` is the last time the endpoint answered this client (response
//!   headers) or, if later, the time it last went from idle to busy. An endpoint with requests of ours in
//!   flight and no progress for longer than [`LiveLoad::stall_bound`] — a multiple of its own recent latency,
//!   within [`MIN_STALL`]..[`MAX_STALL`] — completes nothing: it is *stalled* (a blackhole: it accepts
//!   connections and requests and never answers). Heartbeats cannot tell, since its agent keeps sending them.
//!
//! Times are microseconds since the balancer's clock base (`Shared::now_us`), read once per call at the edge
//! and passed in; nothing here reads a clock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The age at which a server-side in-flight report counts for half.
pub const SERVER_LOAD_HALF_LIFE: Duration = Duration::from_millis(200);

/// A stall is declared after this many times the endpoint's recent latency without an answer …
pub const STALL_LATENCY_MULTIPLE: u64 = 10;
/// … but never sooner than this …
pub const MIN_STALL: Duration = Duration::from_millis(250);
/// … nor later than this (also the bound before any latency has been seen).
pub const MAX_STALL: Duration = Duration::from_secs(1);

/// The weight of a new latency sample in the moving average.
const LATENCY_EWMA_NEW: f64 = 0.2;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One endpoint's live load and liveness, as this client sees it.
#[derive(Debug, Default)]
pub(crate) struct LiveLoad {
    /// Other clients' requests in flight at the endpoint, from the last ORCA report.
    others: AtomicU32,
    /// When that report arrived (µs since the clock base; 0: never).
    others_at_us: AtomicU64,
    /// Moving average of this client's latency to response headers, µs (0: none yet).
    latency_us: AtomicU64,
    /// The last answer, or the last idle-to-busy transition, µs since the clock base.
    progress_us: AtomicU64,
    /// The endpoint's concurrent slots from its ORCA reports (0: unknown).
    slots: AtomicU32,
}

impl LiveLoad {
    /// The endpoint went from idle to busy at `now_us` (this client's first request in flight): the stall
    /// clock starts now, not at the last answer, which may be long ago.
    #[inline]
    pub(crate) fn on_busy(&self, now_us: u64) {
        self.progress_us.fetch_max(now_us, Ordering::Relaxed);
    }

    /// The endpoint answered a request started at `started_us` (response headers at `now_us`).
    pub(crate) fn on_answer(&self, started_us: u64, now_us: u64) {
        self.progress_us.fetch_max(now_us, Ordering::Relaxed);
        let sample = now_us.saturating_sub(started_us) as f64;
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            LATENCY_EWMA_NEW * sample + (1.0 - LATENCY_EWMA_NEW) * old as f64
        };
        self.latency_us
            .store((new as u64).max(1), Ordering::Relaxed);
    }

    /// An ORCA report said `server_in_flight` requests were in flight at the endpoint, while this client had
    /// `own_in_flight` there (both counting the request the report answers).
    pub(crate) fn on_server_in_flight(
        &self,
        server_in_flight: f64,
        own_in_flight: usize,
        now_us: u64,
    ) {
        if !server_in_flight.is_finite() {
            return;
        }
        let others = (server_in_flight - own_in_flight as f64).clamp(0.0, f64::from(u32::MAX));
        self.others.store(others as u32, Ordering::Relaxed);
        self.others_at_us.store(now_us.max(1), Ordering::Relaxed);
    }

    /// The endpoint's declared slots, from an ORCA report.
    pub(crate) fn on_slots(&self, slots: f64) {
        if slots.is_finite() && slots >= 1.0 {
            self.slots
                .store(slots.min(f64::from(u32::MAX)) as u32, Ordering::Relaxed);
        }
    }

    /// The endpoint's slots, 1 when unknown (which makes the expected delay plain SED's).
    #[inline]
    pub(crate) fn slots(&self) -> f64 {
        f64::from(self.slots.load(Ordering::Relaxed).max(1))
    }

    /// The queue estimate `own + others · H / (H + age)` (see the module docs).
    #[inline]
    pub(crate) fn queue(&self, own_in_flight: usize, now_us: u64) -> f64 {
        let at = self.others_at_us.load(Ordering::Relaxed);
        let own = own_in_flight as f64;
        if at == 0 {
            return own;
        }
        let others = f64::from(self.others.load(Ordering::Relaxed));
        let half_life = SERVER_LOAD_HALF_LIFE.as_micros() as f64;
        let age = now_us.saturating_sub(at) as f64;
        own + others * half_life / (half_life + age)
    }

    /// How long the endpoint may leave our requests unanswered before it counts as stalled.
    #[inline]
    pub(crate) fn stall_bound_us(&self) -> u64 {
        match self.latency_us.load(Ordering::Relaxed) {
            0 => micros(MAX_STALL),
            latency => latency
                .saturating_mul(STALL_LATENCY_MULTIPLE)
                .clamp(micros(MIN_STALL), micros(MAX_STALL)),
        }
    }

    /// [`stall_bound_us`](Self::stall_bound_us) as a duration.
    pub(crate) fn stall_bound(&self) -> Duration {
        Duration::from_micros(self.stall_bound_us())
    }

    /// Whether the endpoint has our requests in flight and has answered none of them (nor anything since it
    /// became busy) for longer than the stall bound.
    #[inline]
    pub(crate) fn is_stalled(&self, own_in_flight: usize, now_us: u64) -> bool {
        own_in_flight > 0
            && now_us.saturating_sub(self.progress_us.load(Ordering::Relaxed))
                > self.stall_bound_us()
    }

    /// Whether the endpoint answered anything after `since_us`.
    #[inline]
    pub(crate) fn progressed_since(&self, since_us: u64) -> bool {
        self.progress_us.load(Ordering::Relaxed) > since_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    #[test]
    fn queue_adds_other_clients_aged_by_the_report_age() {
        let load = LiveLoad::default();
        assert_eq!(load.queue(3, 10 * MS), 3.0, "no report: own count only");
        // The server had 10 in flight, 2 of them ours: 8 of other clients.
        load.on_server_in_flight(10.0, 2, 10 * MS);
        assert!((load.queue(1, 10 * MS) - 9.0).abs() < 1e-9);
        let half = micros(SERVER_LOAD_HALF_LIFE);
        assert!((load.queue(1, 10 * MS + half) - 5.0).abs() < 1e-9);
        // A report below our own count: nobody else is there.
        load.on_server_in_flight(1.0, 4, 20 * MS);
        assert_eq!(load.queue(4, 20 * MS), 4.0);
        load.on_server_in_flight(f64::NAN, 0, 30 * MS);
        assert_eq!(load.queue(4, 20 * MS), 4.0, "a NaN report is ignored");
    }

    #[test]
    fn stall_needs_outstanding_requests_and_no_answer_past_the_bound() {
        let load = LiveLoad::default();
        // 10 ms latency: bound 100 ms, raised to MIN_STALL.
        load.on_answer(0, 10 * MS);
        assert_eq!(load.stall_bound(), MIN_STALL);
        let bound = micros(MIN_STALL);
        assert!(
            !load.is_stalled(0, 10 * MS + 10 * bound),
            "nothing in flight: not stalled"
        );
        load.on_busy(100 * MS);
        assert!(!load.is_stalled(2, 100 * MS + bound));
        assert!(load.is_stalled(2, 100 * MS + bound + 1));
        // An answer is progress.
        load.on_answer(100 * MS, 100 * MS + bound);
        assert!(!load.is_stalled(2, 100 * MS + bound + 1));
        assert!(load.progressed_since(100 * MS));
        assert!(!load.progressed_since(100 * MS + bound));
    }

    #[test]
    fn stall_bound_follows_latency_within_limits() {
        let load = LiveLoad::default();
        assert_eq!(load.stall_bound(), MAX_STALL, "no latency yet");
        load.on_answer(0, 50 * MS);
        assert_eq!(load.stall_bound(), Duration::from_millis(500));
        for _ in 0..50 {
            load.on_answer(0, 900 * MS);
        }
        assert_eq!(load.stall_bound(), MAX_STALL);
    }
}
