//! The agent's QUIC server: every coordinator that connects (and authenticates) gets one persistent stream of
//! heartbeats.
//!
//! # Protocol, as the coordinator sees it
//! 1. The coordinator dials the agent (`quinn` client, [`lateral_ops::tls::client_config`], ALPN
//!    `lateral-hb/1`, server name = the agent's configured name or `localhost`). Mutual TLS: a peer without a
//!    certificate from the configured CA never gets past the handshake.
//! 2. The agent opens **one unidirectional stream** (the coordinator calls `accept_uni()`) and writes
//!    [`Message::Hello`], then one [`Message::Heartbeat`] every interval, then [`Message::Goodbye`] when it
//!    drains, after which it finishes the stream. The coordinator opens no streams (its stream limits are 0).
//! 3. Frames are [`lateral_proto::heartbeat`] frames: read [`HEADER_LEN`] bytes, parse the header, then read
//!    exactly `body_len` (bounded by `MAX_BODY_LEN`) bytes and `decode_body`.
//!
//! `Heartbeat::sequence` is the agent's measurement number, shared by all streams: it grows by one per
//! interval, so the first heartbeat on a new stream need not be 1, and a gap on a stream means that stream
//! skipped measurements (it lagged). Every subscriber receives the *same* measurement: the agent calls
//! [`MeasurementSource::take_window`] exactly once per interval, encodes one frame and fans it out.
//!
//! # Bounds
//! - subscribers: at most [`ReporterOptions::max_subscribers`]; one more is accepted and immediately closed with
//!   [`close_code::TOO_MANY_SUBSCRIBERS`] (so its operator sees why);
//! - per subscriber: a broadcast queue of [`ReporterOptions::queue_frames`] frames (a lagging subscriber skips
//!   the oldest frames and never slows the others), a QUIC send window of 64 KiB, and a write that may stall at
//!   most [`ReporterOptions::write_timeout`] before the connection is closed with [`close_code::TOO_SLOW`];
//! - pending handshakes: bounded by quinn's `max_incoming`;
//! - liveness: QUIC keep-alive every [`ReporterOptions::keep_alive`], idle timeout
//!   [`ReporterOptions::idle_timeout`].
//!
//! # Connection close codes
//! The agent closes connections with the application codes in [`close_code`] and a short text reason.
//!
//! [`Message::Hello`]: lateral_proto::heartbeat::Message::Hello
//! [`Message::Heartbeat`]: lateral_proto::heartbeat::Message::Heartbeat
//! [`Message::Goodbye`]: lateral_proto::heartbeat::Message::Goodbye
//! [`HEADER_LEN`]: lateral_proto::heartbeat::HEADER_LEN

mod frames;
pub mod sender_clock;
mod subscriber;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use lateral_ops::tls::TlsMode;
use lateral_proto::heartbeat::capability;
use tokio::sync::{Semaphore, broadcast, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::measurement::MeasurementSource;

/// Application close codes the agent uses on heartbeat connections.
pub mod close_code {
    /// The agent drained (after `Goodbye` and the grace period).
    pub const DRAINED: u32 = 0;
    /// The agent shut down without draining.
    pub const SHUTDOWN: u32 = 1;
    /// The agent already serves its maximum number of subscribers.
    pub const TOO_MANY_SUBSCRIBERS: u32 = 2;
    /// The subscriber did not take data for longer than the write timeout.
    pub const TOO_SLOW: u32 = 3;
    /// The agent failed to serve the stream (it logs why).
    pub const INTERNAL: u32 = 4;
}

/// How the reporter behaves. Build with [`ReporterOptions::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ReporterOptions {
    /// Identifies this agent process in `Hello` (e.g. `host:pid`).
    pub agent_id: String,
    /// The endpoint this agent measures, as the coordinator knows it.
    pub endpoint_id: String,
    /// Time between heartbeats (and between `take_window` calls). Default 500 ms.
    pub interval: Duration,
    /// Capabilities announced in `Hello` (see [`lateral_proto::heartbeat::capability`]). Default: `drain`.
    pub capabilities: Vec<String>,
    /// At most this many coordinators at once. Default 16.
    pub max_subscribers: usize,
    /// Frames a subscriber may fall behind before it skips the oldest. Default 8.
    pub queue_frames: usize,
    /// Longest a write to one subscriber may stall before it is disconnected. Default 5 s.
    pub write_timeout: Duration,
    /// QUIC keep-alive interval. Default 1 s.
    pub keep_alive: Duration,
    /// QUIC idle timeout. Default 10 s.
    pub idle_timeout: Duration,
    /// FAULT INJECTION ONLY: how wrong the agent's clock is in heartbeat stamps ([`sender_clock`]). Default
    /// exact.
    pub sender_clock: sender_clock::SenderClock,
}

