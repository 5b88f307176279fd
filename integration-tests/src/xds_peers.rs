//! What the tests with real xDS peers share (`tests/xds_peers.rs`, `tests/ha_envoy.rs`): Envoy's bootstrap
//! and process, a load driver through a peer, shares against the published weights, and guards that kill
//! processes and remove directories. Every wait has a deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lateral_coordinator::WeightsReceiver;
use lateral_examples::backend::Backend;
use lateral_proto::coordinator::EndpointState;
use lateral_proto::demo::EchoRequest;
use lateral_proto::demo::echo_client::EchoClient;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::{describe, endpoint_of, entry};

/// Set to 1 to skip (with a note) when Envoy or grpcio is not installed, instead of failing.
pub const SKIP_VAR: &str = "LATERAL_SKIP_XDS_PEERS";
/// The grpcio interpreter, if not the default venv's.
/// Tolerance on shares, in points.
pub const TOLERANCE: f64 = 3.0;

/// A missing peer: fails the test with the command that installs it, or (with [`SKIP_VAR`]) skips it.
pub fn missing(what: &str, install: &str) -> Option<()> {
    let message = format!(
        "{what} is needed for this test: install it with `{install}` (.ci/test does), or set {SKIP_VAR}=1 to skip"
    );
    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
        eprintln!("skipped: {message}");
        None
    } else {
        panic!("{message}");
    }
}

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// A fresh directory under the system's temp dir, removed on drop unless the test failed.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new directory named after `name`, the process and the time.
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("lateral-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process killed on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (bound and released; Envoy binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `backend`'s endpoint declaring `capacity` concurrent requests.
pub fn with_capacity(
    backend: &Backend,
    capacity: u32,
) -> lateral_coordinator::config::EndpointConfig {
    lateral_coordinator::config::EndpointConfig {
        declared_capacity: Some(capacity),
        ..endpoint_of(backend)
    }
}

/// Waits until every endpoint in `ids` is active with a weight.
pub async fn until_active(weights: &mut WeightsReceiver, ids: &[&str]) {
    let deadline = Duration::from_secs(20);
    let done = tokio::time::timeout(
        deadline,
        weights.wait_for(|s| {
            s.as_ref().is_some_and(|s| {
                ids.iter().all(|id| {
                    entry(s, id).is_some_and(|(w, st)| w > 0.0 && st == EndpointState::Active)
                })
            })
        }),
    )
    .await
    .map(|seen| seen.is_ok());
    let last = weights
        .borrow()
        .as_ref()
        .map(|s| describe(s))
        .unwrap_or_default();
    assert!(
        matches!(done, Ok(true)),
        "endpoints {ids:?} not all active within {deadline:?}: {last}"
    );
}

/// Samples the published weights every 10 ms until stopped; the mean per endpoint.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<BTreeMap<String, f64>>,
}

impl Sampler {
    /// Starts sampling `weights`.
    pub fn start(weights: WeightsReceiver) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut sums: BTreeMap<String, f64> = BTreeMap::new();
            let mut n = 0u32;
            while !flag.load(Ordering::Relaxed) {
                if let Some(s) = weights.borrow().as_ref() {
                    for e in &s.endpoints {
                        *sums.entry(e.id.clone()).or_default() += e.weight;
                    }
                    n += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sums.values_mut().for_each(|v| *v /= f64::from(n.max(1)));
            sums
        });
        Self { stop, task }
    }

    /// Stops; the mean weight per endpoint.
    pub async fn mean(self) -> BTreeMap<String, f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the sampler")
    }
}

/// One finished call: when it was sent and who served it (empty: it failed).
pub type Served = (Instant, String);

/// `calls` unary calls to `uri` from `concurrency` callers (or, with `calls` = 0, until `stop` is set).
pub async fn drive(
    uri: &str,
    calls: usize,
    concurrency: usize,
    stop: Arc<AtomicBool>,
) -> Vec<Served> {
    let channel = tonic::transport::Endpoint::from_shared(uri.to_string())
        .expect("a URI")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(calls));
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let mut client = EchoClient::new(channel.clone());
        let (remaining, stop) = (remaining.clone(), stop.clone());
        set.spawn(async move {
            let mut served = Vec::new();
            loop {
                if calls > 0 {
                    let left = remaining
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                    if left.is_err() {
                        break;
                    }
                } else if stop.load(Ordering::Relaxed) {
                    break;
                }
                let sent = Instant::now();
                let reply = client
                    .unary(EchoRequest {
                        message: "through xds".into(),
                        ..Default::default()
                    })
                    .await;
                served.push((
                    sent,
                    reply.map(|r| r.into_inner().served_by).unwrap_or_default(),
                ));
            }
            served
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.expect("a caller"));
    }
    all.sort_by_key(|(at, _)| *at);
    all
}

