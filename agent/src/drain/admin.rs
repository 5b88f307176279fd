//! A tiny admin HTTP/1.1 endpoint, meant for loopback only.
//!
//! - `POST /drain` (optional body: the reason, up to 256 bytes) starts a drain → `202 Accepted`
//!   (`200 OK` if one is already under way);
//! - `GET /healthz` → `200 ok`, or `503 draining` once a drain started (for a load balancer or kubelet probe);
//! - anything else → `404` / `405`.
//!
//! There is no authentication: bind it to a loopback address (the binary refuses anything else).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use lateral_ops::http_server::{self, HttpServer, PeerAddr, ServerConfig};

use super::DrainSwitch;
use crate::Error;

const MAX_REASON: usize = 256;

/// Connections served at once; more are closed (an orchestrator's probe and an operator need a few).
const MAX_CONNECTIONS: usize = 16;

/// A running admin endpoint; stops when dropped or on [`AdminHandle::shutdown`].
#[derive(Debug)]
pub struct AdminHandle {
    server: HttpServer,
}

impl AdminHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops accepting admin requests (at once; a request in flight is cut).
    pub fn shutdown(self) {
        drop(self.server);
    }
}

/// Serves the admin endpoint on `addr` (which should be loopback), triggering `switch`, on the shared
/// `lateral_ops::http_server` (a connection limit and a header read timeout).
pub async fn serve(addr: SocketAddr, switch: DrainSwitch) -> Result<AdminHandle, Error> {
    let config = ServerConfig::new("agent admin").max_connections(MAX_CONNECTIONS);
    let server = http_server::serve(addr, config, move |req: Request<Incoming>| {
        let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
        handle(req, switch.clone(), peer)
    })
    .await
    .map_err(|e| match e {
        lateral_ops::Error::Bind { source, .. } => Error::Io(source),
        other => Error::Transport(other.to_string()),
    })?;
    let local_addr = server.local_addr();
    tracing::info!(%local_addr, "admin endpoint listening (POST /drain, GET /healthz)");
    Ok(AdminHandle { server })
}

async fn handle(
    req: Request<Incoming>,
    switch: DrainSwitch,
    peer: Option<SocketAddr>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response
    };
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/drain") => {
            let body = Limited::new(req.into_body(), MAX_REASON).collect().await;
            let reason = match body {
                Ok(collected) => String::from_utf8_lossy(&collected.to_bytes())
                    .trim()
                    .to_owned(),
                Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "reason too long\n"),
            };
            let reason = if reason.is_empty() {
                "admin request".to_owned()
            } else {
                reason
            };
            tracing::info!(?peer, %reason, "admin drain request");
            if switch.drain(reason) {
                reply(StatusCode::ACCEPTED, "draining\n")
            } else {
                reply(StatusCode::OK, "already draining\n")
            }
        }
        (&Method::GET, "/healthz") => {
            if switch.is_draining() {
                reply(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                reply(StatusCode::OK, "ok\n")
            }
        }
        (_, "/drain" | "/healthz") => reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => reply(
            StatusCode::NOT_FOUND,
            "not found: try POST /drain or GET /healthz\n",
        ),
    }
}
