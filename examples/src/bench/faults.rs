//! The fault matrix behind `lateral-bench faults`: every way a path can fail, each under eight client
//! instances (each its own `Balancer` with its own embedded coordinator, as the `many-clients` scenario
//! runs them, or all on one sidecar coordinator for the sidecar fault), on real backends with their real
//! agents over real sockets.
//!
//! Every fault runs the same cluster — `fast-1`, `fast-2` (4 slots, 20 ms: 200 req/s each) and `slow`
//! (4 slots, 40 ms: 100 req/s) — at half its capacity with open-loop Poisson arrivals, hits `fast-2` (40%
//! of capacity) at [`MatrixOptions::fault_at_s`], and undoes the fault [`MatrixOptions::recover_after_s`]
//! later where it can be undone. A fault-free run of the same invocation comes first and gives the p99
//! each fault is compared with. [`Fault::Overload`] instead offers 1.3× the total capacity with no fault.
//!
//! Per fault: requests lost (failed or timed out among those intended from one second after the fault on),
//! timeouts among them, p99 of every request against the fault-free run, panics in the process (a panic
//! hook counts them: every backend, agent, coordinator and client of the matrix runs in this process),
//! client retries against their budget, overload refusals, goodput, and the coordinator's decision records
//! about `fast-2` from the fault on (rule, count, when first, the weight it left) that say what happened.

pub mod rogue;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use indicatif::ProgressBar;
use lateral_agent::reporter::sender_clock::SenderClock;
use lateral_balancer::Balancer;
use lateral_coordinator::Coordinator;
use serde::Serialize;
use tokio::time::Instant;

use super::cluster::{Cluster, SERVICE};
use super::policy::{Clients, Policy, UNARY, erase};
use super::run::{self, DecisionPoint, Injector, RunResult};
use super::scenario::Scenario;
use super::schedule;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The backend every fault hits.
pub const TARGET: &str = "fast-2";
const TARGET_INDEX: usize = 1;
/// Offered load of every run but [`Fault::Overload`], as a fraction of total capacity.
pub const NORMAL_LOAD: f64 = 0.5;
/// Offered load of [`Fault::Overload`].
pub const OVERLOAD: f64 = 1.3;

/// One fault of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// No fault: the baseline.
    None,
    /// The agent process dies; the backend goes on serving. Restarted at recovery.
    AgentKilled,
    /// The backend and its agent crash (every connection dropped). Restarted at recovery.
    BackendKilled,
    /// The backend accepts requests and never answers while its agent keeps heartbeating.
    Blackhole,
    /// The backend sends response headers and then nothing.
    SlowDrip,
    /// The backend crashes and comes back every 2 s (1 s down, 1 s up) until recovery.
    Flapping,
    /// The one sidecar coordinator all eight clients follow is shut down, and started again 2 s later.
    SidecarRestart,
    /// The agent's clock jumps +1 h, then to −1 h (its stamps stick at 0), then runs 2× fast.
    ClockSkew,
    /// The agent's address answers with a valid Hello and then random bytes. Restored at recovery.
    GarbageFrames,
    /// The agent's address answers with frame headers announcing bodies 64× the limit. Restored at recovery.
    OversizedFrames,
    /// An agent with a certificate from another CA, claiming an idle backend with capacity 10,000.
    RogueCa,
    /// The agent sends 1,000 heartbeats a second.
    HeartbeatFlood,
    /// 1.3× the total capacity offered, no other fault.
    Overload,
}

/// Every fault, in table order (the baseline first).
pub const ALL: &[Fault] = &[
    Fault::None,
    Fault::AgentKilled,
    Fault::BackendKilled,
    Fault::Blackhole,
    Fault::SlowDrip,
    Fault::Flapping,
    Fault::SidecarRestart,
    Fault::ClockSkew,
    Fault::GarbageFrames,
    Fault::OversizedFrames,
    Fault::RogueCa,
    Fault::HeartbeatFlood,
    Fault::Overload,
];

