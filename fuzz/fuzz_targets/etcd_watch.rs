//! Feeds arbitrary bytes to the coordinator's etcd endpoint source as a broken or hostile etcd would answer:
//! one `etcdserverpb.RangeResponse` (the listing) and then `etcdserverpb.WatchResponse` messages, each one
//! length-delimited as prost frames them, decoded with prost as tonic does. The session's logic then runs
//! through `lateral_coordinator::fuzz_membership` (`coordinator/etcd.rs`'s `Members`): the listing
//! replaces the set, then every event of every response until one is cancelled (which ends a session) is
//! applied, a put decoding its value as an endpoint record and checking the record's id against the key.
//! (`etcd_record` fuzzes the record decoder alone.)
//!
//! Beyond never panicking: an event `Members::apply` says did not change the set left it as it was (the
//! session sends the set to the driver only when `apply` says it may have changed).
//!
//! Run: `cd fuzz && cargo +nightly fuzz run etcd_watch`
#![no_main]

use lateral_coordinator::fuzz_membership;
use lateral_proto::etcd::default_prefix;
use lateral_proto::etcd::etcdserverpb::{RangeResponse, WatchResponse};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let Ok(listing) = RangeResponse::decode_length_delimited(&mut rest) else {
        return;
    };
    let kvs = listing
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect();
    let mut events = Vec::new();
    while !rest.is_empty() {
        let Ok(response) = WatchResponse::decode_length_delimited(&mut rest) else {
            break;
        };
        if response.canceled {
            break;
        }
        events.extend(response.events);
    }
    let prefix = default_prefix("greeter");
    let (listed, after) = fuzz_membership(prefix.as_bytes(), kvs, events);
    let mut before = &listed;
    for (changed, set) in &after {
        if !changed {
            assert_eq!(
                set, before,
                "an event changed the set but apply said it did not"
            );
        }
        before = set;
    }
});
