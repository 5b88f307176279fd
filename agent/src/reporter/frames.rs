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
///
/// - `in_flight` is the instantaneous count at the close of the window; `mean_in_flight` its time average
///   over the window (0 if not finite);
/// - `utilization` is the backend's explicit utilization when it has one, else — with a declared capacity —
///   the window's busy fraction `∫ min(N, k) dt / (k · window)`, from which the coordinator's engine derives
///   `capacity = completed / busy-seconds` (exact under queueing; see
///   [`Heartbeat`](lateral_proto::heartbeat::Heartbeat));
/// - `oldest_in_flight_us` is the age of the oldest request in flight, 0 when none.
pub(super) fn to_heartbeat(sequence: u64, m: &Measurement, sender_monotonic_us: u64) -> Heartbeat {
    let busy = m.declared_capacity.and(m.busy_fraction);
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
        utilization: m
            .utilization
            .filter(|u| u.is_finite())
            .or(busy.filter(|b| b.is_finite())),
        sender_monotonic_us,
        oldest_in_flight_us: m.oldest_in_flight.map_or(0, micros),
        mean_in_flight: Some(m.mean_in_flight)
            .filter(|x| x.is_finite() && *x >= 0.0)
            .unwrap_or(0.0),
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
            mean_in_flight: 2.75,
            busy_fraction: None,
            oldest_in_flight: Some(Duration::from_micros(8_250)),
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
        assert_eq!(hb.in_flight, 3);
        assert_eq!(hb.mean_in_flight, 2.75);
        assert_eq!(hb.oldest_in_flight_us, 8_250);
    }

    fn measurement() -> Measurement {
        Measurement {
            in_flight: 0,
            completed: 10,
            failed: 0,
            window: Duration::from_millis(500),
            latency_mean: Duration::ZERO,
            latency_p50: Duration::ZERO,
            latency_p99: Duration::ZERO,
            accepting: true,
            declared_capacity: Some(4),
            utilization: None,
            mean_in_flight: 1.0,
            busy_fraction: Some(0.25),
            oldest_in_flight: None,
        }
    }

    #[test]
    fn utilization_is_explicit_first_then_the_busy_fraction() {
        let m = measurement();
        let hb = to_heartbeat(1, &m, 0);
        assert_eq!(hb.utilization, Some(0.25), "busy fraction with a capacity");
        assert_eq!(hb.oldest_in_flight_us, 0, "nothing in flight");
        let explicit = Measurement {
            utilization: Some(0.6),
            ..m.clone()
        };
        assert_eq!(to_heartbeat(1, &explicit, 0).utilization, Some(0.6));
        let no_capacity = Measurement {
            declared_capacity: None,
            ..m.clone()
        };
        assert_eq!(to_heartbeat(1, &no_capacity, 0).utilization, None);
        let nan = Measurement {
            utilization: Some(f64::NAN),
            mean_in_flight: f64::NAN,
            ..m
        };
        let hb = to_heartbeat(1, &nan, 0);
        assert_eq!(hb.utilization, Some(0.25));
        assert_eq!(hb.mean_in_flight, 0.0);
    }

    #[test]
    fn goodbye_reason_is_bounded() {
        let frame = goodbye(&"x".repeat(100_000), Duration::from_secs(5)).unwrap();
        assert!(frame.len() < 400);
    }
}
