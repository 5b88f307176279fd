//! The etcd v3 client plumbing the agent (registration under a lease) and the coordinator (endpoint source)
//! share: one dialer, one bound per call, one backoff, so the two sides keep the same keep-alives and
//! timeouts (feature `etcd`).
//!
//! - [`connect`] dials etcd's URLs in turn (a `host:port` is taken as `http://host:port`) with a connect
//!   timeout and HTTP/2 keep-alives, so a dead connection ends a watch or a lease keep-alive within about
//!   two [`KEEPALIVE`] periods instead of hanging.
//! - [`timed`] bounds one call by [`REQUEST_TIMEOUT`] and names it in the error.
//! - [`Backoff`]: jittered exponential waits between sessions ([`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`],
//!   each wait drawn in `[½, 1] ×` the current step), reset after a session that got somewhere.
//!
//! Plain HTTP/2 (loopback or a private network); TLS to etcd is not supported yet.

use std::future::Future;
use std::time::Duration;

use lateral_proto::grpc_uri;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tonic::transport::{Channel, Endpoint};

/// How long dialing one URL may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one call may take (for a streaming call: until its response headers).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive interval and timeout (also while idle: a watch is idle most of the time).
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// The first wait after a failed session.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The longest wait between sessions.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A failed etcd call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("etcd {call}: {detail}")]
pub struct EtcdError {
    /// What was being done: connect, Range, Watch, LeaseGrant, ...
    pub call: &'static str,
    /// What went wrong (etcd's message, a timeout, the URLs that failed).
    pub detail: String,
}

impl EtcdError {
    /// An error of `call`.
    pub fn new(call: &'static str, detail: impl Into<String>) -> Self {
        Self {
            call,
            detail: detail.into(),
        }
    }
}

/// Dials `urls` in turn from index `first` (so successive sessions start at successive members); the first
/// that connects wins. The error lists every URL's failure.
pub async fn connect(urls: &[String], first: usize) -> Result<Channel, EtcdError> {
    let mut failures = Vec::new();
    for k in 0..urls.len() {
        let url = &urls[(first + k) % urls.len()];
        let endpoint = match Endpoint::from_shared(grpc_uri(url)) {
            Ok(e) => e
                .connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(KEEPALIVE)
                .keep_alive_timeout(KEEPALIVE)
                .keep_alive_while_idle(true),
            Err(e) => {
                failures.push(format!("{url}: {e}"));
                continue;
            }
        };
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) => failures.push(format!("{url}: {e}")),
        }
    }
    if failures.is_empty() {
        failures.push("no etcd URL configured".into());
    }
    Err(EtcdError::new(
        "connect",
        format!("no URL reachable: {}", failures.join("; ")),
    ))
}

/// Runs one call bounded by [`REQUEST_TIMEOUT`]; a `Status` or the timeout becomes an [`EtcdError`] naming
/// `call`.
pub async fn timed<T>(
    call: &'static str,
    request: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(EtcdError::new(call, status.message())),
        Err(_) => Err(EtcdError::new(call, "timed out")),
    }
}

/// Jittered exponential backoff between sessions.
#[derive(Debug)]
pub struct Backoff {
    step: Duration,
    rng: SmallRng,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(SmallRng::from_rng(&mut rand::rng()))
    }
}

impl Backoff {
    /// A backoff drawing its jitter from `rng` (seed it for reproducible tests).
    pub fn new(rng: SmallRng) -> Self {
        Self {
            step: BACKOFF_MIN,
            rng,
        }
    }

    /// The current step (the longest the next wait can be).
    pub fn step(&self) -> Duration {
        self.step
    }

    /// Back to [`BACKOFF_MIN`]: the last session got somewhere.
    pub fn reset(&mut self) {
        self.step = BACKOFF_MIN;
    }

    /// The next wait, in `[½, 1] ×` the current step; the step then doubles up to [`BACKOFF_MAX`].
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.step.mul_f64(self.rng.random_range(0.5..=1.0));
        self.step = (self.step * 2).min(BACKOFF_MAX);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_jittered_doubling_bounded_and_reset() {
        let mut backoff = Backoff::new(SmallRng::seed_from_u64(7));
        let mut previous_step = Duration::ZERO;
        for _ in 0..10 {
            let step = backoff.step();
            let wait = backoff.next_wait();
            assert!(wait >= step / 2 && wait <= step, "{wait:?} within {step:?}");
            assert!(step >= previous_step && step <= BACKOFF_MAX);
            previous_step = step;
        }
        assert_eq!(backoff.step(), BACKOFF_MAX);
        backoff.reset();
        assert_eq!(backoff.step(), BACKOFF_MIN);
    }

    #[tokio::test]
    async fn nothing_to_dial_is_an_error_that_says_so() {
        let e = connect(&[], 0).await.expect_err("no URLs");
        assert!(e.to_string().contains("no etcd URL configured"), "{e}");
        let e = connect(&["not a uri at all".into()], 0)
            .await
            .expect_err("bad URL");
        assert_eq!(e.call, "connect");
        assert!(e.detail.contains("not a uri at all"), "{e}");
    }
}
