//! The poller against a tiny hyper HTTP/1.1 server on loopback.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use lateral_agent::Error;
use lateral_agent::measurement::MeasurementSource;
use lateral_agent::poll::{PollOptions, Poller};
use lateral_agent::recorder::ManualClock;
use tokio::time::Instant;

/// Serves whatever (status, body) is in `reply`; counts requests.
#[derive(Clone, Default)]
struct Backend {
    reply: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
}

impl Backend {
    fn set(&self, status: u16, body: impl Into<String>) {
        *self.reply.lock().unwrap() = (status, body.into());
    }

    async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let this = this.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        this.hits.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = this.reply.lock().unwrap().clone();
                        async move {
                            let mut resp = http::Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }
}

fn poller(addr: SocketAddr, clock: &ManualClock) -> Poller {
    Poller::with_clock(
        format!("http://{addr}/load").parse().unwrap(),
        PollOptions {
            max_body_bytes: 1024,
            ..PollOptions::default()
        },
        Arc::new(clock.clone()),
    )
    .unwrap()
}

#[tokio::test]
async fn maps_the_documented_fields() {
    let backend = Backend::default();
    let addr = backend.serve().await;
    let clock = ManualClock::new(Instant::now());
    let p = poller(addr, &clock);
    assert!(!p.take_window().accepting, "nothing read yet");

    backend.set(
        200,
        r#"{"current_load": 12.4, "average_latency_ms": 20, "p50_latency_ms": 15.5, "p99_latency_ms": 180,
            "error_rate": 0.25, "requests_per_second": 400, "max_capacity": 64, "accepting": true,
            "cpu_percent": 65, "some_other_field": [1, 2]}"#,
    );
    let m = p.poll_once().await.unwrap();
    assert_eq!(m.in_flight, 12);
    assert_eq!(
        m.window,
        Duration::from_millis(500),
        "first window is the interval"
    );
    assert_eq!((m.completed, m.failed), (200, 50));
    assert_eq!(m.latency_mean, Duration::from_millis(20));
    assert_eq!(m.latency_p50, Duration::from_micros(15_500));
    assert_eq!(m.latency_p99, Duration::from_millis(180));
    assert_eq!(m.declared_capacity, Some(64));
    assert_eq!(m.utilization, Some(0.65));
    assert!(m.accepting);
    assert_eq!(p.take_window(), m);

    // Queue depth and busy workers; a cumulative counter; draining.
    backend.set(
        200,
        r#"{"queue_depth": 7, "busy_workers": 3, "completed": 1000, "accepting": false}"#,
    );
    clock.advance(Duration::from_millis(500));
    let m = p.poll_once().await.unwrap();
    assert_eq!((m.in_flight, m.completed, m.accepting), (10, 0, false));
    backend.set(200, r#"{"queue_depth": 7, "completed": 1300}"#);
    clock.advance(Duration::from_millis(600));
    let m = p.poll_once().await.unwrap();
    assert_eq!(
        (m.in_flight, m.completed, m.window),
        (7, 300, Duration::from_millis(600))
    );
    assert_eq!(m.utilization, None);
    assert!(m.accepting);
}

#[tokio::test]
async fn unreadable_endpoints_report_not_accepting() {
    let backend = Backend::default();
    let addr = backend.serve().await;
    let clock = ManualClock::new(Instant::now());
    let p = poller(addr, &clock);

    let cases: [(u16, String, &str); 4] = [
        (200, "{not json".into(), "malformed JSON"),
        (200, r#"{"current_load": "lots"}"#.into(), "malformed JSON"),
        (
            200,
            format!(r#"{{"pad": "{}"}}"#, "x".repeat(4096)),
            "larger than 1024 bytes",
        ),
        (503, "{}".into(), "503"),
    ];
    for (status, body, expected) in cases {
        backend.set(200, r#"{"current_load": 1}"#);
        assert!(p.poll_once().await.unwrap().accepting);
        backend.set(status, body);
        let err = p.poll_once().await.unwrap_err();
        assert!(matches!(err, Error::Poll { .. }));
        assert!(err.to_string().contains(expected), "{err}");
        let m = p.take_window();
        assert!(
            !m.accepting && m.in_flight == 0 && m.completed == 0,
            "{m:?}"
        );
        assert!(p.last_error().unwrap().contains(expected));
    }

    // Unreachable: nothing listens on a port that was just free.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = poller(dead, &clock);
    let err = p.poll_once().await.unwrap_err();
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert!(!p.take_window().accepting);
}

#[tokio::test]
async fn a_silent_endpoint_times_out() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let p = Poller::new(
        format!("http://{addr}/load").parse().unwrap(),
        PollOptions {
            timeout: Duration::from_millis(50),
            ..PollOptions::default()
        },
    )
    .unwrap();
    let err = p.poll_once().await.unwrap_err();
    assert!(
        err.to_string().contains("no complete answer within"),
        "{err}"
    );
    assert!(!p.take_window().accepting);
}

#[tokio::test]
async fn run_polls_on_its_interval() {
    let backend = Backend::default();
    backend.set(200, r#"{"current_load": 3}"#);
    let addr = backend.serve().await;
    let p = Arc::new(
        Poller::new(
            format!("http://{addr}/load").parse().unwrap(),
            PollOptions {
                interval: Duration::from_millis(20),
                ..PollOptions::default()
            },
        )
        .unwrap(),
    );
    let task = tokio::spawn({
        let p = Arc::clone(&p);
        async move { p.run().await }
    });
    for _ in 0..200 {
        if backend.hits.load(Ordering::SeqCst) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    assert!(backend.hits.load(Ordering::SeqCst) >= 3);
    assert_eq!(p.take_window().in_flight, 3);
}

#[test]
fn a_non_http_url_is_a_config_error() {
    let err = Poller::new(
        "https://example.com/load".parse().unwrap(),
        PollOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
}
