//! Encoding the reporter's messages: measurement → heartbeat frame, `Hello`, `Goodbye`.

use std::time::Duration;

use bytes::Bytes;
use lateral_proto::heartbeat::{self, Goodbye, Heartbeat, Hello, Message, PROTOCOL_VERSION};

use super::ReporterOptions;
use crate::Error;
use crate::measurement::Measurement;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn encode(message: &Message) -> Result<Bytes, Error> {
    heartbeat::encode(message)
        .map(Bytes::from)
        .map_err(|e| Error::Transport(format!("encoding heartbeat frame: {e}")))
}

/// The `Hello` every stream starts with.
pub(super) fn hello(opts: &ReporterOptions) -> Result<Bytes, Error> {
    encode(&Message::Hello(Hello {
        agent_id: opts.agent_id.clone(),
        endpoint_id: opts.endpoint_id.clone(),
        protocol_version: PROTOCOL_VERSION,
        capabilities: opts.capabilities.clone(),
        heartbeat_interval_ms: millis_u32(opts.interval),
    }))
}

/// One heartbeat frame for `measurement`.
pub(super) fn heartbeat(
    sequence: u64,
    m: &Measurement,
    sender_monotonic_us: u64,
) -> Result<Bytes, Error> {
    encode(&Message::Heartbeat(to_heartbeat(
        sequence,
        m,
        sender_monotonic_us,
    )))
}

/// The heartbeat message for `measurement`.
pub(super) fn to_heartbeat(sequence: u64, m: &Measurement, sender_monotonic_us: u64) -> Heartbeat {
    Heartbeat {
        sequence,
        in_flight: m.in_flight,
        completed: m.completed,
        failed: m.failed,
        window_us: micros(m.window),
        latency_mean_us: micros(m.latency_mean),
        latency_p50_us: micros(m.latency_p50),
        latency_p99_us: micros(m.latency_p99),
        accepting: m.accepting,
        declared_capacity: m.declared_capacity,
        utilization: m.utilization.filter(|u| u.is_finite()),
        sender_monotonic_us,
    }
}

/// The `Goodbye` sent when draining.
pub(super) fn goodbye(reason: &str, grace: Duration) -> Result<Bytes, Error> {
    // Keep the reason well inside a frame whatever the caller passes.
    let reason: String = reason.chars().take(256).collect();
    encode(&Message::Goodbye(Goodbye {
        reason,
        drain_grace_ms: millis_u32(grace),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_round_trips_and_saturates() {
        let m = Measurement {
            in_flight: 3,
            completed: 10,
            failed: 1,
            window: Duration::from_millis(500),
            latency_mean: Duration::from_micros(1500),
            latency_p50: Duration::from_micros(1200),
            latency_p99: Duration::MAX,
            accepting: true,
            declared_capacity: Some(64),
            utilization: Some(f64::NAN),
        };
        let frame = heartbeat(7, &m, 42).unwrap();
        let (msg, used) = heartbeat::decode(&frame).unwrap().unwrap();
        assert_eq!(used, frame.len());
        let Message::Heartbeat(hb) = msg else {
            panic!("not a heartbeat")
        };
        assert_eq!(hb.sequence, 7);
        assert_eq!(hb.window_us, 500_000);
        assert_eq!(hb.latency_p99_us, u64::MAX);
        assert_eq!(hb.utilization, None);
        assert_eq!(hb.sender_monotonic_us, 42);
    }

    #[test]
    fn goodbye_reason_is_bounded() {
        let frame = goodbye(&"x".repeat(100_000), Duration::from_secs(5)).unwrap();
        assert!(frame.len() < 400);
    }
}
