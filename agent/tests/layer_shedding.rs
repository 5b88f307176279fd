//! Overload shedding in the load layer, on a real tonic Echo server on loopback: held server streams fill
//! the backend to its bounds; a burst at the standing bound is served, a queue that stands there for the
//! standing interval is refused, the hard bound refuses at once — with UNAVAILABLE, without reaching the
//! service or the dedup window — and requests are served again once the backend has room. Time is paused
//! (the layer reads the recorder's tokio clock), so the interval passes without waiting.

#[path = "layer_support/echo.rs"]
mod echo;

use std::sync::Arc;
use std::time::Duration;

use echo::{EchoBackend, HOLD, client, req, serve};
use lateral_agent::dedup::{InMemoryDedup, REQUEST_ID_HEADER};
use lateral_agent::layer::LoadLayer;
use lateral_agent::layer::shedding::STANDING_QUEUE;
use lateral_agent::recorder::Recorder;
use tonic::Code;

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn with_id(id: &str) -> tonic::Request<lateral_proto::demo::EchoRequest> {
    let mut request = tonic::Request::new(req("x", 0, 0));
    request
        .metadata_mut()
        .insert(REQUEST_ID_HEADER, id.parse().unwrap());
    request
}

#[tokio::test(start_paused = true)]
async fn a_standing_queue_and_the_hard_bound_are_refused_at_once_and_unmeasured() {
    let recorder = Recorder::new();
    recorder.set_declared_capacity(Some(2));
    let backend = EchoBackend::default();
    // Capacity 2, allowance 0.5: the standing bound is 2 + 1 = 3 in flight, the hard bound 2 + 2 = 4.
    let layer = LoadLayer::new(recorder.clone())
        .with_shedding(0.5)
        .with_dedup(Arc::new(InMemoryDedup::new(Duration::from_secs(60), 100)));
    let addr = serve(backend.clone(), Some(layer.clone())).await;
    let mut c = client(addr).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(c.server_stream(req(HOLD, 1, 0)).await.unwrap().into_inner());
    }
    eventually("three in flight", || recorder.in_flight() == 3).await;

    // A burst at the standing bound is served (it starts the interval)...
    assert_eq!(
        c.unary(with_id("burst"))
            .await
            .unwrap()
            .into_inner()
            .message,
        "x"
    );
    assert_eq!(layer.shed_total(), 0);
    // ...a queue still standing there a standing interval later is refused.
    tokio::time::advance(STANDING_QUEUE).await;
    let calls = backend.calls();
    let status = c.unary(with_id("shed-1")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().starts_with("overloaded"), "{status:?}");
    assert!(status.message().contains("for 100 ms"), "{status:?}");
    assert_eq!(
        backend.calls(),
        calls,
        "a refused request never reaches the service"
    );
    assert_eq!(layer.shed_total(), 1);
    assert_eq!(recorder.in_flight(), 3, "a refusal is not measured");

    // Room again: the same request id is served (the refusal did not enter the dedup window).
    backend.release.notify_waiters();
    drop(held);
    eventually("drained", || recorder.in_flight() == 0).await;
    assert_eq!(
        c.unary(with_id("shed-1"))
            .await
            .unwrap()
            .into_inner()
            .message,
        "x"
    );

    // The hard bound refuses with no interval at all.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(c.server_stream(req(HOLD, 1, 0)).await.unwrap().into_inner());
    }
    eventually("four in flight", || recorder.in_flight() == 4).await;
    let status = c.unary(with_id("shed-2")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("limit 4"), "{status:?}");
    assert_eq!(layer.shed_total(), 2);
    backend.release.notify_waiters();
}

#[tokio::test]
async fn without_a_declared_capacity_nothing_is_shed() {
    let recorder = Recorder::new();
    let backend = EchoBackend::default();
    let layer = LoadLayer::new(recorder.clone()).with_shedding(0.0);
    let addr = serve(backend.clone(), Some(layer.clone())).await;
    let mut c = client(addr).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(c.server_stream(req(HOLD, 1, 0)).await.unwrap().into_inner());
    }
    eventually("four in flight", || recorder.in_flight() == 4).await;
    assert_eq!(
        c.unary(req("y", 0, 0)).await.unwrap().into_inner().message,
        "y"
    );
    assert_eq!(layer.shed_total(), 0);
    backend.release.notify_waiters();
}
