//! An agent's overload refusal is sent elsewhere, whatever the method: the balancer reads
//! `x-lateral-refused` on the refusal (nothing was processed) and retries on another endpoint without the
//! idempotent-only rule of a request that may have reached a backend. Real backends behind the agent's
//! measuring layer on loopback; static weights, no coordinator.

use std::time::Duration;

use lateral_examples::backend::BackendSpec;
use lateral_examples::echo_service::ServiceTime;
use lateral_integration_tests::*;
use lateral_ops::tls::TlsMode;
use lateral_proto::demo::EchoRequest;
use lateral_proto::demo::echo_client::EchoClient;

/// One slot, refused at once past it (no queue allowance), each request held `service`.
fn single_slot(name: &str, service: Duration) -> BackendSpec {
    BackendSpec {
        distribution: ServiceTime::Constant,
        shed_queue_allowance: Some(0.0),
        ..BackendSpec::new(name, 1, service)
    }
}

#[tokio::test]
async fn a_refused_request_of_a_non_idempotent_method_is_served_by_another_endpoint() {
    let interval = Duration::from_millis(500);
    let busy = backend(
        single_slot("busy", Duration::from_millis(400)),
        interval,
        TlsMode::InsecureDev,
    )
    .await;
    let spare = backend(
        single_slot("spare", Duration::from_millis(1)),
        interval,
        TlsMode::InsecureDev,
    )
    .await;
    // Nearly all picks name `busy`; `spare` is only where a retry goes. No method is idempotent.
    let balancer = lateral_balancer::Balancer::builder("svc")
        .endpoints([("busy", busy.uri()), ("spare", spare.uri())])
        .static_weights([("busy", 1000.0), ("spare", 1.0)])
        .seed(7)
        .build()
        .expect("a balancer");
    let client = EchoClient::new(balancer.clone());

    // The first request fills `busy`'s only slot; the next ones find it full and are refused there.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..4 {
        let mut client = client.clone();
        calls.spawn(async move {
            client
                .unary(EchoRequest {
                    message: format!("r{i}"),
                    ..Default::default()
                })
                .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut served_by = Vec::new();
    while let Some(result) = calls.join_next().await {
        let reply = result
            .expect("the call task")
            .expect("no request fails: a refusal goes elsewhere")
            .into_inner();
        served_by.push(reply.served_by);
    }
    assert!(
        busy.shed_total() >= 1,
        "busy refused nothing: {served_by:?}"
    );
    assert_eq!(balancer.metrics().refused(), busy.shed_total());
    assert!(
        served_by.iter().any(|s| s == "spare"),
        "no refusal reached spare: {served_by:?}"
    );
    assert!(served_by.iter().any(|s| s == "busy"), "{served_by:?}");
}
