//! The coordinator embedded in a client process: the default way to use Lateral, with nothing else to deploy.
//!
//! [`spawn_embedded`] starts a [`Coordinator`] (without its gRPC server unless the configuration asks for one) in
//! the background and returns at once with a weight feed for one service; the client balancer uses its static
//! weights until the first snapshot arrives, so start-up never waits for agents.

use std::sync::Arc;

use lateral_proto::coordinator::WeightSnapshot;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Coordinator, CoordinatorConfig};

/// Keeps an embedded coordinator running; dropping it stops the coordinator.
#[derive(Debug)]
pub struct EmbeddedGuard {
    task: JoinHandle<()>,
}

impl Drop for EmbeddedGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a coordinator for `config` in the background and feeds `service`'s snapshots into the returned
/// receiver. A configuration error, or a service the configuration does not name, is logged and leaves the
/// feed empty (the balancer then stays on its static weights); [`CoordinatorConfig::validate`] it first to
/// fail early instead. Must be called inside a tokio runtime.
pub fn spawn_embedded(
    config: CoordinatorConfig,
    service: &str,
) -> (watch::Receiver<Option<Arc<WeightSnapshot>>>, EmbeddedGuard) {
    let (feed, receiver) = watch::channel(None);
    let service = service.to_string();
    let task = tokio::spawn(async move {
        let coordinator = match Coordinator::start(config).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "embedded coordinator did not start; staying on static weights");
                return;
            }
        };
        let mut weights = match coordinator.subscribe(&service).await {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, %service, "embedded coordinator has no such service; staying on static weights");
                return;
            }
        };
        loop {
            let latest = weights.borrow_and_update().clone();
            if latest.is_some() {
                feed.send_replace(latest);
            }
            if weights.changed().await.is_err() {
                return;
            }
        }
    });
    (receiver, EmbeddedGuard { task })
}
