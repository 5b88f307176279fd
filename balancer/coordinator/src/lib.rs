//! Lateral's coordinator: the I/O shell around the weight engine ([`engine`], the crate `lateral-engine`).
//!
//! It knows each service's endpoints (static configuration or DNS names re-resolved periodically), dials every
//! endpoint's agent over QUIC with mutual TLS ([`ingest`]), stamps every heartbeat with its own monotonic receive
//! time, feeds the engine and ticks it ([`driver`]), and publishes weights: in process through
//! [`Coordinator::subscribe`] (the embedded mode the client balancer uses by default) and over gRPC as
//! `lateral.v1.Coordinator/WatchWeights` ([`service`]). Every decision is logged as a structured `tracing` event
//! (target `lateral::decision`) and kept in a bounded [`DecisionLog`] served by `GetDecisions`.
//! With `listen.http` set, an HTTP server serves Prometheus metrics ([`metrics`]), a live dashboard and its
//! JSON feed (see `http.rs`). With `listen.xds` set (feature `xds`), an ADS server publishes the weights to
//! Envoy and gRPC xDS clients (crate `lateral-xds`, started from `xds.rs`).
//!
//! The driver is the only code that reads a clock, and it reads tokio's, so tests with paused time drive it.
//!
//! It runs as the binary `lateral-coordinator` (a sidecar on each client node, or a central control plane)
//! or embedded in a client process (`lateral-balancer`'s default `embedded` feature, [`spawn_embedded`]).
//! What it does not touch: picking endpoints per request (that is `lateral-balancer`), measuring backends
//! (`lateral-agent`), and the wire formats (`lateral-proto`).
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
mod decision_log;
mod dns;
mod driver;
mod election;
pub mod embedded;
mod error;
mod etcd;
mod http;
mod ingest;
pub mod metrics;
mod persist;
mod service;
mod xds;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lateral_proto::coordinator::coordinator_server::CoordinatorServer;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use config::CoordinatorConfig;
pub use decision_log::DecisionLog;
pub use driver::WeightsReceiver;
pub use embedded::{EmbeddedGuard, spawn_embedded};
pub use error::Error;
#[doc(hidden)]
pub use etcd::fuzz_membership;
pub use ingest::IngestStats;
#[doc(inline)]
pub use lateral_engine as engine;
/// OTLP export and the `tracing` subscriber the binary installs (`lateral-ops`'s `otlp`).
pub use lateral_ops::otlp as telemetry;
pub use metrics::CoordinatorMetrics;
pub use service::CoordinatorService;

use driver::{Command, Driver};

/// How many decisions (and alerts) the in-memory log keeps.
const DECISION_LOG_CAPACITY: usize = 10_000;
/// Ingest events waiting for the driver; beyond this, heartbeats are dropped (and counted), never queued.
const INGEST_QUEUE: usize = 4096;

/// What the gRPC service and embedding code share with a running coordinator.
pub struct CoordinatorHandle {
    commands: mpsc::Sender<Command>,
    log: Arc<DecisionLog>,
    stats: Arc<IngestStats>,
    metrics: Arc<CoordinatorMetrics>,
    services: RwLock<BTreeSet<String>>,
    /// This process's epoch (`WeightSnapshot.epoch`, `GetDecisionsResponse.epoch`).
    epoch: u64,
}

impl CoordinatorHandle {
    /// Subscribes to a service's weights: the receiver holds the latest snapshot and is notified on every
    /// change and, with an unchanged snapshot, every heartbeat interval.
    pub async fn subscribe(&self, service: &str) -> Result<WeightsReceiver, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Subscribe(service.to_string(), reply))
            .await
            .map_err(|_| Error::Transport("the coordinator has stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::Transport("the coordinator has stopped".into()))?
            .ok_or_else(|| Error::UnknownService(service.to_string()))
    }

    /// Whether a service of this name is configured.
    pub fn has_service(&self, service: &str) -> bool {
        self.services
            .read()
            .map(|s| s.contains(service))
            .unwrap_or(false)
    }

    /// The decision and alert log.
    pub fn decisions(&self) -> &DecisionLog {
        &self.log
    }

    /// This process's epoch: random, non-zero, carried by every snapshot and decisions answer (versions and
    /// sequences are ordered within one epoch).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Ingest counters.
    pub fn stats(&self) -> &IngestStats {
        &self.stats
    }

    /// Per-endpoint gauges, counters and history (what `/metrics` and the dashboard show).
    pub fn metrics(&self) -> &CoordinatorMetrics {
        &self.metrics
    }

    /// The Prometheus text exposition of the coordinator's metrics (what `GET /metrics` serves).
    pub fn render_prometheus(&self) -> String {
        self.metrics.render_prometheus(driver::now(), &self.stats)
    }
}

