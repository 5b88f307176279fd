//! Runs one policy through one scenario: fresh backends, fresh clients, the shared arrival schedule sent open
//! loop, latency measured from each request's intended send time (no coordinated omission).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use lateral_balancer::{Group, GroupStats};
use lateral_proto::demo::EchoRequest;
use lateral_proto::demo::echo_client::EchoClient;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::cluster::{AppliedEvent, Cluster, SERVICE};
use super::policy::Policy;
use super::scenario::{KEY_HEADER, Scenario};
use super::schedule::{self, Arrival};

/// Width of a time-series bucket, seconds.
pub const BUCKET_S: f64 = 0.5;
const MAX_LATENCY_US: u64 = 120_000_000;

fn histogram(sigfig: u8) -> Histogram<u64> {
    // Bounds and precision are constants, valid by construction.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig).unwrap_or_else(|_| {
        Histogram::new(sigfig.max(1)).unwrap_or_else(|_| unreachable!("1..=5 significant figures"))
    })
}

/// One time bucket of a run.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Requests attributed to each backend (scenario order), by intended send time.
    pub per_backend: Vec<u64>,
    /// Successful requests.
    pub ok: u64,
    /// Failed or timed-out requests.
    pub errors: u64,
    /// Of the errors, timed out.
    pub timeouts: u64,
    /// Latency, microseconds.
    pub latency_us: Histogram<u64>,
}

/// A decision of lateral's (first) coordinator.
#[derive(Debug, Clone)]
pub struct DecisionPoint {
    /// Seconds after traffic start.
    pub t: f64,
    /// Endpoint.
    pub endpoint: String,
    /// New share.
    pub new_weight: f64,
    /// Rule that fired.
    pub rule: String,
    /// The coordinator's sentence for it.
    pub reason: String,
}

/// Everything measured in one scenario × policy run.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// Policy name.
    pub policy: String,
    /// Backend names, scenario order.
    pub backends: Vec<String>,
    /// Requests sent.
    pub requests: u64,
    /// Successful.
    pub ok: u64,
    /// Failed (including timeouts).
    pub errors: u64,
    /// Of the errors, requests with no answer within the timeout.
    pub timeouts: u64,
    /// Requests attributed to each backend (ok, or failed with the backend's own status).
    pub per_backend: Vec<u64>,
    /// Latency of every request (ok or not), microseconds.
    pub latency_us: Histogram<u64>,
    /// Time series.
    pub buckets: Vec<Bucket>,
    /// Lateral: the first client's weights over time (seconds after traffic start, share per backend).
    pub weights: Vec<(f64, Vec<f64>)>,
    /// Lateral: the first coordinator's decisions.
    pub decisions: Vec<DecisionPoint>,
    /// Lateral/static_oracle: client retries (all clients).
    pub retries: u64,
    /// The events applied to the backends.
    pub events: Vec<AppliedEvent>,
    /// Scenarios with `hash_keys`: how consistently each key met the same backend.
    pub keys: Option<KeyStats>,
    /// Lateral's balancers with a zone policy: changes between local and spill mode (all clients).
    pub zone_transitions: Option<u64>,
    /// Lateral's balancers with a zone policy: how many clients were spilling at the end.
    pub zone_spilling_at_end: Option<u64>,
    /// Lateral's balancers with a zone policy: the first client's mode, sampled every 50 ms (seconds after
    /// traffic start, spilling). `ClientMetrics` has only the count of transitions; this is their timeline.
    pub zone_spill_samples: Vec<(f64, bool)>,
    /// Lateral with a dynamic fraction: the dynamic and the static group (all clients), from `GroupStats`.
    pub groups: Option<(GroupStats, GroupStats)>,
    /// How late each request left against its intended time, microseconds: the harness's own health.
    pub send_lag_us: Histogram<u64>,
    /// Lateral/static_oracle: what the clients really sent to each backend (scenario order), as shares of
    /// their picks, next to the weights.
    pub achieved_shares: Option<Vec<f64>>,
    /// Of the errors, answers refused as overload by a backend's layer (`UNAVAILABLE`, "overloaded: ...").
    pub overloaded: u64,
    /// Latency of the requests that failed with a status (not timeouts), microseconds: how fast a refusal is.
    pub failed_latency_us: Histogram<u64>,
}

/// A run whose generator sent late by more than this at p99 measured the harness, not the policy.
pub const SATURATED_SEND_LAG_P99: Duration = Duration::from_millis(5);

