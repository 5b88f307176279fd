//! The heartbeat frame codec: every message round-trips, and every bad input is an error, never a panic.

use lateral_proto::heartbeat::{
    FrameError, Goodbye, HEADER_LEN, Heartbeat, Hello, MAGIC, MAX_BODY_LEN, Message,
    OLDEST_DECODED_VERSION, PROTOCOL_VERSION, decode, decode_body, decode_body_as, encode,
};
use proptest::prelude::*;

fn hello() -> impl Strategy<Value = Message> {
    (
        ".{0,40}",
        ".{0,40}",
        any::<u16>(),
        proptest::collection::vec(".{0,20}", 0..5),
        any::<u32>(),
    )
        .prop_map(
            |(agent_id, endpoint_id, protocol_version, capabilities, interval)| {
                Message::Hello(Hello {
                    agent_id,
                    endpoint_id,
                    protocol_version,
                    capabilities,
                    heartbeat_interval_ms: interval,
                })
            },
        )
}

fn heartbeat() -> impl Strategy<Value = Message> {
    (
        (
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()),
        (any::<Option<u32>>(), any::<Option<f64>>(), any::<u64>()),
        (any::<u64>(), any::<f64>()),
    )
        .prop_map(
            |((sequence, in_flight, completed, failed, window_us), lat, rest, v2)| {
                let (latency_mean_us, latency_p50_us, latency_p99_us, accepting) = lat;
                let (declared_capacity, utilization, sender_monotonic_us) = rest;
                let (oldest_in_flight_us, mean_in_flight) = v2;
                Message::Heartbeat(Heartbeat {
                    sequence,
                    in_flight,
                    completed,
                    failed,
                    window_us,
                    latency_mean_us,
                    latency_p50_us,
                    latency_p99_us,
                    accepting,
                    declared_capacity,
                    utilization,
                    sender_monotonic_us,
                    oldest_in_flight_us,
                    mean_in_flight,
                })
            },
        )
}

fn goodbye() -> impl Strategy<Value = Message> {
    (".{0,60}", any::<u32>()).prop_map(|(reason, drain_grace_ms)| {
        Message::Goodbye(Goodbye {
            reason,
            drain_grace_ms,
        })
    })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![hello(), heartbeat(), goodbye()]
}

/// NaN never equals itself; compare the floats bit for bit instead.
fn same(a: &Message, b: &Message) -> bool {
    match (a, b) {
        (Message::Heartbeat(x), Message::Heartbeat(y)) => {
            let bits = |u: Option<f64>| u.map(f64::to_bits);
            let no_floats = |h: &Heartbeat| Heartbeat {
                utilization: None,
                mean_in_flight: 0.0,
                ..h.clone()
            };
            bits(x.utilization) == bits(y.utilization)
                && x.mean_in_flight.to_bits() == y.mean_in_flight.to_bits()
                && no_floats(x) == no_floats(y)
        }
        _ => a == b,
    }
}

proptest! {
    #[test]
    fn every_message_round_trips(msg in message()) {
        let frame = encode(&msg).unwrap();
        let (decoded, used) = decode(&frame).unwrap().unwrap();
        prop_assert_eq!(used, frame.len());
        prop_assert!(same(&msg, &decoded));
    }

    #[test]
    fn a_stream_of_frames_decodes_in_order(msgs in proptest::collection::vec(message(), 1..8)) {
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(encode(m).unwrap());
        }
        let mut offset = 0;
        for m in &msgs {
            let (decoded, used) = decode(&stream[offset..]).unwrap().unwrap();
            prop_assert!(same(m, &decoded));
            offset += used;
        }
        prop_assert_eq!(offset, stream.len());
    }

    #[test]
    fn every_strict_prefix_asks_for_more(msg in message()) {
        let frame = encode(&msg).unwrap();
        for cut in 0..frame.len() {
            prop_assert_eq!(decode(&frame[..cut]), Ok(None));
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn random_bodies_behind_a_valid_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 1..256),
        version in OLDEST_DECODED_VERSION..=PROTOCOL_VERSION,
    ) {
        let mut frame = header(version, body.len() as u32);
        frame.extend(&body);
        match decode(&frame) {
            Ok(Some((_, used))) => prop_assert_eq!(used, frame.len()),
            Ok(None) => prop_assert!(false, "a complete frame must decode or fail"),
            Err(FrameError::Body(_)) => {}
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }
}

