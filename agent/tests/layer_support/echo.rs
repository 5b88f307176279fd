//! A test `Echo` backend shared by the layer and proxy tests (included with `#[path]`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{Stream, StreamExt};
use lateral_proto::demo::echo_server::{Echo, EchoServer};
use lateral_proto::demo::{EchoReply, EchoRequest};
use tokio::sync::Notify;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status, Streaming};

/// A request with this message makes a server stream wait for [`EchoBackend::release`] before ending.
pub const HOLD: &str = "hold";
/// Request metadata echoed back as response metadata (and, on failures, as a trailer).
pub const ECHOED: [&str; 2] = ["traceparent", "x-echo"];

#[derive(Clone, Default)]
pub struct EchoBackend {
    pub calls: Arc<AtomicUsize>,
    pub release: Arc<Notify>,
}

impl EchoBackend {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn echoed<T>(from: &tonic::metadata::MetadataMap, into: &mut Response<T>) {
    for key in ECHOED {
        if let Some(v) = from.get(key) {
            into.metadata_mut().insert(key, v.clone());
        }
    }
}

fn failure(code: i32, from: &tonic::metadata::MetadataMap) -> Status {
    let mut status = Status::new(Code::from(code), format!("asked to fail with {code}"));
    if let Some(v) = from.get("x-echo") {
        status.metadata_mut().insert("x-echo-trailer", v.clone());
    }
    status
        .metadata_mut()
        .insert("x-failed", MetadataValue::from_static("yes"));
    status
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoBackend {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let md = request.metadata().clone();
        let req = request.into_inner();
        if req.fail_with != 0 {
            return Err(failure(req.fail_with, &md));
        }
        let mut resp = Response::new(EchoReply {
            message: req.message,
            served_by: "echo".into(),
            index: 0,
        });
        echoed(&md, &mut resp);
        Ok(resp)
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let md = request.metadata().clone();
        let req = request.into_inner();
        let release = self.release.clone();
        let hold = req.message == HOLD;
        let fail = (req.fail_with != 0).then(|| failure(req.fail_with, &md));
        let message = req.message.clone();
        let replies = futures_util::stream::iter(0..req.count).map(move |i| {
            Ok(EchoReply {
                message: message.clone(),
                served_by: "echo".into(),
                index: i,
            })
        });
        let tail = futures_util::stream::once(async move {
            if hold {
                release.notified().await;
            }
            fail
        })
        .filter_map(|f| async move { f.map(Err) });
        let mut resp = Response::new(Box::pin(replies.chain(tail)) as ReplyStream);
        echoed(&md, &mut resp);
        Ok(resp)
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let md = request.metadata().clone();
        let mut stream = request.into_inner();
        let mut parts = Vec::new();
        while let Some(req) = stream.message().await? {
            if req.fail_with != 0 {
                return Err(failure(req.fail_with, &md));
            }
            parts.push(req.message);
        }
        let mut resp = Response::new(EchoReply {
            message: parts.join(","),
            served_by: "echo".into(),
            index: parts.len() as u32,
        });
        echoed(&md, &mut resp);
        Ok(resp)
    }

    type BidiStreamStream = ReplyStream;

    async fn bidi_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let md = request.metadata().clone();
        let stream = request.into_inner();
        let md2 = md.clone();
        let out = stream.enumerate().map(move |(i, item)| match item {
            Ok(req) if req.fail_with != 0 => Err(failure(req.fail_with, &md2)),
            Ok(req) => Ok(EchoReply {
                message: req.message,
                served_by: "echo".into(),
                index: i as u32,
            }),
            Err(status) => Err(status),
        });
        let mut resp = Response::new(Box::pin(out) as ReplyStream);
        echoed(&md, &mut resp);
        Ok(resp)
    }
}

/// Serves `backend` on 127.0.0.1:0, behind `layer` when given.
pub async fn serve(
    backend: EchoBackend,
    layer: Option<lateral_agent::layer::LoadLayer>,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let svc = EchoServer::new(backend);
    match layer {
        Some(layer) => {
            let router = tonic::transport::Server::builder()
                .layer(layer)
                .add_service(svc);
            tokio::spawn(router.serve_with_incoming(incoming));
        }
        None => {
            let router = tonic::transport::Server::builder().add_service(svc);
            tokio::spawn(router.serve_with_incoming(incoming));
        }
    }
    addr
}

pub async fn client(
    addr: SocketAddr,
) -> lateral_proto::demo::echo_client::EchoClient<tonic::transport::Channel> {
    lateral_proto::demo::echo_client::EchoClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

pub fn req(message: &str, count: u32, fail_with: i32) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        count,
        fail_with,
    }
}
