//! The QUIC reporter against real quinn clients on loopback (real time, 50 ms heartbeats).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lateral_agent::measurement::{Measurement, MeasurementSource};
use lateral_agent::reporter::{Reporter, ReporterHandle, ReporterOptions, close_code};
use lateral_ops::tls::{self, DevPki, TlsMode};
use lateral_proto::heartbeat::{FrameHeader, HEADER_LEN, Heartbeat, Message, decode_body};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const INTERVAL: Duration = Duration::from_millis(50);
const STEP: Duration = Duration::from_secs(2);

/// Counts `take_window` calls; the measurement's `completed` is the call number.
#[derive(Default)]
struct Counting {
    calls: AtomicU64,
}

impl MeasurementSource for Counting {
    fn take_window(&self) -> Measurement {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Measurement {
            in_flight: 2,
            completed: n,
            failed: 0,
            window: INTERVAL,
            latency_mean: Duration::from_millis(3),
            latency_p50: Duration::from_millis(2),
            latency_p99: Duration::from_millis(9),
            accepting: true,
            declared_capacity: Some(100),
            utilization: None,
            mean_in_flight: 2.0,
            busy_fraction: Some(0.02),
            oldest_in_flight: Some(Duration::from_millis(4)),
        }
    }
}

fn options() -> ReporterOptions {
    let mut opts = ReporterOptions::new("agent-test", "endpoint-a");
    opts.interval = INTERVAL;
    opts
}

fn start(pki: &DevPki, opts: ReporterOptions) -> (ReporterHandle, Arc<Counting>) {
    let source = Arc::new(Counting::default());
    let mode = pki.mutual_mode("agent").unwrap();
    let handle =
        Reporter::bind("127.0.0.1:0".parse().unwrap(), &mode, source.clone(), opts).unwrap();
    (handle, source)
}

fn client_endpoint(crypto: rustls::ClientConfig) -> quinn::Endpoint {
    let crypto = QuicClientConfig::try_from(crypto).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

struct Sub {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    recv: quinn::RecvStream,
}

async fn subscribe(mode: &TlsMode, addr: SocketAddr) -> Sub {
    let endpoint = client_endpoint(tls::client_config(mode).unwrap());
    let conn = tokio::time::timeout(
        STEP,
        endpoint.connect(addr, tls::DEFAULT_SERVER_NAME).unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let recv = tokio::time::timeout(STEP, conn.accept_uni())
        .await
        .unwrap()
        .unwrap();
    Sub {
        _endpoint: endpoint,
        conn,
        recv,
    }
}

/// Reads one frame: header, then exactly the body it announces (bounded by the header check).
async fn read(recv: &mut quinn::RecvStream) -> Result<Message, String> {
    let mut header = [0u8; HEADER_LEN];
    tokio::time::timeout(STEP, recv.read_exact(&mut header))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let header = FrameHeader::parse(&header).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; header.body_len];
    tokio::time::timeout(STEP, recv.read_exact(&mut body))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    decode_body(&body).map_err(|e| e.to_string())
}

async fn heartbeat(recv: &mut quinn::RecvStream) -> Heartbeat {
    match read(recv).await.unwrap() {
        Message::Heartbeat(hb) => hb,
        other => panic!("expected a heartbeat, got {other:?}"),
    }
}

async fn hello(recv: &mut quinn::RecvStream) {
    match read(recv).await.unwrap() {
        Message::Hello(hello) => {
            assert_eq!(hello.agent_id, "agent-test");
            assert_eq!(hello.endpoint_id, "endpoint-a");
            assert_eq!(hello.heartbeat_interval_ms, 50);
            assert_eq!(
                hello.protocol_version,
                lateral_proto::heartbeat::PROTOCOL_VERSION
            );
            assert!(hello.capabilities.iter().any(|c| c == "drain"));
        }
        other => panic!("expected Hello, got {other:?}"),
    }
}

#[tokio::test]
async fn hello_then_heartbeats_with_consecutive_sequence_numbers() {
    let pki = DevPki::generate("test CA").unwrap();
    let (handle, _source) = start(&pki, options());
    let mut sub = subscribe(
        &pki.mutual_mode("coordinator").unwrap(),
        handle.local_addr(),
    )
    .await;
    hello(&mut sub.recv).await;
    let first = heartbeat(&mut sub.recv).await;
    let mut last = first.clone();
    for _ in 0..4 {
        let hb = heartbeat(&mut sub.recv).await;
        assert_eq!(hb.sequence, last.sequence + 1);
        assert!(hb.sender_monotonic_us > last.sender_monotonic_us);
        last = hb;
    }
    // `completed` is the fake source's call number: one take_window per sequence number.
    assert_eq!(last.completed, last.sequence);
    assert_eq!(last.window_us, 50_000);
    assert_eq!(last.latency_p99_us, 9_000);
    assert_eq!(last.declared_capacity, Some(100));
    // Version-2 fields over the wire; no explicit utilization, so the busy fraction stands in.
    assert_eq!(last.utilization, Some(0.02));
    assert_eq!(last.mean_in_flight, 2.0);
    assert_eq!(last.oldest_in_flight_us, 4_000);
    assert!(last.accepting);
    assert_eq!(handle.subscribers(), 1);
    handle.shutdown().await;
    match sub.conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(close_code::SHUTDOWN)
            );
        }
        other => panic!("expected an application close, got {other:?}"),
    }
}

