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
    /// The protocol version the agent speaks (equal to the version in its frame headers: 1 from older
    /// agents, [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION) from this build).
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
/// `completed / window`. By Little's law, in-flight ≈ throughput × mean latency; `mean_in_flight` is the
/// left-hand side measured directly (time-averaged over the window).
///
/// # `utilization` and the coordinator's capacity estimate
/// The coordinator's engine turns `utilization` into a capacity: `capacity = completed / busy-seconds`, with
/// `busy-seconds = utilization × window`, i.e. the rate the endpoint would sustain at 100% busy. Lateral's
/// agent sends, in order of preference:
/// 1. the backend's own utilization (e.g. CPU, from a poller or set on the recorder), when it has one;
/// 2. otherwise, when a capacity of `k` slots is declared, the window's **busy fraction**
///    `∫ min(N(t), k) dt / (k · window)` (`N(t)` the in-flight count): the fraction of slot-time in use.
///    With it, `completed / busy-seconds` is exact under queueing (a saturated endpoint reads 1.0 and its
///    capacity is its throughput), unlike `slots / mean latency`, which counts queueing time as service time
///    and underestimates a queueing endpoint.
///
/// # Versions
/// Protocol version 2 appended `oldest_in_flight_us` and `mean_in_flight`. A version-1 frame (an older agent)
/// still decodes, with both fields 0 (see [`decode`](super::decode)).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Heartbeat {
    /// Grows by one per heartbeat on this stream; a gap means a lost or skipped measurement.
    pub sequence: u64,
    /// Requests in flight at the instant the heartbeat was taken (a count, not an average; see
    /// `mean_in_flight` for the window's average).
    pub in_flight: u32,
    /// Requests completed in the window (successes and failures), a count.
    pub completed: u64,
    /// Requests in the window that failed (by gRPC status: UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED, ...), a
    /// count; at most `completed`.
    pub failed: u64,
    /// Length of the measurement window, in microseconds.
    pub window_us: u64,
    /// Mean latency of requests completed in the window, in microseconds (0 when none completed).
    pub latency_mean_us: u64,
    /// Median latency of requests completed in the window, in microseconds (0 when none completed).
    pub latency_p50_us: u64,
    /// 99th-percentile latency of requests completed in the window, in microseconds (0 when none completed).
    pub latency_p99_us: u64,
    /// Whether the backend accepts new requests (false while draining or overloaded by its own judgement).
    pub accepting: bool,
    /// Declared capacity as a number of concurrent requests (slots), if configured.
    pub declared_capacity: Option<u32>,
    /// Busy fraction over the window, nominally in [0, 1] (may exceed 1 when the backend's own figure says it
    /// is overloaded); `None` when neither the backend reports a utilization nor a capacity is declared. The
    /// backend's own utilization (e.g. CPU) when it has one, else the window's busy fraction against the
    /// declared capacity: see [the type docs](Heartbeat#utilization-and-the-coordinators-capacity-estimate).
    pub utilization: Option<f64>,
    /// The sender's monotonic clock, in microseconds since the agent started. Informational only: the
    /// coordinator decides freshness by its own receive time.
    pub sender_monotonic_us: u64,
    /// Age of the oldest request still in flight when the heartbeat was taken, in microseconds; 0 when
    /// nothing is in flight (and in version-1 frames). A request stuck in the backend shows here long before
    /// it shows in the latency of completed requests. Lateral's agent tracks it in buckets: the value is an
    /// upper bound of the true age, above it by less than 1 ms or ~3.2% of the age, whichever is larger
    /// (see `lateral_agent::recorder`). Added in version 2.
    pub oldest_in_flight_us: u64,
    /// Time-averaged number of requests in flight over the window: `∫ N(t) dt / window`, a concurrency
    /// (dimensionless, ≥ 0; may exceed the declared capacity when requests queue). 0 in version-1 frames.
    /// Added in version 2.
    pub mean_in_flight: f64,
}

/// The agent is going away.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Goodbye {
    /// Why (e.g. "SIGTERM", "admin drain").
    pub reason: String,
    /// How long in-flight requests have to finish, in milliseconds.
    pub drain_grace_ms: u32,
}

/// The version-1 messages, kept to decode frames from older agents. `Hello` and `Goodbye` are unchanged in
/// version 2; only `Heartbeat` grew.
pub(super) mod v1 {
    use bincode::Decode;

    use super::{Goodbye, Hello};

    /// A version-1 message.
    #[derive(Debug, Clone, PartialEq, Decode)]
    pub(in super::super) enum Message {
        Hello(Hello),
        Heartbeat(Heartbeat),
        Goodbye(Goodbye),
    }

    /// A version-1 heartbeat: the version-2 one without `oldest_in_flight_us` and `mean_in_flight`.
    #[derive(Debug, Clone, PartialEq, Decode)]
    pub(in super::super) struct Heartbeat {
        sequence: u64,
        in_flight: u32,
        completed: u64,
        failed: u64,
        window_us: u64,
        latency_mean_us: u64,
        latency_p50_us: u64,
        latency_p99_us: u64,
        accepting: bool,
        declared_capacity: Option<u32>,
        utilization: Option<f64>,
        sender_monotonic_us: u64,
    }

    impl From<Message> for super::Message {
        fn from(message: Message) -> Self {
            match message {
                Message::Hello(hello) => Self::Hello(hello),
                Message::Heartbeat(hb) => Self::Heartbeat(hb.into()),
                Message::Goodbye(goodbye) => Self::Goodbye(goodbye),
            }
        }
    }

    impl From<Heartbeat> for super::Heartbeat {
        fn from(hb: Heartbeat) -> Self {
            Self {
                sequence: hb.sequence,
                in_flight: hb.in_flight,
                completed: hb.completed,
                failed: hb.failed,
                window_us: hb.window_us,
                latency_mean_us: hb.latency_mean_us,
                latency_p50_us: hb.latency_p50_us,
                latency_p99_us: hb.latency_p99_us,
                accepting: hb.accepting,
                declared_capacity: hb.declared_capacity,
                utilization: hb.utilization,
                sender_monotonic_us: hb.sender_monotonic_us,
                oldest_in_flight_us: 0,
                mean_in_flight: 0.0,
            }
        }
    }
}
