//! Drain: the switch and the admin endpoint mark the backend not-accepting, send Goodbye, wait the grace
//! period and close the QUIC connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lateral_agent::drain::{DrainOutcome, Drainer, admin};
use lateral_agent::measurement::{Measurement, MeasurementSource};
use lateral_agent::reporter::{Reporter, ReporterOptions, close_code};
use lateral_ops::tls::{self, DevPki};
use lateral_proto::heartbeat::{FrameHeader, HEADER_LEN, Message, decode_body};
use quinn::crypto::rustls::QuicClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(2);

/// A source whose `accepting` follows a flag, like the recorder's.
struct Flag(Arc<AtomicBool>);

impl MeasurementSource for Flag {
    fn take_window(&self) -> Measurement {
        Measurement {
            in_flight: 0,
            completed: 0,
            failed: 0,
            window: Duration::from_millis(50),
            latency_mean: Duration::ZERO,
            latency_p50: Duration::ZERO,
            latency_p99: Duration::ZERO,
            accepting: self.0.load(Ordering::SeqCst),
            declared_capacity: None,
            utilization: None,
            mean_in_flight: 0.0,
            busy_fraction: None,
            oldest_in_flight: None,
        }
    }
}

async fn read(recv: &mut quinn::RecvStream) -> Message {
    let mut header = [0u8; HEADER_LEN];
    tokio::time::timeout(STEP, recv.read_exact(&mut header))
        .await
        .unwrap()
        .unwrap();
    let header = FrameHeader::parse(&header).unwrap();
    let mut body = vec![0u8; header.body_len];
    tokio::time::timeout(STEP, recv.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    decode_body(&body).unwrap()
}

struct Setup {
    _client: quinn::Endpoint,
    conn: quinn::Connection,
    recv: quinn::RecvStream,
    accepting: Arc<AtomicBool>,
    switch: lateral_agent::drain::DrainSwitch,
}

async fn setup(grace: Duration) -> (Setup, Drainer) {
    let pki = DevPki::generate("test CA").unwrap();
    let accepting = Arc::new(AtomicBool::new(true));
    let mut opts = ReporterOptions::new("agent-test", "endpoint-a");
    opts.interval = Duration::from_millis(50);
    let reporter = Reporter::bind(
        "127.0.0.1:0".parse().unwrap(),
        &pki.mutual_mode("agent").unwrap(),
        Arc::new(Flag(accepting.clone())),
        opts,
    )
    .unwrap();
    let addr = reporter.local_addr();
    let flag = accepting.clone();
    let (drainer, switch) = Drainer::new(
        reporter,
        Arc::new(move |a: bool| flag.store(a, Ordering::SeqCst)),
        grace,
    );
    let drainer = drainer.without_signals();

    let crypto = tls::client_config(&pki.mutual_mode("coordinator").unwrap()).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(crypto).unwrap(),
    )));
    let conn = client
        .connect(addr, tls::DEFAULT_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let mut recv = conn.accept_uni().await.unwrap();
    assert!(matches!(read(&mut recv).await, Message::Hello(_)));
    (
        Setup {
            _client: client,
            conn,
            recv,
            accepting,
            switch,
        },
        drainer,
    )
}

