//! Measures the coordinator's heartbeat ingest: heartbeats per second it accepts per core-second of CPU, and
//! its memory per endpoint.
//!
//! ```text
//! # throughput: 200 agents × 100 Hz
//! cargo run --release -p lateral-examples --bin ingest_bench -- --endpoints 200 --interval-ms 10 --seconds 10
//! # memory: 1,000 agents × 2 Hz (the production rate)
//! cargo run --release -p lateral-examples --bin ingest_bench -- --endpoints 1000 --interval-ms 500 --seconds 10
//! ```
//!
//! The agents run in a **child process** (this binary re-executed, see [`lateral_examples::ingest_agents`])
//! on one single-threaded runtime; the coordinator runs in this process on a single-threaded runtime too, so
//! everything this process does is the coordinator's: its driver, ingest tasks and QUIC endpoint share one
//! thread, and this process's CPU time is the coordinator's CPU time.
//!
//! - *Memory per endpoint* is the growth of this process's resident set (`VmRSS`) from just before the
//!   coordinator starts to one second after every agent is connected, divided by the endpoint count. The
//!   agents' memory is in the child and not counted (its RSS is printed for information). Earlier versions
//!   ran the agents in the same process, which counted both ends of every connection.
//! - *Live heap per endpoint* is the growth, over the same span, of the bytes this process holds allocated
//!   (a counting global allocator): what the coordinator keeps per endpoint, without the allocator's free
//!   pages and fragmentation left by the TLS handshakes that RSS also counts.
//! - *Ingest per core-second* is heartbeats accepted during the measured seconds divided by this process's
//!   CPU seconds (user + system) in the same period.

use std::alloc::System;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use lateral_coordinator::Coordinator;
use lateral_examples::ingest_agents::{self, AgentsChild, cpu_seconds, rss_kib};
use lateral_ops::tls::DevPki;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes this process holds allocated now. stats_alloc already counts a `realloc`'s growth in
/// `bytes_allocated` and its shrinking in `bytes_deallocated` (`bytes_reallocated` is the same difference
/// again, not to be added).
fn live_heap_bytes() -> i64 {
    let stats = GLOBAL.stats();
    stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
}

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ingest_agents::run_child_if_requested();
    let args = Args::parse();
    let pki = DevPki::generate("ingest-bench-ca")?;
    let interval = Duration::from_millis(args.interval_ms);
    let mut agents = AgentsChild::spawn(args.endpoints, interval, &pki)?;
    let config = ingest_agents::coordinator_config(&pki, &agents.addrs, interval)?;
    std::thread::sleep(Duration::from_millis(200));

    // The coordinator: this thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rss_before = rss_kib();
    let heap_before = live_heap_bytes();
    runtime.block_on(async move {
        let coordinator = Coordinator::start(config).await?;
        let stats = coordinator.handle().stats();
        let deadline = Instant::now() + Duration::from_secs(60);
        while stats.connections.load(Ordering::Relaxed) < args.endpoints as u64
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let connected = stats.connections.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_connected = rss_kib();
        let heap_connected = live_heap_bytes();
        let start_count = stats.heartbeats.load(Ordering::Relaxed);
        let dropped_before = stats.dropped.load(Ordering::Relaxed);
        let cpu_before = cpu_seconds("/proc/self/stat");
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let elapsed = started.elapsed().as_secs_f64();
        let accepted = stats.heartbeats.load(Ordering::Relaxed) - start_count;
        let dropped = stats.dropped.load(Ordering::Relaxed) - dropped_before;
        let cpu = cpu_seconds("/proc/self/stat") - cpu_before;
        let offered = args.endpoints as f64 * 1000.0 / args.interval_ms as f64;
        println!("endpoints connected     {connected} / {}", args.endpoints);
        println!("offered heartbeats/s    {offered:.0}");
        println!("accepted heartbeats/s   {:.0}", accepted as f64 / elapsed);
        println!("dropped (queue full)    {dropped}");
        println!("coordinator CPU         {:.2} of one core", cpu / elapsed);
        println!(
            "ingest per core-second  {:.0} heartbeats (accepted / coordinator CPU seconds)",
            accepted as f64 / cpu.max(0.01)
        );
        println!(
            "memory per endpoint     {:.1} KiB (coordinator process RSS {} → {} KiB; agents' child RSS {} KiB, not counted)",
            (rss_connected.saturating_sub(rss_before)) as f64 / args.endpoints as f64,
            rss_before,
            rss_connected,
            agents.rss_kib()
        );
        println!(
            "live heap per endpoint  {:.1} KiB (bytes held allocated, same span)",
            (heap_connected - heap_before) as f64 / 1024.0 / args.endpoints as f64
        );
        drop(coordinator);
        let _ = agents.counts();
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
