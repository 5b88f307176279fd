//! Shared set-up for Lateral's loopback integration tests: certificates, simulated backends with their agents,
//! coordinator configurations and a `WatchWeights` subscriber.
//!
//! These tests run real QUIC and gRPC over 127.0.0.1 in real time, so they use short heartbeat intervals
//! (tens of milliseconds) and wait for conditions with deadlines instead of sleeping fixed amounts.
#![warn(missing_docs)]

pub mod xds_peers;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lateral_coordinator::CoordinatorConfig;
use lateral_coordinator::config::{EndpointConfig, ServiceConfig, TlsConfig};
use lateral_coordinator::engine::EngineConfig;
use lateral_examples::backend::{Backend, BackendSpec};
use lateral_ops::tls::{DevPki, TlsMode, TlsPem};
use lateral_proto::coordinator::coordinator_client::CoordinatorClient;
use lateral_proto::coordinator::{EndpointState, WatchRequest, WeightSnapshot};
use lateral_proto::etcd::etcdserverpb::kv_client::KvClient;
use lateral_proto::etcd::etcdserverpb::{PutRequest, RangeRequest};

/// Loopback, any free port.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A CA and the TLS modes of agents and coordinators it certifies.
pub struct Pki {
    /// The development CA.
    pub ca: DevPki,
}

impl Pki {
    /// A fresh CA.
    pub fn new(name: &str) -> Self {
        Self {
            ca: DevPki::generate(name).expect("generate a CA"),
        }
    }

    /// Mutual TLS for a peer named `name`, issued by this CA.
    pub fn mode(&self, name: &str) -> TlsMode {
        self.ca.mutual_mode(name).expect("issue a certificate")
    }

    /// The coordinator's `[tls]` section with inline PEM issued by this CA.
    pub fn coordinator_tls(&self) -> TlsConfig {
        let issued = self.ca.issue("coordinator").expect("issue a certificate");
        let TlsPem {
            ca_pem,
            cert_pem,
            key_pem,
        } = TlsPem {
            ca_pem: self.ca.ca_pem().to_string(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        };
        TlsConfig {
            ca_pem: Some(ca_pem),
            cert_pem: Some(cert_pem),
            key_pem: Some(key_pem),
            ..TlsConfig::default()
        }
    }
}

/// A fast engine configuration for real-time tests: 50 ms heartbeats, degraded after 3 missed, ejected after
/// 600 ms of silence, a 1 s re-admission ramp.
pub fn fast_engine() -> EngineConfig {
    EngineConfig {
        heartbeat_interval: Duration::from_millis(50),
        eject_after: Duration::from_millis(600),
        readmission_ramp: Duration::from_secs(1),
        flap_backoff_base: Duration::from_millis(100),
        ..EngineConfig::default()
    }
}

/// Starts a backend with its agent, heartbeating every `interval`.
pub async fn backend(spec: BackendSpec, interval: Duration, tls: TlsMode) -> Backend {
    let spec = BackendSpec {
        heartbeat_interval: interval,
        ..spec
    };
    Backend::start(spec, any_port(), any_port(), tls)
        .await
        .expect("start a backend")
}

/// Starts `N` backends (name, worker slots, mean service time in ms) whose agents are certified by `pki` and
/// heartbeat every 50 ms, and the coordinator configuration over them (service `svc`, [`fast_engine`]).
pub async fn fleet<const N: usize>(
    pki: &Pki,
    specs: [(&str, u32, u64); N],
) -> ([Backend; N], CoordinatorConfig) {
    let mut started = Vec::with_capacity(N);
    for (name, slots, ms) in specs {
        let spec = BackendSpec::new(name, slots, Duration::from_millis(ms));
        started.push(backend(spec, Duration::from_millis(50), pki.mode("agent")).await);
    }
    let endpoints = started.iter().map(endpoint_of).collect();
    let config = coordinator_config(pki.coordinator_tls(), fast_engine(), endpoints);
    let Ok(backends) = <[Backend; N]>::try_from(started) else {
        unreachable!("exactly N backends were started")
    };
    (backends, config)
}

/// The endpoint entry for a backend.
pub fn endpoint_of(backend: &Backend) -> EndpointConfig {
    EndpointConfig {
        id: backend.spec().name.clone(),
        address: backend.uri(),
        agent: backend.agent_addr(),
        zone: None,
        labels: Default::default(),
        static_weight: Some(1.0),
        declared_capacity: None,
    }
}

/// A coordinator configuration with one service `svc` over `endpoints`, gRPC on a free port.
pub fn coordinator_config(
    tls: TlsConfig,
    engine: EngineConfig,
    endpoints: Vec<EndpointConfig>,
) -> CoordinatorConfig {
    let mut config = CoordinatorConfig::parse(
        "[tls]\ninsecure_dev = true\n[[service]]\nname = \"svc\"\n[[service.endpoint]]\nid = \"x\"\naddress = \"http://127.0.0.1:1\"\nagent = \"127.0.0.1:1\"\n",
        "test",
    )
    .expect("the template parses");
    config.listen.grpc = Some(any_port());
    config.tls = tls;
    config.engine = engine;
    config.services = vec![ServiceConfig {
        name: "svc".into(),
        endpoints,
        dns: vec![],
        etcd: vec![],
    }];
    config
}

/// A `WatchWeights` subscriber over real gRPC.
pub struct Watcher {
    stream: tonic::Streaming<WeightSnapshot>,
    /// The last snapshot received.
    pub last: Option<WeightSnapshot>,
}

impl Watcher {
    /// Subscribes to `service` on the coordinator at `addr`.
    pub async fn connect(addr: SocketAddr, service: &str) -> Self {
        let mut client = CoordinatorClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let stream = client
            .watch_weights(WatchRequest {
                service: service.into(),
                client_id: "integration-test".into(),
                zone: String::new(),
            })
            .await
            .expect("watch")
            .into_inner();
        Self { stream, last: None }
    }

