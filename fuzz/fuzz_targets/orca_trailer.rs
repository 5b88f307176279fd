//! Feeds arbitrary bytes to the readers of the ORCA `endpoint-load-metrics-bin` trailer, as a broken or hostile
//! endpoint would send it: the client's zero-allocation field reader, on every response
//! (`lateral_balancer::internals::{parse_report, read_report}`), and the agent's decoder
//! (`lateral_agent::orca::{decode, decode_metadata}`). Each gets the bytes as the decoded report and as the
//! trailer's text (base64 of them, padded and not, and the raw bytes when they are a valid header value).
//!
//! Beyond never panicking, the balancer's `agrees_with_prost` proptest, on any bytes: whatever prost decodes
//! and re-encodes, the field reader reads as prost's decoder does; and where both accept the same bytes, they
//! agree. (The reader may refuse what prost accepts: it rejects groups, which no `OrcaLoadReport` carries.)
//!
//! Run: `cd fuzz && cargo +nightly fuzz run orca_trailer`
#![no_main]

use base64::Engine as _;
use http::{HeaderMap, HeaderValue};
use lateral_balancer::internals::{
    DECLARED_CAPACITY_METRIC, IN_FLIGHT_METRIC, OrcaReading, parse_report, read_report,
};
use lateral_proto::orca::{ORCA_TRAILER, OrcaLoadReport};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn usable(v: f64) -> Option<f64> {
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// What the field reader must read from a report prost decoded (`OrcaReading`'s documented precedence).
fn expected(report: &OrcaLoadReport) -> OrcaReading {
    let utilization = report
        .utilization
        .get(IN_FLIGHT_METRIC)
        .copied()
        .and_then(usable)
        .or_else(|| usable(report.application_utilization).filter(|u| *u > 0.0))
        .or_else(|| usable(report.cpu_utilization).filter(|u| *u > 0.0));
    OrcaReading {
        utilization,
        in_flight: report
            .named_metrics
            .get(IN_FLIGHT_METRIC)
            .copied()
            .and_then(usable),
        slots: report
            .named_metrics
            .get(DECLARED_CAPACITY_METRIC)
            .copied()
            .and_then(usable)
            .filter(|c| *c >= 1.0),
    }
}

fn trailer(value: HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ORCA_TRAILER, value);
    headers
}

/// Both sides' readers on one trailer value; only panics matter here.
fn read_both(value: HeaderValue) {
    let headers = trailer(value);
    let _ = read_report(&headers);
    let _ = lateral_agent::orca::decode(&headers);
    let _ =
        lateral_agent::orca::decode_metadata(&tonic::metadata::MetadataMap::from_headers(headers));
}

fuzz_target!(|data: &[u8]| {
    let read = parse_report(data);
    if let Ok(report) = OrcaLoadReport::decode(data) {
        if let Some(read) = read {
            assert_eq!(
                read,
                expected(&report),
                "the field reader and prost disagree"
            );
        }
        let again = parse_report(&report.encode_to_vec())
            .expect("the field reader refuses prost's encoding");
        assert_eq!(
            again,
            expected(&report),
            "the field reader misreads prost's encoding"
        );
    }

    // The trailer as gRPC sends it (unpadded base64), padded, and the raw bytes as text.
    for engine in [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::STANDARD,
    ] {
        let text = engine.encode(data);
        read_both(HeaderValue::from_str(&text).expect("base64 is a valid header value"));
    }
    if let Ok(raw) = HeaderValue::from_bytes(data) {
        read_both(raw);
    }
});
