//! The default deployment: a generated client over `Balancer::builder(..).embedded(config)`, with the coordinator
//! in the client process and real agents over QUIC.

use std::time::Duration;

use lateral_balancer::Balancer;
use lateral_integration_tests::*;
use lateral_proto::demo::EchoRequest;
use lateral_proto::demo::echo_client::EchoClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_balancer_moves_traffic_toward_the_faster_backend() {
    let pki = Pki::new("test-ca");
    let ([fast, slow], mut config) = fleet(&pki, [("fast", 8, 4), ("slow", 8, 16)]).await;
    config.listen.grpc = None;
    let balancer = Balancer::builder("svc")
        .endpoints([("fast", fast.uri()), ("slow", slow.uri())])
        .embedded(config)
        .build()
        .unwrap();
    let client = EchoClient::new(balancer.clone());

    // Requests work at once, on static (equal) weights, before any agent is heard.
    let reply = client
        .clone()
        .unary(EchoRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(["fast", "slow"].contains(&reply.served_by.as_str()));

    // Under load the embedded coordinator shifts weight toward the 4× faster backend.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut fast_share = 0.0;
    while tokio::time::Instant::now() < deadline {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..40 {
            let mut c = client.clone();
            batch.spawn(async move { c.unary(EchoRequest::default()).await });
        }
        while let Some(result) = batch.join_next().await {
            // Bursts of 40 on 2 × 8 slots can pass both agents' queue allowance: a request refused by
            // every endpoint it tried (immediate, UNAVAILABLE "overloaded"; a refusal goes elsewhere
            // whatever the method) is the agents shedding as designed; anything else is a failure.
            match result.unwrap() {
                Ok(_) => {}
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && status.message().starts_with("overloaded") => {}
                Err(status) => panic!("request failed: {status:?}"),
            }
        }
        fast_share = balancer
            .current_weights()
            .iter()
            .find(|(id, _)| id == "fast")
            .map(|(_, w)| *w)
            .unwrap_or(0.0);
        if fast_share >= 0.7 {
            break;
        }
    }
    assert!(
        fast_share >= 0.7,
        "fast share {fast_share:.3}; weights {:?}",
        balancer.current_weights()
    );
    assert!(!balancer.metrics().stale());
    let picks = balancer.metrics().picks();
    assert!(
        picks.get("fast").copied().unwrap_or(0) > 0 && picks.get("slow").copied().unwrap_or(0) > 0
    );
}
