//! A simulated backend as a real process would run it: a tonic server (the [`SimulatedEcho`] service behind the
//! agent's [`LoadLayer`], ORCA trailers and request-id dedup on) and the agent's QUIC heartbeat reporter.
//!
//! The server runs its own accept loop so that [`Backend::kill`] can drop every connection at once, the way a
//! crashed process would, and [`Backend::restart`] brings it back on the same addresses. The agent alone can
//! be stopped and started again ([`Backend::kill_agent`], [`Backend::restart_agent`]) while the server goes
//! on serving, and [`drip`] makes the server send headers and then nothing.
//!
//! The measuring layer sheds past its queue allowance ([`BackendSpec::shed_queue_allowance`], on by default
//! as a deployment would run it; see `lateral_agent::layer::shedding`).

pub mod drip;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use lateral_agent::dedup::InMemoryDedup;
use lateral_agent::layer::LoadLayer;
use lateral_agent::measurement::MeasurementSource;
use lateral_agent::recorder::Recorder;
use lateral_agent::reporter::{Reporter, ReporterHandle, ReporterOptions};
use lateral_ops::tls::TlsMode;
use lateral_proto::demo::echo_server::EchoServer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::echo_service::{Knobs, ServiceTime, SimulatedEcho};

/// What a simulated backend is.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    /// Endpoint id (also the agent's endpoint id and the name in replies).
    pub name: String,
    /// Requests served at once.
    pub slots: u32,
    /// Mean service time.
    pub service_time: Duration,
    /// Distribution of service times.
    pub distribution: ServiceTime,
    /// Report `slots` as the declared capacity.
    pub declare_capacity: bool,
    /// Heartbeat interval of the agent.
    pub heartbeat_interval: Duration,
    /// Seed of the service-time generator.
    pub seed: u64,
    /// The layer's overload shedding: its queue allowance (`None`: never shed; see `lateral_agent::layer::shedding`).
    pub shed_queue_allowance: Option<f64>,
}

impl BackendSpec {
    /// A backend with `slots` workers and exponentially distributed service times around `service_time`.
    pub fn new(name: &str, slots: u32, service_time: Duration) -> Self {
        Self {
            name: name.to_string(),
            slots,
            service_time,
            distribution: ServiceTime::Exponential,
            declare_capacity: true,
            heartbeat_interval: Duration::from_millis(500),
            seed: 1,
            shed_queue_allowance: Some(lateral_agent::layer::shedding::DEFAULT_QUEUE_ALLOWANCE),
        }
    }
}

/// A running (or killed) simulated backend.
pub struct Backend {
    spec: BackendSpec,
    knobs: Arc<Knobs>,
    recorder: Recorder,
    grpc_addr: SocketAddr,
    agent_addr: SocketAddr,
    tls: TlsMode,
    server: Option<JoinSet<()>>,
    reporter: Option<ReporterHandle>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.spec.name)
            .field("grpc_addr", &self.grpc_addr)
            .field("agent_addr", &self.agent_addr)
            .field("running", &self.server.is_some())
            .finish()
    }
}

impl Backend {
    /// Starts the server on `grpc_addr` and the agent on `agent_addr` (port 0 picks free ports).
    pub async fn start(
        spec: BackendSpec,
        grpc_addr: SocketAddr,
        agent_addr: SocketAddr,
        tls: TlsMode,
    ) -> Result<Self, lateral_agent::Error> {
        let knobs = Arc::new(Knobs::new(spec.slots, spec.service_time, spec.distribution));
        let recorder = Recorder::new();
        if spec.declare_capacity {
            recorder.set_declared_capacity(Some(spec.slots));
        }
        let mut backend = Self {
            spec,
            knobs,
            recorder,
            grpc_addr,
            agent_addr,
            tls,
            server: None,
            reporter: None,
        };
        backend.launch().await?;
        Ok(backend)
    }

