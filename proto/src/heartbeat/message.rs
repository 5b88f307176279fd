//! The messages an agent sends on its heartbeat stream.

use bincode::{Decode, Encode};

/// Capability names an agent may announce in [`Hello::capabilities`].
pub mod capability {
    /// The agent puts ORCA `endpoint-load-metrics-bin` trailers on responses.
    pub const ORCA_TRAILERS: &str = "orca-trailers";
    /// The agent reports a declared capacity.
    pub const DECLARED_CAPACITY: &str = "declared-capacity";
    /// The agent sends `Goodbye` before it stops.
    pub const DRAIN: &str = "drain";
}

/// One message on a heartbeat stream.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Message {
    /// First message on every stream: who is reporting.
    Hello(Hello),
    /// A measurement of the backend over the last window.
    Heartbeat(Heartbeat),
    /// The backend is draining: route no new requests to it.
    Goodbye(Goodbye),
}

/// Introduces the agent on a new stream.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Hello {
    /// Identifies the agent process (e.g. host name and pid).
    pub agent_id: String,
    /// The endpoint this agent measures; must match an endpoint id the coordinator knows.
    pub endpoint_id: String,
    /// The protocol version the agent speaks (equal to the frame header's version in v1).
    pub protocol_version: u16,
    /// Optional features, see [`capability`].
    pub capabilities: Vec<String>,
    /// How often the agent sends heartbeats, in milliseconds.
    pub heartbeat_interval_ms: u32,
}

/// A measurement of one backend over one window.
///
/// Units: `in_flight` is a concurrency (requests started and not finished at the moment of sending);
/// `completed` and `failed` are counts over the window of `window_us` microseconds, so the throughput is
/// `completed / window`. By Little's law, in-flight ≈ throughput × mean latency.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Heartbeat {
    /// Grows by one per heartbeat on this stream; a gap means a lost or skipped measurement.
    pub sequence: u64,
    /// Requests in flight when the heartbeat was taken.
    pub in_flight: u32,
    /// Requests completed in the window (successes and failures).
    pub completed: u64,
    /// Requests in the window that failed (by gRPC status: UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED, ...).
    pub failed: u64,
    /// Length of the measurement window, in microseconds.
    pub window_us: u64,
    /// Mean latency of requests completed in the window, in microseconds.
    pub latency_mean_us: u64,
    /// Median latency, in microseconds.
    pub latency_p50_us: u64,
    /// 99th-percentile latency, in microseconds.
    pub latency_p99_us: u64,
    /// Whether the backend accepts new requests (false while draining or overloaded by its own judgement).
    pub accepting: bool,
    /// Declared capacity as a number of concurrent requests, if configured.
    pub declared_capacity: Option<u32>,
    /// Utilization in [0, 1] (e.g. CPU), if the backend reports one; may exceed 1 when overloaded.
    pub utilization: Option<f64>,
    /// The sender's monotonic clock, in microseconds since the agent started. Informational only: the
    /// coordinator decides freshness by its own receive time.
    pub sender_monotonic_us: u64,
}

/// The agent is going away.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Goodbye {
    /// Why (e.g. "SIGTERM", "admin drain").
    pub reason: String,
    /// How long in-flight requests have to finish, in milliseconds.
    pub drain_grace_ms: u32,
}
