//! The load layer on a real tonic Echo server on loopback.

#[path = "layer_support/echo.rs"]
mod echo;

use std::sync::Arc;
use std::time::Duration;

use echo::{EchoBackend, HOLD, client, req, serve};
use lateral_agent::dedup::{InMemoryDedup, REQUEST_ID_HEADER};
use lateral_agent::layer::LoadLayer;
use lateral_agent::measurement::MeasurementSource;
use lateral_agent::recorder::Recorder;
use tonic::Code;

/// Waits (real time, bounded) until `cond` holds: the server finishes a body just after the client has it.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn unary_successes_and_failures_are_classified() {
    let recorder = Recorder::new();
    let addr = serve(
        EchoBackend::default(),
        Some(LoadLayer::new(recorder.clone())),
    )
    .await;
    let mut c = client(addr).await;
    for _ in 0..3 {
        let reply = c.unary(req("hi", 0, 0)).await.unwrap().into_inner();
        assert_eq!(reply.message, "hi");
    }
    for code in [14, 13] {
        let err = c.unary(req("x", 0, code)).await.unwrap_err();
        assert_eq!(err.code() as i32, code);
    }
    // A client error is the backend doing its job.
    assert_eq!(
        c.unary(req("x", 0, 3)).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    eventually("all finished", || recorder.in_flight() == 0).await;
    let m = recorder.take_window();
    assert_eq!((m.completed, m.failed), (6, 2), "{m:?}");
    assert!(m.latency_p99 > Duration::ZERO && m.latency_p99 >= m.latency_p50);
    assert_eq!(recorder.cancelled_total(), 0);
}

#[tokio::test]
async fn a_stream_that_ends_in_error_is_a_failure() {
    let recorder = Recorder::new();
    let addr = serve(
        EchoBackend::default(),
        Some(LoadLayer::new(recorder.clone())),
    )
    .await;
    let mut c = client(addr).await;

    let mut ok = c.server_stream(req("s", 3, 0)).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(_reply) = ok.message().await.unwrap() {
        n += 1;
    }
    assert_eq!(n, 3);

    let mut bad = c.server_stream(req("s", 3, 13)).await.unwrap().into_inner();
    for _ in 0..3 {
        assert!(bad.message().await.unwrap().is_some());
    }
    assert_eq!(bad.message().await.unwrap_err().code(), Code::Internal);

    eventually("both streams finished", || recorder.in_flight() == 0).await;
    let m = recorder.take_window();
    assert_eq!((m.completed, m.failed), (2, 1), "{m:?}");
}

#[tokio::test]
async fn a_long_stream_is_in_flight_until_it_ends_and_a_dropped_one_is_cancelled() {
    let recorder = Recorder::new();
    let backend = EchoBackend::default();
    let addr = serve(backend.clone(), Some(LoadLayer::new(recorder.clone()))).await;
    let mut c = client(addr).await;

    let mut held = c.server_stream(req(HOLD, 2, 0)).await.unwrap().into_inner();
    assert!(held.message().await.unwrap().is_some());
    assert!(held.message().await.unwrap().is_some());
    // Its replies are out, but the stream has not ended: still in flight.
    assert_eq!(recorder.in_flight(), 1);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(recorder.in_flight(), 1);
    backend.release.notify_one();
    assert!(held.message().await.unwrap().is_none());
    eventually("the held stream finished", || recorder.in_flight() == 0).await;
    let m = recorder.take_window();
    assert_eq!((m.completed, m.failed), (1, 0));
    assert!(
        m.latency_p99 >= Duration::from_millis(55),
        "latency runs to the end of the body: {m:?}"
    );

    // A client that walks away mid-stream: cancelled, neither completed nor failed.
    let mut dropped = c.server_stream(req(HOLD, 1, 0)).await.unwrap().into_inner();
    assert!(dropped.message().await.unwrap().is_some());
    assert_eq!(recorder.in_flight(), 1);
    drop(dropped);
    eventually("the dropped stream left", || recorder.in_flight() == 0).await;
    assert_eq!(recorder.cancelled_total(), 1);
    let m = recorder.take_window();
    assert_eq!((m.completed, m.failed), (0, 0));
}

