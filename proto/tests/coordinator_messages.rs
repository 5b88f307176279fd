//! The generated coordinator and ORCA messages round-trip through protobuf encoding.

use lateral_proto::coordinator::{
    Decision, EndpointState, EndpointWeight, GetDecisionsResponse, WeightSnapshot,
};
use lateral_proto::orca::OrcaLoadReport;
use proptest::prelude::*;
use prost::Message;

fn endpoint() -> impl Strategy<Value = EndpointWeight> {
    (
        "[a-z0-9-]{1,12}",
        "[a-z0-9.:]{1,20}",
        "[a-z-]{0,8}",
        0.0f64..=1.0,
        0i32..=6,
        ".{0,30}",
    )
        .prop_map(
            |(id, address, zone, weight, state, reason)| EndpointWeight {
                id,
                address,
                zone,
                labels: [("track".to_string(), "stable".to_string())].into(),
                weight,
                load_balancing_weight: (weight * 1e6) as u32,
                state,
                rule: "capacity".into(),
                reason,
            },
        )
}

proptest! {
    #[test]
    fn weight_snapshots_round_trip(
        version in any::<u64>(),
        endpoints in proptest::collection::vec(endpoint(), 0..6),
        static_fallback in any::<bool>(),
        epoch in any::<u64>(),
    ) {
        let snap = WeightSnapshot {
            service: "greeter".into(),
            version,
            heartbeat_interval: Some(prost_types::Duration { seconds: 0, nanos: 500_000_000 }),
            endpoints,
            generated_at: None,
            static_fallback,
            epoch,
        };
        let bytes = snap.encode_to_vec();
        prop_assert_eq!(WeightSnapshot::decode(bytes.as_slice()).unwrap(), snap);
    }

    #[test]
    fn decisions_round_trip(seq in any::<u64>(), old in 0.0f64..1.0, new in 0.0f64..1.0) {
        let resp = GetDecisionsResponse {
            decisions: vec![Decision {
                sequence: seq,
                at: None,
                service: "greeter".into(),
                endpoint: "fast".into(),
                old_weight: old,
                new_weight: new,
                old_state: EndpointState::Active as i32,
                new_state: EndpointState::Degraded as i32,
                rule: "freshness.degraded".into(),
                reason: "missed 3 heartbeats".into(),
                inputs: [("missed".to_string(), 3.0)].into(),
            }],
            alerts: vec![],
            epoch: seq.rotate_left(7),
        };
        let bytes = resp.encode_to_vec();
        prop_assert_eq!(GetDecisionsResponse::decode(bytes.as_slice()).unwrap(), resp);
    }

    #[test]
    fn orca_reports_round_trip(rps in 0.0f64..1e6, eps in 0.0f64..1e6, util in 0.0f64..2.0) {
        let report = OrcaLoadReport {
            rps_fractional: rps,
            eps,
            application_utilization: util,
            utilization: [("in_flight".to_string(), util)].into(),
            ..Default::default()
        };
        let bytes = report.encode_to_vec();
        prop_assert_eq!(OrcaLoadReport::decode(bytes.as_slice()).unwrap(), report);
    }

    #[test]
    fn random_bytes_never_panic_the_protobuf_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = WeightSnapshot::decode(bytes.as_slice());
        let _ = OrcaLoadReport::decode(bytes.as_slice());
    }
}

#[test]
fn orca_field_numbers_match_the_public_proto() {
    // rps_fractional is field 6 (double, wire type 1): tag byte (6 << 3) | 1 = 0x31.
    let bytes = OrcaLoadReport {
        rps_fractional: 1.0,
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(bytes[0], 0x31);
    // application_utilization is field 9: (9 << 3) | 1 = 0x49.
    let bytes = OrcaLoadReport {
        application_utilization: 1.0,
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(bytes[0], 0x49);
}
