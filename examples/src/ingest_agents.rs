//! Shared by `ingest_bench` and `soak`: agents in a **child process** (so the parent's RSS and CPU are the
//! coordinator's alone), the coordinator configuration that dials them, and `/proc` readings.
//!
//! The parent re-executes its own binary with [`CHILD_ENV`] set; the child binds `n` agent reporters on one
//! single-threaded runtime, prints `addr <socket address>` per agent and then `ready`, and answers commands
//! on stdin, one per line:
//! - `count` → `count <written> <skipped> <measured>` (sums over agents of
//!   [`ReporterHandle::heartbeats_written`], [`ReporterHandle::heartbeats_skipped`] and
//!   [`ReporterHandle::heartbeats_sent`]);
//! - `goodbye` → every agent sends `Goodbye` (its heartbeats stop; what was written before it is delivered
//!   first on the same stream), two seconds pass, then the same `count` line is printed.
//!
//! The child exits when its stdin closes (the parent exited or dropped [`AgentsChild`]).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lateral_agent::measurement::{Measurement, MeasurementSource};
use lateral_agent::reporter::{Reporter, ReporterHandle, ReporterOptions};
use lateral_coordinator::CoordinatorConfig;
use lateral_coordinator::config::{EndpointConfig, ServiceConfig, TlsConfig};
use lateral_coordinator::engine::EngineConfig;
use lateral_ops::tls::{DevPki, TlsMode, TlsPem};

/// Set (to `<endpoints>,<interval ms>`) in the child's environment; see [`run_child_if_requested`].
pub const CHILD_ENV: &str = "LATERAL_INGEST_AGENTS";
const CA_ENV: &str = "LATERAL_INGEST_AGENTS_CA";
const CERT_ENV: &str = "LATERAL_INGEST_AGENTS_CERT";
const KEY_ENV: &str = "LATERAL_INGEST_AGENTS_KEY";

type BoxError = Box<dyn std::error::Error>;

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

/// Sums of the agents' counters, as the child reports them.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentCounts {
    /// Heartbeat frames written to the coordinator's streams.
    pub written: u64,
    /// Heartbeats skipped because the coordinator's stream lagged (an agent-side drop).
    pub skipped: u64,
    /// Heartbeats measured (with or without a subscriber).
    pub measured: u64,
}

/// The agents' child process.
pub struct AgentsChild {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Every agent's QUIC address, in endpoint order (`e0`, `e1`, …).
    pub addrs: Vec<SocketAddr>,
}

impl AgentsChild {
    /// Starts `endpoints` agents heartbeating every `interval` in a child process, with certificates from `pki`.
    pub fn spawn(endpoints: usize, interval: Duration, pki: &DevPki) -> Result<Self, BoxError> {
        let leaf = pki.issue("agent")?;
        let mut child = Command::new(std::env::current_exe()?)
            .env(CHILD_ENV, format!("{endpoints},{}", interval.as_millis()))
            .env(CA_ENV, pki.ca_pem())
            .env(CERT_ENV, leaf.cert_pem)
            .env(KEY_ENV, leaf.key_pem)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no child stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no child stdout")?);
        let mut this = Self {
            child,
            stdin,
            stdout,
            addrs: Vec::with_capacity(endpoints),
        };
        loop {
            let line = this.line()?;
            if line == "ready" {
                break;
            }
            if let Some(addr) = line.strip_prefix("addr ") {
                this.addrs.push(addr.parse()?);
            }
        }
        if this.addrs.len() != endpoints {
            return Err(
                format!("the child bound {} of {endpoints} agents", this.addrs.len()).into(),
            );
        }
        Ok(this)
    }

