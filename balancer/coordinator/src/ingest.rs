//! Heartbeat ingest: one task per endpoint dials its agent over QUIC, reads frames from the persistent stream
//! the agent opens, stamps each message with the coordinator's own monotonic receive time and hands it to the
//! driver.
//!
//! Everything is bounded: a frame is at most `MAX_BODY_LEN` bytes (checked before reading the body), reads have
//! an idle timeout, the queue to the driver is bounded and a full queue drops the heartbeat (heartbeats are
//! snapshots; the next one supersedes it) instead of blocking. One slow, silent or hostile agent therefore
//! costs its own task and nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lateral_proto::heartbeat::{
    self, FrameError, FrameHeader, Goodbye, HEADER_LEN, Heartbeat, Message,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

/// What an ingest task tells the driver.
#[derive(Debug)]
pub(crate) struct IngestEvent {
    /// Index of the service in the driver's table.
    pub service: Arc<str>,
    /// Endpoint id.
    pub endpoint: Arc<str>,
    /// The coordinator's monotonic time when the message arrived.
    pub received_at: Instant,
    /// What arrived.
    pub kind: IngestKind,
}

/// The kinds of ingest event.
#[derive(Debug)]
pub(crate) enum IngestKind {
    /// A measurement.
    Heartbeat(Heartbeat),
    /// The agent is draining.
    Goodbye(Goodbye),
}

/// Counters shared by every ingest task (for metrics and tests).
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Heartbeats accepted and queued for the engine.
    pub heartbeats: AtomicU64,
    /// Heartbeats dropped because the driver's queue was full.
    pub dropped: AtomicU64,
    /// Heartbeats queued (so counted in `heartbeats`) that the driver then discarded: for a service no longer
    /// configured, or refused by the engine (unknown endpoint, invalid values).
    pub discarded: AtomicU64,
    /// Frames or streams rejected (bad magic, version, length, body, wrong endpoint id, protocol order).
    pub rejected: AtomicU64,
    /// Successful connections (Hello accepted).
    pub connections: AtomicU64,
    /// Heartbeats an agent numbered that never arrived here: the gaps in its sequence numbers, across
    /// reconnects (lost in flight when a connection broke, measured while disconnected, or skipped by a stream
    /// that lagged at the agent). A sequence that goes back (the agent restarted) starts a new count.
    pub missed: AtomicU64,
}

/// The last heartbeat sequence number received from one agent, kept across its reconnects.
#[derive(Debug, Default)]
struct SequenceGaps {
    last: Option<u64>,
}

impl SequenceGaps {
    /// Heartbeats missed before `sequence`.
    fn observe(&mut self, sequence: u64) -> u64 {
        let missed = match self.last {
            Some(last) if sequence > last => sequence - last - 1,
            // The first one seen, a repeat, or a restarted agent counting from 0 again.
            _ => 0,
        };
        self.last = Some(sequence);
        missed
    }
}

/// Static settings of an ingest task.
#[derive(Clone)]
pub(crate) struct IngestSettings {
    pub quic: quinn::Endpoint,
    pub client_config: quinn::ClientConfig,
    pub server_name: String,
    pub heartbeat_interval: Duration,
    pub stats: Arc<IngestStats>,
    pub events: mpsc::Sender<IngestEvent>,
}

/// Stream and connection receive window: the flow-control credit the coordinator grants an agent. A
/// heartbeat frame is ~100 bytes and one arrives every interval, so 8 KiB is dozens of heartbeats of slack
/// (enough for 200 agents at 100 Hz on loopback without blocking) while capping what one agent can make quinn
/// buffer for us before we read it. Larger frames (a Hello, up to `MAX_BODY_LEN`) still pass: the window
/// slides as `read_exact` consumes.
const RECEIVE_WINDOW: u32 = 8 * 1024;
/// The coordinator writes no stream data (it only ACKs), so the send window only has to be non-zero.
const SEND_WINDOW: u64 = 1024;
/// Crypto (TLS handshake) data quinn buffers out of order; the agent's certificate chain fits well within it.
const CRYPTO_BUFFER: usize = 4 * 1024;