#[tokio::test]
async fn subscribers_share_one_measurement_per_interval() {
    let pki = DevPki::generate("test CA").unwrap();
    let (handle, source) = start(&pki, options());
    let started = std::time::Instant::now();
    let coordinator = pki.mutual_mode("coordinator").unwrap();
    let mut a = subscribe(&coordinator, handle.local_addr()).await;
    let mut b = subscribe(&coordinator, handle.local_addr()).await;
    let mut c = subscribe(&coordinator, handle.local_addr()).await;
    for sub in [&mut a, &mut b, &mut c] {
        hello(&mut sub.recv).await;
    }
    let mut seen = Vec::new();
    for sub in [&mut a, &mut b, &mut c] {
        let mut hbs = Vec::new();
        for _ in 0..6 {
            hbs.push(heartbeat(&mut sub.recv).await);
        }
        seen.push(hbs);
    }
    // The same sequence carries the same measurement on every stream, and it is the n-th take_window.
    for hbs in &seen {
        for hb in hbs {
            assert_eq!(
                hb.completed, hb.sequence,
                "one take_window per sequence number"
            );
        }
    }
    let common = seen[2][0].sequence;
    for hbs in &seen {
        let hb = hbs.iter().find(|hb| hb.sequence == common).unwrap();
        assert_eq!(hb, seen[2].first().unwrap());
    }
    // Calls follow the clock, not the number of subscribers.
    let calls = source.calls.load(Ordering::SeqCst);
    let ticks = started.elapsed().as_millis() as u64 / 50;
    assert!(
        calls <= ticks + 1,
        "{calls} take_window calls in {ticks} intervals"
    );
    assert_eq!(calls, handle.heartbeats_sent());
    assert_eq!(handle.subscribers(), 3);
    handle.shutdown().await;
}

