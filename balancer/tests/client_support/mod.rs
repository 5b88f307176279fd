//! Shared helpers for the client tests: real tonic Echo backends on 127.0.0.1:0.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures_util::StreamExt;
use lateral_proto::coordinator::{EndpointState, EndpointWeight, WeightSnapshot};
use lateral_proto::demo::echo_server::{Echo, EchoServer};
use lateral_proto::demo::{EchoReply, EchoRequest};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// An Echo backend that says who it is and counts arrivals (and request ids); unary replies carry an ORCA
/// load report in their metadata while [`Backend::report_utilization`] holds a value.
#[derive(Clone)]
pub struct Backend {
    pub name: String,
    pub arrivals: Arc<AtomicUsize>,
    pub request_ids: Arc<std::sync::Mutex<Vec<String>>>,
    /// The utilization to report, as `f64` bits; NaN: no report.
    orca_bits: Arc<AtomicU64>,
    /// Accept unary requests and never answer them.
    blackhole: Arc<std::sync::atomic::AtomicBool>,
}

impl Backend {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            arrivals: Arc::default(),
            request_ids: Arc::default(),
            orca_bits: Arc::new(AtomicU64::new(f64::NAN.to_bits())),
            blackhole: Arc::default(),
        }
    }

    /// From now on, unary requests are accepted and never answered (`true`), or served (`false`).
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }

    /// Unary replies report `utilization` (`None`: no report) from now on.
    pub fn report_utilization(&self, utilization: Option<f64>) {
        let u = utilization.unwrap_or(f64::NAN);
        self.orca_bits.store(u.to_bits(), Ordering::SeqCst);
    }

    fn attach_orca<T>(&self, response: &mut Response<T>) {
        use prost::Message;
        let u = f64::from_bits(self.orca_bits.load(Ordering::SeqCst));
        if u.is_finite() {
            let report = lateral_proto::orca::OrcaLoadReport {
                application_utilization: u,
                ..Default::default()
            };
            response.metadata_mut().insert_bin(
                lateral_proto::orca::ORCA_TRAILER,
                tonic::metadata::MetadataValue::from_bytes(&report.encode_to_vec()),
            );
        }
    }

    pub fn arrivals(&self) -> usize {
        self.arrivals.load(Ordering::SeqCst)
    }

    fn arrive<T>(&self, request: &Request<T>) {
        self.arrivals.fetch_add(1, Ordering::SeqCst);
        if let Some(id) = request
            .metadata()
            .get("x-lateral-request-id")
            .and_then(|v| v.to_str().ok())
        {
            self.request_ids.lock().unwrap().push(id.to_string());
        }
    }

    fn reply(&self, message: &str, index: u32) -> EchoReply {
        EchoReply {
            message: message.to_string(),
            served_by: self.name.clone(),
            index,
        }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Backend {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.arrive(&request);
        if self.blackhole.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let r = request.into_inner();
        if r.fail_with != 0 {
            return Err(Status::new(
                tonic::Code::from_i32(r.fail_with),
                format!("{} failed as asked", self.name),
            ));
        }
        let mut response = Response::new(self.reply(&r.message, 0));
        self.attach_orca(&mut response);
        Ok(response)
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.arrive(&request);
        let r = request.into_inner();
        let me = self.clone();
        let stream = tokio_stream::iter(0..r.count).map(move |i| Ok(me.reply(&r.message, i)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        self.arrive(&request);
        let mut stream = request.into_inner();
        let mut all = Vec::new();
        while let Some(m) = stream.message().await? {
            all.push(m.message);
        }
        Ok(Response::new(self.reply(&all.join(","), all.len() as u32)))
    }

    type BidiStreamStream = ReplyStream;

    async fn bidi_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.arrive(&request);
        let me = self.clone();
        let stream = request.into_inner().enumerate().map(move |(i, m)| match m {
            Ok(m) => Ok(me.reply(&m.message, i as u32)),
            Err(s) => Err(s),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves `backend` on the current runtime; returns its address.
pub async fn serve(backend: Backend) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(backend))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    addr
}

/// A backend on its own runtime and thread, so that it can be killed outright (every task and socket).
pub struct Killable {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Killable {
    pub fn start(backend: Backend) -> Self {
        // Built on a plain thread: a runtime cannot be blocked on from inside the test's runtime.
        std::thread::spawn(move || Self::start_here(backend))
            .join()
            .unwrap()
    }

    fn start_here(backend: Backend) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(EchoServer::new(backend))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
            );
            addr
        });
        Self {
            addr,
            runtime: Some(runtime),
        }
    }

    /// Drops every task of the backend: the listener and all its connections close at once.
    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn uri(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// An endpoint entry for a snapshot.
pub fn ew(id: &str, addr: SocketAddr, weight: f64, state: EndpointState) -> EndpointWeight {
    EndpointWeight {
        id: id.into(),
        address: uri(addr),
        weight,
        load_balancing_weight: (weight * 1e6) as u32,
        state: state as i32,
        ..Default::default()
    }
}

pub fn snapshot(
    service: &str,
    version: u64,
    heartbeat_ms: u64,
    endpoints: Vec<EndpointWeight>,
) -> WeightSnapshot {
    WeightSnapshot {
        service: service.into(),
        version,
        heartbeat_interval: Some(prost_types::Duration {
            seconds: 0,
            nanos: (heartbeat_ms * 1_000_000) as i32,
        }),
        endpoints,
        generated_at: None,
        static_fallback: false,
        epoch: 1,
    }
}

pub fn req(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        count: 0,
        fail_with: 0,
    }
}

/// Yields until `cond` holds (the policy task runs on the same runtime), at most ~a few thousand turns.
pub async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never held");
}