/// The coordinator's QUIC transport for ingest. The coordinator is the QUIC *client*: it dials every agent
/// (the agent's server side is `lateral_agent::reporter`'s transport) and each agent opens one uni stream
/// towards it. Sized for a few hundred bytes every `heartbeat_interval` per connection; each knob's reason is
/// beside it.
///
/// What this does and does not buy (measured with `ingest_bench`, 1,000 agents × 2 Hz, heaptrack): the
/// windows and buffer sizes are *limits*, not preallocations, so they bound what a slow or hostile agent can
/// make the coordinator hold per connection (from an unlimited connection window and 1.25 MB per stream down
/// to 8 KiB), but steady-state memory per connection hardly moves. That is dominated by fixed quinn 0.11
/// state no `TransportConfig` knob reaches: the connection struct (~9.6 KiB), its event channel's first block
/// (~9.3 KiB), packet keys and TLS session (~5 KiB), the driver's send buffer and sent-packet map (~3 KiB).
pub(crate) fn transport_config(heartbeat_interval: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Unchanged in meaning: keep-alive every two intervals, and a connection silent for 20 intervals is dead.
    t.keep_alive_interval(Some(heartbeat_interval * 2));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(heartbeat_interval * 20).ok());
    // The protocol: the agent opens exactly one uni stream, the coordinator opens none; nothing else is
    // accepted.
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(1u32.into());
    // Flow control: see RECEIVE_WINDOW. The defaults (connection window unlimited, stream window 1.25 MB)
    // let one agent make quinn hold that much for us while we do not read.
    t.stream_receive_window(RECEIVE_WINDOW.into());
    t.receive_window(RECEIVE_WINDOW.into());
    // We send no stream data (default: 10 MB of retained writes allowed).
    t.send_window(SEND_WINDOW);
    // One stream: round-robin scheduling between streams has nothing to do.
    t.send_fairness(false);
    // No datagrams in the protocol: off, so none are buffered (default: 1.25 MB receive, 1 MB send).
    t.datagram_receive_buffer_size(None);
    t.datagram_send_buffer_size(0);
    // Handshake data buffered out of order (default 16 KiB); a dev or production chain is far below this.
    t.crypto_buffer_size(CRYPTO_BUFFER);
    // Packets are tiny (ACKs from us, ~100-byte heartbeats from the agent): no MTU probing (1452-byte
    // probes and their loss tracking, for nothing), and no GSO, which would let each connection's send
    // buffer (kept per connection) grow to several datagrams; ours is one 1200-byte datagram.
    t.mtu_discovery_config(None);
    t.enable_segmentation_offload(false);
    // ACK frequency: not requested (quinn's default). Heartbeats are sparse, so standard ACKs cost a few
    // packets a second; asking the agent to delay ACKs further would only slow its loss detection.
    t.ack_frequency_config(None);
    t
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("agent opened no heartbeat stream in time")]
    NoStream,
    #[error("no frame for {0:?}; treating the agent as gone")]
    Idle(Duration),
    #[error("stream closed: {0}")]
    Closed(String),
    #[error("rejected frame: {0}")]
    Frame(#[from] FrameError),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("the driver stopped")]
    DriverGone,
}

