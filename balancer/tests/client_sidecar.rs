//! Sidecar mode: the balancer subscribes to a coordinator's `WatchWeights` over gRPC.

mod client_support;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use client_support::*;
use lateral_balancer::Balancer;
use lateral_proto::coordinator::EndpointState::Active;
use lateral_proto::coordinator::coordinator_server::{Coordinator, CoordinatorServer};
use lateral_proto::coordinator::{
    GetDecisionsRequest, GetDecisionsResponse, WatchRequest, WeightSnapshot,
};
use lateral_proto::demo::echo_client::EchoClient;
use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

/// A stand-in coordinator that streams whatever the test publishes.
struct FakeCoordinator {
    snapshots: watch::Receiver<Option<WeightSnapshot>>,
    watchers: Arc<std::sync::Mutex<Vec<WatchRequest>>>,
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<WeightSnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl Coordinator for FakeCoordinator {
    type WatchWeightsStream = SnapshotStream;

    async fn watch_weights(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        self.watchers.lock().unwrap().push(request.into_inner());
        let stream =
            tokio_stream::StreamExt::filter_map(WatchStream::new(self.snapshots.clone()), |s| {
                s.map(Ok)
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_decisions(
        &self,
        _: Request<GetDecisionsRequest>,
    ) -> Result<Response<GetDecisionsResponse>, Status> {
        Ok(Response::new(GetDecisionsResponse::default()))
    }
}

#[tokio::test]
async fn weights_arrive_over_watch_weights() {
    let (a, b) = (Backend::new("a"), Backend::new("b"));
    let (addr_a, addr_b) = (serve(a.clone()).await, serve(b.clone()).await);
    let (tx, rx) = watch::channel(None);
    let watchers = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coordinator = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CoordinatorServer::new(FakeCoordinator {
                snapshots: rx,
                watchers: Arc::clone(&watchers),
            }))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let balancer = Balancer::builder("echo")
        .endpoints([("a", uri(addr_a))])
        .coordinator(uri(coordinator))
        .client_id("test-client")
        .build()
        .unwrap();
    // Before any snapshot: the configured endpoint at equal weight.
    let mut client = EchoClient::new(balancer.clone());
    assert_eq!(
        client.unary(req("x")).await.unwrap().into_inner().served_by,
        "a"
    );

    // The coordinator moves all traffic to b (not configured: dialed from the snapshot).
    tx.send_replace(Some(snapshot(
        "echo",
        1,
        500,
        vec![ew("b", addr_b, 1.0, Active)],
    )));
    tokio::time::timeout(Duration::from_secs(5), async {
        while balancer.metrics().snapshot_version() != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    for _ in 0..10 {
        assert_eq!(
            client.unary(req("y")).await.unwrap().into_inner().served_by,
            "b"
        );
    }
    let watch = watchers.lock().unwrap()[0].clone();
    assert_eq!(
        (watch.service.as_str(), watch.client_id.as_str()),
        ("echo", "test-client")
    );
}