/// A running coordinator. Dropping it stops everything it started.
pub struct Coordinator {
    handle: Arc<CoordinatorHandle>,
    driver: JoinHandle<()>,
    grpc: Option<(SocketAddr, JoinHandle<()>, oneshot::Sender<()>)>,
    /// Aborts itself and its connections when dropped.
    http: Option<lateral_ops::http_server::HttpServer>,
    xds: Option<xds::XdsTask>,
    candidacy: Option<persist::Candidacy>,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.driver.abort();
        if let Some((_, task, _)) = &self.grpc {
            task.abort();
        }
    }
}

impl Coordinator {
    /// Validates `config`, starts ingest for every endpoint, the driver, and the gRPC server if
    /// `listen.grpc` is set (port 0 picks a free port; see [`Coordinator::grpc_addr`]).
    pub async fn start(config: CoordinatorConfig) -> Result<Self, Error> {
        config.validate("the configuration")?;
        let quic = client_endpoint(&config)?;
        let stats = Arc::new(IngestStats::default());
        let log = Arc::new(DecisionLog::new(DECISION_LOG_CAPACITY));
        let metrics = Arc::new(CoordinatorMetrics::default());
        let (event_tx, event_rx) = mpsc::channel(INGEST_QUEUE);
        let (command_tx, command_rx) = mpsc::channel(64);
        let (client_config, server_name) = quic_client_config(&config)?;
        let settings = ingest::IngestSettings {
            quic,
            client_config,
            server_name,
            heartbeat_interval: config.engine.heartbeat_interval,
            stats: stats.clone(),
            events: event_tx,
        };
        let services = config.services.iter().map(|s| s.name.clone()).collect();
        let grpc_listen = config.listen.grpc;
        let http_listen = config.listen.http;
        let xds_settings = (
            config.listen.xds,
            config.xds.clone(),
            config.services.iter().map(|s| s.name.clone()).collect(),
        );
        let epoch = driver::new_epoch();
        let inbox = driver::Inbox {
            events: event_rx,
            commands: command_rx,
            command_sender: command_tx.downgrade(),
        };
        let warm = persist::prepare(&config, &metrics).await;
        let ha = persist::Background::of(&config, &warm);
        let driver = Driver::new(
            config,
            settings,
            inbox,
            log.clone(),
            metrics.clone(),
            epoch,
            warm,
        );
        let driver = tokio::spawn(driver.run());
        let handle = Arc::new(CoordinatorHandle {
            commands: command_tx,
            log,
            stats,
            metrics,
            services: RwLock::new(services),
            epoch,
        });
        let grpc = match grpc_listen {
            Some(addr) => Some(serve_grpc(addr, handle.clone()).await?),
            None => None,
        };
        let candidacy = ha.spawn(&handle, grpc.as_ref().map(|(addr, _, _)| *addr));
        let http = match http_listen {
            Some(addr) => Some(http::serve(addr, handle.clone()).await?),
            None => None,
        };
        let xds = xds::start(&handle, xds_settings.0, xds_settings.1, xds_settings.2).await?;
        Ok(Self {
            handle,
            driver,
            grpc,
            http,
            xds,
            candidacy,
        })
    }

    /// The shared handle (for embedding and for the gRPC service).
    pub fn handle(&self) -> &Arc<CoordinatorHandle> {
        &self.handle
    }

    /// Where the gRPC API listens, if it was started.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|(addr, _, _)| *addr)
    }

    /// Where the HTTP server (`/metrics`, the dashboard at `/`, `/api/state`) listens, if it was started
    /// (`listen.http`; port 0 picks a free port).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|server| server.local_addr())
    }

    /// Where the xDS (ADS) server listens, if it was started (`listen.xds`; port 0 picks a free port).
    pub fn xds_addr(&self) -> Option<SocketAddr> {
        self.xds.as_ref().map(xds::XdsTask::addr)
    }

    /// See [`CoordinatorHandle::subscribe`].
    pub async fn subscribe(&self, service: &str) -> Result<WeightsReceiver, Error> {
        self.handle.subscribe(service).await
    }

    /// Applies a new configuration. An invalid one is refused with the reason and the running one kept.
    /// Listen addresses and TLS are fixed at start; changing them needs a restart (a warning says so).
    pub async fn reload(&self, config: CoordinatorConfig) -> Result<(), Error> {
        config.validate("the new configuration")?;
        let names: BTreeSet<String> = config.services.iter().map(|s| s.name.clone()).collect();
        let xds_services: Vec<String> = names.iter().cloned().collect();
        let xds_config = config.xds.clone();
        let (done, applied) = oneshot::channel();
        self.handle
            .commands
            .send(Command::Reload(Box::new(config), done))
            .await
            .map_err(|_| Error::Transport("the coordinator has stopped".into()))?;
        applied
            .await
            .map_err(|_| Error::Transport("the coordinator has stopped".into()))?;
        if let Ok(mut services) = self.handle.services.write() {
            *services = names;
        }
        if let Some(xds) = &self.xds {
            xds.set_services(&self.handle, xds_config, xds_services)
                .await?;
        }
        Ok(())
    }

    /// Stops gracefully: resigns from the HA election first (a standby leads at once instead of when this
    /// one's lease would expire), then the servers, the driver and ingest tasks.
    pub async fn shutdown(mut self) {
        if let Some(candidacy) = self.candidacy.take() {
            candidacy.resign(Duration::from_secs(3)).await;
        }
        if let Some(xds) = self.xds.take() {
            xds.shutdown().await;
        }
        if let Some(server) = self.http.take() {
            server.shutdown().await;
        }
        if let Some((_, task, stop)) = self.grpc.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.driver.abort();
    }
}

