//! Local outlier ejection: an endpoint that refuses connections is set aside by the client itself, before any
//! coordinator has noticed, and no request is lost on the way.

mod client_support;

use client_support::*;
use lateral_balancer::Balancer;
use lateral_proto::demo::echo_client::EchoClient;

#[tokio::test]
async fn a_refusing_endpoint_is_set_aside_locally_and_no_request_is_lost() {
    let live = Backend::new("live");
    let live_addr = serve(live.clone()).await;
    // A port that was just free: connections to it are refused.
    let dead_addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let balancer = Balancer::builder("echo")
        .endpoints([("dead", uri(dead_addr)), ("live", uri(live_addr))])
        .static_weights([("dead", 1.0), ("live", 1.0)])
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.clone());
    // Not marked idempotent: only never-sent failures may be retried, which is what a refused connect is.
    for i in 0..60 {
        let reply = client
            .unary(req(&format!("r{i}")))
            .await
            .expect("no request lost");
        assert_eq!(reply.into_inner().served_by, "live");
    }
    assert_eq!(live.arrivals(), 60);
    // Round robin alone would have sent ~30 first attempts to `dead`; after two refusals it is set aside.
    let picks = balancer.metrics().picks();
    let dead_picks = picks.get("dead").copied().unwrap_or(0);
    assert!(dead_picks <= 4, "dead picked {dead_picks} times: {picks:?}");
}
