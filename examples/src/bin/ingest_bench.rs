//! Measures the coordinator's heartbeat ingest: heartbeats per second it accepts on ONE core, and memory per
//! endpoint.
//!
//! `cargo run --release -p lateral-examples --bin ingest_bench -- --endpoints 200 --interval-ms 10 --seconds 10`
//!
//! The agents run on their own single-threaded runtime (one OS thread) and the coordinator on another
//! single-threaded runtime, so "one core" is literal: the coordinator's driver, ingest tasks and QUIC endpoint
//! all share one thread. Memory per endpoint is the growth of the process's resident set from before the
//! coordinator starts to after it has connected every agent, divided by the endpoint count (agents included
//! in the process are started before the first reading).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use lateral_agent::measurement::{Measurement, MeasurementSource};
use lateral_agent::reporter::{Reporter, ReporterHandle, ReporterOptions};
use lateral_balancer::coordinator::config::{EndpointConfig, ServiceConfig, TlsConfig};
use lateral_balancer::coordinator::{Coordinator, CoordinatorConfig};
use lateral_balancer::engine::EngineConfig;
use lateral_proto::tls::DevPki;

#[derive(Debug, Parser)]
struct Args {
    /// Number of endpoints (one agent each).
    #[arg(long, default_value_t = 200)]
    endpoints: usize,
    /// Heartbeat interval of every agent, in milliseconds.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    /// Seconds to measure after every agent is connected.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// A measurement source that always reports the same busy backend.
struct Constant;

impl MeasurementSource for Constant {
    fn take_window(&self) -> Measurement {
        Measurement {
            in_flight: 12,
            completed: 400,
            failed: 1,
            window: Duration::from_millis(500),
            latency_mean: Duration::from_millis(9),
            latency_p50: Duration::from_millis(8),
            latency_p99: Duration::from_millis(30),
            accepting: true,
            declared_capacity: Some(32),
            utilization: None,
            mean_in_flight: 12.0,
            busy_fraction: Some(0.375),
            oldest_in_flight: Some(Duration::from_millis(30)),
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let pki = Arc::new(DevPki::generate("ingest-bench-ca")?);
    let interval = Duration::from_millis(args.interval_ms);

    // Agents: their own thread and runtime.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let agent_pki = pki.clone();
    let endpoints = args.endpoints;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let Ok(runtime) = runtime else { return };
        runtime.block_on(async move {
            let mut handles: Vec<ReporterHandle> = Vec::new();
            let Ok(tls) = agent_pki.mutual_mode("agent") else {
                return;
            };
            for i in 0..endpoints {
                let mut options = ReporterOptions::new(format!("bench-agent-{i}"), format!("e{i}"));
                options.interval = interval;
                let source: Arc<dyn MeasurementSource> = Arc::new(Constant);
                match Reporter::bind(
                    "127.0.0.1:0".parse().expect("literal"),
                    &tls,
                    source,
                    options,
                ) {
                    Ok(h) => {
                        let _ = addr_tx.send(h.local_addr());
                        handles.push(h);
                    }
                    Err(e) => eprintln!("agent {i}: {e}"),
                }
            }
            std::future::pending::<()>().await;
        });
    });
    let agents: Vec<_> = addr_rx.iter().take(args.endpoints).collect();
    std::thread::sleep(Duration::from_millis(200));

    let issued = pki.issue("coordinator")?;
    let mut config = CoordinatorConfig::parse(
        "[tls]\ninsecure_dev = true\n[[service]]\nname = \"s\"\n[[service.endpoint]]\nid = \"x\"\naddress = \"http://127.0.0.1:1\"\nagent = \"127.0.0.1:1\"\n",
        "bench",
    )?;
    config.listen.grpc = None;
    config.tls = TlsConfig {
        ca_pem: Some(pki.ca_pem().to_string()),
        cert_pem: Some(issued.cert_pem),
        key_pem: Some(issued.key_pem),
        ..TlsConfig::default()
    };
    config.engine = EngineConfig {
        heartbeat_interval: interval.max(Duration::from_millis(10)),
        ..EngineConfig::default()
    };
    config.services = vec![ServiceConfig {
        name: "s".into(),
        endpoints: agents
            .iter()
            .enumerate()
            .map(|(i, agent)| EndpointConfig {
                id: format!("e{i}"),
                address: "http://127.0.0.1:1".into(),
                agent: *agent,
                zone: None,
                labels: Default::default(),
                static_weight: None,
                declared_capacity: None,
            })
            .collect(),
        dns: vec![],
        etcd: vec![],
    }];

    // The coordinator: one thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rss_before = rss_kib();
    runtime.block_on(async move {
        let coordinator = Coordinator::start(config).await?;
        let stats = coordinator.handle().stats();
        let deadline = Instant::now() + Duration::from_secs(30);
        while stats.connections.load(Ordering::Relaxed) < args.endpoints as u64
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let connected = stats.connections.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_connected = rss_kib();
        let start_count = stats.heartbeats.load(Ordering::Relaxed);
        let dropped_before = stats.dropped.load(Ordering::Relaxed);
        let cpu_before = cpu_seconds("/proc/self/stat");
        let thread_stat = std::fs::read_link("/proc/thread-self")
            .map(|p| format!("/proc/{}/stat", p.display()))
            .unwrap_or_else(|_| "/proc/self/stat".into());
        let coordinator_cpu_before = cpu_seconds(&thread_stat);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let elapsed = started.elapsed().as_secs_f64();
        let accepted = stats.heartbeats.load(Ordering::Relaxed) - start_count;
        let dropped = stats.dropped.load(Ordering::Relaxed) - dropped_before;
        let cpu = cpu_seconds("/proc/self/stat") - cpu_before;
        let coordinator_cpu = cpu_seconds(&thread_stat) - coordinator_cpu_before;
        let offered = args.endpoints as f64 * 1000.0 / args.interval_ms as f64;
        println!("endpoints connected     {connected} / {}", args.endpoints);
        println!("offered heartbeats/s    {offered:.0}");
        println!("accepted heartbeats/s   {:.0}", accepted as f64 / elapsed);
        println!("dropped (queue full)    {dropped}");
        println!(
            "process CPU             {:.2} cores (agents and coordinator threads together)",
            cpu / elapsed
        );
        println!(
            "coordinator thread CPU  {:.2} of one core",
            coordinator_cpu / elapsed
        );
        println!(
            "ingest per core-second  {:.0} heartbeats (accepted / coordinator thread CPU seconds)",
            accepted as f64 / coordinator_cpu.max(0.01)
        );
        println!(
            "memory per endpoint     {:.1} KiB (RSS {} → {} KiB, coordinator side)",
            (rss_connected.saturating_sub(rss_before)) as f64 / args.endpoints as f64,
            rss_before,
            rss_connected
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}

fn cpu_seconds(stat: &str) -> f64 {
    // utime + stime of a process or thread, in clock ticks (100 Hz on Linux).
    std::fs::read_to_string(stat)
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: f64 = after.get(11)?.parse().ok()?;
            let stime: f64 = after.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}
