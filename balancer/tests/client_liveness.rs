//! Liveness from completions: an endpoint that accepts requests and never answers (a blackhole whose agent
//! would keep heartbeating) is set aside by the client itself within its stall bound, its idempotent attempts
//! are cancelled and retried elsewhere, and a non-idempotent request is never sent twice.

mod client_support;

use std::time::Duration;

use client_support::*;
use lateral_balancer::Balancer;
use lateral_proto::demo::echo_client::EchoClient;

const UNARY: &str = "/lateral.demo.v1.Echo/Unary";

/// Two equal endpoints; `hole` answers a few requests, then blackholes.
async fn pair(idempotent: bool) -> (Backend, Backend, Balancer) {
    let (live, hole) = (Backend::new("live"), Backend::new("hole"));
    let (live_addr, hole_addr) = (serve(live.clone()).await, serve(hole.clone()).await);
    let mut builder = Balancer::builder("echo")
        .endpoints([("hole", uri(hole_addr)), ("live", uri(live_addr))])
        .static_weights([("hole", 1.0), ("live", 1.0)]);
    if idempotent {
        builder = builder.idempotent_methods([UNARY]);
    }
    (live, hole, builder.build().unwrap())
}

#[tokio::test]
async fn a_blackhole_is_set_aside_and_idempotent_requests_stuck_there_are_retried_elsewhere() {
    let (live, hole, balancer) = pair(true).await;
    let mut client = EchoClient::new(balancer.clone());
    // Both answer at first: the client learns their latency.
    for i in 0..20 {
        client.unary(req(&format!("warm{i}"))).await.unwrap();
    }
    assert!(hole.arrivals() > 0 && live.arrivals() > 0);
    hole.set_blackhole(true);
    let started = std::time::Instant::now();
    let mut callers = Vec::new();
    for i in 0..40 {
        let mut client = client.clone();
        callers.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(10), client.unary(req(&format!("r{i}"))))
                .await
                .expect("a call hung")
                .map(|r| r.into_inner().served_by)
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for caller in callers {
        let served_by = caller.await.unwrap().expect("no request lost");
        assert_eq!(served_by, "live");
    }
    // Every stuck attempt was cancelled within about one stall bound (250 ms..1 s), not at a deadline.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(balancer.metrics().stalled() > 0);
    assert!(balancer.metrics().retries() > 0);
    // Once set aside, new requests go straight to the live endpoint.
    let hole_before = hole.arrivals();
    for i in 0..20 {
        let reply = client.unary(req(&format!("after{i}"))).await.unwrap();
        assert_eq!(reply.into_inner().served_by, "live");
    }
    assert_eq!(
        hole.arrivals(),
        hole_before,
        "the blackhole was still picked"
    );
}

#[tokio::test]
async fn a_non_idempotent_request_on_a_blackhole_is_not_sent_twice() {
    let (live, hole, balancer) = pair(false).await;
    let mut client = EchoClient::new(balancer.clone());
    for i in 0..10 {
        client.unary(req(&format!("warm{i}"))).await.unwrap();
    }
    hole.set_blackhole(true);
    let live_before = live.arrivals();
    let mut stuck = 0;
    for i in 0..6 {
        match tokio::time::timeout(
            Duration::from_millis(1500),
            client.unary(req(&format!("r{i}"))),
        )
        .await
        {
            Ok(reply) => assert_eq!(reply.unwrap().into_inner().served_by, "live"),
            // The caller's own deadline: the request may have been processed, so it was not resent.
            Err(_) => stuck += 1,
        }
    }
    assert!(stuck >= 1, "no request met the blackhole");
    assert_eq!(
        live.arrivals() - live_before,
        6 - stuck,
        "a request that reached the blackhole was sent again"
    );
    assert!(balancer.metrics().stalled() > 0, "the stall went unnoticed");
}
