//! ORCA load reports on responses: the `endpoint-load-metrics-bin` trailer.
//!
//! gRPC's `weighted_round_robin` policy (e.g. grpcio, grpc-go, grpc-java) and Envoy read an
//! `xds.data.orca.v3.OrcaLoadReport` from this binary-metadata trailer. On the wire a `-bin` metadata value is
//! the serialized message in base64 (gRPC sends it unpadded; receivers accept padded and unpadded); tonic's
//! `BinaryMetadataValue` does that encoding, so the agent and tonic clients agree by construction.
//!
//! # The report, field by field ([`load_report`])
//! | field | what Lateral's agent puts there |
//! |---|---|
//! | `cpu_utilization` | the recorder's explicit utilization ([`Recorder::utilization`], e.g. CPU from a poller or the host) in [0, 1]; 0 when unset |
//! | `mem_utilization` | not filled (0) |
//! | `rps` (deprecated) | not filled (0); see `rps_fractional` |
//! | `request_cost` | not filled (empty) |
//! | `named_metrics["declared_capacity"]` | the declared capacity in concurrent requests (slots); present only with a declared capacity. With the share a client knows (capacity ∝ slots / service time), it separates a path's service time from its parallelism, which the pick's expected delay needs |
//! | `utilization["in_flight"]` | the instantaneous counterpart: the *other* requests in flight at the moment of the answer (the answered one left out) / declared capacity; present only with a declared capacity. Lateral's zone preference reads it, since it must react within a window |
//! | `rps_fractional` | completed requests per second over the window most recently closed by the reporter ([`Recorder::last_rates`]); 0 before the first window closes |
//! | `eps` | failed requests per second over that window; 0 before the first window closes |
//! | `named_metrics["in_flight"]` | the raw, instantaneous in-flight count when the report is made — the request the report answers **included** (it is still in flight while its trailers are written), so it is ≥ 1 on a response |
//! | `named_metrics["oldest_in_flight_ms"]` | age of the oldest request in flight when the report is made, in milliseconds (fractional; an upper bound within `max(1 ms, ~3.2%)`, see [`Recorder::oldest_in_flight_age`]); 0 when none — on a response it is at least the answered request's own age |
//! | `application_utilization` | with a declared capacity of `k` slots: the **mean in-flight over the most recently closed window / k** ([`Recorder::mean_in_flight`]); before the first window closes, the running mean of the open window so far. It may exceed 1 when requests queue (overloaded). 0 without a declared capacity |
//!
//! # Why a windowed mean
//! gRPC's and Envoy's `weighted_round_robin` weight an endpoint by `qps / (utilization + eps/qps ·
//! error_utilization_penalty)`, using `application_utilization` when it is non-zero and `cpu_utilization`
//! otherwise, and ignore a report whose utilization is zero. `qps / (mean in-flight / k)` is `k / mean
//! latency` by Little's law: the endpoint's capacity in requests per second, averaged over the same kind of
//! window as `qps`. An instantaneous count instead reads 0 on a lightly loaded endpoint (nothing else in
//! flight), which gets the report ignored, and jumps with every arrival. The windowed value costs one atomic
//! read per response (the recorder remembers it when the reporter closes a window); the oldest-age metric
//! takes the recorder's lock briefly.
//!
//! Without a declared capacity or a utilization source these trailers carry rates and named metrics only,
//! which weighted round robin ignores.

use http::{HeaderMap, HeaderValue};
use lateral_proto::orca::{ORCA_TRAILER, OrcaLoadReport};
use prost::Message;
use tonic::metadata::{BinaryMetadataValue, MetadataMap};

use crate::Error;
use crate::recorder::Recorder;

/// The key `utilization["in_flight"]` / `named_metrics["in_flight"]` use.
pub const IN_FLIGHT_METRIC: &str = "in_flight";
/// The key of `named_metrics["oldest_in_flight_ms"]`: age of the oldest request in flight, in milliseconds.
pub const OLDEST_IN_FLIGHT_MS_METRIC: &str = "oldest_in_flight_ms";

/// The key `named_metrics["declared_capacity"]` uses: the declared capacity in concurrent requests (slots).
pub const DECLARED_CAPACITY_METRIC: &str = "declared_capacity";

