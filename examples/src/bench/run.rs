//! Runs one policy through one scenario: fresh backends, fresh clients, the shared arrival schedule sent open
//! loop, latency measured from each request's intended send time (no coordinated omission).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use lateral_proto::demo::EchoRequest;
use lateral_proto::demo::echo_client::EchoClient;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::cluster::{AppliedEvent, Cluster, SERVICE};
use super::policy::Policy;
use super::scenario::Scenario;
use super::schedule::Arrival;

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
}

impl RunResult {
    /// Latency at quantile `q`, milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
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
}

impl Recorder {
    fn record(&mut self, at: Duration, micros: u64, outcome: Outcome) {
        let r = &mut self.result;
        let micros = micros.clamp(1, MAX_LATENCY_US);
        let _ = r.latency_us.record(micros);
        let b = (at.as_secs_f64() / BUCKET_S) as usize;
        let n = r.backends.len();
        while r.buckets.len() <= b {
            r.buckets.push(Bucket {
                per_backend: vec![0; n],
                ok: 0,
                errors: 0,
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
        }
    }
}

enum Outcome {
    Ok(String),
    Failed(Option<String>),
    Timeout,
}

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
    let names = cluster.names.clone();
    let recorder = Arc::new(Mutex::new(Recorder {
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
        },
    }));

    let start = Instant::now() + Duration::from_secs_f64(scenario.warmup_s);
    let wall_start = SystemTime::now() + Duration::from_secs_f64(scenario.warmup_s);
    let timeout = Duration::from_millis(scenario.request_timeout_ms);
    let duration = Duration::from_secs_f64(scenario.duration_s);

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

    let clients_echo: Vec<EchoClient<_>> = clients
        .transports
        .iter()
        .map(|t| EchoClient::new(t.clone()))
        .collect();
    let mut inflight = JoinSet::new();
    for a in arrivals {
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
            let request = EchoRequest {
                message: "bench".into(),
                ..Default::default()
            };
            let result = tokio::time::timeout(timeout, client.unary(request)).await;
            // Latency from the intended send time: no coordinated omission.
            let micros = intended.elapsed().as_micros() as u64;
            let outcome = match result {
                Ok(Ok(reply)) => Outcome::Ok(reply.into_inner().served_by),
                Ok(Err(status)) => Outcome::Failed(
                    status
                        .message()
                        .split_once(':')
                        .map(|(who, _)| who.to_string()),
                ),
                Err(_) => Outcome::Timeout,
            };
            if let Ok(mut r) = recorder.lock() {
                r.record(at, micros, outcome);
            }
            progress.inc(1);
        });
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
    runner.abort();
    let _ = runner.await;

    let mut result = match Arc::try_unwrap(recorder) {
        Ok(m) => m.into_inner().map_err(|_| "recorder poisoned")?.result,
        Err(shared) => shared
            .lock()
            .map_err(|_| "recorder poisoned")?
            .result
            .clone(),
    };
    result.events = events.lock().map(|v| v.clone()).unwrap_or_default();
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
        let origin = wall_start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let (decisions, _alerts) = coordinator
            .handle()
            .decisions()
            .query(SERVICE, "", 0, 10_000);
        result.decisions = decisions
            .into_iter()
            .map(|d| DecisionPoint {
                t: d.at
                    .map(|ts| ts.seconds as f64 + f64::from(ts.nanos) / 1e9 - origin)
                    .unwrap_or(f64::NAN),
                endpoint: d.endpoint,
                new_weight: d.new_weight,
                rule: d.rule,
            })
            .collect();
    }
    drop(clients);
    cluster.stop().await;
    Ok(result)
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
