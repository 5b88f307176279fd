//! The h2c proxy in front of a real tonic Echo backend on loopback.

#[path = "layer_support/echo.rs"]
mod echo;

use std::time::Duration;

use echo::{EchoBackend, client, req, serve};
use futures_util::StreamExt;
use lateral_agent::measurement::MeasurementSource;
use lateral_agent::proxy::{Proxy, ProxyHandle, ProxyOptions};
use lateral_agent::recorder::Recorder;
use tonic::Code;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn proxy_to(upstream: std::net::SocketAddr, recorder: &Recorder) -> ProxyHandle {
    Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        format!("http://{upstream}").parse().unwrap(),
        recorder.clone(),
        ProxyOptions::default(),
    )
    .await
    .unwrap()
}

fn with_metadata<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    r.metadata_mut()
        .insert("x-echo", "through".parse().unwrap());
    r
}

#[tokio::test]
async fn all_call_kinds_pass_unchanged_and_are_measured() {
    let backend = EchoBackend::default();
    let upstream = serve(backend.clone(), None).await;
    let recorder = Recorder::new();
    let proxy = proxy_to(upstream, &recorder).await;
    let mut c = client(proxy.local_addr()).await;

    // Unary, with request metadata echoed back as response metadata.
    let resp = c.unary(with_metadata(req("hello", 0, 0))).await.unwrap();
    assert_eq!(resp.metadata().get("traceparent").unwrap(), TRACEPARENT);
    assert_eq!(resp.metadata().get("x-echo").unwrap(), "through");
    assert_eq!(resp.into_inner().message, "hello");

    // Server streaming.
    let mut s = c
        .server_stream(with_metadata(req("s", 5, 0)))
        .await
        .unwrap();
    assert_eq!(s.metadata().get("traceparent").unwrap(), TRACEPARENT);
    let s = s.get_mut();
    let mut indexes = Vec::new();
    while let Some(r) = s.message().await.unwrap() {
        indexes.push(r.index);
    }
    assert_eq!(indexes, [0, 1, 2, 3, 4]);

    // Client streaming.
    let parts = futures_util::stream::iter(["a", "b", "c"].map(|m| req(m, 0, 0)));
    let reply = c
        .client_stream(with_metadata(parts))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.message.as_str(), reply.index), ("a,b,c", 3));

    // Bidi: interleaved, one reply per request before the next request is sent.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut replies = c
        .bidi_stream(with_metadata(outbound))
        .await
        .unwrap()
        .into_inner();
    for i in 0..4u32 {
        tx.send(req(&format!("m{i}"), 0, 0)).await.unwrap();
        let r = replies.message().await.unwrap().unwrap();
        assert_eq!((r.message, r.index), (format!("m{i}"), i));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());

    eventually("all finished", || recorder.in_flight() == 0).await;
    let m = recorder.take_window();
    assert_eq!((m.completed, m.failed), (4, 0), "{m:?}");
    assert_eq!(backend.calls(), 4);
    proxy.shutdown().await;
}

#[tokio::test]
async fn errors_and_trailers_pass_and_count_as_failures() {
    let upstream = serve(EchoBackend::default(), None).await;
    let recorder = Recorder::new();
    let proxy = proxy_to(upstream, &recorder).await;
    let mut c = client(proxy.local_addr()).await;

    // Trailers-only error: status, message and metadata intact.
    let err = c.unary(with_metadata(req("x", 0, 13))).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(err.message(), "asked to fail with 13");
    assert_eq!(err.metadata().get("x-echo-trailer").unwrap(), "through");

    // A stream that ends in error: the error and custom metadata arrive in the trailers.
    let mut s = c
        .server_stream(with_metadata(req("s", 2, 14)))
        .await
        .unwrap()
        .into_inner();
    assert!(s.message().await.unwrap().is_some());
    assert!(s.message().await.unwrap().is_some());
    let err = s.message().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.metadata().get("x-failed").unwrap(), "yes");
    assert_eq!(err.metadata().get("x-echo-trailer").unwrap(), "through");

    // A client error is not a failure.
    assert_eq!(
        c.unary(req("x", 0, 5)).await.unwrap_err().code(),
        Code::NotFound
    );

    eventually("all finished", || recorder.in_flight() == 0).await;
    let m = recorder.take_window();
    assert_eq!((m.completed, m.failed), (3, 2), "{m:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_down_is_unavailable_and_a_failure() {
    // A port that was just free: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let recorder = Recorder::new();
    let proxy = proxy_to(dead, &recorder).await;
    let mut c = client(proxy.local_addr()).await;

    let err = c.unary(req("x", 0, 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("upstream") && err.message().contains(&dead.to_string()),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("request not sent"),
        "{}",
        err.message()
    );

    let err = c.server_stream(req("x", 3, 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    eventually("all finished", || recorder.in_flight() == 0).await;
    let m = recorder.take_window();
    assert_eq!((m.completed, m.failed), (2, 2), "{m:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_an_open_stream_finish() {
    let backend = EchoBackend::default();
    let upstream = serve(backend.clone(), None).await;
    let recorder = Recorder::new();
    let proxy = proxy_to(upstream, &recorder).await;
    let addr = proxy.local_addr();
    let mut c = client(addr).await;

    let mut held = c
        .server_stream(req(echo::HOLD, 1, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(held.message().await.unwrap().is_some());
    let shutdown = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!shutdown.is_finished(), "waits for the open stream");
    backend.release.notify_one();
    assert!(held.message().await.unwrap().is_none());
    tokio::time::timeout(Duration::from_secs(2), shutdown)
        .await
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
    let _ = held.next().await;
}

#[tokio::test]
async fn with_a_declared_capacity_the_proxy_sheds_past_its_hard_bound_unless_told_not_to() {
    for allowance in [Some(0.5), None] {
        let backend = EchoBackend::default();
        let upstream = serve(backend.clone(), None).await;
        let recorder = Recorder::new();
        // Capacity 2, allowance 0.5: the hard bound is 2 + 2 = 4 in flight.
        recorder.set_declared_capacity(Some(2));
        let proxy = Proxy::bind(
            "127.0.0.1:0".parse().unwrap(),
            format!("http://{upstream}").parse().unwrap(),
            recorder.clone(),
            ProxyOptions {
                shed_queue_allowance: allowance,
                ..ProxyOptions::default()
            },
        )
        .await
        .unwrap();
        let mut c = client(proxy.local_addr()).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(
                c.server_stream(req(echo::HOLD, 1, 0))
                    .await
                    .unwrap()
                    .into_inner(),
            );
        }
        eventually("four in flight", || recorder.in_flight() == 4).await;
        let answer = c.unary(req("x", 0, 0)).await;
        match allowance {
            Some(_) => {
                let status = answer.unwrap_err();
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(status.message().starts_with("overloaded"), "{status:?}");
                assert_eq!(recorder.shed_total(), 1);
            }
            None => {
                assert_eq!(answer.unwrap().into_inner().message, "x");
                assert_eq!(recorder.shed_total(), 0);
            }
        }
        backend.release.notify_waiters();
        drop(held);
        proxy.shutdown().await;
    }
}
