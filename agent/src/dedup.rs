//! Request-id dedup: drop a request whose `x-lateral-request-id` was already seen within a window.
//!
//! Lateral's balancer stamps every request with [`REQUEST_ID_HEADER`] and may retry a request on another
//! endpoint (or the same one); the backend side drops the duplicate so a retry is never executed twice.
//! [`crate::layer::LoadLayer::with_dedup`] consults a [`DedupStore`] before calling the service and answers a
//! duplicate with `ALREADY_EXISTS` itself.
//!
//! This module owns the [`DedupStore`] trait (an async answer, so a store may be remote) and two stores:
//! - [`InMemoryDedup`], the single-process store: an exact sliding window over the last `window` of ids,
//!   bounded by `max_entries` (when full, the oldest id is evicted first, so under a flood the effective
//!   window shrinks instead of memory growing). Enough when every attempt of a request reaches the same
//!   agent.
//! - [`RedisDedup`] (in `dedup/redis.rs`), the shared store: `SET <prefix><id> 1 NX PX <window>` on one
//!   Redis, so several agents — several proxies in front of one backend, or every endpoint of a service —
//!   share the window and a retry that lands on another agent is still caught. Each check is bounded by a
//!   timeout (50 ms by default); see [`RedisDedup`] for the key layout and the failure modes.
//!
//! In [`InMemoryDedup`], ids are stored as 64-bit SipHash values with a per-process random key, not as
//! strings: memory per entry is constant whatever the header length. Two distinct ids collide with
//! probability about `n / 2^64` per lookup (n = entries held), negligible at the bounded sizes used here.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::Error;
use crate::recorder::{Clock, TokioClock};

pub mod breaker;
mod redis;
pub use redis::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEY_PREFIX, DEFAULT_TIMEOUT, MAX_KEY_PREFIX, MAX_VERBATIM_ID,
    MAX_WINDOW, RedisDedup, RedisDedupOptions, RedisUrl, fnv1a_128, key_for,
};

/// The request header carrying Lateral's request id.
pub use lateral_proto::headers::REQUEST_ID_HEADER;

/// What the store says about an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen within the window; it is now recorded.
    Fresh,
    /// Already seen within the window.
    Duplicate,
}

/// The answer of a [`DedupStore`]; a boxed future so remote stores can be plugged in.
pub type DedupFuture = Pin<Box<dyn Future<Output = Result<Verdict, Error>> + Send + 'static>>;

/// Records request ids and says whether one was already seen.
///
/// `check_and_insert` must be atomic per id: of two concurrent calls with the same id, at most one is
/// [`Verdict::Fresh`]. If it fails, the layer logs the error and lets the request through (fail open: the
/// dedup is a retry safety net, not an access check).
pub trait DedupStore: Send + Sync + 'static {
    /// Records `id` and says whether it had been seen within the store's window.
    fn check_and_insert(&self, id: &str) -> DedupFuture;
}

struct Entries {
    /// id hash → when it was last recorded.
    seen: HashMap<u64, Instant>,
    /// (recorded at, id hash), oldest first.
    order: VecDeque<(Instant, u64)>,
}

/// The in-memory [`DedupStore`]; see the [module docs](self).
pub struct InMemoryDedup {
    window: Duration,
    max_entries: usize,
    clock: Arc<dyn Clock>,
    hasher: RandomState,
    entries: Mutex<Entries>,
}

impl std::fmt::Debug for InMemoryDedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryDedup")
            .field("window", &self.window)
            .field("max_entries", &self.max_entries)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl InMemoryDedup {
    /// A store remembering ids for `window`, holding at most `max_entries` (at least 1) ids.
    pub fn new(window: Duration, max_entries: usize) -> Self {
        Self::with_clock(window, max_entries, Arc::new(TokioClock))
    }

    /// Like [`new`](Self::new), reading time from `clock`.
    pub fn with_clock(window: Duration, max_entries: usize, clock: Arc<dyn Clock>) -> Self {
        let max_entries = max_entries.max(1);
        Self {
            window,
            max_entries,
            clock,
            hasher: RandomState::new(),
            entries: Mutex::new(Entries {
                seen: HashMap::with_capacity(max_entries.min(4096)),
                order: VecDeque::with_capacity(max_entries.min(4096)),
            }),
        }
    }

    /// Ids held now (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The synchronous check behind [`DedupStore::check_and_insert`].
    pub fn check_and_insert_now(&self, id: &str) -> Verdict {
        let key = self.hasher.hash_one(id);
        let now = self.clock.now();
        let mut e = self.lock();
        // Sweep expired ids (and stale order entries of ids re-recorded later).
        while let Some(&(at, k)) = e.order.front() {
            if now.saturating_duration_since(at) < self.window {
                break;
            }
            e.order.pop_front();
            if e.seen.get(&k) == Some(&at) {
                e.seen.remove(&k);
            }
        }
        if let Some(&at) = e.seen.get(&key)
            && now.saturating_duration_since(at) < self.window
        {
            return Verdict::Duplicate;
        }
        // Evict the oldest while full.
        while e.seen.len() >= self.max_entries {
            let Some((at, k)) = e.order.pop_front() else {
                break;
            };
            if e.seen.get(&k) == Some(&at) {
                e.seen.remove(&k);
            }
        }
        e.seen.insert(key, now);
        e.order.push_back((now, key));
        Verdict::Fresh
    }
}

impl DedupStore for InMemoryDedup {
    fn check_and_insert(&self, id: &str) -> DedupFuture {
        let verdict = self.check_and_insert_now(id);
        Box::pin(std::future::ready(Ok(verdict)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::ManualClock;

    fn store(window_ms: u64, max: usize) -> (InMemoryDedup, ManualClock) {
        let clock = ManualClock::new(Instant::now());
        let s = InMemoryDedup::with_clock(
            Duration::from_millis(window_ms),
            max,
            Arc::new(clock.clone()),
        );
        (s, clock)
    }

    #[test]
    fn duplicate_within_window_fresh_after() {
        let (s, clock) = store(1000, 100);
        assert_eq!(s.check_and_insert_now("a"), Verdict::Fresh);
        assert_eq!(s.check_and_insert_now("b"), Verdict::Fresh);
        clock.advance(Duration::from_millis(999));
        assert_eq!(s.check_and_insert_now("a"), Verdict::Duplicate);
        clock.advance(Duration::from_millis(1));
        assert_eq!(s.check_and_insert_now("a"), Verdict::Fresh);
        assert_eq!(s.len(), 1, "b and the old a were swept");
    }

    #[test]
    fn bounded_evicts_oldest() {
        let (s, _clock) = store(60_000, 3);
        for id in ["1", "2", "3", "4"] {
            assert_eq!(s.check_and_insert_now(id), Verdict::Fresh);
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.check_and_insert_now("4"), Verdict::Duplicate);
        assert_eq!(s.check_and_insert_now("1"), Verdict::Fresh, "1 was evicted");
    }
}