#[tokio::test]
async fn a_client_with_a_certificate_from_another_ca_is_refused() {
    let pki = DevPki::generate("test CA").unwrap();
    let (handle, source) = start(&pki, options());
    // The intruder trusts our CA (so it accepts the agent) but presents a certificate from another CA.
    let other = DevPki::generate("other CA").unwrap();
    let leaf = other.issue("intruder").unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    crypto.alpn_protocols = vec![tls::ALPN.to_vec()];
    let endpoint = client_endpoint(crypto);
    let connecting = endpoint.connect(handle.local_addr(), "localhost").unwrap();
    // TLS 1.3: the client may finish its side before the server rejects its certificate, so the refusal
    // shows either on connect or as the connection being closed before any stream arrives.
    let refused = match tokio::time::timeout(STEP, connecting).await.unwrap() {
        Err(_) => true,
        Ok(conn) => tokio::time::timeout(STEP, conn.accept_uni())
            .await
            .unwrap()
            .is_err(),
    };
    assert!(refused, "an intruder got a heartbeat stream");
    assert_eq!(handle.subscribers(), 0);

    // A client in insecure dev mode (self-signed, no CA) is refused too.
    let dev = client_endpoint(tls::client_config(&TlsMode::InsecureDev).unwrap());
    let connecting = dev.connect(handle.local_addr(), "localhost").unwrap();
    let refused = match tokio::time::timeout(STEP, connecting).await.unwrap() {
        Err(_) => true,
        Ok(conn) => tokio::time::timeout(STEP, conn.accept_uni())
            .await
            .unwrap()
            .is_err(),
    };
    assert!(refused);
    assert_eq!(handle.subscribers(), 0);
    tokio::time::sleep(INTERVAL * 2).await;
    assert!(
        source.calls.load(Ordering::SeqCst) > 0,
        "measuring goes on without subscribers"
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn drain_sends_goodbye_then_closes() {
    let pki = DevPki::generate("test CA").unwrap();
    let (handle, _source) = start(&pki, options());
    let addr = handle.local_addr();
    let coordinator = pki.mutual_mode("coordinator").unwrap();
    let mut sub = subscribe(&coordinator, addr).await;
    hello(&mut sub.recv).await;
    heartbeat(&mut sub.recv).await;

    let grace = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let drain = tokio::spawn(handle.drain("test drain", grace));
    let goodbye = loop {
        match read(&mut sub.recv).await.unwrap() {
            Message::Heartbeat(_) => continue,
            Message::Goodbye(goodbye) => break goodbye,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(goodbye.reason, "test drain");
    assert_eq!(goodbye.drain_grace_ms, 300);
    // The stream ends after Goodbye.
    let mut rest = [0u8; 1];
    let end = tokio::time::timeout(STEP, sub.recv.read(&mut rest))
        .await
        .unwrap();
    assert!(
        matches!(end, Ok(None)),
        "stream should be finished, got {end:?}"
    );

    // During the grace period the agent refuses new subscribers.
    let late = client_endpoint(tls::client_config(&coordinator).unwrap());
    let connecting = late.connect(addr, "localhost").unwrap();
    assert!(
        tokio::time::timeout(STEP, connecting)
            .await
            .unwrap()
            .is_err()
    );

    // After the grace period the connection is closed with DRAINED.
    match tokio::time::timeout(STEP, sub.conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(close_code::DRAINED)
            );
        }
        other => panic!("expected an application close, got {other:?}"),
    }
    assert!(started.elapsed() >= grace);
    tokio::time::timeout(STEP, drain)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn subscribers_beyond_the_limit_are_closed_with_a_reason() {
    let pki = DevPki::generate("test CA").unwrap();
    let mut opts = options();
    opts.max_subscribers = 1;
    let (handle, _source) = start(&pki, opts);
    let coordinator = pki.mutual_mode("coordinator").unwrap();
    let mut first = subscribe(&coordinator, handle.local_addr()).await;
    hello(&mut first.recv).await;

    let endpoint = client_endpoint(tls::client_config(&coordinator).unwrap());
    let conn = tokio::time::timeout(
        STEP,
        endpoint.connect(handle.local_addr(), "localhost").unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    match tokio::time::timeout(STEP, conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(close_code::TOO_MANY_SUBSCRIBERS)
            );
            assert!(String::from_utf8_lossy(&close.reason).contains("max 1"));
        }
        other => panic!("expected an application close, got {other:?}"),
    }
    // The first one is unaffected.
    heartbeat(&mut first.recv).await;
    assert_eq!(handle.subscribers(), 1);
    handle.shutdown().await;
}

#[tokio::test]
async fn a_coordinator_that_leaves_frees_its_slot() {
    let pki = DevPki::generate("test CA").unwrap();
    let (handle, _source) = start(&pki, options());
    let coordinator = pki.mutual_mode("coordinator").unwrap();
    let mut sub = subscribe(&coordinator, handle.local_addr()).await;
    hello(&mut sub.recv).await;
    assert_eq!(handle.subscribers(), 1);
    sub.conn.close(quinn::VarInt::from_u32(0), b"bye");
    let deadline = std::time::Instant::now() + STEP;
    while handle.subscribers() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "subscriber not released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown().await;
}

#[tokio::test]
async fn bad_options_are_refused_with_the_field_name() {
    let pki = DevPki::generate("test CA").unwrap();
    let mode = pki.mutual_mode("agent").unwrap();
    let mut opts = options();
    opts.interval = Duration::ZERO;
    let err = Reporter::bind(
        "127.0.0.1:0".parse().unwrap(),
        &mode,
        Arc::new(Counting::default()),
        opts,
    )
    .unwrap_err();
    assert!(err.to_string().contains("interval"), "{err}");
}