impl ReporterOptions {
    /// Options with the defaults documented on each field.
    pub fn new(agent_id: impl Into<String>, endpoint_id: impl Into<String>) -> Self {
        Self {
            agent_id: agent_id.into(),
            endpoint_id: endpoint_id.into(),
            interval: Duration::from_millis(500),
            capabilities: vec![capability::DRAIN.to_owned()],
            max_subscribers: 16,
            queue_frames: 8,
            write_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            sender_clock: sender_clock::SenderClock::default(),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |field: &str, expected: &str| {
            Err(Error::Config {
                field: field.to_owned(),
                expected: expected.to_owned(),
            })
        };
        if self.interval.is_zero() {
            return bad("interval", "a heartbeat interval above zero");
        }
        if self.interval > Duration::from_secs(u64::from(u32::MAX) / 1000) {
            return bad(
                "interval",
                "a heartbeat interval that fits in u32 milliseconds",
            );
        }
        if self.max_subscribers == 0 {
            return bad("max_subscribers", "at least 1");
        }
        if self.queue_frames == 0 {
            return bad("queue_frames", "at least 1");
        }
        if self.keep_alive >= self.idle_timeout {
            return bad(
                "keep_alive",
                "a keep-alive interval shorter than the idle timeout",
            );
        }
        Ok(())
    }
}

/// The QUIC heartbeat server. See the [module docs](self).
#[derive(Debug)]
pub struct Reporter;

impl Reporter {
    /// Binds a UDP socket on `addr`, starts serving subscribers and measuring every `opts.interval`.
    ///
    /// Must be called inside a tokio runtime. Fails if the TLS material is unusable, the options are invalid
    /// or the address cannot be bound.
    pub fn bind(
        addr: SocketAddr,
        tls: &TlsMode,
        source: Arc<dyn MeasurementSource>,
        opts: ReporterOptions,
    ) -> Result<ReporterHandle, Error> {
        opts.validate()?;
        let server_config = transport::server_config(tls, &opts)?;
        let endpoint = quinn::Endpoint::server(server_config, addr)?;
        let local_addr = endpoint.local_addr()?;

        let shared = Shared::new(opts)?;
        let ticker = tokio::spawn(tick(shared.clone(), source));
        let acceptor = tokio::spawn(accept(shared.clone(), endpoint.clone()));
        tracing::info!(
            %local_addr,
            endpoint_id = %shared.opts.endpoint_id,
            interval_ms = shared.opts.interval.as_millis() as u64,
            "heartbeat reporter listening (QUIC)"
        );
        Ok(ReporterHandle {
            local_addr,
            endpoint,
            shared,
            ticker,
            acceptor,
        })
    }
}

/// State shared by the ticker, the accept loop and the subscriber tasks.
struct Shared {
    frames: broadcast::Sender<Bytes>,
    /// `Some(frame)` once draining: the encoded `Goodbye`.
    goodbye: watch::Sender<Option<Bytes>>,
    shutdown: CancellationToken,
    subscribers: AtomicUsize,
    sequence: AtomicU64,
    /// Heartbeat frames handed to a subscriber's stream (one per heartbeat per subscriber).
    written: AtomicU64,
    /// Heartbeats a lagging subscriber skipped (the broadcast queue overflowed for it).
    skipped: AtomicU64,
    hello: Bytes,
    /// Starts as `opts.sender_clock`; [`ReporterHandle::set_sender_clock`] changes it (fault injection).
    sender_clock: std::sync::Mutex<sender_clock::SenderClock>,
    opts: ReporterOptions,
}

impl Shared {
    fn new(opts: ReporterOptions) -> Result<Arc<Self>, Error> {
        let hello = frames::hello(&opts)?;
        let (frames_tx, _) = broadcast::channel(opts.queue_frames);
        let (goodbye_tx, _) = watch::channel(None);
        Ok(Arc::new(Self {
            frames: frames_tx,
            goodbye: goodbye_tx,
            shutdown: CancellationToken::new(),
            subscribers: AtomicUsize::new(0),
            sequence: AtomicU64::new(0),
            written: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            hello,
            sender_clock: std::sync::Mutex::new(opts.sender_clock),
            opts,
        }))
    }
}

/// Controls a running [`Reporter`].
#[derive(Debug)]
pub struct ReporterHandle {
    local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    ticker: JoinHandle<()>,
    acceptor: JoinHandle<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("subscribers", &self.subscribers.load(Ordering::Relaxed))
            .field("sequence", &self.sequence.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ReporterHandle {
    /// The address the QUIC endpoint is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Coordinators currently subscribed.
    pub fn subscribers(&self) -> usize {
        self.shared.subscribers.load(Ordering::Relaxed)
    }

    /// Heartbeats measured so far (the last sequence number sent).
    pub fn heartbeats_sent(&self) -> u64 {
        self.shared.sequence.load(Ordering::Relaxed)
    }

    /// Heartbeat frames written to subscribers' streams so far (summed over subscribers; a write is counted
    /// once quinn accepted it).
    pub fn heartbeats_written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// FAULT INJECTION ONLY: from the next heartbeat on, stamps follow `clock` ([`sender_clock`]), so a test
    /// can make the agent's clock jump or race while it runs.
    pub fn set_sender_clock(&self, clock: sender_clock::SenderClock) {
        if let Ok(mut c) = self.shared.sender_clock.lock() {
            *c = clock;
        }
    }

    /// Heartbeats skipped for a subscriber that lagged behind (summed over subscribers).
    pub fn heartbeats_skipped(&self) -> u64 {
        self.shared.skipped.load(Ordering::Relaxed)
    }

    /// Sends `Goodbye { reason, drain_grace_ms: grace }` on every stream and finishes them; heartbeats stop
    /// and new coordinators are refused. Connections stay open until [`ReporterHandle::drain`] or
    /// [`ReporterHandle::shutdown`] closes them. Calling it again has no effect.
    pub fn goodbye(&self, reason: &str, grace: Duration) -> Result<(), Error> {
        if self.shared.goodbye.borrow().is_some() {
            return Ok(());
        }
        let frame = frames::goodbye(reason, grace)?;
        self.shared.goodbye.send_replace(Some(frame));
        tracing::info!(
            reason,
            grace_ms = grace.as_millis() as u64,
            "sent Goodbye to all subscribers"
        );
        Ok(())
    }

    /// Drains: [`goodbye`](Self::goodbye), waits `grace`, then closes every connection with
    /// [`close_code::DRAINED`] and stops. Marking the backend not-accepting is the caller's job (see
    /// [`crate::drain`]).
    pub async fn drain(self, reason: &str, grace: Duration) -> Result<(), Error> {
        self.goodbye(reason, grace)?;
        tokio::time::sleep(grace).await;
        self.close_drained().await;
        Ok(())
    }

    /// The last step of a drain: closes every connection with [`close_code::DRAINED`] (each subscriber's
    /// `Goodbye` gets a bounded moment to be acknowledged first) and stops.
    pub async fn close_drained(self) {
        self.close(close_code::DRAINED, b"drained").await;
    }

    /// Stops at once: closes every connection with [`close_code::SHUTDOWN`] (no `Goodbye` unless one was sent).
    pub async fn shutdown(self) {
        self.close(close_code::SHUTDOWN, b"shutdown").await;
    }

    async fn close(self, code: u32, reason: &'static [u8]) {
        let Self {
            endpoint,
            shared,
            ticker,
            acceptor,
            ..
        } = self;
        shared.shutdown.cancel();
        ticker.abort();
        // Subscriber tasks close their own connections (after flushing a Goodbye, bounded); the accept task
        // joins them. Anything still open after the bound is closed here.
        let _ = tokio::time::timeout(subscriber::FLUSH_BOUND * 2, acceptor).await;
        endpoint.close(quinn::VarInt::from_u32(code), reason);
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        tracing::info!(code, "heartbeat reporter stopped");
    }
}

/// Takes one measurement per interval and fans the encoded heartbeat out to every subscriber.
async fn tick(shared: Arc<Shared>, source: Arc<dyn MeasurementSource>) {
    let start = Instant::now();
    let period = shared.opts.interval;
    let mut interval = tokio::time::interval_at(start + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let measurement = source.take_window();
        let sequence = shared.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let clock = shared
            .sender_clock
            .lock()
            .map(|c| *c)
            .unwrap_or(shared.opts.sender_clock);
        let monotonic_us = clock.stamp_us(start.elapsed());
        match frames::heartbeat(sequence, &measurement, monotonic_us) {
            // No receivers is fine: the window is still closed so the next one has the right length.
            Ok(frame) => drop(shared.frames.send(frame)),
            Err(e) => tracing::error!(error = %e, sequence, "cannot encode heartbeat"),
        }
    }
}

/// Accepts connections until shutdown, then waits for the subscriber tasks.
async fn accept(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    let permits = Arc::new(Semaphore::new(shared.opts.max_subscribers));
    let mut tasks = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined {
                    tracing::error!(error = %e, "subscriber task failed");
                }
                continue;
            }
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        if shared.goodbye.borrow().is_some() {
            tracing::info!(peer = %incoming.remote_address(), "refusing coordinator: draining");
            incoming.refuse();
            continue;
        }
        tasks.spawn(subscriber::serve(shared.clone(), incoming, permits.clone()));
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            tracing::error!(error = %e, "subscriber task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use lateral_proto::heartbeat::{self, Message};

    use super::*;
    use crate::measurement::Measurement;

    #[derive(Default)]
    struct Counting(AtomicU64);

    impl MeasurementSource for Counting {
        fn take_window(&self) -> Measurement {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Measurement {
                in_flight: n as u32,
                completed: n,
                failed: 0,
                window: Duration::from_millis(500),
                latency_mean: Duration::ZERO,
                latency_p50: Duration::ZERO,
                latency_p99: Duration::ZERO,
                accepting: true,
                declared_capacity: None,
                utilization: None,
                mean_in_flight: n as f64,
                busy_fraction: None,
                oldest_in_flight: None,
            }
        }
    }

    fn decode(frame: &Bytes) -> heartbeat::Heartbeat {
        match heartbeat::decode(frame).unwrap().unwrap().0 {
            Message::Heartbeat(hb) => hb,
            other => panic!("{other:?}"),
        }
    }

    /// Paused time: exactly one take_window per interval whatever the number of receivers, every receiver
    /// gets the same frames, and one that never reads only lags itself.
    #[tokio::test(start_paused = true)]
    async fn one_measurement_per_interval_fanned_out() {
        let mut opts = ReporterOptions::new("a", "e");
        opts.queue_frames = 4;
        let shared = Shared::new(opts).unwrap();
        let mut readers: Vec<_> = (0..3).map(|_| shared.frames.subscribe()).collect();
        let mut stuck = shared.frames.subscribe();
        let source = Arc::new(Counting::default());
        let ticker = tokio::spawn(tick(shared.clone(), source.clone()));

        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            source.0.load(Ordering::SeqCst),
            0,
            "the first window is a full interval"
        );
        for round in 1..=10u64 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(source.0.load(Ordering::SeqCst), round);
            let frames: Vec<Bytes> = readers.iter_mut().map(|r| r.try_recv().unwrap()).collect();
            assert!(
                frames.windows(2).all(|w| w[0] == w[1]),
                "same bytes for every subscriber"
            );
            let hb = decode(&frames[0]);
            assert_eq!(hb.sequence, round);
            assert_eq!(hb.completed, round);
            assert_eq!(hb.sender_monotonic_us, round * 500_000);
        }
        // The reader that never read lost the oldest frames, and only it.
        assert!(matches!(
            stuck.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(6))
        ));
        assert_eq!(decode(&stuck.try_recv().unwrap()).sequence, 7);
        shared.shutdown.cancel();
        ticker.await.unwrap();
    }
}