fn header(version: u16, len: u32) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend(version.to_be_bytes());
    h.extend(len.to_be_bytes());
    h
}

fn sample() -> Message {
    Message::Heartbeat(Heartbeat {
        sequence: 7,
        in_flight: 3,
        completed: 120,
        failed: 2,
        window_us: 500_000,
        latency_mean_us: 4_100,
        latency_p50_us: 3_900,
        latency_p99_us: 9_800,
        accepting: true,
        declared_capacity: Some(16),
        utilization: Some(0.4),
        sender_monotonic_us: 1_000_000,
        oldest_in_flight_us: 12_345,
        mean_in_flight: 2.5,
    })
}

#[test]
fn wrong_magic_is_refused_from_the_first_byte() {
    assert_eq!(
        decode(b"G"),
        Err(FrameError::BadMagic {
            found: [b'G', 0, 0, 0]
        }),
        "an HTTP or TLS peer is refused before ten bytes arrive"
    );
    let mut frame = encode(&sample()).unwrap();
    frame[0] = b'X';
    assert!(matches!(decode(&frame), Err(FrameError::BadMagic { .. })));
}

#[test]
fn encoders_write_version_2() {
    assert_eq!(PROTOCOL_VERSION, 2);
    assert_eq!(OLDEST_DECODED_VERSION, 1);
    let frame = encode(&sample()).unwrap();
    assert_eq!(frame[4..6], 2u16.to_be_bytes());
}

#[test]
fn unknown_version_is_refused_with_a_clear_error() {
    for version in [0u16, 3, u16::MAX] {
        let mut frame = encode(&sample()).unwrap();
        frame[4..6].copy_from_slice(&version.to_be_bytes());
        let err = decode(&frame).unwrap_err();
        assert_eq!(err, FrameError::UnsupportedVersion { found: version });
        let text = err.to_string();
        assert!(
            text.contains(&format!("version {version};")) && text.contains("speaks version 2"),
            "{text}"
        );
    }
    let body = &encode(&sample()).unwrap()[HEADER_LEN..];
    assert_eq!(
        decode_body_as(3, body),
        Err(FrameError::UnsupportedVersion { found: 3 })
    );
}

/// bincode 2's standard varint: one byte below 251, else a marker and the little-endian integer.
fn varint(v: u64) -> Vec<u8> {
    match v {
        0..=250 => vec![v as u8],
        251..=0xFFFF => [vec![251], (v as u16).to_le_bytes().to_vec()].concat(),
        0x1_0000..=0xFFFF_FFFF => [vec![252], (v as u32).to_le_bytes().to_vec()].concat(),
        _ => [vec![253], v.to_le_bytes().to_vec()].concat(),
    }
}

/// A version-1 heartbeat body built byte by byte, as an older agent sends it: the variant index, then the
/// twelve version-1 fields and nothing else.
fn v1_heartbeat_body() -> Vec<u8> {
    let mut body = varint(1); // Message::Heartbeat
    for v in [7, 3, 120, 2, 500_000, 4_100, 3_900, 9_800] {
        body.extend(varint(v)); // sequence, in_flight, completed, failed, window_us, latencies
    }
    body.push(1); // accepting
    body.push(1); // declared_capacity: Some
    body.extend(varint(16));
    body.push(1); // utilization: Some
    body.extend(0.4f64.to_le_bytes());
    body.extend(varint(1_000_000)); // sender_monotonic_us
    body
}

fn v1_sample() -> Message {
    let Message::Heartbeat(hb) = sample() else {
        unreachable!()
    };
    Message::Heartbeat(Heartbeat {
        oldest_in_flight_us: 0,
        mean_in_flight: 0.0,
        ..hb
    })
}

#[test]
fn a_hand_built_version_1_frame_still_decodes_with_the_new_fields_zero() {
    let body = v1_heartbeat_body();
    let mut frame = header(1, body.len() as u32);
    frame.extend(&body);
    let (decoded, used) = decode(&frame).unwrap().unwrap();
    assert_eq!(used, frame.len());
    assert_eq!(decoded, v1_sample());
    // Parsing the header and decoding the body with its version is the same thing.
    let parsed =
        lateral_proto::heartbeat::FrameHeader::parse(frame.first_chunk().unwrap()).unwrap();
    assert_eq!(parsed.version, 1);
    assert_eq!(decode_body_as(parsed.version, &body).unwrap(), v1_sample());
    // A caller that kept only the body (no version) gets the same message.
    assert_eq!(decode_body(&body).unwrap(), v1_sample());
    // ... and a version-2 body through the same call is decoded as version 2.
    let v2 = encode(&sample()).unwrap();
    assert_eq!(decode_body(&v2[HEADER_LEN..]).unwrap(), sample());
    // A version-1 body is too short for version 2: decoding it as such is an error, not a guess.
    assert!(matches!(
        decode_body_as(PROTOCOL_VERSION, &body),
        Err(FrameError::Body(_))
    ));
}

