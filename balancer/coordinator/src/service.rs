//! The `lateral.v1.Coordinator` gRPC service: `WatchWeights` and `GetDecisions`.

use std::pin::Pin;
use std::sync::Arc;

use lateral_proto::coordinator::coordinator_server::Coordinator as CoordinatorApi;
use lateral_proto::coordinator::{
    GetDecisionsRequest, GetDecisionsResponse, WatchRequest, WeightSnapshot,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::CoordinatorHandle;

/// Serves the coordinator API from a running coordinator.
#[derive(Clone)]
pub struct CoordinatorService {
    handle: Arc<CoordinatorHandle>,
}

impl CoordinatorService {
    pub(crate) fn new(handle: Arc<CoordinatorHandle>) -> Self {
        Self { handle }
    }
}

/// The most decisions one `GetDecisions` call returns.
const MAX_DECISIONS: usize = 1000;

#[tonic::async_trait]
impl CoordinatorApi for CoordinatorService {
    type WatchWeightsStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<WeightSnapshot, Status>> + Send>>;

    async fn watch_weights(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchWeightsStream>, Status> {
        let WatchRequest {
            service, client_id, ..
        } = request.into_inner();
        let mut weights = self
            .handle
            .subscribe(&service)
            .await
            .map_err(Status::from)?;
        tracing::info!(%service, %client_id, "client watching weights");
        // A small queue per watcher; the watch channel itself holds only the latest snapshot, so a slow
        // client skips intermediate versions instead of growing memory.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            loop {
                let current = weights.borrow_and_update().clone();
                if let Some(snapshot) = current
                    && tx.send(Ok(WeightSnapshot::clone(&snapshot))).await.is_err()
                {
                    return; // the client went away
                }
                if weights.changed().await.is_err() {
                    let _ = tx
                        .send(Err(Status::not_found(format!(
                            "service `{service}` was removed from the coordinator's configuration"
                        ))))
                        .await;
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_decisions(
        &self,
        request: Request<GetDecisionsRequest>,
    ) -> Result<Response<GetDecisionsResponse>, Status> {
        let r = request.into_inner();
        if !r.service.is_empty() && !self.handle.has_service(&r.service) {
            return Err(crate::Error::UnknownService(r.service).into());
        }
        let limit = match r.limit as usize {
            0 => 100,
            n => n.min(MAX_DECISIONS),
        };
        let (decisions, alerts) =
            self.handle
                .log
                .query(&r.service, &r.endpoint, r.after_sequence, limit);
        Ok(Response::new(GetDecisionsResponse {
            decisions,
            alerts,
            epoch: self.handle.epoch(),
        }))
    }
}
