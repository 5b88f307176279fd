//! Reading ORCA load reports from responses: the `endpoint-load-metrics-bin` trailer.
//!
//! A response of an endpoint whose agent puts ORCA trailers on (`xds.data.orca.v3.OrcaLoadReport`, binary
//! metadata: base64, padded or not, of the prost-encoded message) tells the client two things:
//! - `named_metrics["in_flight"]`: the requests in flight at the endpoint when it answered, over every
//!   client. The pick's queue estimate takes the other clients' part of it ([`super::live_load`]);
//! - `named_metrics["declared_capacity"]`: the endpoint's concurrent slots, which the pick's expected delay
//!   uses to tell a path's parallelism from its service time;
//! - `utilization["in_flight"]` (the agent's instantaneous busy measure), else `application_utilization`
//!   (windowed), else `cpu_utilization`: how busy the endpoint is, which zone preference ([`super::zones`])
//!   averages to decide whether a zone can carry its clients. [`OrcaSignal`] keeps it,
//!   smoothed as `u = 0.5·new + 0.5·old`.
//!
//! Neither changes the weights. (An earlier version multiplied each weight by up to ×2 from the
//! instantaneous utilization and republished the scheduler every 100 ms; that added bursts faster than
//! anything could damp them, and made equal static weights pick worse than round robin.)
//!
//! [`read_report`] is on the response path of every call, so it reads only those fields, straight from the
//! base64 text into a stack buffer, without building the message (no allocation for a report up to
//! [`STACK_REPORT_BYTES`]; a longer one, up to [`MAX_REPORT_BYTES`], is decoded on the heap; longer ones
//! are ignored). Malformed input is ignored: a trailer is a hint, never a reason to fail a call.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use http::HeaderMap;
use lateral_proto::orca::ORCA_TRAILER;

/// The name of the in-flight count in `named_metrics`.
pub const IN_FLIGHT_METRIC: &str = "in_flight";

/// The name of the declared capacity (concurrent slots) in `named_metrics`.
pub const DECLARED_CAPACITY_METRIC: &str = "declared_capacity";

/// Reports up to this many bytes (decoded) are read without allocating.
pub const STACK_REPORT_BYTES: usize = 256;

/// Reports longer than this (decoded) are ignored.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;

/// One endpoint's smoothed utilization from ORCA trailers; NaN when none since the last reset.
#[derive(Debug)]
pub(crate) struct OrcaSignal {
    utilization_bits: AtomicU64,
}

impl Default for OrcaSignal {
    fn default() -> Self {
        Self {
            utilization_bits: AtomicU64::new(f64::NAN.to_bits()),
        }
    }
}

impl OrcaSignal {
    /// The smoothed utilization, if any report arrived since the last reset.
    pub(crate) fn utilization(&self) -> Option<f64> {
        let u = f64::from_bits(self.utilization_bits.load(Ordering::Relaxed));
        u.is_finite().then_some(u)
    }

    /// Records a report's utilization (racing writers may lose an update; that is fine for a hint).
    pub(crate) fn record(&self, utilization: f64) {
        let blended = match self.utilization() {
            Some(old) => 0.5 * utilization + 0.5 * old,
            None => utilization,
        };
        self.utilization_bits
            .store(blended.to_bits(), Ordering::Relaxed);
    }

    /// Forgets the signal (a new coordinator snapshot arrived; zone preference then waits for fresh reports).
    pub(crate) fn reset(&self) {
        self.utilization_bits
            .store(f64::NAN.to_bits(), Ordering::Relaxed);
    }
}

/// The fields of a load report the client uses.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OrcaReading {
    /// `utilization["in_flight"]` when present, else `application_utilization` when positive, else
    /// `cpu_utilization` when positive; finite and ≥ 0.
    pub utilization: Option<f64>,
    /// `named_metrics["in_flight"]`, finite and ≥ 0.
    pub in_flight: Option<f64>,
    /// `named_metrics["declared_capacity"]` (concurrent slots), finite and ≥ 1.
    pub slots: Option<f64>,
}

impl OrcaReading {
    /// Whether the report carried anything the client uses.
    pub fn is_empty(&self) -> bool {
        self.utilization.is_none() && self.in_flight.is_none() && self.slots.is_none()
    }
}

