//! A sidecar coordinator restarts: its snapshot versions start again, and the client must take the new
//! process's weights at once instead of treating them as old keep-alives (the snapshot epoch).

use std::time::Duration;

use lateral_balancer::Balancer;
use lateral_coordinator::Coordinator;
use lateral_integration_tests::*;
use lateral_proto::coordinator::GetDecisionsRequest;
use lateral_proto::coordinator::coordinator_client::CoordinatorClient;

/// The epoch a coordinator's GetDecisions answer carries.
async fn decisions_epoch(port: std::net::SocketAddr) -> u64 {
    let mut client = CoordinatorClient::connect(format!("http://{port}"))
        .await
        .expect("connect");
    client
        .get_decisions(GetDecisionsRequest::default())
        .await
        .expect("GetDecisions")
        .into_inner()
        .epoch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_is_followed_although_its_versions_start_again() {
    let pki = Pki::new("test-ca");
    let ([a, b], mut config) = fleet(&pki, [("a", 8, 5), ("b", 8, 20)]).await;
    // A fixed port, so the client's subscription reconnects to the new process.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    config.listen.grpc = Some(port);
    let first = Coordinator::start(config.clone()).await.expect("start");
    let balancer = Balancer::builder("svc")
        .endpoints([("a", a.uri()), ("b", b.uri())])
        .coordinator(format!("http://{port}"))
        .build()
        .expect("build");
    // Let the first coordinator publish several versions (heartbeats move the weights toward 4:1), so a
    // restarted one starts below: with one endpoint it publishes one or two versions and then none.
    let _load_a = steady_load(a.uri(), 100);
    let _load_b = steady_load(b.uri(), 100);
    let m = balancer.clone();
    eventually(
        Duration::from_secs(10),
        "version ≥ 4 from the first coordinator",
        || {
            let v = m.metrics().snapshot_version();
            async move { v >= 4 }
        },
    )
    .await;
    let before = balancer.metrics().snapshot_version();
    let first_epoch = decisions_epoch(port).await;
    assert_eq!(first_epoch, first.handle().epoch());
    first.shutdown().await;

    // The new process lists only `b`: its first snapshots have versions far below the last one used.
    config.services[0].endpoints.retain(|e| e.id == "b");
    let second = Coordinator::start(config).await.expect("restart");
    let m = balancer.clone();
    eventually(
        Duration::from_secs(10),
        "the client follows the restarted coordinator",
        || {
            let ids: Vec<String> = m.current_weights().into_iter().map(|(id, _)| id).collect();
            async move { ids == ["b"] }
        },
    )
    .await;
    assert!(
        balancer.metrics().snapshot_version() < before,
        "the new epoch's versions started again ({} then {})",
        before,
        balancer.metrics().snapshot_version()
    );
    // Decision sequences start again too; the epoch tells a poller so.
    let second_epoch = decisions_epoch(port).await;
    assert_ne!(second_epoch, 0);
    assert_ne!(second_epoch, first_epoch);
    drop(second);
}
