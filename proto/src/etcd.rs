//! Membership in etcd: the wire contract between agents that register and coordinators that watch.
//!
//! An endpoint is one key under a service's prefix, `<prefix><endpoint id>`, bound to a lease its agent keeps
//! alive, so the key vanishes when the agent stops (revoked) or dies (expired after the lease's TTL). The
//! value is an [`EndpointRecord`] in JSON:
//!
//! ```json
//! {"id":"a1","address":"http://10.0.0.7:50051","agent":"10.0.0.7:7443","zone":"eu-1a",
//!  "labels":{"track":"stable"},"static_weight":4.0,"declared_capacity":64}
//! ```
//!
//! `id`, `address` and `agent` are required; the rest optional. Unknown fields are ignored, so a newer agent
//! can add fields without breaking an older coordinator. A record over [`MAX_RECORD_BYTES`], not JSON, or with
//! an invalid field is refused with a [`RecordError`] naming the field.
//!
//! The etcd API itself ([`etcdserverpb`], [`mvccpb`]) is the subset of etcd's `rpc.proto` and `kv.proto` that
//! registration and watching need, generated like the other protos here (protox, no system `protoc`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// etcd's v3 gRPC services and messages (`etcdserverpb`): KV (Range, Put, DeleteRange), Watch, Lease.
#[allow(missing_docs, clippy::all)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's key-value and event messages (`mvccpb`).
#[allow(missing_docs, clippy::all)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// The largest record accepted, in bytes (a record is a few hundred bytes; this bounds what one key can cost).
pub const MAX_RECORD_BYTES: usize = 8 * 1024;

/// The longest endpoint id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// What one endpoint's key holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Unique within the service; the agent's `Hello` carries the same id.
    pub id: String,
    /// The gRPC address clients dial (`http://host:port` or `https://host:port`).
    pub address: String,
    /// The agent's QUIC address (`ip:port`).
    pub agent: SocketAddr,
    /// Zone or locality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Labels, e.g. `track = "canary"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Relative static weight, used when there is no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_weight: Option<f64>,
    /// Capacity in concurrent requests, if declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_capacity: Option<u32>,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    /// Larger than [`MAX_RECORD_BYTES`].
    #[error("endpoint record of {0} bytes is over the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not JSON of the expected shape.
    #[error("endpoint record is not the expected JSON: {0}")]
    Malformed(String),
    /// A field with an unusable value.
    #[error("endpoint record field `{field}`: expected {expected}, found {found:?}")]
    Field {
        /// The field.
        field: &'static str,
        /// What was expected.
        expected: &'static str,
        /// What was found.
        found: String,
    },
}

impl EndpointRecord {
    /// The JSON bytes stored in etcd.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing this struct cannot fail: every field is a string, number or string map.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and validates a stored value.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        let record: Self =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
        record.validate()?;
        Ok(record)
    }

    /// Checks the fields' values (also used before an agent registers).
    pub fn validate(&self) -> Result<(), RecordError> {
        let field = |field, expected, found: &dyn std::fmt::Debug| RecordError::Field {
            field,
            expected,
            found: format!("{found:?}"),
        };
        if self.id.trim().is_empty() || self.id.len() > MAX_ID_BYTES || self.id.contains('/') {
            return Err(field(
                "id",
                "a non-empty id of at most 256 bytes without '/'",
                &self.id,
            ));
        }
        let authority = self
            .address
            .strip_prefix("http://")
            .or_else(|| self.address.strip_prefix("https://"));
        let host_port = authority.is_some_and(|a| {
            let a = a.trim_end_matches('/');
            !a.is_empty()
                && !a.contains('/')
                && a.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
        });
        if !host_port {
            return Err(field(
                "address",
                "http://host:port or https://host:port",
                &self.address,
            ));
        }
        if self.agent.port() == 0 || self.agent.ip().is_unspecified() {
            return Err(field(
                "agent",
                "the agent's reachable QUIC address (not 0.0.0.0, not port 0)",
                &self.agent,
            ));
        }
        if let Some(w) = self.static_weight
            && !(w.is_finite() && w >= 0.0)
        {
            return Err(field("static_weight", "a finite number ≥ 0", &w));
        }
        if self.declared_capacity == Some(0) {
            return Err(field(
                "declared_capacity",
                "at least 1 concurrent request",
                &0,
            ));
        }
        Ok(())
    }
}

/// The prefix a service's endpoints are registered under unless configured otherwise.
pub fn default_prefix(service: &str) -> String {
    format!("/lateral/services/{service}/")
}

/// The end of etcd's key range holding every key that starts with `prefix` (etcd's `WithPrefix`): the prefix
/// with its last byte below 0xff incremented and what follows dropped; `[0]` (every key) when there is no
/// such byte.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> EndpointRecord {
        EndpointRecord {
            id: "a1".into(),
            address: "http://127.0.0.1:50051".into(),
            agent: "127.0.0.1:7443".parse().unwrap(),
            zone: Some("z".into()),
            labels: BTreeMap::from([("track".into(), "stable".into())]),
            static_weight: Some(4.0),
            declared_capacity: Some(64),
        }
    }

    #[test]
    fn round_trip_and_unknown_fields_are_ignored() {
        let r = record();
        assert_eq!(EndpointRecord::decode(&r.encode()).unwrap(), r);
        let newer = br#"{"id":"b","address":"https://h:1","agent":"[::1]:9","future":{"x":1}}"#;
        let b = EndpointRecord::decode(newer).unwrap();
        assert_eq!(b.id, "b");
        assert_eq!(b.zone, None);
    }

    #[test]
    fn bad_records_name_the_field() {
        let cases: [(&[u8], &str); 8] = [
            (b"not json", "not the expected JSON"),
            (br#"{"id":"a"}"#, "missing field"),
            (
                br#"{"id":"","address":"http://h:1","agent":"127.0.0.1:1"}"#,
                "`id`",
            ),
            (
                br#"{"id":"a/b","address":"http://h:1","agent":"127.0.0.1:1"}"#,
                "`id`",
            ),
            (
                br#"{"id":"a","address":"h:1","agent":"127.0.0.1:1"}"#,
                "`address`",
            ),
            (
                br#"{"id":"a","address":"http://h:0","agent":"127.0.0.1:1"}"#,
                "`address`",
            ),
            (
                br#"{"id":"a","address":"http://h:1","agent":"0.0.0.0:1"}"#,
                "`agent`",
            ),
            (
                br#"{"id":"a","address":"http://h:1","agent":"127.0.0.1:1","static_weight":-1}"#,
                "`static_weight`",
            ),
        ];
        for (bytes, want) in cases {
            let e = EndpointRecord::decode(bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{e} should mention {want}");
        }
        let big = vec![b' '; MAX_RECORD_BYTES + 1];
        assert_eq!(
            EndpointRecord::decode(&big),
            Err(RecordError::TooLarge(MAX_RECORD_BYTES + 1))
        );
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_range_end(b"/svc/"), b"/svc0".to_vec());
        assert_eq!(prefix_range_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = EndpointRecord::decode(&bytes);
        }

        #[test]
        fn the_range_holds_exactly_the_prefixed_keys(
            prefix in proptest::collection::vec(any::<u8>(), 0..6),
            key in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let end = prefix_range_end(&prefix);
            let in_range = key.as_slice() >= prefix.as_slice() && (end == [0] || key < end);
            prop_assert_eq!(in_range, key.starts_with(&prefix));
        }
    }
}