/// Reads the report in `headers` (trailers, or the headers of a trailers-only response), if there is a
/// well-formed one.
pub fn read_report(headers: &HeaderMap) -> Option<OrcaReading> {
    let text = headers.get(ORCA_TRAILER)?.as_bytes();
    // gRPC sends binary metadata unpadded; accept padding too.
    let text = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    let engine = &base64::engine::general_purpose::STANDARD_NO_PAD;
    let decoded_len = base64::decoded_len_estimate(text.len());
    if decoded_len <= STACK_REPORT_BYTES {
        let mut buf = [0u8; STACK_REPORT_BYTES];
        let n = engine.decode_slice(text, &mut buf).ok()?;
        parse_report(&buf[..n])
    } else if decoded_len <= MAX_REPORT_BYTES {
        parse_report(&engine.decode(text).ok()?)
    } else {
        None
    }
}

/// Protobuf wire types (the subset `OrcaLoadReport` can contain; groups are rejected).
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

/// `OrcaLoadReport` field numbers (proto/proto/xds/data/orca/v3/orca_load_report.proto).
const CPU_UTILIZATION: u64 = 1;
const UTILIZATION: u64 = 5;
const NAMED_METRICS: u64 = 8;
const APPLICATION_UTILIZATION: u64 = 9;

/// A cursor over protobuf bytes; every read is bounds-checked.
struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first()?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn double(&mut self) -> Option<f64> {
        let bytes: [u8; 8] = self.take(8)?.try_into().ok()?;
        Some(f64::from_le_bytes(bytes))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        self.take(n)
    }

    /// The next field's number and wire type, or `None` at the end (or on a malformed key).
    fn key(&mut self) -> Option<(u64, u64)> {
        if self.0.is_empty() {
            return None;
        }
        let key = self.varint()?;
        Some((key >> 3, key & 7))
    }

    /// Skips a field's value; `None` on a malformed or unsupported one.
    fn skip(&mut self, wire_type: u64) -> Option<()> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            FIXED32 => self.take(4).map(drop),
            _ => None,
        }
    }
}

