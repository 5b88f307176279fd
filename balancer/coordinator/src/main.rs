//! `lateral-coordinator`: turns agents' heartbeats into per-endpoint weights and serves them over gRPC.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lateral_coordinator::{Coordinator, CoordinatorConfig};

const AFTER_HELP: &str = "\
EXAMPLES:
  Start from a configuration file (see deploy/coordinator.example.toml):
    lateral-coordinator --config /etc/lateral/coordinator.toml

  Check a configuration without starting anything:
    lateral-coordinator --config coordinator.toml --check

  Override the listen address and use development TLS (self-signed, NOT authenticated):
    LATERAL_GRPC_LISTEN=127.0.0.1:50100 lateral-coordinator --config dev.toml --insecure-dev

WHAT IT DOES:
  Endpoints come from [[service.endpoint]] entries, [[service.dns]] names re-resolved periodically, or
  [[service.etcd]] prefixes where agents register (lateral-agent --etcd ...; listed, then watched).
  For every endpoint it dials the endpoint's agent over QUIC (mutual TLS from the CA in [tls]),
  receives a heartbeat every 500 ms, computes weights (capacity headroom, smoothing, floors, freshness,
  re-admission, canary breaker; see [engine]) and streams them to clients with
  lateral.v1.Coordinator/WatchWeights. Every decision is logged with its rule and reason
  (log target lateral::decision) and served by GetDecisions.

OBSERVABILITY:
  --http-listen 127.0.0.1:50101 serves Prometheus metrics at /metrics and a live dashboard at /.
  Traces go to an OTLP/gRPC collector when [telemetry] otlp_endpoint or OTEL_EXPORTER_OTLP_ENDPOINT is set
  (OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG and OTEL_BSP_* are honoured).

SIGNALS:
  SIGHUP   re-read the configuration file; an invalid file is refused and the running config kept.
  SIGTERM  stop.

Flags override the file; environment variables (shown in [env: ...]) override nothing but the defaults of
the flags they name.";

/// The Lateral coordinator.
#[derive(Debug, Parser)]
#[command(name = "lateral-coordinator", version, about, after_help = AFTER_HELP)]
struct Args {
    /// The TOML configuration file.
    #[arg(long, short, env = "LATERAL_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Listen address for the gRPC API (WatchWeights, GetDecisions); overrides [listen] grpc.
    #[arg(long, env = "LATERAL_GRPC_LISTEN", value_name = "ADDR")]
    grpc_listen: Option<SocketAddr>,
    /// Listen address for HTTP: Prometheus /metrics, the dashboard at /, /api/state; overrides [listen] http.
    #[arg(long, env = "LATERAL_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Listen address for xDS (ADS) to Envoy and gRPC clients (built with feature `xds`); overrides [listen] xds.
    #[arg(long, env = "LATERAL_XDS_LISTEN", value_name = "ADDR")]
    xds_listen: Option<SocketAddr>,
    /// CA certificate (PEM) for mutual TLS with agents; overrides [tls] ca.
    #[arg(long, env = "LATERAL_TLS_CA", value_name = "PEM")]
    ca: Option<PathBuf>,
    /// The coordinator's certificate (PEM); overrides [tls] cert.
    #[arg(long, env = "LATERAL_TLS_CERT", value_name = "PEM")]
    cert: Option<PathBuf>,
    /// The coordinator's private key (PEM); overrides [tls] key.
    #[arg(long, env = "LATERAL_TLS_KEY", value_name = "PEM")]
    key: Option<PathBuf>,
    /// Self-signed certificates and no authentication. Development only.
    #[arg(long, env = "LATERAL_INSECURE_DEV")]
    insecure_dev: bool,
    /// HA: elect a leader among coordinators through these etcd URLs (comma-separated); overrides
    /// [ha] etcd. Standbys republish the leader's weights; the last weights are kept in etcd.
    #[arg(
        long,
        env = "LATERAL_HA_ETCD",
        value_name = "URLS",
        value_delimiter = ','
    )]
    ha_etcd: Vec<String>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "LATERAL_LOG_JSON")]
    log_json: bool,
}

impl Args {
    fn load(&self) -> Result<CoordinatorConfig, lateral_coordinator::Error> {
        let mut config = CoordinatorConfig::load(&self.config)?;
        if let Some(addr) = self.grpc_listen {
            config.listen.grpc = Some(addr);
        }
        if let Some(addr) = self.http_listen {
            config.listen.http = Some(addr);
        }
        if let Some(addr) = self.xds_listen {
            config.listen.xds = Some(addr);
        }
        if self.ca.is_some() {
            config.tls.ca = self.ca.clone();
        }
        if self.cert.is_some() {
            config.tls.cert = self.cert.clone();
        }
        if self.key.is_some() {
            config.tls.key = self.key.clone();
        }
        if self.insecure_dev {
            config.tls.insecure_dev = true;
        }
        if !self.ha_etcd.is_empty() {
            match &mut config.ha {
                Some(ha) => ha.etcd.clone_from(&self.ha_etcd),
                None => {
                    config.ha = Some(lateral_coordinator::config::HaConfig::with_urls(
                        self.ha_etcd.clone(),
                    ))
                }
            }
        }
        config.validate(&format!("{} (with flags)", self.config.display()))?;
        Ok(config)
    }
}

/// Logs on stderr (RUST_LOG) and, with an OTLP endpoint in [telemetry] or OTEL_EXPORTER_OTLP_ENDPOINT,
/// spans to the collector.
fn init_telemetry(args: &Args) -> lateral_coordinator::telemetry::Telemetry {
    // The file is read again below with full validation; here only [telemetry] matters.
    let config = CoordinatorConfig::load(&args.config)
        .map(|c| c.telemetry)
        .unwrap_or_default();
    match lateral_coordinator::telemetry::init_tracing(
        "lateral-coordinator",
        &config,
        "RUST_LOG",
        args.log_json,
    ) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("lateral-coordinator: {e}");
            lateral_coordinator::telemetry::Telemetry::default()
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let telemetry = init_telemetry(&args);
    let config = match args.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("lateral-coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        if let Err(e) = lateral_coordinator::check_tls(&config) {
            eprintln!("lateral-coordinator: {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
        let endpoints: usize = config.services.iter().map(|s| s.endpoints.len()).sum();
        println!(
            "{}: ok ({} services, {endpoints} static endpoints)",
            args.config.display(),
            config.services.len()
        );
        return ExitCode::SUCCESS;
    }
    let coordinator = match Coordinator::start(config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lateral-coordinator: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(addr) = coordinator.http_addr() {
        tracing::info!(
            "dashboard at http://{addr}/ and Prometheus metrics at http://{addr}/metrics"
        );
    }
    let result = run_until_signal(&args, &coordinator).await;
    telemetry.shutdown();
    match result {
        Ok(()) => {
            coordinator.shutdown().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lateral-coordinator: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(unix)]
async fn run_until_signal(args: &Args, coordinator: &Coordinator) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => match args.load() {
                Ok(config) => match coordinator.reload(config).await {
                    Ok(()) => tracing::info!(file = %args.config.display(), "configuration reloaded"),
                    Err(e) => tracing::error!(error = %e, "reload refused; keeping the running configuration"),
                },
                Err(e) => tracing::error!(error = %e, "reload refused; keeping the running configuration"),
            },
            _ = terminate.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[cfg(not(unix))]
async fn run_until_signal(_: &Args, _: &Coordinator) -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}
