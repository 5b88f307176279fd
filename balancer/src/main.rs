//! `lateral-coordinator`: turns agents' heartbeats into per-endpoint weights and serves them over gRPC.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lateral_balancer::coordinator::{Coordinator, CoordinatorConfig};

const AFTER_HELP: &str = "\
EXAMPLES:
  Start from a configuration file (see deploy/coordinator.example.toml):
    lateral-coordinator --config /etc/lateral/coordinator.toml

  Check a configuration without starting anything:
    lateral-coordinator --config coordinator.toml --check

  Override the listen address and use development TLS (self-signed, NOT authenticated):
    LATERAL_GRPC_LISTEN=127.0.0.1:50100 lateral-coordinator --config dev.toml --insecure-dev

WHAT IT DOES:
  For every [[service.endpoint]] it dials the endpoint's agent over QUIC (mutual TLS from the CA in [tls]),
  receives a heartbeat every 500 ms, computes weights (capacity headroom, smoothing, floors, freshness,
  re-admission, canary breaker; see [engine]) and streams them to clients with
  lateral.v1.Coordinator/WatchWeights. Every decision is logged with its rule and reason
  (log target lateral::decision) and served by GetDecisions.

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
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "LATERAL_LOG_JSON")]
    log_json: bool,
}

impl Args {
    fn load(&self) -> Result<CoordinatorConfig, lateral_balancer::Error> {
        let mut config = CoordinatorConfig::load(&self.config)?;
        if let Some(addr) = self.grpc_listen {
            config.listen.grpc = Some(addr);
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
        config.validate(&format!("{} (with flags)", self.config.display()))?;
        Ok(config)
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_json);
    let config = match args.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("lateral-coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
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
    match run_until_signal(&args, &coordinator).await {
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
