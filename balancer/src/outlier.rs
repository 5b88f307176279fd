//! Local outlier ejection: the client's own fast signal that an endpoint is unreachable.
//!
//! A request that never reached an endpoint (connect refused, reset before response headers) says more than
//! any heartbeat can say in the next second: the process is gone or not listening. After
//! [`CONSECUTIVE_UNSENT`] such failures in a row, the endpoint is set aside *locally* for a backoff period
//! (1 s, doubling up to 10 s while it keeps failing, reset by the first request it answers), the way Envoy's
//! outlier detection ejects on consecutive gateway failures. The coordinator's weights are untouched; when
//! the backoff ends the next pick probes the endpoint again.
//!
//! An endpoint that stalls — requests outstanding and nothing answered past its stall bound
//! ([`super::live_load`]) — is set aside at once ([`LocalEjection::on_stalled`]), with the same backoff.
//!
//! When the backoff ends the endpoint is on **probation** until it answers: it takes one request at a time
//! (only while none of ours is outstanding there), the way a circuit breaker half-opens. A blackhole that
//! is still dead then holds one request per client until the stall bound, not every request its share
//! brought in that time; an endpoint that is back answers the probe within a round trip and is fully in.
//!
//! The pick path reads one atomic per probe (no clock, no lock). A pick never fails because of local
//! ejection alone: if every probe lands on set-aside endpoints, the last one is used (Envoy's
//! `max_ejection_percent` keeps the same promise).

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Failures in a row that set an endpoint aside.
pub const CONSECUTIVE_UNSENT: u32 = 2;
/// The first backoff.
pub const BASE_EJECTION: Duration = Duration::from_secs(1);
/// The longest backoff.
pub const MAX_EJECTION: Duration = Duration::from_secs(10);

/// Taking traffic.
const IN: u8 = 0;
/// Set aside until its backoff ends.
const EJECTED: u8 = 1;
/// Back from a backoff, not yet answered: one request at a time.
const PROBATION: u8 = 2;

/// Per-endpoint state of local ejection.
#[derive(Debug, Default)]
pub(crate) struct LocalEjection {
    /// [`IN`], [`EJECTED`] or [`PROBATION`].
    state: AtomicU8,
    consecutive_unsent: AtomicU32,
    /// Ejections since the endpoint last answered (sets the backoff).
    ejections: AtomicU32,
}

impl LocalEjection {
    /// Whether the endpoint is set aside now.
    #[cfg(test)]
    pub(crate) fn is_ejected(&self) -> bool {
        self.state.load(Ordering::Relaxed) == EJECTED
    }

    /// Whether the endpoint may take a new request with `own_in_flight` of ours outstanding there: not set
    /// aside, and on probation only when none is.
    #[inline]
    pub(crate) fn admits(&self, own_in_flight: usize) -> bool {
        match self.state.load(Ordering::Relaxed) {
            IN => true,
            PROBATION => own_in_flight == 0,
            _ => false,
        }
    }

    /// The endpoint answered (any status): it is reachable, and off probation.
    pub(crate) fn on_reached(&self) {
        self.consecutive_unsent.store(0, Ordering::Relaxed);
        self.ejections.store(0, Ordering::Relaxed);
        let _ = self
            .state
            .compare_exchange(PROBATION, IN, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Sets the endpoint aside; true for the one caller that made the transition (it starts the timer).
    fn eject(&self) -> bool {
        self.state.swap(EJECTED, Ordering::AcqRel) != EJECTED
    }

    /// A request never reached the endpoint. Returns the backoff if this failure set it aside; the caller
    /// starts the timer with [`LocalEjection::schedule_return`].
    pub(crate) fn on_unsent(&self) -> Option<Duration> {
        let failures = self.consecutive_unsent.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < CONSECUTIVE_UNSENT {
            return None;
        }
        // Only one caller wins the transition, so only one timer runs.
        if !self.eject() {
            return None;
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(8);
        Some((BASE_EJECTION * 2u32.pow(n)).min(MAX_EJECTION))
    }

    /// The endpoint stalled (see [`super::live_load`]): sets it aside at once. Returns the backoff if this
    /// call set it aside; the caller starts the timer with [`LocalEjection::schedule_return`].
    pub(crate) fn on_stalled(&self) -> Option<Duration> {
        if !self.eject() {
            return None;
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(8);
        Some((BASE_EJECTION * 2u32.pow(n)).min(MAX_EJECTION))
    }

    /// Puts the endpoint on probation after `backoff` (it must then answer to be fully in).
    pub(crate) fn schedule_return(self: &Arc<Self>, backoff: Duration) {
        let this: Weak<Self> = Arc::downgrade(self);
        // Inside the balancer's runtime (requests are dispatched from it).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep(backoff).await;
                if let Some(state) = this.upgrade() {
                    state
                        .consecutive_unsent
                        .store(CONSECUTIVE_UNSENT - 1, Ordering::Relaxed);
                    state.end_backoff();
                }
            });
        } else {
            self.end_backoff();
        }
    }

    fn end_backoff(&self) {
        let _ =
            self.state
                .compare_exchange(EJECTED, PROBATION, Ordering::AcqRel, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn two_unsent_in_a_row_eject_with_doubling_backoff_and_an_answer_resets() {
        let state = Arc::new(LocalEjection::default());
        assert_eq!(state.on_unsent(), None);
        let backoff = state.on_unsent().unwrap();
        assert_eq!(backoff, BASE_EJECTION);
        assert!(state.is_ejected());
        state.schedule_return(backoff);
        tokio::time::sleep(backoff + Duration::from_millis(1)).await;
        assert!(!state.is_ejected());
        // On probation: one request at a time until it answers.
        assert!(state.admits(0));
        assert!(!state.admits(1));
        // One more failure sets it aside again, for twice as long.
        assert_eq!(state.on_unsent(), Some(BASE_EJECTION * 2));
        state.schedule_return(BASE_EJECTION * 2);
        tokio::time::sleep(BASE_EJECTION * 2 + Duration::from_millis(1)).await;
        state.on_reached();
        assert!(state.admits(5), "an answer ends the probation");
        assert_eq!(state.on_unsent(), None, "an answer resets the count");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_endpoint_returns_on_probation_and_stalling_again_doubles_the_backoff() {
        let state = Arc::new(LocalEjection::default());
        assert!(state.admits(3));
        let backoff = state.on_stalled().unwrap();
        assert_eq!(state.on_stalled(), None, "one transition, one timer");
        assert!(!state.admits(0));
        state.schedule_return(backoff);
        tokio::time::sleep(backoff + Duration::from_millis(1)).await;
        assert!(state.admits(0) && !state.admits(1));
        assert_eq!(state.on_stalled(), Some(BASE_EJECTION * 2));
    }
}