impl Fault {
    /// The name used on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::AgentKilled => "agent-killed",
            Fault::BackendKilled => "backend-killed",
            Fault::Blackhole => "blackhole",
            Fault::SlowDrip => "slow-drip",
            Fault::Flapping => "flapping",
            Fault::SidecarRestart => "sidecar-restart",
            Fault::ClockSkew => "clock-skew",
            Fault::GarbageFrames => "garbage-frames",
            Fault::OversizedFrames => "oversized-frames",
            Fault::RogueCa => "rogue-ca",
            Fault::HeartbeatFlood => "heartbeat-flood",
            Fault::Overload => "overload",
        }
    }

    /// What is done, in a few words.
    pub fn what(self) -> &'static str {
        match self {
            Fault::None => "no fault (the baseline)",
            Fault::AgentKilled => "fast-2's agent killed, backend serving; agent back at recovery",
            Fault::BackendKilled => "fast-2 and its agent crash; restarted at recovery",
            Fault::Blackhole => "fast-2 accepts and never answers, agent heartbeating",
            Fault::SlowDrip => "fast-2 sends headers, then nothing",
            Fault::Flapping => "fast-2 down 1 s, up 1 s, until recovery",
            Fault::SidecarRestart => {
                "the sidecar coordinator of all 8 clients shut down, back 2 s later"
            }
            Fault::ClockSkew => "fast-2's agent clock +1 h, then −1 h, then 2× fast",
            Fault::GarbageFrames => "fast-2's agent address sends Hello + random bytes",
            Fault::OversizedFrames => {
                "fast-2's agent address sends headers announcing 1 MiB bodies"
            }
            Fault::RogueCa => {
                "an agent with another CA's certificate claims fast-2 is idle, capacity 10,000"
            }
            Fault::HeartbeatFlood => "fast-2's agent sends 1,000 heartbeats/s",
            Fault::Overload => "1.3× total capacity offered",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL.iter()
            .copied()
            .find(|f| f.name() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown fault `{s}`: expected one of {}",
                    ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
                )
            })
    }
}

/// The timeline and size of every run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MatrixOptions {
    /// Seconds of measured traffic per fault.
    pub duration_s: f64,
    /// When the fault hits, seconds after traffic starts.
    pub fault_at_s: f64,
    /// How long after the fault it is undone (where it can be).
    pub recover_after_s: f64,
    /// Client instances.
    pub clients: u32,
    /// Seed of arrivals, balancers and service times.
    pub seed: u64,
    /// Service times and the request timeout are multiplied by this (rates divided): 1 for the table; the
    /// CI test, which runs unoptimised code on a shared machine, slows the backends down instead of
    /// measuring its own CPU starvation.
    pub time_scale: f64,
}

impl Default for MatrixOptions {
    /// 12 s per fault, the fault at 4 s, undone at 9 s, 8 clients.
    fn default() -> Self {
        Self {
            duration_s: 12.0,
            fault_at_s: 4.0,
            recover_after_s: 5.0,
            clients: 8,
            seed: 7,
            time_scale: 1.0,
        }
    }
}

impl MatrixOptions {
    /// The short timeline of the CI test: 6 s per fault, the fault at 2 s, undone at 4.5 s, service times
    /// ×5 (fast backends 100 ms, 40 req/s each) for unoptimised builds.
    pub fn quick() -> Self {
        Self {
            duration_s: 6.0,
            fault_at_s: 2.0,
            recover_after_s: 2.5,
            time_scale: 5.0,
            ..Self::default()
        }
    }
}