/// The load report for `recorder` as it is now; see the [module docs](self) for every field.
pub fn load_report(recorder: &Recorder) -> OrcaLoadReport {
    let rates = recorder.last_rates();
    let in_flight = f64::from(recorder.in_flight());
    let mut report = OrcaLoadReport {
        rps_fractional: rates.rps,
        eps: rates.eps,
        cpu_utilization: recorder.utilization().unwrap_or(0.0),
        ..OrcaLoadReport::default()
    };
    if let Some(capacity) = recorder.declared_capacity() {
        let util = recorder.mean_in_flight() / f64::from(capacity.max(1));
        let util = if util.is_finite() { util.max(0.0) } else { 0.0 };
        report.application_utilization = util;
        // The instantaneous counterpart, for clients that react within a window (Lateral's zone
        // preference): the *other* requests in flight (the answered one is leaving) / capacity.
        let others = (in_flight - 1.0).max(0.0) / f64::from(capacity.max(1));
        report
            .utilization
            .insert(IN_FLIGHT_METRIC.to_owned(), others);
        report
            .named_metrics
            .insert(DECLARED_CAPACITY_METRIC.to_owned(), f64::from(capacity));
    }
    report
        .named_metrics
        .insert(IN_FLIGHT_METRIC.to_owned(), in_flight);
    let oldest_ms = recorder
        .oldest_in_flight_age()
        .map_or(0.0, |age| age.as_secs_f64() * 1_000.0);
    report
        .named_metrics
        .insert(OLDEST_IN_FLIGHT_MS_METRIC.to_owned(), oldest_ms);
    report
}