/// Key affinity of a run with routing keys, counted over successful answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyStats {
    /// Distinct keys answered at least once.
    pub keys_seen: u64,
    /// Distinct keys answered at least twice (the only ones whose owner can change).
    pub keys_repeated: u64,
    /// Of `keys_repeated`, those answered by one backend only for the whole run.
    pub keys_stable: u64,
    /// Of all keyed successful answers, the fraction from the key's most frequent backend.
    pub affinity: f64,
}

impl KeyStats {
    /// `keys_stable / keys_repeated` (1 with no repeated key).
    pub fn stability(&self) -> f64 {
        if self.keys_repeated == 0 {
            1.0
        } else {
            self.keys_stable as f64 / self.keys_repeated as f64
        }
    }

    fn from_counts(counts: &[Vec<u32>]) -> Self {
        let (mut seen, mut repeated, mut stable, mut total, mut dominant) = (0, 0, 0, 0u64, 0u64);
        for per_backend in counts {
            let n: u64 = per_backend.iter().map(|&c| u64::from(c)).sum();
            if n == 0 {
                continue;
            }
            seen += 1;
            total += n;
            let max = per_backend.iter().copied().max().map_or(0, u64::from);
            dominant += max;
            if n >= 2 {
                repeated += 1;
                if max == n {
                    stable += 1;
                }
            }
        }
        Self {
            keys_seen: seen,
            keys_repeated: repeated,
            keys_stable: stable,
            affinity: if total == 0 {
                1.0
            } else {
                dominant as f64 / total as f64
            },
        }
    }
}

/// Sums one group's figures over several balancers (same bucket bounds).
fn merge_groups(stats: impl IntoIterator<Item = GroupStats>) -> Option<GroupStats> {
    stats.into_iter().reduce(|mut acc, s| {
        acc.requests += s.requests;
        acc.errors += s.errors;
        acc.latency_sum_seconds += s.latency_sum_seconds;
        for (a, b) in acc.latency_buckets.iter_mut().zip(&s.latency_buckets) {
            a.1 += b.1;
        }
        acc
    })
}