/// One row of the matrix.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRow {
    /// The fault.
    pub fault: Fault,
    /// What was done.
    pub what: String,
    /// Requests sent in the run.
    pub requests: u64,
    /// Requests intended from one second after the fault on (the whole run for the baseline and overload).
    pub counted: u64,
    /// Of those, failed or timed out.
    pub lost: u64,
    /// Of the lost, timed out (no answer within the request timeout).
    pub timeouts: u64,
    /// Refused as overload by a backend's layer (whole run).
    pub overloaded: u64,
    /// p99 latency of every request (ok or not), ms.
    pub p99_ms: f64,
    /// The fault-free run's p99, ms.
    pub baseline_p99_ms: Option<f64>,
    /// p99 of the requests that failed with a status, ms (how fast a refusal is).
    pub failed_p99_ms: Option<f64>,
    /// Panics in the process during the run.
    pub panics: u64,
    /// Client retries (all clients).
    pub retries: u64,
    /// What the clients' retry budgets allowed at most: 20% of requests plus 10/s per client.
    pub retry_budget: u64,
    /// Successful answers per second over the counted window.
    pub goodput_rps: f64,
    /// Σ slots / mean service time.
    pub capacity_rps: f64,
    /// Requests the backends' layers shed (whole run, all backends).
    pub shed_by_backends: u64,
    /// The capacity the backends really had over the counted window: Σ slots × served / slot-seconds
    /// held (a loaded machine and timer overshoot make service times longer than their nominal mean).
    pub measured_capacity_rps: Option<f64>,
    /// Of the slot-time over the counted window, the fraction busy with completed work (all backends).
    pub busy_fraction: Option<f64>,
    /// The load generator fell behind (send-lag p99 over 5 ms): read the row with care.
    pub harness_saturated: bool,
    /// The decision records about the target from the fault on, summarised (rule ×count, first at, last weight).
    pub decisions: Vec<String>,
    /// The first records in full (time after the fault, endpoint, rule, weight, reason).
    pub decision_records: Vec<String>,
    /// The highest weight the target was given from the fault on (an impostor believed would push it up).
    pub max_target_weight: f64,
}

static PANICS: AtomicU64 = AtomicU64::new(0);
static HOOK: std::sync::Once = std::sync::Once::new();

/// Counts every panic in this process from now on (the previous hook still prints it). Idempotent.
pub fn install_panic_counter() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::Relaxed);
            previous(info);
        }));
    });
}

/// Panics counted since [`install_panic_counter`].
pub fn panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

fn scenario(fault: Fault, o: &MatrixOptions) -> Result<Scenario, BoxError> {
    let load = if fault == Fault::Overload {
        OVERLOAD
    } else {
        NORMAL_LOAD
    };
    let (at, back) = (o.fault_at_s, o.fault_at_s + o.recover_after_s);
    let scale = if o.time_scale.is_finite() && o.time_scale > 0.0 {
        o.time_scale
    } else {
        1.0
    };
    let events = match fault {
        Fault::BackendKilled => format!(
            "[[event]]\nat_s = {at}\nbackend = \"{TARGET}\"\nkind = \"kill\"\n\n\
             [[event]]\nat_s = {back}\nbackend = \"{TARGET}\"\nkind = \"restart\"\n"
        ),
        Fault::Blackhole => format!(
            "[[event]]\nat_s = {at}\nbackend = \"{TARGET}\"\nkind = \"blackhole\"\non = true\n\n\
             [[event]]\nat_s = {back}\nbackend = \"{TARGET}\"\nkind = \"blackhole\"\non = false\n"
        ),
        Fault::Flapping => format!(
            "[[event]]\nat_s = {at}\nbackend = \"{TARGET}\"\nkind = \"flap\"\nperiod_s = 2\nuntil_s = {back}\n"
        ),
        _ => String::new(),
    };
    let text = format!(
        "name = \"fault-{name}\"\ndescription = \"{what}\"\nduration_s = {d}\nwarmup_s = 1.5\nload = {load}\n\
         clients = {c}\nrequest_timeout_ms = {timeout}\n\n\
         [[backend]]\nname = \"fast-1\"\nslots = 4\nservice_time_ms = {fast}\n\n\
         [[backend]]\nname = \"{TARGET}\"\nslots = 4\nservice_time_ms = {fast}\n\n\
         [[backend]]\nname = \"slow\"\nslots = 4\nservice_time_ms = {slow}\n\n{events}",
        name = fault.name(),
        what = fault.what(),
        d = o.duration_s,
        c = o.clients,
        timeout = (2000.0 * scale).round() as u64,
        fast = 20.0 * scale,
        slow = 40.0 * scale,
    );
    Ok(Scenario::parse(&text, &format!("fault `{fault}`"))?)
}

