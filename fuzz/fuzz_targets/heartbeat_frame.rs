//! Feeds arbitrary bytes to the heartbeat frame decoder, as a hostile or broken agent would.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run heartbeat_frame -- -max_total_time=300`
#![no_main]

use lateral_proto::heartbeat::{MAX_BODY_LEN, HEADER_LEN, decode, decode_body, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Decode a stream of frames the way the coordinator does: one after another until an error.
    let mut rest = data;
    while let Ok(Some((message, used))) = decode(rest) {
        assert!(used >= HEADER_LEN && used <= HEADER_LEN + MAX_BODY_LEN && used <= rest.len());
        // Whatever decodes must encode and decode to the same message (NaN aside: compare frames).
        let frame = encode(&message).expect("a decoded message fits in a frame");
        let (again, _) = decode(&frame).expect("re-decode").expect("complete");
        assert_eq!(encode(&again).expect("encode"), frame);
        rest = &rest[used..];
    }
    let _ = decode_body(data);
});
