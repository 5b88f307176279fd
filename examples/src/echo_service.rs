//! A simulated backend: the demo `Echo` service with worker slots, a service-time distribution, an error rate
//! and a blackhole switch, all adjustable while it runs (the demo and the benchmark inject events this way).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use lateral_proto::demo::echo_server::Echo;
use lateral_proto::demo::{EchoReply, EchoRequest};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How service times are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ServiceTime {
    /// Always the mean.
    Constant,
    /// Exponentially distributed around the mean (an M/M/c-like backend).
    #[default]
    Exponential,
}

/// The knobs of a running backend; change them at any time.
#[derive(Debug)]
pub struct Knobs {
    service_time_us: AtomicU64,
    error_rate_ppm: AtomicU32,
    error_latency_us: AtomicU64,
    blackhole: AtomicBool,
    drip: AtomicBool,
    /// Microseconds slots were really held by work that completed (measured, so timer overshoot counts).
    busy_us: AtomicU64,
    /// Units of work completed.
    served: AtomicU64,
    distribution: ServiceTime,
    slots: Arc<Semaphore>,
    slot_count: u32,
}

impl Knobs {
    /// `slots` requests are served at once; others queue.
    pub fn new(slots: u32, service_time: Duration, distribution: ServiceTime) -> Self {
        Self {
            service_time_us: AtomicU64::new(service_time.as_micros() as u64),
            error_rate_ppm: AtomicU32::new(0),
            error_latency_us: AtomicU64::new(0),
            blackhole: AtomicBool::new(false),
            drip: AtomicBool::new(false),
            busy_us: AtomicU64::new(0),
            served: AtomicU64::new(0),
            distribution,
            slots: Arc::new(Semaphore::new(slots.max(1) as usize)),
            slot_count: slots.max(1),
        }
    }

    /// Worker slots.
    pub fn slots(&self) -> u32 {
        self.slot_count
    }

    /// The mean service time.
    pub fn service_time(&self) -> Duration {
        Duration::from_micros(self.service_time_us.load(Ordering::Relaxed))
    }

    /// Sets the mean service time.
    pub fn set_service_time(&self, mean: Duration) {
        self.service_time_us
            .store(mean.as_micros() as u64, Ordering::Relaxed);
    }

    /// The fraction of requests that fail (with UNAVAILABLE), after `error_latency`.
    pub fn error_rate(&self) -> f64 {
        f64::from(self.error_rate_ppm.load(Ordering::Relaxed)) / 1e6
    }

    /// Sets the error rate (clamped to [0, 1]) and how long a failing request takes.
    pub fn set_errors(&self, rate: f64, latency: Duration) {
        self.error_rate_ppm
            .store((rate.clamp(0.0, 1.0) * 1e6) as u32, Ordering::Relaxed);
        self.error_latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Accept requests and never answer them (`true`), or behave (`false`).
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::Relaxed);
    }

    /// Answer with headers and then nothing (`true`, see `backend::drip`), or behave (`false`).
    pub fn set_drip(&self, on: bool) {
        self.drip.store(on, Ordering::Relaxed);
    }

    /// Work completed so far and the slot-microseconds it really took: `served / busy` × slots is the
    /// capacity this backend actually has on this machine (timer overshoot and a loaded CPU lower it).
    pub fn served_and_busy_us(&self) -> (u64, u64) {
        (
            self.served.load(Ordering::Relaxed),
            self.busy_us.load(Ordering::Relaxed),
        )
    }

    /// Whether [`Knobs::set_drip`] is on.
    pub fn dripping(&self) -> bool {
        self.drip.load(Ordering::Relaxed)
    }
}

/// The `Echo` implementation served by simulated backends.
#[derive(Debug, Clone)]
pub struct SimulatedEcho {
    name: Arc<str>,
    knobs: Arc<Knobs>,
    seed: Arc<AtomicU64>,
}

impl SimulatedEcho {
    /// A backend named `name` (it signs its replies with it).
    pub fn new(name: &str, knobs: Arc<Knobs>, seed: u64) -> Self {
        Self {
            name: Arc::from(name),
            knobs,
            seed: Arc::new(AtomicU64::new(seed)),
        }
    }

    fn rng(&self) -> SmallRng {
        SmallRng::seed_from_u64(
            self.seed
                .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed),
        )
    }

    /// Serves one unit of work: waits for a slot, takes the service time, may fail.
    async fn work(&self, fail_with: i32) -> Result<(), Status> {
        if self.knobs.blackhole.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        let _slot = self
            .knobs
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("backend shutting down"))?;
        let held = tokio::time::Instant::now();
        let mut rng = self.rng();
        let failing = rng.random::<f64>() < self.knobs.error_rate();
        if failing {
            tokio::time::sleep(Duration::from_micros(
                self.knobs.error_latency_us.load(Ordering::Relaxed),
            ))
            .await;
            return Err(Status::unavailable(format!(
                "{}: injected failure",
                self.name
            )));
        }
        let mean = self.knobs.service_time().as_secs_f64();
        let time = match self.knobs.distribution {
            ServiceTime::Constant => mean,
            // Inverse transform sampling; 1 - u is in (0, 1], so ln is finite.
            ServiceTime::Exponential => -mean * (1.0 - rng.random::<f64>()).ln(),
        };
        tokio::time::sleep(Duration::from_secs_f64(time.min(60.0))).await;
        self.knobs
            .busy_us
            .fetch_add(held.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.knobs.served.fetch_add(1, Ordering::Relaxed);
        if fail_with != 0 {
            return Err(Status::new(
                tonic::Code::from_i32(fail_with),
                "failure requested by the caller",
            ));
        }
        Ok(())
    }

    fn reply(&self, message: &str, index: u32) -> EchoReply {
        EchoReply {
            message: message.to_string(),
            served_by: self.name.to_string(),
            index,
        }
    }
}

#[tonic::async_trait]
impl Echo for SimulatedEcho {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let r = request.into_inner();
        self.work(r.fail_with).await?;
        Ok(Response::new(self.reply(&r.message, 0)))
    }

    type ServerStreamStream = ReceiverStream<Result<EchoReply, Status>>;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let r = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            for i in 0..r.count {
                let item = this.work(0).await.map(|()| this.reply(&r.message, i));
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
            if r.fail_with != 0 {
                let _ = tx
                    .send(Err(Status::new(
                        tonic::Code::from_i32(r.fail_with),
                        "stream failed as requested",
                    )))
                    .await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let mut stream = request.into_inner();
        let mut joined = Vec::new();
        while let Some(r) = stream.message().await? {
            joined.push(r.message);
        }
        self.work(0).await?;
        Ok(Response::new(
            self.reply(&joined.join(","), joined.len() as u32),
        ))
    }

    type BidiStreamStream = ReceiverStream<Result<EchoReply, Status>>;

    async fn bidi_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidiStreamStream>, Status> {
        let mut stream = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let mut i = 0;
            loop {
                let item = match stream.message().await {
                    Ok(Some(r)) => this
                        .work(r.fail_with)
                        .await
                        .map(|()| this.reply(&r.message, i)),
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
                i += 1;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