impl RunResult {
    /// Latency at quantile `q`, milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// Send lag at quantile `q`, milliseconds.
    pub fn send_lag_ms(&self, q: f64) -> f64 {
        self.send_lag_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// Whether the load generator itself fell behind (send-lag p99 over [`SATURATED_SEND_LAG_P99`]): the
    /// row is then marked "harness saturated" rather than read as a policy result.
    pub fn harness_saturated(&self) -> bool {
        self.send_lag_us.value_at_quantile(0.99) > SATURATED_SEND_LAG_P99.as_micros() as u64
    }

    /// Successes and requests among those intended at or after `from_s` seconds (by time bucket).
    pub fn success_from(&self, from_s: f64) -> (u64, u64) {
        let first = (from_s / BUCKET_S).ceil().max(0.0) as usize;
        self.buckets
            .iter()
            .skip(first)
            .fold((0, 0), |(ok, n), b| (ok + b.ok, n + b.ok + b.errors))
    }

    /// Share of attributed requests per backend.
    pub fn share(&self) -> Vec<f64> {
        let total: u64 = self.per_backend.iter().sum();
        self.per_backend
            .iter()
            .map(|&n| n as f64 / total.max(1) as f64)
            .collect()
    }
}

struct Recorder {
    result: RunResult,
    index: BTreeMap<String, usize>,
    /// Per key, successful answers per backend (empty without routing keys).
    key_counts: Vec<Vec<u32>>,
}

impl Recorder {
    fn record(&mut self, at: Duration, micros: u64, outcome: Outcome, key: Option<u32>) {
        let r = &mut self.result;
        let micros = micros.clamp(1, MAX_LATENCY_US);
        if let Outcome::Failed(_) = &outcome {
            let _ = r.failed_latency_us.record(micros);
        }
        let _ = r.latency_us.record(micros);
        let b = (at.as_secs_f64() / BUCKET_S) as usize;
        let n = r.backends.len();
        while r.buckets.len() <= b {
            r.buckets.push(Bucket {
                per_backend: vec![0; n],
                ok: 0,
                errors: 0,
                timeouts: 0,
                latency_us: histogram(2),
            });
        }
        let bucket = &mut r.buckets[b];
        let _ = bucket.latency_us.record(micros);
        let (ok, who) = match &outcome {
            Outcome::Ok(who) => (true, Some(who.as_str())),
            Outcome::Failed(who) => (false, who.as_deref()),
            Outcome::Timeout => {
                r.timeouts += 1;
                bucket.timeouts += 1;
                (false, None)
            }
        };
        if ok {
            r.ok += 1;
            bucket.ok += 1;
        } else {
            r.errors += 1;
            bucket.errors += 1;
        }
        if let Some(i) = who.and_then(|w| self.index.get(w)) {
            r.per_backend[*i] += 1;
            bucket.per_backend[*i] += 1;
            if ok
                && let Some(counts) = key.and_then(|k| self.key_counts.get_mut(k as usize))
                && let Some(c) = counts.get_mut(*i)
            {
                *c += 1;
            }
        }
    }
}

enum Outcome {
    Ok(String),
    Failed(Option<String>),
    Timeout,
}

/// How a backend's layer words an overload refusal (`lateral_agent::layer::shedding`).
pub const OVERLOADED_PREFIX: &str = "overloaded";

/// Something done to a running cluster besides the scenario's timeline (the fault matrix's faults): called
/// once with the cluster and the instant traffic starts, it returns the task doing it (aborted at the end).
pub type Injector = Box<dyn FnOnce(Arc<Cluster>, Instant) -> tokio::task::JoinHandle<()> + Send>;

/// Runs `policy` through `scenario` with the given arrivals.
pub async fn run(
    scenario: &Scenario,
    policy: &Policy,
    arrivals: &[Arrival],
    seed: u64,
    progress: &ProgressBar,
) -> Result<RunResult, tower::BoxError> {
    let cluster = Cluster::start(scenario, seed).await?;
    let clients = policy
        .build(scenario, &cluster, scenario.clients, seed)
        .await
        .map_err(|e| format!("policy {policy}: {e}"))?;
    drive(
        scenario, policy, cluster, clients, arrivals, seed, progress, None,
    )
    .await
}

/// Sends `arrivals` through `clients` (built for `policy`) to `cluster`, following the scenario's timeline
/// and, with one, running `inject` alongside; then stops the cluster.
#[allow(clippy::too_many_arguments)]
pub async fn drive(
    scenario: &Scenario,
    policy: &Policy,
    cluster: Cluster,
    clients: super::policy::Clients,
    arrivals: &[Arrival],
    seed: u64,
    progress: &ProgressBar,
    inject: Option<Injector>,
) -> Result<RunResult, tower::BoxError> {
    let names = cluster.names.clone();
    let hash_keys = scenario.routing.as_ref().and_then(|r| {
        r.hash_keys.map(|n| {
            (
                n,
                schedule::keys(
                    arrivals.len(),
                    n,
                    r.key_distribution,
                    r.zipf_exponent.unwrap_or(1.0),
                    seed,
                ),
            )
        })
    });
    let recorder = Arc::new(Mutex::new(Recorder {
        key_counts: hash_keys
            .as_ref()
            .map(|(n, _)| vec![vec![0; names.len()]; *n as usize])
            .unwrap_or_default(),
        index: names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect(),
        result: RunResult {
            scenario: scenario.name.clone(),
            policy: policy.to_string(),
            backends: names.clone(),
            requests: arrivals.len() as u64,
            ok: 0,
            errors: 0,
            timeouts: 0,
            per_backend: vec![0; names.len()],
            latency_us: histogram(3),
            buckets: Vec::new(),
            weights: Vec::new(),
            decisions: Vec::new(),
            retries: 0,
            events: Vec::new(),
            keys: None,
            zone_transitions: None,
            zone_spilling_at_end: None,
            zone_spill_samples: Vec::new(),
            groups: None,
            send_lag_us: histogram(2),
            achieved_shares: None,
            overloaded: 0,
            failed_latency_us: histogram(2),
        },
    }));

    let start = Instant::now() + Duration::from_secs_f64(scenario.warmup_s);
    let wall_start = SystemTime::now() + Duration::from_secs_f64(scenario.warmup_s);
    let timeout = Duration::from_millis(scenario.request_timeout_ms);
    let duration = Duration::from_secs_f64(scenario.duration_s);

    let ideal = clients
        .ideal
        .as_ref()
        .map(|d| d.follow(scenario.clone(), start));
    let events: Arc<Mutex<Vec<AppliedEvent>>> = Arc::default();
    let cluster = Arc::new(cluster);
    let runner = {
        let (cluster, scenario, events) = (cluster.clone(), scenario.clone(), events.clone());
        tokio::spawn(async move {
            cluster
                .run_events(&scenario, start, duration + timeout, |e| {
                    if let Ok(mut v) = events.lock() {
                        v.push(e);
                    }
                })
                .await;
        })
    };

    let injected = inject.map(|f| f(cluster.clone(), start));

    let spill_samples: Arc<Mutex<Vec<(f64, bool)>>> = Arc::default();
    let spill_sampler = match clients.balancers.first() {
        Some(balancer)
            if scenario
                .routing
                .as_ref()
                .is_some_and(|r| r.zone_policy.is_some()) =>
        {
            let (balancer, samples) = (balancer.clone(), spill_samples.clone());
            let until = start + duration;
            Some(tokio::spawn(async move {
                tokio::time::sleep_until(start).await;
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                while Instant::now() < until {
                    tick.tick().await;
                    let t = start.elapsed().as_secs_f64();
                    if let Ok(mut v) = samples.lock() {
                        v.push((t, balancer.metrics().zone_spilling()));
                    }
                }
            }))
        }
        _ => None,
    };

    let clients_echo: Vec<EchoClient<_>> = clients
        .transports
        .iter()
        .map(|t| EchoClient::new(t.clone()))
        .collect();
    let mut inflight = JoinSet::new();
    for (n, a) in arrivals.iter().enumerate() {
        let key = hash_keys
            .as_ref()
            .and_then(|(_, keys)| keys.get(n).copied());
        let intended = start + a.at;
        tokio::time::sleep_until(intended).await;
        let Some(client) = clients_echo.get(a.client as usize) else {
            continue;
        };
        let mut client = client.clone();
        let recorder = recorder.clone();
        let progress = progress.clone();
        let at = a.at;
        inflight.spawn(async move {
            let lag = intended.elapsed().as_micros() as u64;
            let mut request = tonic::Request::new(EchoRequest {
                message: "bench".into(),
                ..Default::default()
            });
            if let Some(key) = key
                && let Ok(value) = format!("k{key}").parse()
            {
                request.metadata_mut().insert(KEY_HEADER, value);
            }
            let result = tokio::time::timeout(timeout, client.unary(request)).await;
            // Latency from the intended send time: no coordinated omission.
            let micros = intended.elapsed().as_micros() as u64;
            let outcome = match result {
                Ok(Ok(reply)) => Outcome::Ok(reply.into_inner().served_by),
                Ok(Err(status)) => {
                    if status.message().starts_with(OVERLOADED_PREFIX)
                        && let Ok(mut r) = recorder.lock()
                    {
                        r.result.overloaded += 1;
                    }
                    Outcome::Failed(
                        status
                            .message()
                            .split_once(':')
                            .map(|(who, _)| who.to_string()),
                    )
                }
                Err(_) => Outcome::Timeout,
            };
            if let Ok(mut r) = recorder.lock() {
                let _ = r.result.send_lag_us.record(lag.clamp(1, MAX_LATENCY_US));
                r.record(at, micros, outcome, key);
            }
            progress.inc(1);
        });
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
    runner.abort();
    let _ = runner.await;
    if let Some(task) = injected {
        task.abort();
        let _ = task.await;
    }
    if let Some(ideal) = ideal {
        ideal.abort();
        let _ = ideal.await;
    }
    if let Some(sampler) = spill_sampler {
        sampler.abort();
        let _ = sampler.await;
    }

    let (mut result, key_counts) = match Arc::try_unwrap(recorder) {
        Ok(m) => {
            let r = m.into_inner().map_err(|_| "recorder poisoned")?;
            (r.result, r.key_counts)
        }
        Err(shared) => {
            let r = shared.lock().map_err(|_| "recorder poisoned")?;
            (r.result.clone(), r.key_counts.clone())
        }
    };
    result.zone_spill_samples = spill_samples.lock().map(|v| v.clone()).unwrap_or_default();
    if hash_keys.is_some() {
        result.keys = Some(KeyStats::from_counts(&key_counts));
    }
    let routing = scenario.routing.as_ref();
    if routing.is_some_and(|r| r.zone_policy.is_some()) && !clients.balancers.is_empty() {
        let metrics: Vec<_> = clients.balancers.iter().map(|b| b.metrics()).collect();
        result.zone_transitions = Some(metrics.iter().map(|m| m.zone_transitions()).sum());
        result.zone_spilling_at_end =
            Some(metrics.iter().filter(|m| m.zone_spilling()).count() as u64);
    }
    if routing.is_some_and(|r| r.dynamic_fraction.is_some()) && *policy == Policy::Lateral {
        let group = |g: Group| merge_groups(clients.balancers.iter().map(|b| b.metrics().group(g)));
        if let (Some(d), Some(s)) = (group(Group::Dynamic), group(Group::Static)) {
            result.groups = Some((d, s));
        }
    }
    result.events = events.lock().map(|v| v.clone()).unwrap_or_default();
    if !clients.balancers.is_empty() {
        let mut picks = vec![0.0; names.len()];
        for b in &clients.balancers {
            for (id, share) in b.achieved_shares() {
                if let Some(i) = names.iter().position(|n| *n == id) {
                    picks[i] += share;
                }
            }
        }
        let total: f64 = picks.iter().sum();
        if total > 0.0 {
            result.achieved_shares = Some(picks.iter().map(|p| p / total).collect());
        }
    }
    result.retries = clients
        .balancers
        .iter()
        .map(|b| b.metrics().retries())
        .sum();
    if let Ok(samples) = clients.weights.lock() {
        result.weights = samples
            .iter()
            .map(|s| {
                let t = if s.at >= start {
                    (s.at - start).as_secs_f64()
                } else {
                    -(start - s.at).as_secs_f64()
                };
                let w = names
                    .iter()
                    .map(|n| s.weights.get(n).copied().unwrap_or(0.0))
                    .collect();
                (t, w)
            })
            .collect();
    }
    if let Some(coordinator) = clients.coordinators.first() {
        result.decisions = decision_points(coordinator, wall_start);
    }
    drop(clients);
    cluster.stop().await;
    Ok(result)
}

/// The decisions `coordinator` logged for the bench's service, timed in seconds after `wall_start`.
pub fn decision_points(
    coordinator: &lateral_coordinator::Coordinator,
    wall_start: SystemTime,
) -> Vec<DecisionPoint> {
    let origin = wall_start
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let (decisions, _alerts) = coordinator
        .handle()
        .decisions()
        .query(SERVICE, "", 0, 10_000);
    decisions
        .into_iter()
        .map(|d| DecisionPoint {
            t: d.at
                .map(|ts| ts.seconds as f64 + f64::from(ts.nanos) / 1e9 - origin)
                .unwrap_or(f64::NAN),
            endpoint: d.endpoint,
            new_weight: d.new_weight,
            rule: d.rule,
            reason: d.reason,
        })
        .collect()
}

/// Convergence after each mark of [`Scenario::convergence_marks`]: the first time after the mark from which
/// lateral's weights stay within a total-variation distance of 0.10 (at most 10% of traffic misplaced) of the
/// ideal shares ([`Scenario::ideal_share_at`]) until the next mark or the end; `None` if they never do.
pub fn convergence(scenario: &Scenario, weights: &[(f64, Vec<f64>)]) -> Vec<(f64, Option<f64>)> {
    const TOLERANCE: f64 = 0.10;
    let marks = scenario.convergence_marks();
    let ok = |t: f64, w: &[f64]| {
        let ideal = scenario.ideal_share_at(t);
        let tv: f64 = ideal.iter().zip(w).map(|(i, w)| (i - w).abs()).sum::<f64>() / 2.0;
        tv <= TOLERANCE
    };
    marks
        .iter()
        .enumerate()
        .map(|(k, &m)| {
            let end = marks.get(k + 1).copied().unwrap_or(scenario.duration_s);
            // The weights in force at the mark, then every snapshot until the next mark.
            let mut points: Vec<(f64, &[f64])> = Vec::new();
            if let Some((_, w)) = weights.iter().rev().find(|(t, _)| *t <= m) {
                points.push((m, w));
            }
            points.extend(
                weights
                    .iter()
                    .filter(|(t, _)| *t > m && *t < end)
                    .map(|(t, w)| (*t, w.as_slice())),
            );
            let mut since: Option<f64> = None;
            for (t, w) in &points {
                if ok(*t, w) {
                    since.get_or_insert(*t);
                } else {
                    since = None;
                }
            }
            (m, since.map(|s| s - m))
        })
        .collect()
}