    /// Waits up to `within` for a snapshot satisfying `condition`; returns it, or panics with the last seen.
    pub async fn until(
        &mut self,
        within: Duration,
        what: &str,
        mut condition: impl FnMut(&WeightSnapshot) -> bool,
    ) -> WeightSnapshot {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.message()).await;
            match next {
                Ok(Ok(Some(snapshot))) => {
                    let done = condition(&snapshot);
                    self.last = Some(snapshot.clone());
                    if done {
                        return snapshot;
                    }
                }
                Ok(Ok(None)) => panic!("the coordinator ended the stream while waiting for {what}"),
                Ok(Err(status)) => panic!("WatchWeights failed while waiting for {what}: {status}"),
                Err(_) => panic!(
                    "timed out after {within:?} waiting for {what}; last snapshot: {}",
                    self.last
                        .as_ref()
                        .map(describe)
                        .unwrap_or_else(|| "none".into())
                ),
            }
        }
    }
}

/// The weight and state of endpoint `id` in a snapshot.
pub fn entry(snapshot: &WeightSnapshot, id: &str) -> Option<(f64, EndpointState)> {
    snapshot.endpoints.iter().find(|e| e.id == id).map(|e| {
        (
            e.weight,
            EndpointState::try_from(e.state).unwrap_or(EndpointState::Unspecified),
        )
    })
}

/// One line per endpoint, for failure messages.
pub fn describe(snapshot: &WeightSnapshot) -> String {
    snapshot
        .endpoints
        .iter()
        .map(|e| {
            let state = EndpointState::try_from(e.state).unwrap_or(EndpointState::Unspecified);
            format!(
                "{}={:.3}/{:?} ({}: {})",
                e.id, e.weight, state, e.rule, e.reason
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Sends unary requests straight to `uri` at about `rate` per second until the returned handle is dropped.
pub fn steady_load(uri: String, rate: u32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(channel) = tonic::transport::Endpoint::from_shared(uri).map(|e| e.connect_lazy())
        else {
            return;
        };
        let client = lateral_proto::demo::echo_client::EchoClient::new(channel);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
        loop {
            tick.tick().await;
            let mut client = client.clone();
            tokio::spawn(async move {
                let _ = client
                    .unary(lateral_proto::demo::EchoRequest {
                        message: "load".into(),
                        ..Default::default()
                    })
                    .await;
            });
        }
    })
}

/// Polls `condition` every 10 ms for up to `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out after {within:?} waiting for {what}");
}

/// Debian's `etcd-server` binary.
const ETCD: &str = "/usr/bin/etcd";
/// An etcd server of its own on two free loopback ports and a temporary data directory (Debian
/// `etcd-server`, which `.ci/test` installs); killed and its data removed on drop.
pub struct Etcd {
    child: Option<Child>,
    /// The client URL (`http://127.0.0.1:PORT`).
    pub url: String,
    peer: SocketAddr,
    dir: PathBuf,
    /// Extra flags (e.g. a short election timeout).
    flags: Vec<String>,
}

fn free_loopback_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("a local address")
}

