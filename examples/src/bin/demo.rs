//! The Lateral demo: three real tonic backends with agents (fast; slow; cheap and error-prone), the embedded
//! coordinator and a client balancer, ~30 s of open-loop traffic with a latency spike and a path failure
//! injected midway, live progress in the terminal and a summary table at the end.
//!
//! `cargo run --release -p lateral-examples --bin demo [-- --duration 30 --rate 450]`

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use hdrhistogram::Histogram;
use lateral_balancer::Balancer;
use lateral_coordinator::config::{EndpointConfig, ServiceConfig, TlsConfig};
use lateral_coordinator::{Coordinator, CoordinatorConfig};
use lateral_examples::backend::{Backend, BackendSpec};
use lateral_ops::tls::DevPki;
use lateral_proto::coordinator::{EndpointState, WeightSnapshot};
use lateral_proto::demo::EchoRequest;
use lateral_proto::demo::echo_client::EchoClient;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Lateral demo: asymmetric backends kept in balance.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds of traffic.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Requests per second offered (open loop, Poisson arrivals).
    #[arg(long, default_value_t = 450)]
    rate: u32,
    /// Random seed (arrivals and service times).
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Default)]
struct PathStats {
    ok: u64,
    errors: u64,
    /// Distinct failure messages (for requests that no backend answered), with counts.
    failures: BTreeMap<String, u64>,
    latency_us: Option<Histogram<u64>>,
}

impl PathStats {
    fn record(&mut self, ok: bool, micros: u64) {
        if ok {
            self.ok += 1;
        } else {
            self.errors += 1;
        }
        let h = self.latency_us.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
        });
        let _ = h.record(micros.clamp(1, 60_000_000));
    }

    fn p(&self, q: f64) -> f64 {
        self.latency_us
            .as_ref()
            .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
            .unwrap_or(0.0)
    }
}

type Stats = Arc<Mutex<BTreeMap<String, PathStats>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();

    println!(
        "Lateral demo — starting three backends with agents (mutual TLS from an in-memory demo CA)\n"
    );
    let pki = DevPki::generate("lateral-demo-ca")?;
    let beat = Duration::from_millis(500);
    let specs = [
        // name, slots, mean service time, error rate, label
        ("fast", 8, Duration::from_millis(10), 0.0),
        ("slow", 8, Duration::from_millis(40), 0.0),
        ("cheap", 4, Duration::from_millis(20), 0.15),
    ];
    let mut backends = Vec::new();
    for (i, (name, slots, time, errors)) in specs.iter().enumerate() {
        let spec = BackendSpec {
            heartbeat_interval: beat,
            seed: args.seed + i as u64,
            ..BackendSpec::new(name, *slots, *time)
        };
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let backend = Backend::start(spec, any, any, pki.mutual_mode("agent")?).await?;
        backend
            .knobs()
            .set_errors(*errors, Duration::from_millis(1));
        let capacity = f64::from(*slots) / time.as_secs_f64();
        println!(
            "  {name:<6} {}  agent {}  {slots} slots × {:>2} ms  ≈ {capacity:>4.0} req/s capacity{}",
            backend.uri(),
            backend.agent_addr(),
            time.as_millis(),
            if *errors > 0.0 {
                format!(", {:.0}% fast failures", errors * 100.0)
            } else {
                String::new()
            }
        );
        backends.push(backend);
    }

    let coordinator_tls = {
        let issued = pki.issue("coordinator")?;
        TlsConfig {
            ca_pem: Some(pki.ca_pem().to_string()),
            cert_pem: Some(issued.cert_pem),
            key_pem: Some(issued.key_pem),
            ..TlsConfig::default()
        }
    };
    let mut config = CoordinatorConfig::parse(
        "[tls]\ninsecure_dev = true\n[[service]]\nname = \"echo\"\n[[service.endpoint]]\nid = \"x\"\naddress = \"http://127.0.0.1:1\"\nagent = \"127.0.0.1:1\"\n",
        "demo",
    )?;
    config.listen.grpc = None; // embedded: no server needed
    config.tls = coordinator_tls;
    config.services = vec![ServiceConfig {
        name: "echo".into(),
        endpoints: backends
            .iter()
            .map(|b| EndpointConfig {
                id: b.spec().name.clone(),
                address: b.uri(),
                agent: b.agent_addr(),
                zone: None,
                labels: Default::default(),
                static_weight: Some(1.0),
                declared_capacity: None,
            })
            .collect(),
        dns: vec![],
        etcd: vec![],
    }];
    let coordinator = Coordinator::start(config).await?;
    let weights = coordinator.subscribe("echo").await?;
    let balancer = Balancer::builder("echo")
        .endpoints(backends.iter().map(|b| (b.spec().name.clone(), b.uri())))
        .weights_feed(weights.clone())
        .idempotent_methods(["/lateral.demo.v1.Echo/Unary"])
        .seed(args.seed)
        .build()?;
    let client = EchoClient::new(balancer.clone());
    println!(
        "\nEmbedded coordinator running; client sends {} req/s for {} s. Injected: ×5 latency on `fast` at {} s, \
         `slow` killed at {} s and restarted at {} s.\n",
        args.rate,
        args.duration,
        args.duration * 3 / 10,
        args.duration * 6 / 10,
        args.duration * 8 / 10
    );

    let stats: Stats = Arc::default();
    let started = tokio::time::Instant::now();
    let total = Duration::from_secs(args.duration);
    let load = tokio::spawn(generate_load(
        client,
        args.rate,
        total,
        args.seed,
        stats.clone(),
    ));

    let interactive = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut spike_on = false;
    let mut killed = false;
    let mut restarted = false;
    let mut printed_lines = 0;
    let mut last_counts: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        tick.tick().await;
        let t = started.elapsed();
        let secs = t.as_secs();
        if !spike_on && secs >= args.duration * 3 / 10 {
            spike_on = true;
            backends[0]
                .knobs()
                .set_service_time(Duration::from_millis(50));
            event_line(interactive, t, "latency spike: `fast` now takes 5× longer");
        }
        if spike_on
            && secs >= args.duration / 2
            && backends[0].knobs().service_time() > Duration::from_millis(10)
        {
            backends[0]
                .knobs()
                .set_service_time(Duration::from_millis(10));
            event_line(interactive, t, "spike over: `fast` back to 10 ms");
        }
        if !killed && secs >= args.duration * 6 / 10 {
            killed = true;
            backends[1].kill().await;
            event_line(
                interactive,
                t,
                "path failure: `slow` killed (server and agent)",
            );
        }
        if killed && !restarted && secs >= args.duration * 8 / 10 {
            restarted = true;
            backends[1].restart().await?;
            event_line(
                interactive,
                t,
                "`slow` restarted: it must be re-admitted slowly",
            );
        }
        let snapshot = weights.borrow().clone();
        let lines = progress(
            t,
            snapshot.as_deref(),
            &stats,
            &mut last_counts,
            &coordinator,
        );
        if interactive && printed_lines > 0 {
            print!("\x1b[{printed_lines}A\x1b[J");
        }
        print!("{lines}");
        printed_lines = lines.lines().count();
        let _ = std::io::stdout().flush();
        if t >= total {
            break;
        }
    }
    load.await?;
    summary(&stats, &coordinator, &balancer);
    Ok(())
}

