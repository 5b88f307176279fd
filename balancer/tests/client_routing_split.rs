//! The dynamic/static split: a fraction of requests on the coordinator's weights, the rest on static ones,
//! both groups' requests, errors and latency side by side in the metrics. Real Echo backends.

mod client_support;

use std::sync::Arc;

use client_support::*;
use lateral_balancer::{Balancer, Group};
use lateral_proto::coordinator::EndpointState::Active;
use lateral_proto::demo::echo_client::EchoClient;
use lateral_proto::demo::echo_server::{Echo, EchoServer};
use lateral_proto::demo::{EchoReply, EchoRequest};
use tonic::{Request, Response, Status, Streaming};

/// A backend that fails every unary call with INTERNAL (a bad path the static weights keep using).
#[derive(Clone)]
struct Failing;

type ReplyStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Failing {
    async fn unary(&self, _: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Err(Status::internal("failing backend"))
    }
    type ServerStreamStream = ReplyStream;
    async fn server_stream(
        &self,
        _: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        Err(Status::internal("failing backend"))
    }
    async fn client_stream(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        Err(Status::internal("failing backend"))
    }
    type BidiStreamStream = ReplyStream;
    async fn bidi_stream(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        Err(Status::internal("failing backend"))
    }
}

async fn serve_failing() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(Failing))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    addr
}

#[tokio::test]
async fn ten_percent_follow_dynamic_weights_and_both_groups_are_reported() {
    let good = Backend::new("good");
    let good_addr = serve(good.clone()).await;
    let bad_addr = serve_failing().await;
    let (tx, rx) = tokio::sync::watch::channel(None);
    let balancer = Balancer::builder("echo")
        .endpoints([("good", uri(good_addr)), ("bad", uri(bad_addr))])
        .static_weights([("good", 1.0), ("bad", 1.0)])
        .dynamic_fraction(0.1)
        .choice_count(1)
        .weights_feed(rx)
        .seed(3)
        .build()
        .unwrap();
    // The coordinator has seen `bad` fail: all dynamic weight on `good` (bad still ACTIVE, at zero weight).
    tx.send_replace(Some(Arc::new(snapshot(
        "echo",
        1,
        500,
        vec![
            ew("good", good_addr, 1.0, Active),
            ew("bad", bad_addr, 0.0, Active),
        ],
    ))));
    until(|| balancer.metrics().snapshot_version() == 1).await;

    let mut client = EchoClient::new(balancer.clone());
    let mut failures = 0;
    for i in 0..1000 {
        if client.unary(req(&format!("m{i}"))).await.is_err() {
            failures += 1;
        }
    }
    let metrics = balancer.metrics();
    let dynamic = metrics.group(Group::Dynamic);
    let fixed = metrics.group(Group::Static);
    // Exactly 10% by the request counter.
    assert_eq!(dynamic.requests, 100);
    assert_eq!(fixed.requests, 900);
    // Dynamic weights avoid the bad path; static equal weights send it half of theirs.
    assert_eq!(dynamic.errors, 0);
    assert!((400..=500).contains(&fixed.errors), "{}", fixed.errors);
    assert_eq!(dynamic.errors + fixed.errors, failures);
    assert_eq!(good.arrivals() as u64, 1000 - failures);
    // The histogram counts every request once, cumulatively.
    assert_eq!(dynamic.latency_buckets.last().map(|b| b.1), Some(100));
    assert_eq!(fixed.latency_buckets.last().map(|b| b.1), Some(900));
    assert!(dynamic.latency_sum_seconds > 0.0);

    let text = metrics.render_prometheus();
    println!(
        "{}",
        text.lines()
            .filter(|l| l.contains("group"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for line in [
        "lateral_client_group_requests_total{service=\"echo\",group=\"dynamic\"} 100",
        "lateral_client_group_requests_total{service=\"echo\",group=\"static\"} 900",
        "lateral_client_group_errors_total{service=\"echo\",group=\"dynamic\"} 0",
        "lateral_client_group_latency_seconds_bucket{service=\"echo\",group=\"dynamic\",le=\"+Inf\"} 100",
        "lateral_client_group_latency_seconds_count{service=\"echo\",group=\"static\"} 900",
        "# TYPE lateral_client_group_latency_seconds histogram",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
}

#[tokio::test]
async fn streams_are_counted_when_they_end_and_no_split_renders_no_groups() {
    let a = Backend::new("a");
    let addr = serve(a.clone()).await;
    let balancer = Balancer::builder("echo")
        .endpoints([("a", uri(addr))])
        .dynamic_fraction(0.5)
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.clone());
    for _ in 0..4 {
        let mut stream = client
            .server_stream(EchoRequest {
                message: "s".into(),
                count: 3,
                fail_with: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while stream.message().await.unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
    }
    let m = balancer.metrics();
    let (d, s) = (m.group(Group::Dynamic), m.group(Group::Static));
    assert_eq!((d.requests, s.requests), (2, 2));
    assert_eq!(d.errors + s.errors, 0);

    let plain = Balancer::builder("echo")
        .endpoints([("a", uri(addr))])
        .build()
        .unwrap();
    EchoClient::new(plain.clone())
        .unary(req("x"))
        .await
        .unwrap();
    assert!(!plain.metrics().render_prometheus().contains("group="));
}

#[tokio::test]
async fn a_fraction_outside_zero_to_one_is_a_config_error() {
    for f in [-0.1, 1.5, f64::NAN] {
        let built = Balancer::builder("echo")
            .endpoints([("a", "http://127.0.0.1:1")])
            .dynamic_fraction(f)
            .build();
        assert!(built.is_err(), "{f}");
    }
}
