//! ORCA load reports on responses: the `endpoint-load-metrics-bin` trailer.
//!
//! gRPC's `weighted_round_robin` policy (e.g. grpcio, grpc-go, grpc-java) and Envoy read an
//! `xds.data.orca.v3.OrcaLoadReport` from this binary-metadata trailer. On the wire a `-bin` metadata value is
//! the serialized message in base64 (gRPC sends it unpadded; receivers accept padded and unpadded); tonic's
//! `BinaryMetadataValue` does that encoding, so the agent and tonic clients agree by construction.
//!
//! What we put in the report ([`load_report`]):
//! - `rps_fractional`, `eps`: requests and errors per second over the window most recently closed by the
//!   reporter ([`Recorder::last_rates`]); zero before the first window closes;
//! - `application_utilization` and `utilization["in_flight"]`: the *other* in-flight requests (the one the report
//!   answers is left out) / declared capacity, when a
//!   capacity is declared (may exceed 1 when overloaded);
//! - `cpu_utilization`: the recorder's utilization, when set (e.g. from a poller or the host);
//! - `named_metrics["in_flight"]`: the raw in-flight count.
//!
//! gRPC's `weighted_round_robin` computes `qps / (utilization + eps/qps · error_utilization_penalty)` using
//! `application_utilization` when it is non-zero and `cpu_utilization` otherwise, and ignores a report whose
//! utilization is zero — so without a declared capacity or a utilization source these trailers only carry rates.

use http::{HeaderMap, HeaderValue};
use lateral_proto::orca::{ORCA_TRAILER, OrcaLoadReport};
use prost::Message;
use tonic::metadata::{BinaryMetadataValue, MetadataMap};

use crate::Error;
use crate::recorder::Recorder;

/// The key `utilization["in_flight"]` / `named_metrics["in_flight"]` use.
pub const IN_FLIGHT_METRIC: &str = "in_flight";

/// The load report for `recorder` as it is now; see the [module docs](self).
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
        // The report rides on a response, and the request it answers is still counted in flight: leave it
        // out, so that an endpoint serving one request at a time does not read as 1/capacity busier than it is
        // to whoever picks next.
        let others = (in_flight - 1.0).max(0.0);
        let util = others / f64::from(capacity.max(1));
        report.application_utilization = util;
        report.utilization.insert(IN_FLIGHT_METRIC.to_owned(), util);
    }
    report
        .named_metrics
        .insert(IN_FLIGHT_METRIC.to_owned(), in_flight);
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

    #[test]
    fn round_trips_and_is_unpadded_base64() {
        let recorder = Recorder::new();
        recorder.set_declared_capacity(Some(4));
        let _answered = recorder.begin();
        let _other = recorder.begin();
        let mut headers = HeaderMap::new();
        insert(&mut headers, &recorder);
        let raw = headers
            .get(ORCA_TRAILER)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        assert!(!raw.is_empty() && !raw.contains(&b'='));
        let report = decode(&headers).unwrap().unwrap();
        // Two in flight, one of them the request this report answers: one other of four slots.
        assert_eq!(report.application_utilization, 0.25);
        assert_eq!(report.named_metrics.get(IN_FLIGHT_METRIC), Some(&2.0));
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
