//! The sidecar subscriber: `WatchWeights` over gRPC into a weight feed, reconnecting with jittered
//! exponential backoff.
//!
//! Backoff: `min(MAX_BACKOFF, BASE_BACKOFF × 2^failures)`, with "equal jitter" (half fixed, half uniform
//! random from the balancer's seeded generator), reset once a snapshot arrives. The first failure of an
//! outage is a warning, the following ones are debug logs. Requests never wait for this task: until a
//! snapshot arrives the picker uses the static (or equal) weights.

use std::sync::Arc;
use std::time::Duration;

use lateral_proto::coordinator::coordinator_client::CoordinatorClient;
use lateral_proto::coordinator::{WatchRequest, WeightSnapshot};
use rand::Rng;
use rand::rngs::SmallRng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

/// The first reconnect delay.
pub const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// The longest reconnect delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Subscribes to `uri` until `cancel` fires or nobody listens to `feed` any more.
pub(crate) async fn run(
    uri: String,
    request: WatchRequest,
    feed: watch::Sender<Option<Arc<WeightSnapshot>>>,
    mut rng: SmallRng,
    cancel: CancellationToken,
) {
    let mut failures: u32 = 0;
    let service = request.service.clone();
    loop {
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = feed.closed() => return,
            outcome = subscribe(&uri, request.clone(), &feed, &mut failures) => outcome,
        };
        let delay = backoff(failures, &mut rng);
        if failures == 1 {
            tracing::warn!(%service, coordinator = %uri, error = %outcome, retry_in = ?delay, "coordinator watch failed; keeping the current weights and reconnecting");
        } else {
            tracing::debug!(%service, coordinator = %uri, error = %outcome, retry_in = ?delay, "coordinator watch failed again");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = feed.closed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One subscription: returns why it ended; `failures` is reset by a received snapshot and bumped at the end.
async fn subscribe(
    uri: &str,
    request: WatchRequest,
    feed: &watch::Sender<Option<Arc<WeightSnapshot>>>,
    failures: &mut u32,
) -> String {
    let result: Result<(), String> = async {
        let endpoint = Endpoint::from_shared(uri.to_string())
            .map_err(|e| format!("bad coordinator URI: {e}"))?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut stream = CoordinatorClient::new(channel)
            .watch_weights(request)
            .await
            .map_err(|s| format!("WatchWeights: {s}"))?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(snapshot)) => {
                    *failures = 0;
                    feed.send_replace(Some(Arc::new(snapshot)));
                }
                Ok(None) => return Err("the coordinator ended the stream".to_string()),
                Err(status) => return Err(format!("stream: {status}")),
            }
        }
    }
    .await;
    *failures = failures.saturating_add(1);
    match result {
        Ok(()) => "stream ended".to_string(),
        Err(e) => e,
    }
}

/// The delay before reconnect number `failures` (1-based).
pub(crate) fn backoff(failures: u32, rng: &mut SmallRng) -> Duration {
    let exp = BASE_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let capped = exp.min(MAX_BACKOFF);
    let half = capped / 2;
    half + half.mul_f64(rng.random::<f64>())
}