/// Waits up to 20 s for a call through the peer at `uri` to be served (its listener is up and routes).
pub async fn until_envoy_routes(uri: &str) {
    let no_stop = Arc::new(AtomicBool::new(false));
    crate::eventually(Duration::from_secs(20), "Envoy routes a call", || {
        let (uri, stop) = (uri.to_string(), no_stop.clone());
        async move {
            drive(&uri, 1, 1, stop)
                .await
                .first()
                .is_some_and(|(_, who)| !who.is_empty())
        }
    })
    .await;
}

/// Calls per server (`""`: failed).
pub fn counts(served: &[Served]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, who) in served {
        *counts.entry(who.clone()).or_default() += 1;
    }
    counts
}

/// Asserts that `counts` follow `published` (shares in [0, 1]) within [`TOLERANCE`] points; returns a line
/// for the report.
pub fn assert_shares(
    peer: &str,
    counts: &BTreeMap<String, usize>,
    published: &BTreeMap<String, f64>,
) -> String {
    let total: usize = counts.values().sum();
    assert_eq!(counts.get(""), None, "{peer}: failed calls: {counts:?}");
    let mut line = format!("{peer}: {total} calls:");
    for (id, share) in published {
        let measured = 100.0 * *counts.get(id).unwrap_or(&0) as f64 / total.max(1) as f64;
        let expected = 100.0 * share;
        line.push_str(&format!(" {id} {measured:.1}% (published {expected:.1}%)"));
        assert!(
            (measured - expected).abs() <= TOLERANCE,
            "{peer}: {id} got {measured:.1}% of {total} calls, published {expected:.1}% (counts {counts:?})"
        );
    }
    line
}

/// Envoy's bootstrap: an admin port, and ADS at `ads` (one or more coordinators, round robin: a stream that
/// breaks reconnects to the next) as the only source of listeners and clusters.
pub fn envoy_bootstrap(ads: &[SocketAddr]) -> String {
    let ads_endpoints: Vec<serde_json::Value> = ads
        .iter()
        .map(|a| {
            serde_json::json!({ "endpoint": { "address": { "socket_address": {
                "address": a.ip().to_string(), "port_value": a.port()
            } } } })
        })
        .collect();
    serde_json::json!({
        "node": { "id": "lateral-xds-test", "cluster": "lateral-xds-test" },
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "lateral_ads" } }]
            },
            "lds_config": { "ads": {}, "resource_api_version": "V3" },
            "cds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": {
            "clusters": [{
                "name": "lateral_ads",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} }
                    }
                },
                "load_assignment": {
                    "cluster_name": "lateral_ads",
                    "endpoints": [{ "lb_endpoints": ads_endpoints }]
                }
            }]
        }
    })
    .to_string()
}

/// Starts Envoy from [`envoy_bootstrap`] in `dir` (its log in `envoy.log`, its admin address written to
/// `admin.txt`: see [`envoy_admin`]).
pub fn start_envoy(binary: &Path, dir: &Path, ads: &[SocketAddr]) -> Killed {
    let config = dir.join("envoy.json");
    std::fs::write(&config, envoy_bootstrap(ads)).expect("write Envoy's bootstrap");
    let log = std::fs::File::create(dir.join("envoy.log")).expect("Envoy's log");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .args([
            "--concurrency",
            "1",
            "--log-level",
            "info",
            "--disable-hot-restart",
        ])
        .arg("--admin-address-path")
        .arg(dir.join("admin.txt"))
        .stdout(log.try_clone().expect("Envoy's log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start Envoy");
    Killed(child)
}

/// Envoy's admin address, once Envoy has written it (within 10 s).
pub async fn envoy_admin(dir: &Path) -> SocketAddr {
    let path = dir.join("admin.txt");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        if let Ok(addr) = written.trim().parse() {
            return addr;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy wrote no admin address to {} within 10 s",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last 30 lines of Envoy's log in `dir`.
pub fn envoy_log(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}