/// Waits until `at` seconds after `start`.
async fn at(start: Instant, seconds: f64) {
    tokio::time::sleep_until(start + Duration::from_secs_f64(seconds.max(0.0))).await;
}

/// Applies `f` to the target backend.
async fn with_target<F>(cluster: &Cluster, f: F)
where
    F: AsyncFnOnce(&mut crate::backend::Backend),
{
    let mut backends = cluster.backends.lock().await;
    if let Some(b) = backends.get_mut(TARGET_INDEX) {
        f(b).await;
    }
}

fn report(what: &str, result: Result<(), impl fmt::Display>) {
    if let Err(e) = result {
        eprintln!("lateral-bench faults: {what} failed: {e}");
    }
}

/// The injector of a fault that the scenario's timeline cannot express.
fn injector(fault: Fault, o: MatrixOptions) -> Option<Injector> {
    let (f_at, back) = (o.fault_at_s, o.fault_at_s + o.recover_after_s);
    let task: Injector = match fault {
        Fault::AgentKilled => Box::new(move |cluster: Arc<Cluster>, start| {
            tokio::spawn(async move {
                at(start, f_at).await;
                with_target(&cluster, async |b| b.kill_agent().await).await;
                at(start, back).await;
                with_target(&cluster, async |b| {
                    report("agent restart", b.restart_agent(None).await)
                })
                .await;
            })
        }),
        Fault::SlowDrip => Box::new(move |cluster: Arc<Cluster>, start| {
            tokio::spawn(async move {
                at(start, f_at).await;
                with_target(&cluster, async |b| b.knobs().set_drip(true)).await;
                at(start, back).await;
                with_target(&cluster, async |b| b.knobs().set_drip(false)).await;
            })
        }),
        Fault::ClockSkew => Box::new(move |cluster: Arc<Cluster>, start| {
            tokio::spawn(async move {
                let third = o.recover_after_s / 3.0;
                for (k, (offset_s, rate)) in [(3600.0, 1.0), (-3600.0, 1.0), (0.0, 2.0)]
                    .into_iter()
                    .enumerate()
                {
                    at(start, f_at + third * k as f64).await;
                    with_target(&cluster, async |b| {
                        if let Some(r) = b.reporter() {
                            r.set_sender_clock(SenderClock { offset_s, rate });
                        }
                    })
                    .await;
                }
            })
        }),
        Fault::GarbageFrames | Fault::OversizedFrames => {
            let frames = if fault == Fault::GarbageFrames {
                rogue::Frames::Garbage
            } else {
                rogue::Frames::Oversized
            };
            Box::new(move |cluster: Arc<Cluster>, start| {
                tokio::spawn(async move {
                    at(start, f_at).await;
                    let addr = cluster.agents[TARGET_INDEX];
                    with_target(&cluster, async |b| b.kill_agent().await).await;
                    let rogue = retry_bind(|| {
                        cluster
                            .pki()
                            .mutual_mode("agent")
                            .map_err(BoxError::from)
                            .and_then(|tls| rogue::RogueFrames::start(addr, &tls, TARGET, frames))
                    })
                    .await;
                    let rogue = match rogue {
                        Ok(r) => Some(r),
                        Err(e) => {
                            eprintln!("lateral-bench faults: rogue agent did not start: {e}");
                            None
                        }
                    };
                    at(start, back).await;
                    if let Some(r) = rogue {
                        r.stop().await;
                    }
                    with_target(&cluster, async |b| {
                        report("agent restart", b.restart_agent(None).await)
                    })
                    .await;
                })
            })
        }
        Fault::RogueCa => Box::new(move |cluster: Arc<Cluster>, start| {
            tokio::spawn(async move {
                at(start, f_at).await;
                let addr = cluster.agents[TARGET_INDEX];
                with_target(&cluster, async |b| b.kill_agent().await).await;
                let impostor = match retry_bind(|| rogue::impostor(addr, TARGET)).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        eprintln!("lateral-bench faults: impostor did not start: {e}");
                        None
                    }
                };
                at(start, back).await;
                if let Some(r) = impostor {
                    r.shutdown().await;
                }
                with_target(&cluster, async |b| {
                    report("agent restart", b.restart_agent(None).await)
                })
                .await;
            })
        }),
        Fault::HeartbeatFlood => Box::new(move |cluster: Arc<Cluster>, start| {
            tokio::spawn(async move {
                at(start, f_at).await;
                with_target(&cluster, async |b| {
                    report(
                        "agent restart at 1 ms",
                        b.restart_agent(Some(Duration::from_millis(1))).await,
                    )
                })
                .await;
            })
        }),
        _ => return None,
    };
    Some(task)
}

