//! `lateral-agent`: measures one gRPC backend (h2c proxy or JSON poller) and streams heartbeats to
//! coordinators over QUIC with mutual TLS. Run `lateral-agent --help` for the flags and examples.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Arg, ArgMatches, CommandFactory, FromArgMatches};
use lateral_agent::Error;
use lateral_agent::config::{
    Cli, Command, DedupSettings, GenCertsArgs, PollArgs, ProxyArgs, ReportSettings,
};
use lateral_agent::dedup::{DedupStore, InMemoryDedup, RedisDedup};
use lateral_agent::drain::{Drainable, Drainer, admin};
use lateral_agent::measurement::{Measurement, MeasurementSource};
use lateral_agent::metrics_http::{self, AgentMetrics, Metered};
use lateral_agent::poll::{PollOptions, Poller};
use lateral_agent::proxy::{Proxy, ProxyOptions};
use lateral_agent::recorder::Recorder;
use lateral_agent::reporter::Reporter;
use lateral_ops::tls::DevPki;
use tokio_util::sync::CancellationToken;

/// Observability flags, accepted before or after the mode (global): they apply to every mode.
#[derive(Debug, Clone, Default)]
struct Observability {
    metrics_listen: Option<SocketAddr>,
    otlp_endpoint: Option<String>,
}

/// The flags of [`Cli`] plus the global observability flags (kept here so the mode flags stay in `config`).
fn parse_cli() -> (Cli, Observability) {
    let command = Cli::command()
        .arg(
            Arg::new("metrics_listen")
                .long("metrics-listen")
                .env("LATERAL_AGENT_METRICS_LISTEN")
                .value_name("ADDR")
                .value_parser(clap::value_parser!(SocketAddr))
                .global(true)
                .help("Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464)"),
        )
        .arg(
            Arg::new("otlp_endpoint")
                .long("otlp-endpoint")
                .value_name("URI")
                .global(true)
                .help(
                    "Export spans to this OTLP/gRPC collector (default: OTEL_EXPORTER_OTLP_ENDPOINT; \
                     OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER and OTEL_BSP_* apply)",
                ),
        );
    // Bad or missing flags: clap prints the error naming the flag, and exits with 2 (`--help`: 0).
    let matches: ArgMatches = command.get_matches();
    let observability = Observability {
        metrics_listen: matches.get_one::<SocketAddr>("metrics_listen").copied(),
        otlp_endpoint: matches.get_one::<String>("otlp_endpoint").cloned(),
    };
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    (cli, observability)
}

