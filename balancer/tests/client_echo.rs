//! The generated Echo client works unchanged over a `Balancer`; failure semantics seen by the caller.

mod client_support;

use std::collections::HashSet;
use std::sync::Arc;

use client_support::*;
use lateral_balancer::Balancer;
use lateral_proto::coordinator::EndpointState;
use lateral_proto::demo::EchoRequest;
use lateral_proto::demo::echo_client::EchoClient;
use tokio_stream::StreamExt;

#[tokio::test]
async fn generated_client_works_unchanged_for_every_call_kind() {
    let (a, b) = (Backend::new("a"), Backend::new("b"));
    let (addr_a, addr_b) = (serve(a.clone()).await, serve(b.clone()).await);
    let balancer = Balancer::builder("echo")
        .endpoints([("a", uri(addr_a)), ("b", uri(addr_b))])
        .seed(7)
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.clone());

    // Unary: equal weights alternate.
    let mut served = Vec::new();
    for i in 0..10 {
        let reply = client
            .unary(req(&format!("hi {i}")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.message, format!("hi {i}"));
        served.push(reply.served_by);
    }
    assert_eq!(served.iter().filter(|s| *s == "a").count(), 5, "{served:?}");

    // Server streaming.
    let mut stream = client
        .server_stream(EchoRequest {
            message: "s".into(),
            count: 5,
            fail_with: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.index, n);
        n += 1;
    }
    assert_eq!(n, 5);

    // Client streaming (a stream that is not ready at once: sent while the call is open).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let call = tokio::spawn({
        let mut client = client.clone();
        async move {
            client
                .client_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        }
    });
    for i in 0..3 {
        tx.send(req(&format!("c{i}"))).await.unwrap();
    }
    drop(tx);
    let reply = call.await.unwrap().unwrap().into_inner();
    assert_eq!(reply.message, "c0,c1,c2");
    assert_eq!(reply.index, 3);

    // Client streaming from a ready stream (buffered, replayable).
    let reply = client
        .client_stream(tokio_stream::iter(vec![req("x"), req("y")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.message, "x,y");

    // Bidi: a reply per message, interleaved.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .bidi_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..4 {
        tx.send(req(&format!("b{i}"))).await.unwrap();
        let reply = replies.next().await.unwrap().unwrap();
        assert_eq!(reply.message, format!("b{i}"));
        assert_eq!(reply.index, i);
    }
    drop(tx);
    assert!(replies.next().await.is_none());

    // Every request carried a unique request id prefixed by the client id.
    let mut ids: Vec<String> = a.request_ids.lock().unwrap().clone();
    ids.extend(b.request_ids.lock().unwrap().iter().cloned());
    assert_eq!(ids.len(), a.arrivals() + b.arrivals());
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    assert!(ids.iter().all(|id| id.starts_with(balancer.client_id())));

    let text = balancer.metrics().render_prometheus();
    assert!(
        text.contains("lateral_client_picks_total{service=\"echo\",endpoint=\"a\"}"),
        "{text}"
    );
    assert!(
        text.contains("lateral_client_requests_total{service=\"echo\"} 14"),
        "{text}"
    );
}

#[tokio::test]
async fn a_sent_non_idempotent_call_is_not_retried() {
    let (a, b) = (Backend::new("a"), Backend::new("b"));
    let (addr_a, addr_b) = (serve(a.clone()).await, serve(b.clone()).await);
    let balancer = Balancer::builder("echo")
        .endpoints([("a", uri(addr_a)), ("b", uri(addr_b))])
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.clone());
    let status = client
        .unary(EchoRequest {
            message: "x".into(),
            count: 0,
            fail_with: tonic::Code::Unavailable as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("failed as asked"), "{status:?}");
    assert_eq!(
        a.arrivals() + b.arrivals(),
        1,
        "the backend received it once; no retry"
    );
    assert_eq!(balancer.metrics().retries(), 0);
}

#[tokio::test]
async fn an_idempotent_call_is_retried_once_elsewhere_with_the_same_request_id() {
    let (a, b) = (Backend::new("a"), Backend::new("b"));
    let (addr_a, addr_b) = (serve(a.clone()).await, serve(b.clone()).await);
    let balancer = Balancer::builder("echo")
        .endpoints([("a", uri(addr_a)), ("b", uri(addr_b))])
        .idempotent_methods(["/lateral.demo.v1.Echo/Unary"])
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.clone());
    let status = client
        .unary(EchoRequest {
            message: "x".into(),
            count: 0,
            fail_with: tonic::Code::Unavailable as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        (a.arrivals(), b.arrivals()),
        (1, 1),
        "one retry, on the other endpoint"
    );
    assert_eq!(balancer.metrics().retries(), 1);
    assert_eq!(
        a.request_ids.lock().unwrap()[0],
        b.request_ids.lock().unwrap()[0]
    );
}

#[tokio::test]
async fn all_endpoints_ejected_fails_fast_with_a_clear_message() {
    let addrs = [
        serve(Backend::new("a")).await,
        serve(Backend::new("b")).await,
        serve(Backend::new("c")).await,
    ];
    let (tx, rx) = tokio::sync::watch::channel(None);
    let balancer = Balancer::builder("greeter")
        .endpoints([
            ("a", uri(addrs[0])),
            ("b", uri(addrs[1])),
            ("c", uri(addrs[2])),
        ])
        .weights_feed(rx)
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.clone());
    client.unary(req("before")).await.unwrap();
    tx.send_replace(Some(Arc::new(snapshot(
        "greeter",
        1,
        500,
        vec![
            ew("a", addrs[0], 0.0, EndpointState::Ejected),
            ew("b", addrs[1], 0.0, EndpointState::Ejected),
            ew("c", addrs[2], 0.0, EndpointState::Tripped),
        ],
    ))));
    until(|| balancer.metrics().snapshot_version() == 1).await;
    let status = client.unary(req("after")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status
            .message()
            .contains("all 3 endpoints of `greeter` are ejected or tripped (2 ejected, 1 tripped)"),
        "{status:?}"
    );
    assert_eq!(balancer.metrics().no_endpoint(), 1);
}
