//! OTLP traces end to end: a collector started by the test (opentelemetry-proto's `TraceServiceServer` on
//! 127.0.0.1:0) receives the coordinator's decision and heartbeat spans and the balancer's client spans, and
//! the agent proxy's span is a child of the client's span across the HTTP/2 hop (W3C `traceparent`).
//! A second test checks that a dead collector never blocks span creation.
//!
//! Everything runs in this one process (one tracer provider, one `service.name`); span names tell the
//! components apart: `lateral.client` (balancer), `lateral.proxy` (agent), `lateral.decisions` and
//! `lateral.heartbeat` (coordinator).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lateral_agent::proxy::{Proxy, ProxyOptions};
use lateral_agent::recorder::Recorder;
use lateral_balancer::Balancer;
use lateral_coordinator::Coordinator;
use lateral_coordinator::telemetry::{self, TelemetryConfig};
use lateral_examples::backend::BackendSpec;
use lateral_integration_tests::*;
use lateral_proto::demo::EchoRequest;
use lateral_proto::demo::echo_client::EchoClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;

/// The test's collector: keeps every span it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn start_collector() -> (SocketAddr, Collector) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = Collector::default();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, collector)
}

fn attr<'a>(
    attributes: &'a [opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<&'a opentelemetry_proto::tonic::common::v1::any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string_attr(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match attr(&span.attributes, key)? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_with_parent_links_across_the_proxy() {
    let (collector_addr, collector) = start_collector().await;
    let config = TelemetryConfig {
        otlp_endpoint: Some(format!("http://{collector_addr}")),
        service_name: Some("lateral-otlp-test".into()),
        schedule_delay_ms: Some(100),
        ..TelemetryConfig::default()
    };
    let telemetry = telemetry::init_tracing("lateral-otlp-test", &config, "RUST_LOG", false)
        .expect("install the subscriber");
    assert!(telemetry.exporting());

    // backend (agent layer + QUIC reporter) ← agent h2c proxy ← balancer; the coordinator watches the agent.
    let pki = Pki::new("test-ca");
    let backend = backend(
        BackendSpec::new("via-proxy", 8, Duration::from_millis(2)),
        Duration::from_millis(50),
        pki.mode("agent"),
    )
    .await;
    let proxy = Proxy::bind(
        any_port(),
        backend.uri().parse().unwrap(),
        Recorder::new(),
        ProxyOptions::default(),
    )
    .await
    .unwrap();
    let proxy_uri = format!("http://{}", proxy.local_addr());
    let mut endpoint = endpoint_of(&backend);
    endpoint.address = proxy_uri.clone();
    let mut coordinator_config =
        coordinator_config(pki.coordinator_tls(), fast_engine(), vec![endpoint]);
    coordinator_config.telemetry = TelemetryConfig {
        heartbeat_span_every: Some(2),
        ..TelemetryConfig::default()
    };
    let coordinator = Coordinator::start(coordinator_config).await.unwrap();
    let grpc = coordinator.grpc_addr().unwrap();

    let balancer = Balancer::builder("svc")
        .endpoints([("via-proxy", proxy_uri.clone())])
        .coordinator(format!("http://{grpc}"))
        .client_id("otlp-test")
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.clone());
    for i in 0..5 {
        client
            .unary(EchoRequest {
                message: format!("traced {i}"),
                ..Default::default()
            })
            .await
            .expect("echo through balancer and proxy");
    }

    // Wait (with a deadline) for the batches: client and proxy spans linked, decisions, heartbeats.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        telemetry.flush();
        let spans = collector.spans.lock().unwrap().clone();
        let clients: Vec<&Span> = spans
            .iter()
            .filter(|s| s.name == "lateral.client")
            .collect();
        let proxies: Vec<&Span> = spans.iter().filter(|s| s.name == "lateral.proxy").collect();
        let linked = clients
            .iter()
            .filter(|c| {
                proxies
                    .iter()
                    .any(|p| p.trace_id == c.trace_id && p.parent_span_id == c.span_id)
            })
            .count();
        let decisions = spans
            .iter()
            .filter(|s| s.name == "lateral.decisions")
            .flat_map(|s| &s.events)
            .filter(|e| attr(&e.attributes, "rule").is_some() && !e.name.is_empty())
            .count();
        let heartbeats = spans
            .iter()
            .filter(|s| s.name == "lateral.heartbeat")
            .count();
        if linked >= 5 && decisions >= 1 && heartbeats >= 1 {
            let client = clients[0];
            assert_eq!(client.trace_id.len(), 16);
            assert!(
                client.parent_span_id.is_empty(),
                "the client span is a root here"
            );
            assert_eq!(
                string_attr(client, "endpoint").as_deref(),
                Some("via-proxy")
            );
            assert!(
                attr(&client.attributes, "weight").is_some(),
                "weight recorded"
            );
            assert_eq!(
                client.kind,
                opentelemetry_proto::tonic::trace::v1::span::SpanKind::Client as i32
            );
            let proxy_span = proxies
                .iter()
                .find(|p| p.parent_span_id == client.span_id)
                .expect("the proxy span of the first call");
            assert_eq!(proxy_span.trace_id, client.trace_id);
            assert_eq!(
                proxy_span.kind,
                opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32
            );
            // grpc-status of a successful call is in the trailers; the response head is recorded.
            assert_eq!(
                string_attr(proxy_span, "http.status_code").as_deref(),
                Some("200")
            );
            assert_eq!(
                string_attr(proxy_span, "rpc.method").as_deref(),
                Some("/lateral.demo.v1.Echo/Unary")
            );
            // A decision event carries its rule and its reason (the event's name).
            let event = spans
                .iter()
                .filter(|s| s.name == "lateral.decisions")
                .flat_map(|s| &s.events)
                .find(|e| attr(&e.attributes, "rule").is_some())
                .unwrap();
            assert!(!event.name.is_empty(), "the reason is the event's name");
            assert!(attr(&event.attributes, "endpoint").is_some());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {} spans, {} client, {} proxy, {linked} linked, {decisions} decision events, \
             {heartbeats} heartbeat spans; names: {:?}",
            spans.len(),
            clients.len(),
            proxies.len(),
            spans
                .iter()
                .map(|s| s.name.as_str())
                .collect::<std::collections::BTreeSet<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    drop(balancer);
    proxy.shutdown().await;
    telemetry.shutdown();
}

/// A collector that refuses connections: creating and ending spans stays fast (a bounded queue, drops when
/// full), and shutting the pipeline down returns within the export timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_never_blocks_spans() {
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    // Bind then drop: a port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = TelemetryConfig {
        otlp_endpoint: Some(format!("http://{dead}")),
        schedule_delay_ms: Some(20),
        max_queue_size: Some(64),
        export_timeout_ms: Some(500),
        ..TelemetryConfig::default()
    };
    let provider = telemetry::tracer_provider("dead-collector-test", &config)
        .unwrap()
        .expect("an endpoint is configured");
    let tracer = provider.tracer("test");
    let started = Instant::now();
    for i in 0..20_000 {
        let mut span = tracer.start(format!("span {i}"));
        span.end();
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "20 000 spans took {elapsed:?} with a dead collector"
    );
    let started = Instant::now();
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
}