/// Runs until aborted: connect, read, and on any failure back off (jittered, exponential) and reconnect.
pub(crate) async fn run(
    settings: IngestSettings,
    service: Arc<str>,
    endpoint: Arc<str>,
    agent: SocketAddr,
) {
    const BACKOFF_START: Duration = Duration::from_millis(100);
    const BACKOFF_CAP: Duration = Duration::from_secs(10);
    let mut rng = SmallRng::seed_from_u64(seed_for(&service, &endpoint));
    let mut backoff = BACKOFF_START;
    let mut gaps = SequenceGaps::default();
    loop {
        let mut served = false;
        let end = session(
            &settings,
            &service,
            &endpoint,
            agent,
            &mut served,
            &mut gaps,
        )
        .await;
        if matches!(end, StreamEnd::DriverGone) {
            return;
        }
        if served {
            backoff = BACKOFF_START;
        }
        match &end {
            StreamEnd::Frame(_) | StreamEnd::Protocol(_) => {
                settings.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%service, %endpoint, %agent, error = %end, "agent stream rejected; reconnecting");
            }
            _ => {
                tracing::info!(%service, %endpoint, %agent, reason = %end, ?backoff, "agent disconnected; reconnecting")
            }
        }
        // Full jitter: anywhere in [backoff/2, backoff], so coordinators restarted together do not dial in step.
        let jittered = backoff.mul_f64(rng.random_range(0.5..=1.0));
        tokio::time::sleep(jittered).await;
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}

