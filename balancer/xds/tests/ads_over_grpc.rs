//! The ADS server over real gRPC on loopback, with tonic's generated xDS client in the peer's place:
//! subscriptions are answered, ACKs quiet the stream, new weights are pushed, a NACK is not answered with the
//! rejected version again, and delta xDS is refused.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use lateral_proto::coordinator::{EndpointState, EndpointWeight, WeightSnapshot};
use lateral_xds::{TypeUrl, XdsConfig, XdsServer};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

fn snapshot(fast: f64) -> Option<Arc<WeightSnapshot>> {
    let e = |id: &str, port: u16, weight: f64| EndpointWeight {
        id: id.into(),
        address: format!("http://127.0.0.1:{port}"),
        weight,
        state: EndpointState::Active as i32,
        ..EndpointWeight::default()
    };
    Some(Arc::new(WeightSnapshot {
        service: "greeter".into(),
        endpoints: vec![e("fast", 50051, fast), e("slow", 50052, 1.0 - fast)],
        ..WeightSnapshot::default()
    }))
}

fn request(t: TypeUrl, names: &[&str], last: Option<&DiscoveryResponse>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "test".into(),
            ..Node::default()
        }),
        type_url: t.as_str().into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: last.map(|r| r.version_info.clone()).unwrap_or_default(),
        response_nonce: last.map(|r| r.nonce.clone()).unwrap_or_default(),
        ..DiscoveryRequest::default()
    }
}

fn weights_of(r: &DiscoveryResponse) -> Vec<u32> {
    let cla =
        ClusterLoadAssignment::decode(r.resources[0].value.as_slice()).expect("an assignment");
    cla.endpoints
        .iter()
        .map(|l| l.load_balancing_weight.map(|w| w.value).unwrap_or_default())
        .collect()
}

/// An ADS stream to `server`: where to send requests, and the responses.
async fn open_stream(
    server: &XdsServer,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<DiscoveryResponse>,
) {
    let mut client =
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", server.local_addr()))
            .await
            .expect("connect");
    let (tx, requests) = mpsc::channel(8);
    let responses = client
        .stream_aggregated_resources(ReceiverStream::new(requests))
        .await
        .expect("a stream")
        .into_inner();
    (tx, responses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_ack_push_nack_over_grpc() {
    let (weights, rx) = watch::channel(snapshot(0.75));
    let config = XdsConfig {
        push_interval_ms: 10,
        ..XdsConfig::default()
    };
    let server = XdsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        config,
        vec![("greeter".into(), rx)],
    )
    .await
    .expect("start");
    let mut catalog = server.catalog();
    tokio::time::timeout(
        Duration::from_secs(5),
        catalog.wait_for(|c| {
            !c.get(TypeUrl::Endpoints, lateral_xds::catalog::ListenerShape::Api)
                .resources
                .is_empty()
        }),
    )
    .await
    .expect("the first catalog")
    .expect("the publisher runs");

    let (tx, mut responses) = open_stream(&server).await;
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), responses.next())
            .await
            .expect("a response within 5 s")
            .expect("the stream is open")
            .expect("a response")
    };

    tx.send(request(TypeUrl::Endpoints, &["greeter"], None))
        .await
        .unwrap();
    let first = next().await;
    assert_eq!(first.type_url, TypeUrl::Endpoints.as_str());
    assert_eq!(weights_of(&first), vec![750_000, 250_000]);

    // ACK, then new weights: pushed without asking.
    tx.send(request(TypeUrl::Endpoints, &["greeter"], Some(&first)))
        .await
        .unwrap();
    weights.send_replace(snapshot(0.6));
    let pushed = next().await;
    assert_ne!(pushed.version_info, first.version_info);
    assert_eq!(weights_of(&pushed), vec![600_000, 400_000]);

    // NACK it: the server does not send it again; the next change is sent.
    let mut nack = request(TypeUrl::Endpoints, &["greeter"], Some(&pushed));
    nack.version_info = first.version_info.clone();
    nack.error_detail = Some(Status {
        code: 3,
        message: "rejected for the test".into(),
        details: vec![],
    });
    tx.send(nack).await.unwrap();
    weights.send_replace(snapshot(0.5));
    let after = next().await;
    assert_eq!(
        weights_of(&after),
        vec![500_000, 500_000],
        "the rejected version was sent again"
    );

    // Delta xDS is refused with UNIMPLEMENTED.
    let mut client =
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", server.local_addr()))
            .await
            .expect("connect");
    let delta = client
        .delta_aggregated_resources(tokio_stream::empty())
        .await
        .expect_err("delta is not served");
    assert_eq!(delta.code(), tonic::Code::Unimplemented);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_ends_its_streams_so_clients_fail_over() {
    let (_weights, rx) = watch::channel(snapshot(0.75));
    let server = XdsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        XdsConfig::default(),
        vec![("greeter".into(), rx)],
    )
    .await
    .expect("start");
    let (tx, mut responses) = open_stream(&server).await;
    tx.send(request(TypeUrl::Endpoints, &["greeter"], None))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), responses.next())
        .await
        .expect("a first response")
        .expect("open")
        .expect("a response");
    tx.send(request(TypeUrl::Endpoints, &["greeter"], Some(&first)))
        .await
        .unwrap();
    // Dropped, as an embedding process drops its coordinator: the open stream ends with UNAVAILABLE
    // instead of staying open on weights that will never change again.
    drop(server);
    let ended = tokio::time::timeout(Duration::from_secs(5), responses.next())
        .await
        .expect("the stream ends within 5 s");
    match ended {
        Some(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status}"),
        None => {}
        Some(Ok(r)) => panic!("a response after the server stopped: {r:?}"),
    }
}
