//! `ideal`: the limit a balancer could reach with perfect, instant knowledge.
//!
//! One dispatcher is shared by every client instance of the run (in one process, so it sees every request),
//! with exact in-flight counts per backend and the scenario's ground truth ([`Scenario::truth_at`]: which
//! backends are up, blackholed or failing, and their current service time, refreshed every
//! [`TRUTH_REFRESH`]). Each request goes where the expected delay is shortest:
//! `(in_flight + 1) / slots × mean service time`, divided by the success rate for a backend that fails some
//! of its requests; backends that are down, blackholed or fail at least half their requests are skipped
//! while any other is left. This is full "shortest expected delay" (what `../shared/tools/queue_sim.py` calls
//! `sed`): no client can do better without knowing service times before serving.
//!
//! It is a yardstick, not a deployable policy: it assumes one dispatcher for all clients and reads the
//! scenario's timeline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

use super::scenario::Scenario;

/// How often the dispatcher re-reads the scenario's ground truth.
pub const TRUTH_REFRESH: Duration = Duration::from_millis(5);

struct Backend {
    channel: Channel,
    slots: f64,
    base_service_s: f64,
    in_flight: AtomicUsize,
    /// Bits of the current service-time factor.
    factor: AtomicU64,
    /// Bits of the current error rate.
    error_rate: AtomicU64,
    /// Up and not blackholed.
    serving: AtomicBool,
}

/// The shared dispatcher; see the [module docs](self).
pub struct IdealDispatcher {
    backends: Vec<Backend>,
}

impl std::fmt::Debug for IdealDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdealDispatcher")
            .field("backends", &self.backends.len())
            .finish()
    }
}

impl IdealDispatcher {
    /// A dispatcher over `channels` (scenario order).
    pub fn new(scenario: &Scenario, channels: Vec<Channel>) -> Arc<Self> {
        let backends = scenario
            .backends
            .iter()
            .zip(channels)
            .map(|(b, channel)| Backend {
                channel,
                slots: f64::from(b.slots.max(1)),
                base_service_s: b.service_time_ms / 1000.0,
                in_flight: AtomicUsize::new(0),
                factor: AtomicU64::new(1f64.to_bits()),
                error_rate: AtomicU64::new(b.error_rate.to_bits()),
                serving: AtomicBool::new(true),
            })
            .collect();
        Arc::new(Self { backends })
    }

    /// Follows the scenario's timeline from `start` (traffic start) until the returned task is aborted.
    pub fn follow(
        self: &Arc<Self>,
        scenario: Scenario,
        start: Instant,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TRUTH_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let t = if Instant::now() >= start {
                    start.elapsed().as_secs_f64()
                } else {
                    -(start - Instant::now()).as_secs_f64()
                };
                for (b, truth) in this.backends.iter().zip(scenario.truth_at(t)) {
                    b.factor
                        .store(truth.service_factor.to_bits(), Ordering::Relaxed);
                    b.error_rate
                        .store(truth.error_rate.to_bits(), Ordering::Relaxed);
                    b.serving
                        .store(truth.up && !truth.blackhole, Ordering::Relaxed);
                }
            }
        })
    }

    /// The backend with the shortest expected delay.
    fn choose(&self) -> Option<usize> {
        let delay = |b: &Backend, strict: bool| -> Option<f64> {
            let error_rate = f64::from_bits(b.error_rate.load(Ordering::Relaxed));
            if strict && (!b.serving.load(Ordering::Relaxed) || error_rate >= 0.5) {
                return None;
            }
            let service = b.base_service_s * f64::from_bits(b.factor.load(Ordering::Relaxed));
            let queue = b.in_flight.load(Ordering::Relaxed) as f64 + 1.0;
            Some(queue / b.slots * service / (1.0 - error_rate).max(0.01))
        };
        let best = |strict: bool| {
            self.backends
                .iter()
                .enumerate()
                .filter_map(|(i, b)| delay(b, strict).map(|d| (i, d)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i)
        };
        best(true).or_else(|| best(false))
    }
}

/// One client instance's handle on the shared dispatcher: a `tower::Service` a generated client takes.
#[derive(Clone, Debug)]
pub struct IdealTransport(pub Arc<IdealDispatcher>);

/// Un-counts a request when its call ends (answered, failed or dropped).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Service<http::Request<Body>> for IdealTransport {
    type Response = http::Response<Body>;
    type Error = tower::BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let dispatcher = Arc::clone(&self.0);
        Box::pin(async move {
            let i = dispatcher.choose().ok_or("ideal: no backends")?;
            let backend = &dispatcher.backends[i];
            backend.in_flight.fetch_add(1, Ordering::Relaxed);
            let _in_flight = InFlight(&backend.in_flight);
            // A unary answer's headers leave the backend when its work is done: the request stops counting.
            let response = backend.channel.clone().oneshot(request).await?;
            Ok(response)
        })
    }
}