#[tokio::test]
async fn orca_report_rides_on_trailers_and_trailers_only_headers() {
    let recorder = Recorder::new();
    recorder.set_declared_capacity(Some(10));
    recorder.set_utilization(Some(0.4));
    let addr = serve(
        EchoBackend::default(),
        Some(LoadLayer::new(recorder.clone()).with_orca(true)),
    )
    .await;
    let mut c = client(addr).await;
    for _ in 0..5 {
        c.unary(req("warm", 0, 0)).await.unwrap();
    }
    let _ = c.unary(req("warm", 0, 14)).await;
    eventually("warm-up finished", || recorder.in_flight() == 0).await;
    // Closing a window is what the reporter does every 500 ms; the trailer carries its rates.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let window = recorder.take_window();
    assert_eq!((window.completed, window.failed), (6, 1));

    // Unary success: tonic merges the trailers into the response metadata.
    let resp = c.unary(req("x", 0, 0)).await.unwrap();
    let report = lateral_agent::orca::decode_metadata(resp.metadata())
        .unwrap()
        .expect("ORCA trailer present");
    let secs = window.window.as_secs_f64();
    assert!(
        (report.rps_fractional - 6.0 / secs).abs() < 1e-6,
        "{report:?}"
    );
    assert!((report.eps - 1.0 / secs).abs() < 1e-6, "{report:?}");
    assert!(report.rps_fractional.is_finite() && report.rps_fractional > 0.0);
    // The busy measure weighted round robin divides qps by: the closed window's mean in-flight over the
    // declared capacity, non-zero since the warm-up requests were in flight for part of it.
    assert!(window.mean_in_flight > 0.0, "{window:?}");
    assert_eq!(
        report.application_utilization,
        window.mean_in_flight / 10.0,
        "{report:?}"
    );
    // Its instantaneous counterpart: the other requests in flight at the answer, over the capacity.
    let in_flight = report
        .named_metrics
        .get("in_flight")
        .copied()
        .unwrap_or(0.0);
    assert_eq!(
        report.utilization.get("in_flight"),
        Some(&((in_flight - 1.0).max(0.0) / 10.0)),
        "{report:?}"
    );
    assert_eq!(report.cpu_utilization, 0.4);
    // The raw count includes the request the report answers.
    assert_eq!(report.named_metrics.get("in_flight"), Some(&1.0));
    let oldest_ms = report.named_metrics.get("oldest_in_flight_ms").copied();
    assert!(
        oldest_ms.is_some_and(|ms| (0.0..5_000.0).contains(&ms)),
        "{report:?}"
    );

    // Trailers-only failure: the report is in the headers.
    let status = c.unary(req("x", 0, 14)).await.unwrap_err();
    assert!(
        lateral_agent::orca::decode_metadata(status.metadata())
            .unwrap()
            .is_some()
    );

    // A server stream: in its trailers.
    let mut s = c.server_stream(req("s", 2, 0)).await.unwrap().into_inner();
    while s.message().await.unwrap().is_some() {}
    let trailers = s.trailers().await.unwrap().expect("trailers");
    let report = lateral_agent::orca::decode_metadata(&trailers)
        .unwrap()
        .expect("ORCA trailer present");
    // No window closed since: the same windowed figure, whatever is in flight now.
    assert_eq!(
        report.application_utilization,
        window.mean_in_flight / 10.0,
        "{report:?}"
    );
    assert_eq!(report.named_metrics.get("in_flight"), Some(&1.0));
}

#[tokio::test]
async fn a_duplicate_request_id_is_rejected_before_the_service() {
    let recorder = Recorder::new();
    let backend = EchoBackend::default();
    let dedup = Arc::new(InMemoryDedup::new(Duration::from_secs(60), 1000));
    let addr = serve(
        backend.clone(),
        Some(LoadLayer::new(recorder.clone()).with_dedup(dedup)),
    )
    .await;
    let mut c = client(addr).await;

    let with_id = |id: &'static str| {
        let mut r = tonic::Request::new(req("once", 0, 0));
        r.metadata_mut()
            .insert(REQUEST_ID_HEADER, id.parse().unwrap());
        r
    };
    c.unary(with_id("req-1")).await.unwrap();
    let err = c.unary(with_id("req-1")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().contains("duplicate Lateral request id"),
        "{}",
        err.message()
    );
    assert_eq!(
        backend.calls(),
        1,
        "the duplicate never reached the service"
    );

    c.unary(with_id("req-2")).await.unwrap();
    c.unary(req("no id", 0, 0)).await.unwrap();
    c.unary(req("no id", 0, 0)).await.unwrap();
    assert_eq!(backend.calls(), 4);
    eventually("all finished", || recorder.in_flight() == 0).await;
    assert_eq!(
        recorder.take_window().completed,
        4,
        "rejected duplicates are not measured"
    );
}