/// Calls `start` until it binds: the killed agent's UDP socket may take a moment to be released.
async fn retry_bind<T>(mut start: impl FnMut() -> Result<T, BoxError>) -> Result<T, BoxError> {
    let mut last = None;
    for _ in 0..40 {
        match start() {
            Ok(t) => return Ok(t),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| "did not bind".into()))
}

/// The sidecar coordinator of [`Fault::SidecarRestart`], shared by its injector and the row.
type SidecarSlot = Arc<tokio::sync::Mutex<(Option<Coordinator>, Vec<DecisionPoint>)>>;

/// Eight balancers that follow one sidecar coordinator over gRPC (on a fixed loopback port, so they
/// reconnect to its successor), and the injector that shuts it down and starts it again.
async fn sidecar_clients(
    scenario: &Scenario,
    cluster: &Cluster,
    o: MatrixOptions,
) -> Result<(Clients, Injector, SidecarSlot), BoxError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut config = cluster.coordinator_config(scenario)?;
    config.listen.grpc = Some(port);
    let first = Coordinator::start(config.clone()).await?;
    let mut clients = Clients {
        transports: Vec::new(),
        coordinators: Vec::new(),
        balancers: Vec::new(),
        weights: Arc::default(),
        envoy: None,
        ideal: None,
    };
    for c in 0..o.clients {
        let mut builder = Balancer::builder(SERVICE)
            .idempotent_methods([UNARY])
            .client_id(format!("bench-{c}"))
            .seed(o.seed.wrapping_add(u64::from(c) * 7919))
            .coordinator(format!("http://{port}"));
        for (b, uri) in scenario.backends.iter().zip(&cluster.uris) {
            builder = builder.endpoint(
                b.name.clone(),
                uri.clone(),
                b.zone().unwrap_or_default(),
                b.labels.clone(),
            );
        }
        let balancer = builder.build()?;
        clients.balancers.push(balancer.clone());
        clients.transports.push(erase(balancer));
    }
    let slot: SidecarSlot = Arc::new(tokio::sync::Mutex::new((Some(first), Vec::new())));
    let shared = slot.clone();
    let (f_at, back) = (o.fault_at_s, o.fault_at_s + 2.0);
    let inject: Injector = Box::new(move |_cluster, start| {
        tokio::spawn(async move {
            let wall = wall_at(start);
            at(start, f_at).await;
            let mut guard = shared.lock().await;
            if let Some(old) = guard.0.take() {
                let mut seen = run::decision_points(&old, wall);
                guard.1.append(&mut seen);
                old.shutdown().await;
            }
            drop(guard);
            at(start, back).await;
            match Coordinator::start(config).await {
                Ok(new) => shared.lock().await.0 = Some(new),
                Err(e) => eprintln!("lateral-bench faults: the sidecar did not restart: {e}"),
            }
        })
    });
    Ok((clients, inject, slot))
}

