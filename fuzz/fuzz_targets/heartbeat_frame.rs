//! Feeds arbitrary bytes to the heartbeat frame decoder, as a hostile or broken agent would: frames of every
//! version the decoder accepts (1 and 2) and bodies on their own.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run heartbeat_frame -- -max_total_time=300`
#![no_main]

use lateral_proto::heartbeat::{
    HEADER_LEN, MAX_BODY_LEN, OLDEST_DECODED_VERSION, PROTOCOL_VERSION, decode, decode_body,
    decode_body_as, encode,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Decode a stream of frames the way the coordinator does: one after another until an error.
    let mut rest = data;
    while let Ok(Some((message, used))) = decode(rest) {
        assert!(used >= HEADER_LEN && used <= HEADER_LEN + MAX_BODY_LEN && used <= rest.len());
        // Whatever decodes (version 1 or 2) must encode, as version 2, and decode to the same message (NaN
        // aside: compare frames).
        let frame = encode(&message).expect("a decoded message fits in a frame");
        assert_eq!(frame[4..6], PROTOCOL_VERSION.to_be_bytes());
        let (again, _) = decode(&frame).expect("re-decode").expect("complete");
        assert_eq!(encode(&again).expect("encode"), frame);
        rest = &rest[used..];
    }
    let _ = decode_body(data);
    for version in [0, OLDEST_DECODED_VERSION, PROTOCOL_VERSION, PROTOCOL_VERSION + 1] {
        let _ = decode_body_as(version, data);
    }
});