/// Encodes `report` as the value of an `endpoint-load-metrics-bin` header or trailer (base64, unpadded).
pub fn encode(report: &OrcaLoadReport) -> HeaderValue {
    let value = BinaryMetadataValue::from_bytes(&report.encode_to_vec());
    // Base64 output is always a valid header value; fall back to an empty value rather than panic.
    HeaderValue::from_bytes(value.as_encoded_bytes())
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Inserts the current report for `recorder` into `headers` (a trailer map, or the headers of a trailers-only
/// response).
pub fn insert(headers: &mut HeaderMap, recorder: &Recorder) {
    headers.insert(ORCA_TRAILER, encode(&load_report(recorder)));
}

/// Reads and decodes the report from `headers` (trailers, or a tonic response's metadata); `Ok(None)` when absent.
///
/// This is the counterpart clients (the Lateral balancer's piggyback path, tests) use.
pub fn decode(headers: &HeaderMap) -> Result<Option<OrcaLoadReport>, Error> {
    if !headers.contains_key(ORCA_TRAILER) {
        return Ok(None);
    }
    decode_metadata(&MetadataMap::from_headers(headers.clone()))
}

/// Like [`decode`], on a tonic [`MetadataMap`].
pub fn decode_metadata(metadata: &MetadataMap) -> Result<Option<OrcaLoadReport>, Error> {
    let Some(value) = metadata.get_bin(ORCA_TRAILER) else {
        return Ok(None);
    };
    let bytes = value
        .to_bytes()
        .map_err(|e| Error::Orca(format!("{ORCA_TRAILER} is not valid base64: {e}")))?;
    OrcaLoadReport::decode(bytes)
        .map(Some)
        .map_err(|e| Error::Orca(format!("{ORCA_TRAILER} is not an OrcaLoadReport: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use crate::measurement::MeasurementSource;
    use crate::recorder::{ManualClock, Outcome};

    fn manual() -> (Recorder, ManualClock) {
        let clock = ManualClock::new(Instant::now());
        (Recorder::with_clock(Arc::new(clock.clone())), clock)
    }

    #[test]
    fn round_trips_and_is_unpadded_base64() {
        let (recorder, clock) = manual();
        recorder.set_declared_capacity(Some(4));
        let _answered = recorder.begin();
        let _other = recorder.begin();
        clock.advance(Duration::from_millis(250));
        let mut headers = HeaderMap::new();
        insert(&mut headers, &recorder);
        let raw = headers
            .get(ORCA_TRAILER)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        assert!(!raw.is_empty() && !raw.contains(&b'='));
        let report = decode(&headers).unwrap().unwrap();
        // Before any window closed: the running mean, two in flight all along, of four slots.
        assert_eq!(report.application_utilization, 0.5);
        // One other request of four slots.
        assert_eq!(report.utilization.get(IN_FLIGHT_METRIC), Some(&0.25));
        assert_eq!(report.named_metrics.get(IN_FLIGHT_METRIC), Some(&2.0));
        assert_eq!(
            report.named_metrics.get(OLDEST_IN_FLIGHT_MS_METRIC),
            Some(&250.0)
        );
    }

    #[test]
    fn a_lone_request_on_a_fresh_recorder_already_reads_busy() {
        let (recorder, clock) = manual();
        recorder.set_declared_capacity(Some(8));
        clock.advance(Duration::from_millis(100));
        let answered = recorder.begin();
        clock.advance(Duration::from_millis(100));
        let report = load_report(&recorder);
        // One request for half of the 200 ms so far: a mean of 0.5 in flight, of 8 slots.
        assert_eq!(report.application_utilization, 0.5 / 8.0);
        assert_eq!(report.named_metrics.get(IN_FLIGHT_METRIC), Some(&1.0));
        answered.finish(Outcome::Success);
        let report = load_report(&recorder);
        assert_eq!(report.named_metrics.get(IN_FLIGHT_METRIC), Some(&0.0));
        assert_eq!(
            report.named_metrics.get(OLDEST_IN_FLIGHT_MS_METRIC),
            Some(&0.0)
        );
    }

    #[test]
    fn application_utilization_is_the_last_windows_mean_over_capacity() {
        let (recorder, clock) = manual();
        recorder.set_declared_capacity(Some(4));
        // A window of 1 s with 2 requests in flight for its first half: mean 1.0 in flight.
        let a = recorder.begin();
        let b = recorder.begin();
        clock.advance(Duration::from_millis(500));
        a.finish(Outcome::Success);
        b.finish(Outcome::Success);
        clock.advance(Duration::from_millis(500));
        let m = recorder.take_window();
        assert_eq!(m.mean_in_flight, 1.0);
        // Later arrivals do not move it until the next window closes; the raw count does.
        let _c = recorder.begin();
        let _d = recorder.begin();
        let _e = recorder.begin();
        clock.advance(Duration::from_millis(300));
        let report = load_report(&recorder);
        assert_eq!(report.application_utilization, 0.25);
        assert_eq!(report.named_metrics.get(IN_FLIGHT_METRIC), Some(&3.0));
        assert_eq!(
            report.named_metrics.get(OLDEST_IN_FLIGHT_MS_METRIC),
            Some(&300.0)
        );
        // An overloaded window: 3 in flight for 0.3 s then 12 for 0.7 s on 4 slots: 9.3 / 4, past 1.
        let _more: Vec<_> = (0..9).map(|_| recorder.begin()).collect();
        clock.advance(Duration::from_millis(700));
        recorder.take_window();
        let report = load_report(&recorder);
        assert!(
            report.application_utilization > 1.0,
            "{}",
            report.application_utilization
        );
        assert!((report.application_utilization - (3.0 * 0.3 + 12.0 * 0.7) / 4.0).abs() < 1e-9);
    }

    #[test]
    fn without_a_capacity_only_rates_and_named_metrics() {
        let (recorder, _clock) = manual();
        let _a = recorder.begin();
        let report = load_report(&recorder);
        assert_eq!(report.application_utilization, 0.0);
        assert!(report.utilization.is_empty());
        assert_eq!(report.named_metrics.get(IN_FLIGHT_METRIC), Some(&1.0));
        assert!(
            report
                .named_metrics
                .contains_key(OLDEST_IN_FLIGHT_MS_METRIC)
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut headers = HeaderMap::new();
        headers.insert(ORCA_TRAILER, HeaderValue::from_static("!!!not base64"));
        assert!(decode(&headers).is_err());
        headers.insert(ORCA_TRAILER, HeaderValue::from_static("/////w"));
        assert!(decode(&headers).is_err());
    }
}