fn main() -> ExitCode {
    let (cli, observability) = parse_cli();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lateral-agent: error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter and its batch processor run on this runtime.
    let telemetry = {
        let _entered = runtime.enter();
        let config = lateral_ops::otlp::TelemetryConfig {
            otlp_endpoint: observability.otlp_endpoint.clone(),
            ..Default::default()
        };
        match lateral_ops::otlp::init_tracing("lateral-agent", &config, "LATERAL_AGENT_LOG", false)
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("lateral-agent: error: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let result = runtime.block_on(run(cli, observability));
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lateral-agent: error: {e}");
            match e {
                // A bad flag value, or TLS files that cannot be used: the operator must fix the invocation.
                Error::Config { .. } | Error::Tls(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(cli: Cli, observability: Observability) -> Result<(), Error> {
    match cli.command {
        Command::Proxy(args) => proxy(args, observability).await,
        Command::Poll(args) => poll(args, observability).await,
        Command::GenCerts(args) => gen_certs(&args),
    }
}

/// Proxy mode: the proxy's recorder is the measurement source, and drain clears its accepting flag.
async fn proxy(args: ProxyArgs, observability: Observability) -> Result<(), Error> {
    let settings = args.report.validate(args.orca)?;
    let dedup = dedup_store(args.dedup.validate()?).await?;
    let recorder = Recorder::new();
    recorder.set_declared_capacity(settings.declared_capacity);
    let opts = ProxyOptions {
        orca: args.orca,
        // Requests had the whole drain grace period to finish; don't wait much longer after it.
        shutdown_grace: Duration::from_secs(1),
        dedup,
        shed_queue_allowance: args.shed_queue_allowance.0,
        ..ProxyOptions::default()
    };
    let proxy = Proxy::bind(args.listen, args.upstream, recorder.clone(), opts)
        .await
        .map_err(|e| context(e, "--listen", args.listen))?;
    let flag = recorder.clone();
    let target = Arc::new(move |accepting: bool| flag.set_accepting(accepting));
    let metrics =
        AgentMetrics::new(settings.reporter.endpoint_id.clone()).with_recorder(recorder.clone());
    let result = report(
        settings,
        Arc::new(recorder),
        target,
        metrics,
        &observability,
    )
    .await;
    proxy.shutdown().await;
    result
}

/// The request-id dedup store the `--dedup-*` flags ask for. Connects to Redis now, so a wrong URL or an
/// unreachable server stops the start-up instead of failing every request open.
async fn dedup_store(
    settings: Option<DedupSettings>,
) -> Result<Option<Arc<dyn DedupStore>>, Error> {
    Ok(match settings {
        None => None,
        Some(DedupSettings::InMemory {
            window,
            max_entries,
        }) => {
            tracing::info!(?window, max_entries, "request-id dedup in memory");
            Some(Arc::new(InMemoryDedup::new(window, max_entries)))
        }
        Some(DedupSettings::Redis { url, options }) => {
            let store = RedisDedup::connect_with(url, options).await?;
            tracing::info!(?store, "request-id dedup in Redis");
            Some(Arc::new(store))
        }
    })
}

/// Poll mode: the poller's latest reading is the measurement source.
async fn poll(args: PollArgs, observability: Observability) -> Result<(), Error> {
    let settings = args.report.validate(false)?;
    let opts = PollOptions {
        interval: settings.reporter.interval,
        timeout: Duration::from_millis(args.poll_timeout_ms),
        ..PollOptions::default()
    };
    let poller = Arc::new(Poller::new(args.url, opts)?);
    let polling = tokio::spawn({
        let poller = poller.clone();
        async move { poller.run().await }
    });
    let source = Arc::new(Overrides {
        inner: poller,
        declared_capacity: settings.declared_capacity,
        accepting: AtomicBool::new(true),
    });
    let metrics = AgentMetrics::new(settings.reporter.endpoint_id.clone());
    let result = report(settings, source.clone(), source, metrics, &observability).await;
    polling.abort();
    result
}

/// Runs the reporter (and the admin endpoint) until a drain completes.
async fn report(
    settings: ReportSettings,
    source: Arc<dyn MeasurementSource>,
    target: Arc<dyn Drainable>,
    metrics: AgentMetrics,
    observability: &Observability,
) -> Result<(), Error> {
    // Every window the reporter sends is also what /metrics shows.
    let metrics = Arc::new(metrics);
    let source: Arc<dyn MeasurementSource> = Arc::new(Metered::new(source, metrics.clone()));
    let _metrics_server = match observability.metrics_listen {
        Some(addr) => Some(
            metrics_http::serve(addr, metrics)
                .await
                .map_err(|e| context(e, "--metrics-listen", addr))?,
        ),
        None => None,
    };
    let reporter = Reporter::bind(
        settings.quic_listen,
        &settings.tls,
        source,
        settings.reporter,
    )
    .map_err(|e| context(e, "--quic-listen", settings.quic_listen))?;
    let (drainer, switch) = Drainer::new(reporter, target, settings.drain_grace);
    let _admin = match settings.admin_listen {
        Some(addr) => Some(
            admin::serve(addr, switch.clone())
                .await
                .map_err(|e| context(e, "--admin-listen", addr))?,
        ),
        None => None,
    };
    // Registered only once the QUIC server is up, so a coordinator that finds the record can dial it.
    let membership = settings.registration.map(|registration| {
        let stop = CancellationToken::new();
        (stop.clone(), tokio::spawn(registration.run(stop)))
    });
    let outcome = drainer.run().await;
    if let Some((stop, task)) = membership {
        // Deregister (revoke the lease) before exiting; bounded, a dead etcd expires the key anyway.
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
    }
    let outcome = outcome?;
    tracing::info!(reason = %outcome.reason, "exiting after drain");
    Ok(())
}

/// Names the flag whose address could not be bound.
fn context(e: Error, flag: &str, addr: impl std::fmt::Display) -> Error {
    match e {
        Error::Io(io) => Error::Transport(format!("{flag} {addr}: {io}")),
        other => other,
    }
}

fn gen_certs(args: &GenCertsArgs) -> Result<(), Error> {
    let pki = DevPki::generate("Lateral development CA").map_err(|e| Error::Tls(e.to_string()))?;
    let written = pki
        .write_dir(&args.out, &args.agent_name, &args.coordinator_name)
        .map_err(|e| Error::Transport(e.to_string()))?;
    for path in &written {
        println!("wrote {}", path.display());
    }
    let dir = args.out.display();
    println!(
        "\nagent:       --ca {dir}/ca.pem --cert {dir}/agent.pem --key {dir}/agent-key.pem\n\
         coordinator: ca {dir}/ca.pem, cert {dir}/coordinator.pem, key {dir}/coordinator-key.pem\n\
         The agent certificate is valid for localhost, 127.0.0.1, ::1 and {}; coordinators dial it with one \
         of those names.\nThe CA key was not kept: run gen-certs again (for every side) to issue more.",
        args.agent_name
    );
    Ok(())
}

/// A measurement source with the operator's overrides: `--declared-capacity` wins over what the backend
/// reports, and a drain forces `accepting = false`.
struct Overrides<S> {
    inner: Arc<S>,
    declared_capacity: Option<u32>,
    accepting: AtomicBool,
}

impl<S: MeasurementSource> MeasurementSource for Overrides<S> {
    fn take_window(&self) -> Measurement {
        let mut m = self.inner.take_window();
        if self.declared_capacity.is_some() {
            m.declared_capacity = self.declared_capacity;
        }
        m.accepting &= self.accepting.load(Ordering::Relaxed);
        m
    }
}

impl<S: MeasurementSource> Drainable for Overrides<S> {
    fn set_accepting(&self, accepting: bool) {
        self.accepting.store(accepting, Ordering::Relaxed);
    }
}