/// The wall-clock time of the monotonic instant `start`.
fn wall_at(start: Instant) -> SystemTime {
    let now = Instant::now();
    if start >= now {
        SystemTime::now() + (start - now)
    } else {
        SystemTime::now() - (now - start)
    }
}

/// Runs one fault; `baseline_p99_ms` is the fault-free run's.
pub async fn run_fault(
    fault: Fault,
    o: MatrixOptions,
    baseline_p99_ms: Option<f64>,
    progress: &ProgressBar,
) -> Result<(FaultRow, RunResult), BoxError> {
    install_panic_counter();
    let scenario = scenario(fault, &o)?;
    let arrivals = schedule::poisson(
        scenario.rate_rps(),
        Duration::from_secs_f64(scenario.duration_s),
        scenario.clients,
        o.seed,
    );
    let panics_before = panics();
    let cluster = Cluster::start(&scenario, o.seed).await?;
    let policy = Policy::Lateral;
    let (clients, inject, sidecar) = if fault == Fault::SidecarRestart {
        let (c, i, s) = sidecar_clients(&scenario, &cluster, o).await?;
        (c, Some(i), Some(s))
    } else {
        let clients = policy
            .build(&scenario, &cluster, scenario.clients, o.seed)
            .await?;
        (clients, injector(fault, o), None)
    };
    let backends = cluster.backends.clone();
    let sampler = {
        let backends = backends.clone();
        let faulted = !matches!(fault, Fault::None | Fault::Overload);
        let from_s = if faulted { o.fault_at_s + 1.0 } else { 1.0 };
        let start = Instant::now() + Duration::from_secs_f64(scenario.warmup_s);
        let end_s = scenario.duration_s;
        tokio::spawn(async move {
            let read = async || {
                backends
                    .lock()
                    .await
                    .iter()
                    .map(|b| (b.knobs().slots(), b.knobs().served_and_busy_us()))
                    .collect::<Vec<_>>()
            };
            at(start, from_s).await;
            let first = read().await;
            at(start, end_s).await;
            let last = read().await;
            (first, last, end_s - from_s)
        })
    };
    let wall_start = SystemTime::now() + Duration::from_secs_f64(scenario.warmup_s);
    let mut result = run::drive(
        &scenario, &policy, cluster, clients, &arrivals, o.seed, progress, inject,
    )
    .await?;
    if let Some(slot) = sidecar {
        let mut guard = slot.lock().await;
        let mut decisions = std::mem::take(&mut guard.1);
        if let Some(last) = guard.0.take() {
            decisions.extend(run::decision_points(&last, wall_start));
            last.shutdown().await;
        }
        result.decisions = decisions;
    }
    let shed_by_backends = backends.lock().await.iter().map(|b| b.shed_total()).sum();
    let (measured_capacity_rps, busy_fraction) = match sampler.await {
        Ok((first, last, window_s)) if window_s > 0.0 => {
            let (mut capacity, mut busy, mut slot_s) = (0.0, 0.0, 0.0);
            for ((slots, (s0, b0)), (_, (s1, b1))) in first.iter().zip(&last) {
                let served = s1.saturating_sub(*s0) as f64;
                let busy_s = b1.saturating_sub(*b0) as f64 / 1e6;
                if busy_s > 0.0 {
                    capacity += f64::from(*slots) * served / busy_s;
                }
                busy += busy_s;
                slot_s += f64::from(*slots) * window_s;
            }
            (Some(capacity), (slot_s > 0.0).then(|| busy / slot_s))
        }
        _ => (None, None),
    };
    let row = row(
        fault,
        &o,
        &scenario,
        &result,
        baseline_p99_ms,
        panics() - panics_before,
        shed_by_backends,
    );
    let row = FaultRow {
        measured_capacity_rps,
        busy_fraction,
        ..row
    };
    Ok((row, result))
}