/// Loads and checks the TLS material the configuration names (files readable, certificates chain to the CA,
/// key matches), without starting anything: what `lateral-coordinator --check` runs.
pub fn check_tls(config: &CoordinatorConfig) -> Result<(), Error> {
    quic_client_config(config).map(|_| ())
}

async fn serve_grpc(
    addr: SocketAddr,
    handle: Arc<CoordinatorHandle>,
) -> Result<(SocketAddr, JoinHandle<()>, oneshot::Sender<()>), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Transport(format!("cannot listen for gRPC on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(CoordinatorServer::new(CoordinatorService::new(handle)))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let _ = stopped.await;
            },
        );
    let task = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the coordinator's gRPC server stopped");
        }
    });
    tracing::info!(%local, "coordinator gRPC API listening");
    Ok((local, task, stop))
}

fn tls_mode(config: &CoordinatorConfig) -> Result<lateral_ops::tls::TlsMode, Error> {
    use lateral_ops::tls::{TlsFiles, TlsMode, TlsPem};
    let tls = &config.tls;
    if tls.insecure_dev {
        return Ok(TlsMode::InsecureDev);
    }
    let read =
        |path: &Option<std::path::PathBuf>, pem: &Option<String>, field: &str| match (pem, path) {
            (Some(pem), _) => Ok(pem.clone()),
            (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
                path: path.display().to_string(),
                message: format!("tls.{field}: {e}"),
            }),
            (None, None) => Err(Error::Config {
                source_name: "the configuration".into(),
                field: format!("tls.{field}"),
                expected: "a PEM file path or PEM text, or insecure_dev = true".into(),
            }),
        };
    if tls.ca_pem.is_some() || tls.cert_pem.is_some() || tls.key_pem.is_some() {
        return Ok(TlsMode::MutualPem(TlsPem {
            ca_pem: read(&tls.ca, &tls.ca_pem, "ca")?,
            cert_pem: read(&tls.cert, &tls.cert_pem, "cert")?,
            key_pem: read(&tls.key, &tls.key_pem, "key")?,
        }));
    }
    match (&tls.ca, &tls.cert, &tls.key) {
        (Some(ca), Some(cert), Some(key)) => Ok(TlsMode::Mutual(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        })),
        _ => Err(Error::Config {
            source_name: "the configuration".into(),
            field: "tls".into(),
            expected: "ca, cert and key, or insecure_dev = true".into(),
        }),
    }
}

fn quic_client_config(config: &CoordinatorConfig) -> Result<(quinn::ClientConfig, String), Error> {
    let rustls_config = lateral_ops::tls::client_config(&tls_mode(config)?)
        .map_err(|e| Error::Transport(format!("TLS for QUIC: {e}")))?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_config)
        .map_err(|e| Error::Transport(format!("TLS for QUIC: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    // Lean: sized for one small uni stream per agent (see `ingest::transport_config`).
    client.transport_config(Arc::new(ingest::transport_config(
        config.engine.heartbeat_interval,
    )));
    let server_name = config
        .tls
        .server_name
        .clone()
        .unwrap_or_else(|| lateral_ops::tls::DEFAULT_SERVER_NAME.to_string());
    Ok((client, server_name))
}

fn client_endpoint(config: &CoordinatorConfig) -> Result<quinn::Endpoint, Error> {
    let wants_v6 = config
        .services
        .iter()
        .flat_map(|s| &s.endpoints)
        .any(|e| e.agent.is_ipv6());
    let bind: SocketAddr = if wants_v6 { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .map_err(|e| Error::Transport(format!("bind address: {e}")))?;
    quinn::Endpoint::client(bind)
        .map_err(|e| Error::Transport(format!("cannot open a UDP socket for QUIC on {bind}: {e}")))
}
