//! Feeds arbitrary bytes to the etcd endpoint-record decoder, as a broken or hostile registrant would.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run etcd_record -- -max_total_time=120`
#![no_main]

use lateral_proto::etcd::EndpointRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = EndpointRecord::decode(data) {
        // Whatever is accepted is valid and survives its own encoding.
        assert!(record.validate().is_ok());
        let again = EndpointRecord::decode(&record.encode()).expect("a valid record re-decodes");
        assert_eq!(again.encode(), record.encode());
    }
});