fn row(
    fault: Fault,
    o: &MatrixOptions,
    scenario: &Scenario,
    r: &RunResult,
    baseline_p99_ms: Option<f64>,
    panics: u64,
    shed_by_backends: u64,
) -> FaultRow {
    let faulted = !matches!(fault, Fault::None | Fault::Overload);
    // Overload and the baseline: from one second into the traffic (the clients' first weights are in).
    let from_s = if faulted { o.fault_at_s + 1.0 } else { 1.0 };
    let (ok, counted) = r.success_from(from_s);
    let window_s = (scenario.duration_s - from_s).max(1e-9);
    let first = (from_s / run::BUCKET_S).ceil().max(0.0) as usize;
    let timeouts = r.buckets.iter().skip(first).map(|b| b.timeouts).sum();
    let capacity_rps: f64 = scenario.backends.iter().map(|b| b.capacity_rps()).sum();
    let retry_budget = (0.2 * r.requests as f64
        + 10.0 * f64::from(o.clients) * (scenario.duration_s + scenario.warmup_s + 2.0))
        .round() as u64;
    let (decisions, decision_records) = summarise(fault, o, &r.decisions);
    let max_target_weight = r
        .decisions
        .iter()
        .filter(|d| d.endpoint == TARGET && d.t >= o.fault_at_s)
        .map(|d| d.new_weight)
        .fold(0.0, f64::max);
    FaultRow {
        fault,
        what: fault.what().to_string(),
        requests: r.requests,
        counted,
        lost: counted - ok,
        timeouts,
        overloaded: r.overloaded,
        p99_ms: r.quantile_ms(0.99),
        baseline_p99_ms,
        failed_p99_ms: (!r.failed_latency_us.is_empty())
            .then(|| r.failed_latency_us.value_at_quantile(0.99) as f64 / 1000.0),
        panics,
        retries: r.retries,
        retry_budget,
        goodput_rps: ok as f64 / window_s,
        capacity_rps,
        shed_by_backends,
        measured_capacity_rps: None,
        busy_fraction: None,
        harness_saturated: r.harness_saturated(),
        decisions,
        decision_records,
        max_target_weight,
    }
}

/// The target's decision records from just before the fault on (all endpoints for the sidecar and
/// overload), as `rule ×n (first +Δs, weight w)` in order of first appearance, and the first eight in full.
fn summarise(fault: Fault, o: &MatrixOptions, all: &[DecisionPoint]) -> (Vec<String>, Vec<String>) {
    let from = match fault {
        Fault::None | Fault::Overload => 0.0,
        _ => o.fault_at_s - 0.25,
    };
    let every_endpoint = matches!(fault, Fault::SidecarRestart | Fault::Overload | Fault::None);
    let mine: Vec<&DecisionPoint> = all
        .iter()
        .filter(|d| d.t >= from && (every_endpoint || d.endpoint == TARGET))
        .collect();
    let mut summary: Vec<(String, u32, f64, f64)> = Vec::new();
    for d in &mine {
        let key = if every_endpoint {
            format!("{} {}", d.endpoint, d.rule)
        } else {
            d.rule.clone()
        };
        match summary.iter_mut().find(|(k, ..)| *k == key) {
            Some(entry) => {
                entry.1 += 1;
                entry.3 = d.new_weight;
            }
            None => summary.push((key, 1, d.t - from, d.new_weight)),
        }
    }
    let lines = summary
        .into_iter()
        .map(|(rule, n, first, weight)| format!("{rule} ×{n} (+{first:.1}s, →{weight:.2})"))
        .collect();
    let records = mine
        .iter()
        .take(8)
        .map(|d| {
            format!(
                "+{:.2}s {} {} →{:.3}: {}",
                d.t - from,
                d.endpoint,
                d.rule,
                d.new_weight,
                d.reason
            )
        })
        .collect();
    (lines, records)
}