fn event_line(interactive: bool, t: Duration, what: &str) {
    let line = format!("[{:>5.1}s] >>> {what}", t.as_secs_f64());
    if interactive {
        // Printed above the live block, which is redrawn below it.
        print!("\x1b[s");
    }
    println!("{line}");
}

async fn generate_load(
    client: EchoClient<Balancer>,
    rate: u32,
    total: Duration,
    seed: u64,
    stats: Stats,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let start = tokio::time::Instant::now();
    let mut next = start;
    let mut inflight = tokio::task::JoinSet::new();
    while next.duration_since(start) < total {
        tokio::time::sleep_until(next).await;
        let intended = next;
        let mut client = client.clone();
        let stats = stats.clone();
        inflight.spawn(async move {
            let request = EchoRequest {
                message: "hello".into(),
                ..Default::default()
            };
            let result = tokio::time::timeout(Duration::from_secs(5), client.unary(request)).await;
            // Latency from the intended send time: no coordinated omission.
            let micros = intended.elapsed().as_micros() as u64;
            let mut failure = None;
            let (path, ok) = match result {
                Ok(Ok(reply)) => (reply.into_inner().served_by, true),
                Ok(Err(status)) => {
                    let who = status.message().split(':').next().unwrap_or("").to_string();
                    let path = if ["fast", "slow", "cheap"].contains(&who.as_str()) {
                        who
                    } else {
                        failure = Some(format!("{:?}: {}", status.code(), status.message()));
                        "(none)".into()
                    };
                    (path, false)
                }
                Err(_) => ("(timeout)".into(), false),
            };
            if let Ok(mut s) = stats.lock() {
                let entry = s.entry(path).or_default();
                entry.record(ok, micros);
                if let Some(f) = failure {
                    *entry.failures.entry(truncate(&f, 160)).or_default() += 1;
                }
            }
        });
        while inflight.try_join_next().is_some() {}
        let gap = -(1.0 - rng.random::<f64>()).ln() / f64::from(rate.max(1));
        next += Duration::from_secs_f64(gap);
    }
    while inflight.join_next().await.is_some() {}
}