fn usable(v: f64) -> Option<f64> {
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// Reads one `map<string, double>` entry as (key, value); `None` when malformed.
fn map_entry(bytes: &[u8]) -> Option<(&[u8], f64)> {
    let mut entry = Wire(bytes);
    let (mut key, mut value) = (&b""[..], 0.0);
    while let Some((f, t)) = entry.key() {
        match (f, t) {
            (1, LEN) => key = entry.bytes()?,
            (2, FIXED64) => value = entry.double()?,
            _ => entry.skip(t)?,
        }
    }
    if !entry.0.is_empty() {
        return None;
    }
    Some((key, value))
}

/// Reads the used fields from an encoded `OrcaLoadReport`; `None` when it is malformed. The last occurrence
/// of a field wins, as in protobuf.
pub fn parse_report(bytes: &[u8]) -> Option<OrcaReading> {
    let mut wire = Wire(bytes);
    let (mut application, mut cpu) = (0.0, 0.0);
    let (mut in_flight, mut named_utilization, mut slots) = (None, None, None);
    while let Some((field, wire_type)) = wire.key() {
        match (field, wire_type) {
            (CPU_UTILIZATION, FIXED64) => cpu = wire.double()?,
            (APPLICATION_UTILIZATION, FIXED64) => application = wire.double()?,
            (NAMED_METRICS, LEN) => {
                let (key, value) = map_entry(wire.bytes()?)?;
                if key == IN_FLIGHT_METRIC.as_bytes() {
                    in_flight = usable(value);
                } else if key == DECLARED_CAPACITY_METRIC.as_bytes() {
                    slots = usable(value).filter(|c| *c >= 1.0);
                }
            }
            (UTILIZATION, LEN) => {
                let (key, value) = map_entry(wire.bytes()?)?;
                if key == IN_FLIGHT_METRIC.as_bytes() {
                    named_utilization = usable(value);
                }
            }
            _ => wire.skip(wire_type)?,
        }
    }
    if !wire.0.is_empty() {
        return None;
    }
    let utilization = named_utilization
        .or_else(|| usable(application).filter(|u| *u > 0.0))
        .or_else(|| usable(cpu).filter(|u| *u > 0.0));
    Some(OrcaReading {
        utilization,
        in_flight,
        slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lateral_proto::orca::OrcaLoadReport;
    use proptest::prelude::*;
    use prost::Message;

    fn headers(report: &OrcaLoadReport) -> HeaderMap {
        let value = tonic::metadata::MetadataValue::from_bytes(&report.encode_to_vec());
        let mut map = tonic::metadata::MetadataMap::new();
        map.insert_bin(ORCA_TRAILER, value);
        map.into_headers()
    }

    #[test]
    fn reads_application_utilization_and_in_flight() {
        let mut report = OrcaLoadReport {
            cpu_utilization: 0.4,
            application_utilization: 0.7,
            rps_fractional: 120.0,
            ..Default::default()
        };
        report.named_metrics.insert("other".into(), 3.0);
        report.named_metrics.insert(IN_FLIGHT_METRIC.into(), 5.0);
        report
            .named_metrics
            .insert(DECLARED_CAPACITY_METRIC.into(), 6.0);
        let reading = read_report(&headers(&report)).unwrap();
        assert_eq!(reading.utilization, Some(0.7));
        // The instantaneous `utilization["in_flight"]` wins over the windowed figure.
        report.utilization.insert("in_flight".into(), 0.25);
        let reading = read_report(&headers(&report)).unwrap();
        assert_eq!(reading.utilization, Some(0.25));
        assert_eq!(reading.in_flight, Some(5.0));
        assert_eq!(reading.slots, Some(6.0));
    }

    #[test]
    fn falls_back_to_cpu_and_ignores_zero_and_garbage() {
        let report = OrcaLoadReport {
            cpu_utilization: 0.4,
            ..Default::default()
        };
        let reading = read_report(&headers(&report)).unwrap();
        assert_eq!(
            reading,
            OrcaReading {
                utilization: Some(0.4),
                in_flight: None,
                slots: None,
            }
        );
        let empty = read_report(&headers(&OrcaLoadReport::default())).unwrap();
        assert!(empty.is_empty());
        let mut map = HeaderMap::new();
        map.insert(
            ORCA_TRAILER,
            http::HeaderValue::from_static("!!!not base64"),
        );
        assert_eq!(read_report(&map), None);
        // A length prefix pointing past the end.
        assert_eq!(parse_report(&[0x42, 0x10, 0x0a]), None);
        // A group (wire type 3) is not an OrcaLoadReport field.
        assert_eq!(parse_report(&[0x0b]), None);
        // Padded base64 is accepted.
        let padded = base64::engine::general_purpose::STANDARD.encode(
            OrcaLoadReport {
                cpu_utilization: 0.5,
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let mut map = HeaderMap::new();
        map.insert(ORCA_TRAILER, http::HeaderValue::from_str(&padded).unwrap());
        assert_eq!(read_report(&map).unwrap().utilization, Some(0.5));
    }

    proptest! {
        /// Whatever prost encodes, the field reader agrees with prost's decoder on the fields it reads.
        #[test]
        fn agrees_with_prost(cpu in -1.0f64..2.0, app in -1.0f64..2.0, inf in proptest::option::of(0.0f64..1e6),
                             other in proptest::collection::btree_map("[a-z_]{0,12}", -1e3f64..1e3, 0..4)) {
            let mut report = OrcaLoadReport { cpu_utilization: cpu, application_utilization: app, ..Default::default() };
            for (k, v) in other { report.named_metrics.insert(k, v); }
            if let Some(v) = inf { report.named_metrics.insert(IN_FLIGHT_METRIC.into(), v); }
            let bytes = report.encode_to_vec();
            let reading = parse_report(&bytes).unwrap();
            let decoded = OrcaLoadReport::decode(&bytes[..]).unwrap();
            prop_assert_eq!(reading.in_flight, decoded.named_metrics.get(IN_FLIGHT_METRIC).copied().and_then(usable));
            let expected = if let Some(u) = decoded.utilization.get(IN_FLIGHT_METRIC).copied().and_then(usable) { Some(u) }
                else if decoded.application_utilization > 0.0 { Some(decoded.application_utilization) }
                else if decoded.cpu_utilization > 0.0 { Some(decoded.cpu_utilization) } else { None };
            prop_assert_eq!(reading.utilization, expected);
        }

        /// Arbitrary bytes never panic.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_report(&bytes);
        }
    }
}