    fn line(&mut self) -> Result<String, BoxError> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err("the agents' child process exited".into());
        }
        Ok(line.trim_end().to_owned())
    }

    fn ask(&mut self, command: &str) -> Result<AgentCounts, BoxError> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let line = self.line()?;
        let fields: Vec<u64> = line
            .strip_prefix("count ")
            .ok_or_else(|| format!("unexpected reply `{line}`"))?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        match fields[..] {
            [written, skipped, measured] => Ok(AgentCounts {
                written,
                skipped,
                measured,
            }),
            _ => Err(format!("unexpected reply `{line}`").into()),
        }
    }

    /// The agents' counters now.
    pub fn counts(&mut self) -> Result<AgentCounts, BoxError> {
        self.ask("count")
    }

    /// Every agent says `Goodbye` (heartbeats stop); returns the final counters two seconds later.
    pub fn goodbye(&mut self) -> Result<AgentCounts, BoxError> {
        self.ask("goodbye")
    }

    /// The child's resident set in KiB (for information: the agents' memory, not the coordinator's).
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(&format!("/proc/{}/status", self.child.id()))
    }
}

impl Drop for AgentsChild {
    fn drop(&mut self) {
        // Closing stdin ends the child; kill it in case it is stuck, then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// If this process is the agents' child ([`CHILD_ENV`] set), runs the agents until stdin closes and exits;
/// otherwise returns at once. Call first thing in `main`.
pub fn run_child_if_requested() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let code = match run_child(&spec) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("agents child: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn run_child(spec: &str) -> Result<(), BoxError> {
    let (endpoints, interval_ms) = spec.split_once(',').ok_or("bad child spec")?;
    let endpoints: usize = endpoints.parse()?;
    let interval = Duration::from_millis(interval_ms.parse()?);
    let tls = TlsMode::MutualPem(TlsPem {
        ca_pem: std::env::var(CA_ENV)?,
        cert_pem: std::env::var(CERT_ENV)?,
        key_pem: std::env::var(KEY_ENV)?,
    });
    let (command_tx, mut command_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if command_tx.send(line).is_err() {
                break;
            }
        }
        // stdin closed: the parent is gone.
        std::process::exit(0);
    });
    // One thread for all agents, as in a real deployment each agent would have its own core anyway.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut handles: Vec<ReporterHandle> = Vec::with_capacity(endpoints);
        let mut out = std::io::stdout().lock();
        for i in 0..endpoints {
            let mut options = ReporterOptions::new(format!("bench-agent-{i}"), format!("e{i}"));
            options.interval = interval;
            let source: Arc<dyn MeasurementSource> = Arc::new(Constant);
            let handle = Reporter::bind("127.0.0.1:0".parse()?, &tls, source, options)?;
            writeln!(out, "addr {}", handle.local_addr())?;
            handles.push(handle);
        }
        writeln!(out, "ready")?;
        out.flush()?;
        drop(out);
        let counts = |handles: &[ReporterHandle]| {
            handles.iter().fold((0u64, 0u64, 0u64), |(w, s, m), h| {
                (
                    w + h.heartbeats_written(),
                    s + h.heartbeats_skipped(),
                    m + h.heartbeats_sent(),
                )
            })
        };
        while let Some(command) = command_rx.recv().await {
            if command == "goodbye" {
                for handle in &handles {
                    handle.goodbye("soak finished", Duration::from_secs(1))?;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let (written, skipped, measured) = counts(&handles);
            let mut out = std::io::stdout().lock();
            writeln!(out, "count {written} {skipped} {measured}")?;
            out.flush()?;
        }
        Ok::<_, BoxError>(())
    })
}

/// A coordinator configuration (mutual TLS from `pki`, no listeners) with one service `s` whose endpoints
/// `e0…` are the agents at `agents`, heartbeating every `interval`.
pub fn coordinator_config(
    pki: &DevPki,
    agents: &[SocketAddr],
    interval: Duration,
) -> Result<CoordinatorConfig, BoxError> {
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
    Ok(config)
}

/// This process's resident set (`VmRSS` of `/proc/self/status`), in KiB.
pub fn rss_kib() -> u64 {
    rss_kib_of("/proc/self/status")
}

fn rss_kib_of(status: &str) -> u64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process or thread (`/proc/.../stat`), in seconds.
pub fn cpu_seconds(stat: &str) -> f64 {
    std::fs::read_to_string(stat)
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: f64 = after.get(11)?.parse().ok()?;
            let stime: f64 = after.get(12)?.parse().ok()?;
            // Clock ticks: 100 Hz on Linux.
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}