#[test]
fn version_1_hello_and_goodbye_still_decode() {
    let hello = Message::Hello(Hello {
        agent_id: "a".into(),
        endpoint_id: "e".into(),
        protocol_version: 1,
        capabilities: vec!["drain".into()],
        heartbeat_interval_ms: 500,
    });
    let goodbye = Message::Goodbye(Goodbye {
        reason: "SIGTERM".into(),
        drain_grace_ms: 5_000,
    });
    for msg in [hello, goodbye] {
        // Hello and Goodbye did not change in version 2: the same body under a version-1 header.
        let mut frame = encode(&msg).unwrap();
        frame[4..6].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(decode(&frame).unwrap().unwrap().0, msg);
    }
}

#[test]
fn oversized_and_empty_lengths_are_refused_before_reading_the_body() {
    let too_big = header(PROTOCOL_VERSION, MAX_BODY_LEN as u32 + 1);
    assert_eq!(
        decode(&too_big),
        Err(FrameError::BadLength {
            len: MAX_BODY_LEN as u64 + 1
        })
    );
    let huge = header(PROTOCOL_VERSION, u32::MAX);
    assert!(matches!(decode(&huge), Err(FrameError::BadLength { .. })));
    let empty = header(PROTOCOL_VERSION, 0);
    assert_eq!(decode(&empty), Err(FrameError::BadLength { len: 0 }));
}

#[test]
fn a_truncated_body_is_an_error_not_a_panic() {
    let frame = encode(&sample()).unwrap();
    let body_len = frame.len() - HEADER_LEN;
    // Claim the full length but cut the body short inside the frame: the header says 3 bytes.
    let mut short = header(PROTOCOL_VERSION, 3);
    short.extend(&frame[HEADER_LEN..HEADER_LEN + 3]);
    assert!(
        matches!(decode(&short), Err(FrameError::Body(_))),
        "{body_len}"
    );
}

#[test]
fn an_unknown_message_kind_is_a_body_error_and_the_stream_stays_in_sync() {
    // Variant index 9 does not exist in this build: a newer peer's message kind.
    let mut stream = header(PROTOCOL_VERSION, 2);
    stream.extend([9u8, 0]);
    let skip = stream.len();
    stream.extend(encode(&sample()).unwrap());
    assert!(matches!(decode(&stream), Err(FrameError::Body(_))));
    let (next, _) = decode(&stream[skip..]).unwrap().unwrap();
    assert_eq!(next, sample());
}

#[test]
fn trailing_fields_from_a_newer_peer_are_ignored() {
    let frame = encode(&sample()).unwrap();
    let body = &frame[HEADER_LEN..];
    let mut extended = header(PROTOCOL_VERSION, body.len() as u32 + 4);
    extended.extend(body);
    extended.extend([1, 2, 3, 4]);
    let (decoded, used) = decode(&extended).unwrap().unwrap();
    assert_eq!(decoded, sample());
    assert_eq!(used, extended.len());
}

#[test]
fn a_body_that_claims_a_huge_string_does_not_allocate_it() {
    // Hello with an agent_id length of u32::MAX (varint 0xFC + 4 bytes), then nothing.
    let mut body = vec![0u8, 0xFC];
    body.extend(u32::MAX.to_le_bytes());
    let mut frame = header(PROTOCOL_VERSION, body.len() as u32);
    frame.extend(&body);
    assert!(matches!(decode(&frame), Err(FrameError::Body(_))));
}

#[test]
fn a_message_too_large_to_frame_is_an_encode_error() {
    let msg = Message::Hello(Hello {
        agent_id: "x".repeat(MAX_BODY_LEN + 1),
        endpoint_id: String::new(),
        protocol_version: PROTOCOL_VERSION,
        capabilities: vec![],
        heartbeat_interval_ms: 500,
    });
    assert!(matches!(encode(&msg), Err(FrameError::Encode(_))));
}
