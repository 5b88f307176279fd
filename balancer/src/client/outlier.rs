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
//! The pick path reads one atomic flag per probe (no clock, no lock). A pick never fails because of local
//! ejection alone: if every probe lands on set-aside endpoints, the last one is used (Envoy's
//! `max_ejection_percent` keeps the same promise).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Failures in a row that set an endpoint aside.
pub const CONSECUTIVE_UNSENT: u32 = 2;
/// The first backoff.
pub const BASE_EJECTION: Duration = Duration::from_secs(1);
/// The longest backoff.
pub const MAX_EJECTION: Duration = Duration::from_secs(10);

/// Per-endpoint state of local ejection.
#[derive(Debug, Default)]
pub(crate) struct LocalEjection {
    ejected: AtomicBool,
    consecutive_unsent: AtomicU32,
    /// Ejections since the endpoint last answered (sets the backoff).
    ejections: AtomicU32,
}

impl LocalEjection {
    /// Whether the endpoint is set aside now.
    #[inline]
    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// The endpoint answered (any status): it is reachable.
    pub(crate) fn on_reached(&self) {
        self.consecutive_unsent.store(0, Ordering::Relaxed);
        self.ejections.store(0, Ordering::Relaxed);
    }

    /// A request never reached the endpoint. Returns the backoff if this failure set it aside; the caller
    /// starts the timer with [`LocalEjection::schedule_return`].
    pub(crate) fn on_unsent(&self) -> Option<Duration> {
        let failures = self.consecutive_unsent.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < CONSECUTIVE_UNSENT {
            return None;
        }
        // Only one caller wins the transition, so only one timer runs.
        if self
            .ejected
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(8);
        Some((BASE_EJECTION * 2u32.pow(n)).min(MAX_EJECTION))
    }

    /// The endpoint stalled (see [`super::live_load`]): sets it aside at once. Returns the backoff if this
    /// call set it aside; the caller starts the timer with [`LocalEjection::schedule_return`].
    pub(crate) fn on_stalled(&self) -> Option<Duration> {
        if self
            .ejected
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(8);
        Some((BASE_EJECTION * 2u32.pow(n)).min(MAX_EJECTION))
    }

    /// Lets the endpoint be picked again after `backoff` (it must then answer to stay in).
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
                    state.ejected.store(false, Ordering::Relaxed);
                }
            });
        } else {
            self.ejected.store(false, Ordering::Relaxed);
        }
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
        // On probation: one more failure sets it aside again, for twice as long.
        assert_eq!(state.on_unsent(), Some(BASE_EJECTION * 2));
        state.schedule_return(BASE_EJECTION * 2);
        tokio::time::sleep(BASE_EJECTION * 2 + Duration::from_millis(1)).await;
        state.on_reached();
        assert_eq!(state.on_unsent(), None, "an answer resets the count");
    }
}