    async fn launch(&mut self) -> Result<(), lateral_agent::Error> {
        let listener = TcpListener::bind(self.grpc_addr).await?;
        self.grpc_addr = listener.local_addr()?;
        let mut layer = LoadLayer::new(self.recorder.clone())
            .with_orca(true)
            .with_dedup(Arc::new(InMemoryDedup::new(
                Duration::from_secs(60),
                100_000,
            )));
        if let Some(allowance) = self.spec.shed_queue_allowance {
            layer = layer.with_shedding(allowance);
        }
        let echo = SimulatedEcho::new(&self.spec.name, self.knobs.clone(), self.spec.seed);
        let routes = tonic::service::Routes::new(EchoServer::new(echo)).prepare();
        let routes = drip::Drip::new(routes, self.knobs.clone());
        let service = tower::ServiceBuilder::new().layer(layer).service(routes);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, service));
        self.server = Some(tasks);
        self.start_agent()
    }

    fn start_agent(&mut self) -> Result<(), lateral_agent::Error> {
        let mut options = ReporterOptions::new(
            format!("{}@{}", self.spec.name, std::process::id()),
            self.spec.name.clone(),
        );
        options.interval = self.spec.heartbeat_interval;
        let source: Arc<dyn MeasurementSource> = Arc::new(self.recorder.clone());
        let reporter = Reporter::bind(self.agent_addr, &self.tls, source, options)?;
        self.agent_addr = reporter.local_addr();
        self.recorder.set_accepting(true);
        self.reporter = Some(reporter);
        Ok(())
    }

    /// The gRPC address, as a URI clients dial.
    pub fn uri(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// The gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The agent's QUIC address.
    pub fn agent_addr(&self) -> SocketAddr {
        self.agent_addr
    }

    /// The knobs (service time, errors, blackhole).
    pub fn knobs(&self) -> &Arc<Knobs> {
        &self.knobs
    }

    /// The agent's measurements.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The spec it was started with.
    pub fn spec(&self) -> &BackendSpec {
        &self.spec
    }

    /// Requests the measuring layer refused as overload, over every launch (the recorder, which every
    /// launch's layer shares, counts them).
    pub fn shed_total(&self) -> u64 {
        self.recorder.shed_total()
    }

    /// The agent's reporter, while it runs.
    pub fn reporter(&self) -> Option<&ReporterHandle> {
        self.reporter.as_ref()
    }

    /// Stops the agent only, like a crashed agent process: no Goodbye; the server goes on serving.
    pub async fn kill_agent(&mut self) {
        if let Some(reporter) = self.reporter.take() {
            reporter.shutdown().await;
        }
    }

    /// Starts the agent again on the same QUIC address after [`Backend::kill_agent`], sending a heartbeat
    /// every `interval` (the spec's interval when `None`).
    pub async fn restart_agent(
        &mut self,
        interval: Option<Duration>,
    ) -> Result<(), lateral_agent::Error> {
        if let Some(interval) = interval {
            self.spec.heartbeat_interval = interval;
        }
        self.kill_agent().await;
        let mut last = None;
        for _ in 0..20 {
            match self.start_agent() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| lateral_agent::Error::Transport("agent restart failed".into())))
    }

    /// Whether it is running.
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Stops abruptly, like a crash: every connection dropped, no Goodbye, the agent gone.
    pub async fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.abort_all();
            while server.join_next().await.is_some() {}
        }
        if let Some(reporter) = self.reporter.take() {
            reporter.shutdown().await;
        }
    }

    /// Drains like a well-behaved process: not accepting, Goodbye to the coordinators, grace, then stop.
    pub async fn drain(&mut self, grace: Duration) -> Result<(), lateral_agent::Error> {
        self.recorder.set_accepting(false);
        if let Some(reporter) = self.reporter.take() {
            reporter.drain("drain requested", grace).await?;
        }
        self.kill().await;
        Ok(())
    }

    /// Starts again on the same addresses after [`Backend::kill`].
    pub async fn restart(&mut self) -> Result<(), lateral_agent::Error> {
        if self.server.is_some() {
            return Ok(());
        }
        // The old UDP socket may take a moment to be released by the OS; retry briefly.
        let mut last = None;
        for _ in 0..20 {
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.server = None;
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| lateral_agent::Error::Transport("restart failed".into())))
    }
}

async fn accept_loop<S>(listener: TcpListener, service: S)
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<lateral_agent::layer::LoadBody<tonic::body::Body>>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        // Connections live in this task's JoinSet: aborting the accept loop drops them all.
        connections.spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}