fn seed_for(service: &str, endpoint: &str) -> u64 {
    // FNV-1a: a stable, dependency-free seed per endpoint.
    service
        .bytes()
        .chain([0])
        .chain(endpoint.bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

async fn session(
    settings: &IngestSettings,
    service: &Arc<str>,
    endpoint: &Arc<str>,
    agent: SocketAddr,
    served: &mut bool,
    gaps: &mut SequenceGaps,
) -> StreamEnd {
    let connecting = match settings.quic.connect_with(
        settings.client_config.clone(),
        agent,
        &settings.server_name,
    ) {
        Ok(c) => c,
        Err(e) => return StreamEnd::Connect(e.to_string()),
    };
    let connect_timeout = (settings.heartbeat_interval * 6).max(Duration::from_secs(2));
    let connection = match tokio::time::timeout(connect_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return StreamEnd::Connect(e.to_string()),
        Err(_) => return StreamEnd::Connect(format!("timed out after {connect_timeout:?}")),
    };
    let end = read_stream(settings, service, endpoint, &connection, served, gaps).await;
    let code = match end {
        StreamEnd::Frame(_) | StreamEnd::Protocol(_) => 1u32,
        _ => 0,
    };
    connection.close(code.into(), end.to_string().as_bytes());
    end
}

async fn read_stream(
    settings: &IngestSettings,
    service: &Arc<str>,
    endpoint: &Arc<str>,
    connection: &quinn::Connection,
    served: &mut bool,
    gaps: &mut SequenceGaps,
) -> StreamEnd {
    // Freshness is the engine's business (by receive time); this only recycles a connection that went
    // silent, so it may be generous.
    let idle = (settings.heartbeat_interval * 6).max(Duration::from_secs(2));
    let mut stream = match tokio::time::timeout(idle, connection.accept_uni()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return StreamEnd::Closed(e.to_string()),
        Err(_) => return StreamEnd::NoStream,
    };
    let mut body = Vec::with_capacity(256);
    let mut hello_seen = false;
    let mut consecutive_bad_bodies = 0u32;
    loop {
        let message = match tokio::time::timeout(idle, read_frame(&mut stream, &mut body)).await {
            Err(_) => return StreamEnd::Idle(idle),
            Ok(Err(end)) => return end,
            Ok(Ok(Err(FrameError::Body(e)))) => {
                // The length prefix kept the stream in sync: skip this frame, but not forever.
                settings.stats.rejected.fetch_add(1, Ordering::Relaxed);
                consecutive_bad_bodies += 1;
                tracing::warn!(%service, %endpoint, error = %e, "skipping a malformed heartbeat frame");
                if consecutive_bad_bodies >= 3 {
                    return StreamEnd::Protocol("three malformed frames in a row".into());
                }
                continue;
            }
            Ok(Ok(Err(e))) => return StreamEnd::Frame(e),
            Ok(Ok(Ok(m))) => m,
        };
        consecutive_bad_bodies = 0;
        let received_at = tokio::time::Instant::now().into_std();
        let kind = match message {
            Message::Hello(hello) => {
                if hello_seen {
                    return StreamEnd::Protocol("a second Hello on one stream".into());
                }
                if hello.endpoint_id != **endpoint {
                    return StreamEnd::Protocol(format!(
                        "the agent reports for endpoint `{}` but is configured as `{endpoint}`",
                        hello.endpoint_id
                    ));
                }
                hello_seen = true;
                settings.stats.connections.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%service, %endpoint, agent_id = %hello.agent_id, capabilities = ?hello.capabilities, "agent connected");
                continue;
            }
            _ if !hello_seen => {
                return StreamEnd::Protocol("a message before Hello".into());
            }
            Message::Heartbeat(hb) => {
                let missed = gaps.observe(hb.sequence);
                if missed > 0 {
                    settings.stats.missed.fetch_add(missed, Ordering::Relaxed);
                }
                IngestKind::Heartbeat(hb)
            }
            Message::Goodbye(bye) => IngestKind::Goodbye(bye),
        };
        *served = true;
        let is_heartbeat = matches!(kind, IngestKind::Heartbeat(_));
        let event = IngestEvent {
            service: service.clone(),
            endpoint: endpoint.clone(),
            received_at,
            kind,
        };
        match settings.events.try_send(event) {
            Ok(()) if is_heartbeat => {
                settings.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                settings.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return StreamEnd::DriverGone,
        }
    }
}

/// Reads one frame: the fixed header first (validated before anything is allocated), then exactly the body.
async fn read_frame(
    stream: &mut quinn::RecvStream,
    body: &mut Vec<u8>,
) -> Result<Result<Message, FrameError>, StreamEnd> {
    let mut header = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| StreamEnd::Closed(e.to_string()))?;
    let header = match FrameHeader::parse(&header) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    body.resize(header.body_len, 0);
    stream
        .read_exact(body)
        .await
        .map_err(|e| StreamEnd::Closed(e.to_string()))?;
    Ok(heartbeat::decode_body(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_gaps_count_what_never_arrived_and_restart_with_the_agent() {
        let mut gaps = SequenceGaps::default();
        assert_eq!(
            gaps.observe(41),
            0,
            "the first one seen: nothing to compare"
        );
        assert_eq!(gaps.observe(42), 0);
        assert_eq!(gaps.observe(45), 2, "43 and 44 lost (a reconnect)");
        assert_eq!(gaps.observe(45), 0, "a repeat");
        assert_eq!(gaps.observe(1), 0, "the agent restarted");
        assert_eq!(gaps.observe(3), 1);
        assert_eq!(
            gaps.observe(u64::MAX),
            u64::MAX - 4,
            "a lying agent only inflates a counter"
        );
    }

    /// The values of the lean transport, read back from quinn's `Debug` (it has no getters).
    #[test]
    fn transport_config_is_lean() {
        let debug = format!("{:?}", transport_config(Duration::from_millis(500)));
        for expected in [
            "max_concurrent_bidi_streams: 0",
            "max_concurrent_uni_streams: 1",
            "stream_receive_window: 8192",
            "receive_window: 8192",
            "send_window: 1024",
            "send_fairness: false",
            "mtu_discovery_config: None",
            "crypto_buffer_size: 4096",
            "datagram_receive_buffer_size: None",
            "datagram_send_buffer_size: 0",
            "enable_segmentation_offload: false",
            // Keep-alive and idle timeout keep their meaning: 2 and 20 heartbeat intervals.
            "keep_alive_interval: Some(1s)",
            "max_idle_timeout: Some(10000)",
        ] {
            assert!(debug.contains(expected), "`{expected}` missing in {debug}");
        }
        // A stream window of at least a few heartbeat frames, so ingest never stalls on flow control.
        assert!(RECEIVE_WINDOW as usize >= 8 * (HEADER_LEN + 256));
    }
}
