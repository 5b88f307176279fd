//! The Redis dedup store against a real `redis-server` on loopback (each test starts its own).

#[path = "layer_support/echo.rs"]
mod echo;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use echo::{EchoBackend, client, req, serve};
use lateral_agent::Error;
use lateral_agent::dedup::{
    DedupStore, REQUEST_ID_HEADER, RedisDedup, RedisDedupOptions, RedisUrl, Verdict, key_for,
};
use lateral_agent::layer::LoadLayer;
use lateral_agent::recorder::Recorder;

/// Bound on waiting for a server (Redis, the agent binary) to accept connections.
const STARTUP: Duration = Duration::from_secs(5);

fn redis_server_binary() -> PathBuf {
    let candidates = std::iter::once(PathBuf::from("/usr/bin/redis-server")).chain(
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("redis-server"))
            .collect::<Vec<_>>(),
    );
    for path in candidates {
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "redis-server not found (looked at /usr/bin/redis-server and on PATH). These tests start their own \
         Redis on loopback; `.ci/test` installs the Debian package `redis-server` \
         (apt-get install redis-server)."
    );
}

/// A free loopback TCP port (free when this returns; a server started right after almost always gets it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (real time, bounded by [`STARTUP`]) until `port` accepts TCP connections, or `child` exits.
fn wait_accepting(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + STARTUP;
    while Instant::now() < deadline {
        if let Ok(Some(_exited)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A `redis-server` on a free loopback port, with no persistence; killed on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    fn start() -> Self {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Self {
        let bin = redis_server_binary();
        // A port taken between `free_port` and the bind makes Redis exit: try another.
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args([
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--bind", "127.0.0.1"])
                .args(extra)
                .current_dir(std::env::temp_dir())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            if wait_accepting(&mut child, port) {
                return Self {
                    child: Some(child),
                    port,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not accept connections on loopback within {STARTUP:?} (5 tries)");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts a stopped server again on the same port (empty: no persistence).
    fn restart(&mut self) {
        self.stop();
        let mut child = Command::new(redis_server_binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--bind", "127.0.0.1"])
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restart redis-server");
        assert!(
            wait_accepting(&mut child, self.port),
            "redis-server restarts on its port"
        );
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Options for the correctness tests: a generous call bound, so a loaded machine does not fail them.
fn patient(window: Duration, prefix: &str) -> RedisDedupOptions {
    RedisDedupOptions {
        key_prefix: prefix.to_owned(),
        timeout: Duration::from_secs(2),
        ..RedisDedupOptions::new(window)
    }
}

async fn store(server: &RedisServer, options: RedisDedupOptions) -> RedisDedup {
    RedisDedup::connect_with(RedisUrl::parse(&server.url()).unwrap(), options)
        .await
        .unwrap()
}

async fn check(store: &RedisDedup, id: &str) -> Verdict {
    store.check_and_insert(id).await.unwrap()
}

#[tokio::test]
async fn fresh_then_duplicate_and_long_ids_get_a_bounded_key() {
    let server = RedisServer::start();
    let window = Duration::from_secs(60);
    let s = store(&server, patient(window, "t1:")).await;
    assert_eq!(check(&s, "req-1").await, Verdict::Fresh);
    assert_eq!(check(&s, "req-1").await, Verdict::Duplicate);
    assert_eq!(check(&s, "req-2").await, Verdict::Fresh);
    assert_eq!(check(&s, "odd \u{0}\r\n bytes").await, Verdict::Fresh);
    assert_eq!(check(&s, "odd \u{0}\r\n bytes").await, Verdict::Duplicate);

    let long = "L".repeat(64 * 1024);
    assert_eq!(check(&s, &long).await, Verdict::Fresh);
    assert_eq!(check(&s, &long).await, Verdict::Duplicate);
    assert_eq!(check(&s, &long[1..]).await, Verdict::Fresh);

    // What is in Redis: the documented keys, expiring within the window.
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("t1:*")
        .query_async(&mut raw)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(keys.len(), 5);
    assert!(keys.contains(&b"t1:i:req-1".to_vec()));
    let hashed = key_for(b"t1:", &long);
    assert!(keys.contains(&hashed), "{keys:?}");
    assert!(keys.iter().all(|k| k.len() <= 3 + 2 + 128), "{keys:?}");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&hashed)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 60_000, "{pttl}");
}

#[tokio::test]
async fn two_agents_share_the_window() {
    let server = RedisServer::start();
    let window = Duration::from_secs(60);
    let agent_a = store(&server, patient(window, "shared:")).await;
    let agent_b = store(&server, patient(window, "shared:")).await;
    let other_service = store(&server, patient(window, "other:")).await;
    assert_eq!(check(&agent_a, "client-7").await, Verdict::Fresh);
    assert_eq!(check(&agent_b, "client-7").await, Verdict::Duplicate);
    assert_eq!(check(&agent_b, "client-8").await, Verdict::Fresh);
    assert_eq!(check(&agent_a, "client-8").await, Verdict::Duplicate);
    assert_eq!(
        check(&other_service, "client-7").await,
        Verdict::Fresh,
        "another prefix is another window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_fifty_concurrent_checks_exactly_one_is_fresh() {
    let server = RedisServer::start();
    let window = Duration::from_secs(60);
    // Two connections, as two agents would have.
    let stores = [
        Arc::new(store(&server, patient(window, "race:")).await),
        Arc::new(store(&server, patient(window, "race:")).await),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let s = stores[i % 2].clone();
        tasks.spawn(async move { s.check_and_insert("same-id").await });
    }
    let mut fresh = 0;
    let mut duplicate = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap().unwrap() {
            Verdict::Fresh => fresh += 1,
            Verdict::Duplicate => duplicate += 1,
        }
    }
    assert_eq!((fresh, duplicate), (1, 49));
}

#[tokio::test]
async fn an_id_is_fresh_again_after_the_window() {
    let server = RedisServer::start();
    // Real time: Redis holds the clock. 250 ms of sleeping in all.
    let s = store(&server, patient(Duration::from_millis(200), "ttl:")).await;
    assert_eq!(check(&s, "r").await, Verdict::Fresh);
    assert_eq!(check(&s, "r").await, Verdict::Duplicate);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(check(&s, "r").await, Verdict::Fresh);
    assert_eq!(check(&s, "r").await, Verdict::Duplicate);
}

#[tokio::test]
async fn a_stopped_redis_is_an_error_within_the_timeout_and_the_layer_fails_open() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(50);
    let options = RedisDedupOptions {
        timeout,
        ..RedisDedupOptions::new(Duration::from_secs(60))
    };
    let s = Arc::new(store(&server, options).await);
    let backend = EchoBackend::default();
    let recorder = Recorder::new();
    let addr = serve(
        backend.clone(),
        Some(LoadLayer::new(recorder).with_dedup(s.clone())),
    )
    .await;
    let mut c = client(addr).await;
    let with_id = |id: &'static str| {
        let mut r = tonic::Request::new(req("once", 0, 0));
        r.metadata_mut()
            .insert(REQUEST_ID_HEADER, id.parse().unwrap());
        r
    };
    c.unary(with_id("before")).await.unwrap();
    assert_eq!(
        c.unary(with_id("before")).await.unwrap_err().code(),
        tonic::Code::AlreadyExists
    );

    server.stop();
    for id in ["a", "b", "c"] {
        let started = Instant::now();
        let result = s.check_and_insert(id).await;
        let took = started.elapsed();
        assert!(matches!(result, Err(Error::Dedup(_))), "{result:?}");
        // The timeout, plus slack for a loaded machine; what matters is that it does not hang.
        assert!(
            took < timeout + Duration::from_millis(500),
            "{id}: {took:?}"
        );
    }
    // Fail open: a duplicate id goes through while the store cannot answer.
    c.unary(with_id("before")).await.unwrap();
    c.unary(with_id("before")).await.unwrap();
    assert_eq!(backend.calls(), 3);
}

#[tokio::test]
async fn an_outage_is_skipped_at_once_and_checks_resume_when_redis_returns() {
    let mut server = RedisServer::start();
    let options = RedisDedupOptions {
        timeout: Duration::from_millis(200),
        skip_after_failure: Duration::from_millis(100),
        ..RedisDedupOptions::new(Duration::from_secs(60))
    };
    let s = store(&server, options).await;
    assert_eq!(check(&s, "x").await, Verdict::Fresh);
    server.stop();
    assert!(
        s.check_and_insert("y").await.is_err(),
        "the failure that opens the breaker"
    );
    // Skipped without asking Redis: an error at once, saying so.
    let started = Instant::now();
    let skipped = s.check_and_insert("z").await.unwrap_err().to_string();
    assert!(skipped.contains("skipped"), "{skipped}");
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "{:?}",
        started.elapsed()
    );
    // Redis returns (empty); after the cool-down a probe goes through and ids are checked again.
    server.restart();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut fresh = None;
    for _ in 0..20 {
        // The connection manager may need a moment to reconnect: a failed probe backs off (200 ms, 400 ms).
        match s.check_and_insert("w").await {
            Ok(v) => {
                fresh = Some(v);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(fresh, Some(Verdict::Fresh));
    assert_eq!(check(&s, "w").await, Verdict::Duplicate);
}

#[tokio::test]
async fn bad_urls_windows_and_unreachable_servers_are_clear_errors() {
    let window = Duration::from_secs(60);
    for url in [
        "http://127.0.0.1:6379",
        "127.0.0.1:6379",
        "rediss://127.0.0.1:6379",
    ] {
        let err = RedisDedup::connect(url, window, "p:").await.unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{url}: {err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("--dedup-redis") && msg.contains("redis://"),
            "{url}: {msg}"
        );
    }
    let err = RedisDedup::connect("redis://127.0.0.1:6379/0", Duration::ZERO, "p:")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--dedup-window-ms"), "{err}");

    // Nothing listens there: an error (quickly), naming the redacted URL, not the password.
    let port = free_port();
    let started = Instant::now();
    let err = RedisDedup::connect(
        &format!("redis://:hunter2@127.0.0.1:{port}/0"),
        window,
        "p:",
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, Error::Dedup(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot connect") && msg.contains("--dedup-redis"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("redis://***@127.0.0.1:{port}/0")),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[tokio::test]
async fn credentials_work_and_are_never_shown() {
    let server = RedisServer::start_with(&["--requirepass", "hunter2"]);
    let window = Duration::from_secs(60);
    let url = format!("redis://:hunter2@127.0.0.1:{}/0", server.port);
    let s = RedisDedup::connect(&url, window, "auth:").await.unwrap();
    assert_eq!(check(&s, "r").await, Verdict::Fresh);
    let shown = format!("{s:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("***@"),
        "{shown}"
    );

    let wrong = format!("redis://:letmein@127.0.0.1:{}/0", server.port);
    let err = RedisDedup::connect(&wrong, window, "auth:")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Dedup(_)), "{err:?}");
    assert!(!err.to_string().contains("letmein"), "{err}");
}

/// A `lateral-agent` process, killed on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent_command(listen: u16, upstream: std::net::SocketAddr, redis_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lateral-agent"));
    cmd.args(["proxy", "--listen", &format!("127.0.0.1:{listen}")])
        .args(["--upstream", &format!("http://{upstream}")])
        .args([
            "--endpoint-id",
            "e",
            "--insecure-dev",
            "--quic-listen",
            "127.0.0.1:0",
        ])
        .args(["--dedup-window-ms", "60000", "--dedup-redis", redis_url])
        .env("LATERAL_AGENT_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test]
async fn the_binary_refuses_to_start_without_its_redis() {
    let port = free_port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}/0");
    let child = agent_command(free_port(), "127.0.0.1:1".parse().unwrap(), &url)
        .spawn()
        .unwrap();
    let mut agent = Agent(child);
    let deadline = Instant::now() + STARTUP;
    let status = loop {
        if let Some(status) = agent.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut agent.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect") && stderr.contains("--dedup-redis"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[tokio::test]
async fn two_agent_processes_share_the_window_through_redis() {
    let server = RedisServer::start();
    let backend = EchoBackend::default();
    let upstream = serve(backend.clone(), None).await;
    let mut agents = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..2 {
        let port = free_port();
        let mut agent = Agent(
            agent_command(port, upstream, &server.url())
                .spawn()
                .unwrap(),
        );
        if !wait_accepting(&mut agent.0, port) {
            let _ = agent.0.kill();
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(&mut agent.0.stderr.take().unwrap(), &mut stderr);
            panic!("the agent did not listen on {port} within {STARTUP:?}: {stderr}");
        }
        agents.push(agent);
        ports.push(port);
    }
    let with_id = |id: &'static str| {
        let mut r = tonic::Request::new(req("once", 0, 0));
        r.metadata_mut()
            .insert(REQUEST_ID_HEADER, id.parse().unwrap());
        r
    };
    let mut via_a = client(format!("127.0.0.1:{}", ports[0]).parse().unwrap()).await;
    let mut via_b = client(format!("127.0.0.1:{}", ports[1]).parse().unwrap()).await;
    via_a.unary(with_id("retried")).await.unwrap();
    let err = via_b.unary(with_id("retried")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    via_b.unary(with_id("another")).await.unwrap();
    assert_eq!(
        backend.calls(),
        2,
        "the retry through the other agent never reached the backend"
    );
}

/// What one dedup check costs: Redis on loopback against the in-memory store, sequential and 64 concurrent.
/// Run: `cargo test --release -p lateral-agent --test dedup_redis -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_check_latency() {
    let server = RedisServer::start();
    let redis: Arc<dyn DedupStore> =
        Arc::new(store(&server, patient(Duration::from_secs(60), "m:")).await);
    let memory: Arc<dyn DedupStore> = Arc::new(lateral_agent::dedup::InMemoryDedup::new(
        Duration::from_secs(60),
        1_000_000,
    ));
    for (name, s) in [("in-memory", memory), ("redis", redis)] {
        let n = 20_000;
        let mut micros = Vec::with_capacity(n);
        for i in 0..n {
            let started = Instant::now();
            s.check_and_insert(&format!("seq-{i}")).await.unwrap();
            micros.push(started.elapsed().as_secs_f64() * 1e6);
        }
        micros.sort_by(f64::total_cmp);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..64 {
            let s = s.clone();
            tasks.spawn(async move {
                for i in 0..n / 64 {
                    s.check_and_insert(&format!("par-{t}-{i}")).await.unwrap();
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let rate = (n / 64 * 64) as f64 / started.elapsed().as_secs_f64();
        println!(
            "{name:>9}: sequential p50 {:.1} µs, p99 {:.1} µs; 64 concurrent: {rate:.0} checks/s",
            micros[n / 2],
            micros[n * 99 / 100]
        );
    }
}