/// Reads until Goodbye; returns it and whether the backend was already not-accepting when it arrived.
async fn until_goodbye(s: &mut Setup) -> (lateral_proto::heartbeat::Goodbye, bool) {
    loop {
        match read(&mut s.recv).await {
            Message::Heartbeat(hb) => {
                assert!(hb.accepting, "heartbeats before Goodbye say accepting")
            }
            Message::Goodbye(goodbye) => return (goodbye, !s.accepting.load(Ordering::SeqCst)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn assert_closed_drained(conn: &quinn::Connection) {
    match tokio::time::timeout(STEP, conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(close_code::DRAINED)
            );
        }
        other => panic!("expected an application close, got {other:?}"),
    }
}

#[tokio::test]
async fn switch_drains_not_accepting_goodbye_grace_close() {
    let grace = Duration::from_millis(250);
    let (mut s, drainer) = setup(grace).await;
    // One heartbeat first, to be sure the stream is live.
    assert!(matches!(read(&mut s.recv).await, Message::Heartbeat(_)));
    let started = std::time::Instant::now();
    assert!(s.switch.drain("rolling restart"));
    assert!(!s.switch.drain("again"), "only the first request counts");
    let run = tokio::spawn(drainer.run());
    let (goodbye, not_accepting) = until_goodbye(&mut s).await;
    assert_eq!(goodbye.reason, "rolling restart");
    assert_eq!(goodbye.drain_grace_ms, 250);
    assert!(
        not_accepting,
        "accepting is cleared before Goodbye goes out"
    );
    assert_closed_drained(&s.conn).await;
    let outcome = tokio::time::timeout(STEP, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome,
        DrainOutcome {
            reason: "rolling restart".into(),
            interrupted: false
        }
    );
    assert!(
        started.elapsed() >= grace,
        "closed before the grace period ended"
    );
    assert!(started.elapsed() < grace + STEP);
}

#[tokio::test]
async fn admin_post_drain_triggers_a_drain_and_healthz_reports_it() {
    let (mut s, drainer) = setup(Duration::from_millis(100)).await;
    let admin = admin::serve("127.0.0.1:0".parse().unwrap(), s.switch.clone())
        .await
        .unwrap();
    let addr = admin.local_addr();
    assert!(http(addr, "GET /healthz").await.starts_with("HTTP/1.1 200"));
    assert!(http(addr, "GET /nope").await.starts_with("HTTP/1.1 404"));
    assert!(http(addr, "GET /drain").await.starts_with("HTTP/1.1 405"));

    let run = tokio::spawn(drainer.run());
    let response = http_body(addr, "POST /drain", "deploy v2").await;
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    let (goodbye, not_accepting) = until_goodbye(&mut s).await;
    assert_eq!(goodbye.reason, "deploy v2");
    assert!(not_accepting);
    assert!(http(addr, "GET /healthz").await.starts_with("HTTP/1.1 503"));
    assert!(http(addr, "POST /drain").await.starts_with("HTTP/1.1 200"));
    assert_closed_drained(&s.conn).await;
    tokio::time::timeout(STEP, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_signal_drain_shows_in_healthz_and_a_second_signal_cuts_it_short() {
    let (mut s, drainer) = setup(Duration::from_secs(30)).await;
    let (signal, signals) = tokio::sync::mpsc::channel(4);
    let drainer = drainer.with_signals_from(signals);
    let admin = admin::serve("127.0.0.1:0".parse().unwrap(), s.switch.clone())
        .await
        .unwrap();
    let run = tokio::spawn(drainer.run());
    signal.send("SIGTERM").await.unwrap();
    let (goodbye, _) = until_goodbye(&mut s).await;
    assert_eq!(goodbye.reason, "SIGTERM");
    assert!(s.switch.is_draining());
    let health = http(admin.local_addr(), "GET /healthz").await;
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    // The second signal: stop now, not after 30 s.
    signal.send("SIGTERM").await.unwrap();
    let outcome = tokio::time::timeout(STEP, run)
        .await
        .expect("cut short")
        .unwrap()
        .unwrap();
    assert!(outcome.interrupted);
    assert_closed_drained(&s.conn).await;
}

#[tokio::test]
async fn the_first_signal_after_a_requested_drain_keeps_the_grace_period() {
    let grace = Duration::from_millis(400);
    let (mut s, drainer) = setup(grace).await;
    let (signal, signals) = tokio::sync::mpsc::channel(4);
    let drainer = drainer.with_signals_from(signals);
    let started = std::time::Instant::now();
    let run = tokio::spawn(drainer.run());
    // An orchestrator's preStop hook asks for the drain, then the orchestrator sends SIGTERM.
    assert!(s.switch.drain("preStop"));
    let (goodbye, _) = until_goodbye(&mut s).await;
    assert_eq!(goodbye.reason, "preStop");
    signal.send("SIGTERM").await.unwrap();
    let outcome = tokio::time::timeout(grace + STEP, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!outcome.interrupted);
    assert!(started.elapsed() >= grace, "the grace period was kept");
}

async fn http(addr: std::net::SocketAddr, request_line: &str) -> String {
    http_body(addr, request_line, "").await
}

async fn http_body(addr: std::net::SocketAddr, request_line: &str, body: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{request_line} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(STEP, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
}