impl Etcd {
    /// Starts one with etcd's default timings and waits until it answers.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts one with extra `flags` (e.g. `--election-timeout 500`, which lets leases as short as 1 s
    /// exist: etcd raises a TTL below 1.5 × its election timeout) and waits until it answers.
    pub async fn start_with(flags: &[&str]) -> Self {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} not found: `.ci/test` installs the Debian package etcd-server"
        );
        let client = free_loopback_port();
        let dir = std::env::temp_dir().join(format!(
            "lateral-etcd-{}-{}",
            std::process::id(),
            client.port()
        ));
        let mut etcd = Self {
            child: None,
            url: format!("http://{client}"),
            peer: free_loopback_port(),
            dir,
            flags: flags.iter().map(|f| f.to_string()).collect(),
        };
        etcd.spawn().await;
        etcd
    }

    /// Starts (or restarts, on the same data) the server and waits until it answers.
    pub async fn spawn(&mut self) {
        let peer = format!("http://{}", self.peer);
        let child = Command::new(ETCD)
            .args(["--name", "lateral-test"])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen-client-urls", &self.url])
            .args(["--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("lateral-test={peer}")])
            .args(&self.flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let url = self.url.clone();
        eventually(Duration::from_secs(20), "etcd answers", || {
            let url = url.clone();
            async move {
                let Ok(mut kv) = KvClient::connect(url).await else {
                    return false;
                };
                kv.range(RangeRequest {
                    key: b"/".to_vec(),
                    ..Default::default()
                })
                .await
                .is_ok()
            }
        })
        .await;
    }

    /// Kills the server (its data stays for [`Etcd::spawn`]).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Writes `value` at `key`.
    pub async fn put(&self, key: &str, value: &[u8]) {
        let mut kv = KvClient::connect(self.url.clone())
            .await
            .expect("connect to etcd");
        kv.put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })
        .await
        .expect("put");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `coordinator` leads its HA election (`lateral_coordinator_leader` as it exports it).
pub fn leads(coordinator: &lateral_coordinator::Coordinator) -> bool {
    coordinator
        .handle()
        .render_prometheus()
        .lines()
        .any(|l| l.trim() == "lateral_coordinator_leader 1")
}

/// Waits up to `within` for `coordinator` to lead its HA election; panics with `what` otherwise.
pub async fn until_leads(
    coordinator: &lateral_coordinator::Coordinator,
    within: Duration,
    what: &str,
) {
    eventually(within, what, || {
        let l = leads(coordinator);
        async move { l }
    })
    .await;
}

/// Two coordinators started over one configuration with `[ha]` (service `svc`, an endpoint `a` with about
/// 4× the capacity of the others): the first leads, the second stands by, and the standby's `WatchWeights`
/// already carries the leader's measured shares (a above 0.7).
pub struct HaPair {
    /// The first coordinator, leading.
    pub leader: lateral_coordinator::Coordinator,
    /// The second, standing by.
    pub standby: lateral_coordinator::Coordinator,
    /// Subscribed to `svc` on the standby.
    pub watcher: Watcher,
    /// The leader's shares as the standby republished them.
    pub mirrored: WeightSnapshot,
}

impl HaPair {
    /// Starts the pair from `config` (which names the etcd in `[ha]`).
    pub async fn start(config: CoordinatorConfig) -> Self {
        let leader = lateral_coordinator::Coordinator::start(config.clone())
            .await
            .expect("start the first coordinator");
        until_leads(
            &leader,
            Duration::from_secs(10),
            "the first coordinator leads",
        )
        .await;
        let standby = lateral_coordinator::Coordinator::start(config)
            .await
            .expect("start the second coordinator");
        assert!(
            !leads(&standby),
            "the second stands by while the first leads"
        );
        let leader_epoch = leader.handle().epoch();
        let mut watcher = Watcher::connect(standby.grpc_addr().expect("gRPC"), "svc").await;
        let mirrored = watcher
            .until(
                Duration::from_secs(15),
                "the leader's 4:1 shares from the standby",
                |s| s.epoch == leader_epoch && entry(s, "a").is_some_and(|(w, _)| w > 0.7),
            )
            .await;
        Self {
            leader,
            standby,
            watcher,
            mirrored,
        }
    }
}
