//! A tiny admin HTTP/1.1 endpoint, meant for loopback only.
//!
//! - `POST /drain` (optional body: the reason, up to 256 bytes) starts a drain → `202 Accepted`
//!   (`200 OK` if one is already under way);
//! - `GET /healthz` → `200 ok`, or `503 draining` once a drain started (for a load balancer or kubelet probe);
//! - anything else → `404` / `405`.
//!
//! There is no authentication: bind it to a loopback address (the binary refuses anything else).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::DrainSwitch;
use crate::Error;

const MAX_REASON: usize = 256;

/// A running admin endpoint; stops when dropped or on [`AdminHandle::shutdown`].
#[derive(Debug)]
pub struct AdminHandle {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl AdminHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting admin requests.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the admin endpoint on `addr` (which should be loopback), triggering `switch`.
pub async fn serve(addr: SocketAddr, switch: DrainSwitch) -> Result<AdminHandle, Error> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    tracing::info!(%local_addr, "admin endpoint listening (POST /drain, GET /healthz)");
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let switch = switch.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(req, switch.clone(), peer));
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                }
            });
        }
    });
    Ok(AdminHandle { local_addr, task })
}

async fn handle(
    req: Request<Incoming>,
    switch: DrainSwitch,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        Ok(response)
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
            tracing::info!(%peer, %reason, "admin drain request");
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
