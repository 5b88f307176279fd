//! An agent in proxy mode in front of a backend it knows nothing about: every call kind passes unchanged, and
//! the coordinator receives the proxy's measurements over QUIC.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lateral_agent::measurement::MeasurementSource;
use lateral_agent::proxy::{Proxy, ProxyOptions};
use lateral_agent::recorder::Recorder;
use lateral_agent::reporter::{Reporter, ReporterOptions};
use lateral_coordinator::Coordinator;
use lateral_coordinator::config::EndpointConfig;
use lateral_examples::echo_service::{Knobs, ServiceTime, SimulatedEcho};
use lateral_integration_tests::*;
use lateral_proto::coordinator::EndpointState;
use lateral_proto::demo::EchoRequest;
use lateral_proto::demo::echo_client::EchoClient;
use lateral_proto::demo::echo_server::EchoServer;

fn request(message: &str, count: u32) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        count,
        fail_with: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_agent_passes_every_call_kind_and_reports_to_the_coordinator() {
    // A plain tonic backend with no Lateral code in it.
    let knobs = Arc::new(Knobs::new(
        4,
        Duration::from_millis(1),
        ServiceTime::Constant,
    ));
    let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(SimulatedEcho::new("plain", knobs, 1)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // The agent: proxy + QUIC reporter sharing one recorder.
    let pki = Pki::new("test-ca");
    let recorder = Recorder::new();
    let proxy = Proxy::bind(
        any_port(),
        format!("http://{backend_addr}").parse().unwrap(),
        recorder.clone(),
        ProxyOptions::default(),
    )
    .await
    .unwrap();
    let mut options = ReporterOptions::new("proxy-agent", "proxied");
    options.interval = Duration::from_millis(50);
    let source: Arc<dyn MeasurementSource> = Arc::new(recorder.clone());
    let reporter = Reporter::bind(any_port(), &pki.mode("agent"), source, options).unwrap();

    let mut client = EchoClient::connect(format!("http://{}", proxy.local_addr()))
        .await
        .unwrap();
    let unary = client.unary(request("one", 0)).await.unwrap().into_inner();
    assert_eq!(
        (unary.message.as_str(), unary.served_by.as_str()),
        ("one", "plain")
    );

    let replies: Vec<_> = client
        .server_stream(request("many", 5))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap().index)
        .collect()
        .await;
    assert_eq!(replies, vec![0, 1, 2, 3, 4]);

    let outbound = futures_util::stream::iter(["a", "b", "c"].map(|m| request(m, 0)));
    let joined = client.client_stream(outbound).await.unwrap().into_inner();
    assert_eq!((joined.message.as_str(), joined.index), ("a,b,c", 3));

    let outbound = futures_util::stream::iter(["x", "y"].map(|m| request(m, 0)));
    let echoed: Vec<_> = client
        .bidi_stream(outbound)
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap().message)
        .collect()
        .await;
    assert_eq!(echoed, vec!["x", "y"]);

    // A failure passes unchanged too, status and message.
    let failed = client
        .unary(EchoRequest {
            fail_with: tonic::Code::NotFound as i32,
            ..request("gone", 0)
        })
        .await
        .unwrap_err();
    assert_eq!(failed.code(), tonic::Code::NotFound);
    assert_eq!(failed.message(), "failure requested by the caller");

    // The coordinator hears the proxy's agent.
    let mut endpoint = EndpointConfig {
        id: "proxied".into(),
        address: format!("http://{}", proxy.local_addr()),
        agent: reporter.local_addr(),
        zone: None,
        labels: Default::default(),
        static_weight: None,
        declared_capacity: None,
    };
    endpoint.static_weight = Some(1.0);
    let coordinator = Coordinator::start(coordinator_config(
        pki.coordinator_tls(),
        fast_engine(),
        vec![endpoint],
    ))
    .await
    .unwrap();
    let _load = steady_load(format!("http://{}", proxy.local_addr()), 100);
    let mut watcher = Watcher::connect(coordinator.grpc_addr().unwrap(), "svc").await;
    watcher
        .until(
            Duration::from_secs(5),
            "the proxied endpoint weighted by its measurements",
            |s| {
                !s.static_fallback
                    && entry(s, "proxied").is_some_and(|e| e.1 == EndpointState::Active)
            },
        )
        .await;
    proxy.shutdown().await;
}
