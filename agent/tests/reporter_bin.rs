//! The `lateral-agent` binary end to end: poll mode against a JSON endpoint, mutual TLS from `gen-certs`-style
//! files, a quinn coordinator reading Hello and heartbeats, then SIGTERM → Goodbye → exit 0.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lateral_ops::tls::{self, DevPki, TlsFiles, TlsMode};
use lateral_proto::heartbeat::{FrameHeader, HEADER_LEN, Message, decode_body};
use quinn::crypto::rustls::QuicClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(3);

/// Kills the agent if the test fails half-way.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves a fixed JSON load report to every request.
async fn json_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let body = r#"{"current_load": 7, "average_latency_ms": 12.5, "max_capacity": 50, "cpu_percent": 40}"#;
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = stream.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
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

#[tokio::test]
async fn poll_mode_reports_over_mutual_tls_and_drains_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("lateral-agent-bin-{}", std::process::id()));
    let pki = DevPki::generate("test CA").unwrap();
    pki.write_dir(&dir, "agent-e2e", "coordinator-e2e").unwrap();
    let backend = json_backend().await;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let child = Command::new(env!("CARGO_BIN_EXE_lateral-agent"))
        .args([
            "poll",
            "--url",
            &format!("http://{backend}/load"),
            "--endpoint-id",
            "e2e",
        ])
        .args([
            "--quic-listen",
            &format!("127.0.0.1:{port}"),
            "--interval-ms",
            "50",
        ])
        .args(["--drain-grace-ms", "200", "--declared-capacity", "64"])
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("agent.pem"))
        .arg("--key")
        .arg(dir.join("agent-key.pem"))
        .env("LATERAL_AGENT_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);

    let coordinator = TlsMode::Mutual(TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("coordinator.pem"),
        key: dir.join("coordinator-key.pem"),
    });
    let crypto = QuicClientConfig::try_from(tls::client_config(&coordinator).unwrap()).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let addr = format!("127.0.0.1:{port}").parse().unwrap();

    // The agent needs a moment to start; retry the dial.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (conn, mut recv) = loop {
        let attempt = async {
            let conn = client.connect(addr, "agent-e2e").ok()?.await.ok()?;
            let recv = conn.accept_uni().await.ok()?;
            Some((conn, recv))
        };
        if let Ok(Some(ok)) = tokio::time::timeout(Duration::from_millis(500), attempt).await {
            break ok;
        }
        assert!(Instant::now() < deadline, "agent did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    match read(&mut recv).await {
        Message::Hello(hello) => {
            assert_eq!(hello.endpoint_id, "e2e");
            assert_eq!(hello.heartbeat_interval_ms, 50);
            assert!(hello.capabilities.iter().any(|c| c == "declared-capacity"));
        }
        other => panic!("expected Hello, got {other:?}"),
    }
    // The first heartbeats may predate the first poll; wait for the backend's numbers.
    let hb = loop {
        match read(&mut recv).await {
            Message::Heartbeat(hb) if hb.in_flight == 7 => break hb,
            Message::Heartbeat(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(hb.latency_mean_us, 12_500);
    assert_eq!(hb.declared_capacity, Some(64), "--declared-capacity wins");
    assert_eq!(hb.utilization, Some(0.4));
    assert!(hb.accepting);

    let pid = guard.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let goodbye = loop {
        match read(&mut recv).await {
            Message::Heartbeat(_) => continue,
            Message::Goodbye(goodbye) => break goodbye,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(goodbye.reason, "SIGTERM");
    assert_eq!(goodbye.drain_grace_ms, 200);
    match tokio::time::timeout(STEP, conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(0),
                "closed as drained"
            );
        }
        other => panic!("expected an application close, got {other:?}"),
    }
    let deadline = Instant::now() + STEP;
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the agent binary to completion with `args` and extra environment `env`: its exit code and stderr.
fn run_agent(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lateral-agent"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let run = |args: &[&str]| run_agent(args, &[]);
    let (code, err) = run(&[
        "poll",
        "--url",
        "http://127.0.0.1:9/x",
        "--endpoint-id",
        "e",
        "--interval-ms",
        "0",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--interval-ms"), "{err}");
    let (code, err) = run(&[
        "poll",
        "--url",
        "http://127.0.0.1:9/x",
        "--endpoint-id",
        "e",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--insecure-dev"), "{err}");
    let (code, err) = run(&[
        "poll",
        "--url",
        "http://127.0.0.1:9/x",
        "--endpoint-id",
        "e",
        "--ca",
        "/nonexistent/ca.pem",
        "--cert",
        "/nonexistent/c.pem",
        "--key",
        "/nonexistent/k.pem",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    let (code, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
}

#[test]
fn switches_from_the_environment_take_1_yes_on_and_0_off() {
    // The agent gets past TLS (so the switch parsed as on) and stops at the next check, a non-loopback
    // admin address; with the switch off it stops at TLS.
    let run = |value: &str| {
        run_agent(
            &[
                "poll",
                "--url",
                "http://127.0.0.1:9/x",
                "--endpoint-id",
                "e",
                "--admin-listen",
                "10.0.0.1:7444",
            ],
            &[("LATERAL_AGENT_INSECURE_DEV", value)],
        )
    };
    for on in ["1", "yes", "on", "true"] {
        let (code, err) = run(on);
        assert_eq!(code, Some(2), "{on}: {err}");
        assert!(err.contains("--admin-listen"), "{on}: {err}");
    }
    for off in ["0", "no", "off", "false"] {
        let (code, err) = run(off);
        assert_eq!(code, Some(2), "{off}: {err}");
        assert!(err.contains("--insecure-dev"), "{off}: {err}");
    }
}

/// Agent CPU at 2 Hz heartbeats with one subscriber, poll mode (a poll and a heartbeat every 500 ms).
/// Run: `cargo build --release -p lateral-agent && LATERAL_AGENT_BIN=$PWD/target/release/lateral-agent \
///       cargo test -p lateral-agent --test reporter_bin -- --ignored --nocapture`
/// (`LATERAL_CPU_SECS` sets the measuring time, default 30.)
#[tokio::test]
#[ignore = "measurement; takes 30 s"]
async fn measure_agent_cpu_at_2hz() {
    let bin = std::env::var("LATERAL_AGENT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_lateral-agent").to_owned());
    let secs: u64 = std::env::var("LATERAL_CPU_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let dir = std::env::temp_dir().join(format!("lateral-agent-cpu-{}", std::process::id()));
    let pki = DevPki::generate("test CA").unwrap();
    pki.write_dir(&dir, "agent", "coordinator").unwrap();
    let backend = json_backend().await;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&bin)
        .args([
            "poll",
            "--url",
            &format!("http://{backend}/load"),
            "--endpoint-id",
            "cpu",
        ])
        .args(["--quic-listen", &format!("127.0.0.1:{port}")])
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("agent.pem"))
        .arg("--key")
        .arg(dir.join("agent-key.pem"))
        .env("LATERAL_AGENT_LOG", "warn")
        .spawn()
        .unwrap();
    let guard = Guard(child);
    let pid = guard.0.id();
    let coordinator = TlsMode::Mutual(TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("coordinator.pem"),
        key: dir.join("coordinator-key.pem"),
    });
    let crypto = QuicClientConfig::try_from(tls::client_config(&coordinator).unwrap()).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_conn, mut recv) = loop {
        let attempt = async {
            let conn = client.connect(addr, "localhost").ok()?.await.ok()?;
            let recv = conn.accept_uni().await.ok()?;
            Some((conn, recv))
        };
        if let Ok(Some(ok)) = tokio::time::timeout(Duration::from_millis(500), attempt).await {
            break ok;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = read(&mut recv).await; // Hello
    let _ = read(&mut recv).await; // first heartbeat: start measuring from steady state

    let cpu_ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let rss_kb = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS"))
            .unwrap_or("VmRSS: ?")
            .to_owned()
    };
    let before = cpu_ticks();
    let started = Instant::now();
    let mut heartbeats = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        if let Message::Heartbeat(_) = read(&mut recv).await {
            heartbeats += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let used = (cpu_ticks() - before) as f64 / 100.0; // USER_HZ is 100 on Linux
    println!(
        "agent CPU: {used:.2} s over {elapsed:.1} s = {:.3}% of one core; {heartbeats} heartbeats received; {}",
        100.0 * used / elapsed,
        rss_kb()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