/// Runs `faults` (the fault-free baseline first, added if missing), one after the other.
pub async fn run_matrix(
    faults: &[Fault],
    o: MatrixOptions,
    progress: &ProgressBar,
    mut on_row: impl FnMut(&FaultRow),
) -> Result<Vec<FaultRow>, BoxError> {
    let mut order = vec![Fault::None];
    order.extend(faults.iter().copied().filter(|f| *f != Fault::None));
    let mut rows = Vec::new();
    let mut baseline = None;
    for fault in order {
        progress.set_message(fault.name());
        let (row, _) = run_fault(fault, o, baseline, progress).await?;
        if fault == Fault::None {
            baseline = Some(row.p99_ms);
        }
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// Goodput against the nominal capacity, and under overload also against the capacity the backends
/// really had in the run.
fn goodput(r: &FaultRow) -> String {
    let nominal = 100.0 * r.goodput_rps / r.capacity_rps.max(1e-9);
    match r.measured_capacity_rps {
        Some(m) if r.fault == Fault::Overload && m > 0.0 => format!(
            "{nominal:.0}% of nominal; {:.0}% of the {m:.0} req/s the backends really had (busy {:.0}%)",
            100.0 * r.goodput_rps / m,
            100.0 * r.busy_fraction.unwrap_or(0.0)
        ),
        _ => format!("{nominal:.0}%"),
    }
}

/// The matrix as a markdown table, with the command line's settings.
pub fn markdown(rows: &[FaultRow], o: &MatrixOptions) -> String {
    let mut out = format!(
        "Fault matrix: {} clients (each its own Balancer and embedded coordinator; one sidecar for \
         sidecar-restart), backends fast-1, fast-2 (4 slots × 20 ms) and slow (4 × 40 ms), {:.0}% of capacity \
         ({} s per fault, the fault on fast-2 at {} s, undone {} s later; overload at {:.0}%). Lost = failed or \
         timed out among requests from 1 s after the fault (whole run from 1 s for none/overload).\n\n\
         | fault | what | lost / counted | timeouts | p99 ms (baseline) | panics | retries (budget) | \
         refused (fast p99 ms) | goodput / capacity | decisions about fast-2 from the fault on |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|---|\n",
        o.clients,
        NORMAL_LOAD * 100.0,
        o.duration_s,
        o.fault_at_s,
        o.recover_after_s,
        OVERLOAD * 100.0,
    );
    for r in rows {
        let baseline = r
            .baseline_p99_ms
            .map_or_else(String::new, |b| format!(" ({b:.0})"));
        let refused = match (r.overloaded, r.failed_p99_ms) {
            (0, _) => "0".to_string(),
            (n, Some(p)) => format!("{n} ({p:.1})"),
            (n, None) => n.to_string(),
        };
        out.push_str(&format!(
            "| {}{} | {} | {} / {} ({:.2}%) | {} | {:.0}{} | {} | {} ({}) | {} | {} | {} |\n",
            r.fault,
            if r.harness_saturated {
                " (harness saturated)"
            } else {
                ""
            },
            r.what,
            r.lost,
            r.counted,
            100.0 * r.lost as f64 / r.counted.max(1) as f64,
            r.timeouts,
            r.p99_ms,
            baseline,
            r.panics,
            r.retries,
            r.retry_budget,
            refused,
            goodput(r),
            if r.decisions.is_empty() {
                "none".to_string()
            } else {
                r.decisions.join("; ")
            },
        ));
    }
    out
}
