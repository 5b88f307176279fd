//! Feeds arbitrary bytes to the client's side of `WatchWeights`, as a broken or hostile coordinator would send
//! them: a stream of `lateral.v1.WeightSnapshot` messages (each one length-delimited, as prost frames them;
//! the stream ends at the first that does not decode, as a subscription ends at a stream error), decoded
//! with prost as tonic does, then taken by the balancer's policy task as the sidecar subscriber
//! (`client/watch.rs`) hands them over: through the weight feed into `Policy::apply` (`client/snapshot.rs`),
//! which turns a snapshot into the published picker (membership, addresses to dial, weights, states,
//! staleness deadline). Nothing may panic; a bad entry is skipped with a warning.
//!
//! Each input gets a fresh `Balancer` (`Builder::weights_feed`, a fixed seed), on one current-thread runtime
//! reused across inputs; its tasks are run to completion before the next input.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run weight_snapshot`
#![no_main]

use std::sync::{Arc, OnceLock};

use lateral_balancer::Balancer;
use lateral_proto::coordinator::WeightSnapshot;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio::runtime::Runtime;
use tokio::sync::watch;

/// At most this many snapshots per input (more add nothing a mutation of the first ones would not).
const MAX_SNAPSHOTS: usize = 8;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
    })
}

/// Lets the spawned tasks (the policy task, the endpoints' channel workers) run until they wait.
async fn settle() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut snapshots = Vec::new();
    while !rest.is_empty() && snapshots.len() < MAX_SNAPSHOTS {
        match WeightSnapshot::decode_length_delimited(&mut rest) {
            Ok(snapshot) => snapshots.push(snapshot),
            Err(_) => break,
        }
    }
    if snapshots.is_empty() {
        return;
    }
    let rt = runtime();
    rt.block_on(async {
        let (feed, rx) = watch::channel(None);
        let balancer = Balancer::builder("greeter")
            .weights_feed(rx)
            .seed(1)
            .build()
            .expect("a balancer on a weights feed builds");
        for snapshot in snapshots {
            feed.send_replace(Some(Arc::new(snapshot)));
            settle().await;
            // What the pick path and the metrics read from the published picker.
            let _ = balancer.current_weights();
            let _ = balancer.metrics().render_prometheus();
        }
        drop(balancer);
        drop(feed);
        // The stop token cancelled the policy task; let it and the channel workers end.
        for _ in 0..64 {
            if tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                == 0
            {
                break;
            }
            tokio::task::yield_now().await;
        }
    });
});