fn state_name(state: i32) -> &'static str {
    match EndpointState::try_from(state).unwrap_or(EndpointState::Unspecified) {
        EndpointState::Ramping => "ramping",
        EndpointState::Active => "active",
        EndpointState::Degraded => "DEGRADED",
        EndpointState::Ejected => "EJECTED",
        EndpointState::Tripped => "TRIPPED",
        EndpointState::Draining => "draining",
        EndpointState::Unspecified => "?",
    }
}

fn progress(
    t: Duration,
    snapshot: Option<&WeightSnapshot>,
    stats: &Stats,
    last_counts: &mut BTreeMap<String, u64>,
    coordinator: &Coordinator,
) -> String {
    let mut out = format!(
        "── t = {:>4.1} s ── weights v{} {}\n",
        t.as_secs_f64(),
        snapshot.map(|s| s.version).unwrap_or(0),
        if snapshot.is_some_and(|s| s.static_fallback) {
            "(static fallback)"
        } else {
            ""
        }
    );
    out.push_str("   path    weight  state      req/s   errors   p50 ms   p99 ms\n");
    let stats = stats.lock().map(|s| {
        s.iter()
            .map(|(k, v)| (k.clone(), (v.ok + v.errors, v.errors, v.p(0.5), v.p(0.99))))
            .collect::<BTreeMap<_, _>>()
    });
    let stats = stats.unwrap_or_default();
    for e in snapshot.map(|s| s.endpoints.as_slice()).unwrap_or(&[]) {
        let (count, errors, p50, p99) = stats.get(&e.id).copied().unwrap_or((0, 0, 0.0, 0.0));
        let rate = count - last_counts.insert(e.id.clone(), count).unwrap_or(0);
        let bar = "█".repeat((e.weight * 30.0).round() as usize);
        out.push_str(&format!(
            "   {:<6} {:>6.1}%  {:<9} {:>6} {:>8} {:>8.1} {:>8.1}  {bar}\n",
            e.id,
            e.weight * 100.0,
            state_name(e.state),
            rate,
            errors,
            p50,
            p99
        ));
    }
    let (decisions, alerts) = coordinator.handle().decisions().query("echo", "", 0, 3);
    out.push_str("   latest decisions:\n");
    for d in decisions {
        out.push_str(&format!(
            "     {:<6} {:>5.1}% → {:>5.1}%  [{}] {}\n",
            d.endpoint,
            d.old_weight * 100.0,
            d.new_weight * 100.0,
            d.rule,
            truncate(&d.reason, 90)
        ));
    }
    if let Some(a) = alerts.last() {
        out.push_str(&format!(
            "   alert: [{}] {}\n",
            a.kind,
            truncate(&a.message, 100)
        ));
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

fn summary(stats: &Stats, coordinator: &Coordinator, balancer: &Balancer) {
    let Ok(stats) = stats.lock() else { return };
    let total: u64 = stats.values().map(|s| s.ok + s.errors).sum();
    let ok: u64 = stats.values().map(|s| s.ok).sum();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for s in stats.values() {
        if let Some(h) = &s.latency_us {
            let _ = all.add(h);
        }
    }
    println!("\n══ Summary ══════════════════════════════════════════════════════════════");
    println!("| path      | requests | share  | errors | p50 ms | p99 ms |");
    println!("|-----------|---------:|-------:|-------:|-------:|-------:|");
    for (path, s) in stats.iter() {
        let n = s.ok + s.errors;
        println!(
            "| {path:<9} | {n:>8} | {:>5.1}% | {:>6} | {:>6.1} | {:>6.1} |",
            100.0 * n as f64 / total.max(1) as f64,
            s.errors,
            s.p(0.5),
            s.p(0.99)
        );
    }
    println!(
        "| all       | {total:>8} | 100.0% | {:>6} | {:>6.1} | {:>6.1} |",
        total - ok,
        all.value_at_quantile(0.5) as f64 / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0
    );
    let (decisions, alerts) = coordinator
        .handle()
        .decisions()
        .query("echo", "", 0, 10_000);
    let mut by_rule: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &decisions {
        *by_rule.entry(d.rule.as_str()).or_default() += 1;
    }
    println!(
        "\nsuccess {:.2}%  ·  client retries {}  ·  {} decisions by rule {:?}  ·  {} alerts",
        100.0 * ok as f64 / total.max(1) as f64,
        balancer.metrics().retries(),
        decisions.len(),
        by_rule,
        alerts.len()
    );
    for (message, count) in stats.values().flat_map(|s| &s.failures) {
        println!("  {count} × {message}");
    }
    for a in alerts.iter().rev().take(5) {
        println!("  alert [{}] {}: {}", a.kind, a.endpoint, a.message);
    }
}
