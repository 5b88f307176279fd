//! A reload reaches xDS: a service added by `Coordinator::reload` is published to ADS subscribers at the
//! next push, one removed is withdrawn (before, the set was fixed at start). An ADS client over real gRPC on
//! loopback plays Envoy; the endpoints' agents do not exist, so the weights are static ones (what matters
//! here is which clusters are served, not their weights).
#![cfg(feature = "xds")]

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use lateral_coordinator::{Coordinator, CoordinatorConfig};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

fn config(services: &[&str]) -> CoordinatorConfig {
    let mut text = String::from("[listen]\nxds = \"127.0.0.1:0\"\n[tls]\ninsecure_dev = true\n");
    for (i, name) in services.iter().enumerate() {
        text.push_str(&format!(
            "[[service]]\nname = \"{name}\"\n[[service.endpoint]]\nid = \"{name}-1\"\naddress = \"http://127.0.0.1:{}\"\nagent = \"127.0.0.1:1\"\n",
            50100 + i
        ));
    }
    CoordinatorConfig::parse(&text, "reload.toml").expect("the configuration parses")
}

fn cds_request(last: Option<&DiscoveryResponse>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "reload-test".into(),
            ..Node::default()
        }),
        type_url: CDS.into(),
        version_info: last.map(|r| r.version_info.clone()).unwrap_or_default(),
        response_nonce: last.map(|r| r.nonce.clone()).unwrap_or_default(),
        ..DiscoveryRequest::default()
    }
}

fn cluster_names(response: &DiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> = response
        .resources
        .iter()
        .map(|any| {
            Cluster::decode(any.value.as_slice())
                .expect("a cluster")
                .name
        })
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_services_are_added_to_and_withdrawn_from_xds() {
    let coordinator = Coordinator::start(config(&["greeter"]))
        .await
        .expect("start");
    let ads = coordinator.xds_addr().expect("xDS listens");
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{ads}"))
        .await
        .expect("connect");
    let (tx, requests) = mpsc::channel(8);
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(requests))
        .await
        .expect("a stream")
        .into_inner();
    // Waits for a CDS response whose clusters name exactly `services`, ACKing each one seen.
    let mut until = async |services: &[&str]| -> DiscoveryResponse {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let response = tokio::time::timeout_at(deadline, responses.next())
                .await
                .unwrap_or_else(|_| panic!("no CDS response naming {services:?} within 10 s"))
                .expect("the stream is open")
                .expect("a response");
            tx.send(cds_request(Some(&response))).await.expect("ACK");
            let names = cluster_names(&response);
            if services.iter().all(|s| names.iter().any(|n| n.contains(s)))
                && names.len() == services.len()
            {
                return response;
            }
        }
    };
    tx.send(cds_request(None)).await.expect("subscribe");
    until(&["greeter"]).await;

    coordinator
        .reload(config(&["greeter", "other"]))
        .await
        .expect("reload adding a service");
    let added = until(&["greeter", "other"]).await;

    coordinator
        .reload(config(&["other"]))
        .await
        .expect("reload removing a service");
    let removed = until(&["other"]).await;
    assert_ne!(added.version_info, removed.version_info);
    coordinator.shutdown().await;
}
