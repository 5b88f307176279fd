//! The sidecar way of measuring: an h2c gRPC reverse proxy in front of a backend written in any language.
//!
//! [`Proxy::bind`] listens on an address and forwards every HTTP/2 (prior-knowledge h2c) request to one
//! upstream over h2c (a hyper-util client with `http2_only`). Bodies stream in both directions frame by frame
//! — nothing is buffered beyond HTTP/2 flow-control windows, so unary and all three streaming kinds pass
//! unchanged, with backpressure end to end. Every request is measured by the same [`LoadService`] the
//! in-process layer uses (in flight until the response body ends, grpc-status from headers or trailers), so
//! the proxy and the layer cannot disagree about what a failure is.
//!
//! Headers and trailers are forwarded as they are (custom metadata, `grpc-timeout`, W3C `traceparent` /
//! `tracestate`, binary `-bin` metadata), except the hop-by-hop ones ([`HOP_BY_HOP`], and any header named in
//! `Connection`); `te: trailers`, which gRPC requires, is kept. The request URI keeps its path and query;
//! its scheme and authority become the upstream's.
//!
//! When the upstream cannot be reached (refused, connect timeout) or fails before sending response headers,
//! the proxy answers itself with a trailers-only gRPC response, `grpc-status: 14` (`UNAVAILABLE`) and a
//! `grpc-message` naming the upstream and the cause; the layer counts it as a failure. Connect failures say
//! "request not sent", which is what a client needs to know to retry safely.
//!
//! Tracing: every forwarded call is a `lateral.proxy` span (`otel.kind = server`) whose parent is the caller's
//! span from the W3C `traceparent` header; when this process exports traces ([`crate::telemetry`]) the
//! forwarded `traceparent` names the proxy's span, so the backend's span becomes its child. When it does not,
//! the caller's `traceparent` is forwarded unchanged.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HeaderName};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;
use tower_service::Service;

use crate::Error;
use crate::dedup::DedupStore;
use crate::layer::{LoadLayer, LoadService};
use crate::recorder::Recorder;

/// Hop-by-hop headers (RFC 9110 §7.6.1) the proxy never forwards, besides those named in `Connection`.
/// `te` is forwarded only as `te: trailers`.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// How the proxy behaves.
#[derive(Clone)]
pub struct ProxyOptions {
    /// Connect timeout towards the upstream (default 1 s).
    pub connect_timeout: Duration,
    /// How long [`ProxyHandle::shutdown`] lets open requests finish before closing connections (default 5 s).
    pub shutdown_grace: Duration,
    /// Put the ORCA load report on every response ([`crate::orca`]; default off).
    pub orca: bool,
    /// Reject duplicate `x-lateral-request-id`s ([`crate::dedup`]; default none).
    pub dedup: Option<Arc<dyn DedupStore>>,
    /// Overload shedding's queue allowance ([`crate::layer::shedding`]; default
    /// [`DEFAULT_QUEUE_ALLOWANCE`](crate::layer::shedding::DEFAULT_QUEUE_ALLOWANCE); `None`: never shed).
    /// Only a recorder with a declared capacity sheds.
    pub shed_queue_allowance: Option<f64>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(5),
            orca: false,
            dedup: None,
            shed_queue_allowance: Some(crate::layer::shedding::DEFAULT_QUEUE_ALLOWANCE),
        }
    }
}

impl std::fmt::Debug for ProxyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("orca", &self.orca)
            .field("dedup", &self.dedup.is_some())
            .field("shed_queue_allowance", &self.shed_queue_allowance)
            .finish()
    }
}

/// The h2c reverse proxy; see the [module docs](self).
#[derive(Debug)]
pub struct Proxy;

impl Proxy {
    /// Binds `listen` and starts forwarding to `upstream` (`http://host:port`), measuring into `recorder`.
    ///
    /// Fails if `upstream` is not an `http://` URI with an authority, or if `listen` cannot be bound.
    /// Must be called within a tokio runtime; the proxy runs on spawned tasks until
    /// [`ProxyHandle::shutdown`]. Dropping the handle starts the same shutdown without waiting for it.
    pub async fn bind(
        listen: SocketAddr,
        upstream: Uri,
        recorder: Recorder,
        opts: ProxyOptions,
    ) -> Result<ProxyHandle, Error> {
        let authority = match (upstream.scheme(), upstream.authority()) {
            (Some(s), Some(a)) if *s == Scheme::HTTP => a.clone(),
            _ => {
                return Err(Error::Config {
                    field: "proxy upstream".into(),
                    expected: format!("an h2c URI like http://127.0.0.1:50051, found {upstream:?}"),
                });
            }
        };
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;

        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(opts.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        let forward = Forward {
            client,
            authority,
            label: Arc::from(upstream.to_string()),
        };
        let mut layer = LoadLayer::new(recorder).with_orca(opts.orca);
        if let Some(store) = opts.dedup.clone() {
            layer = layer.with_dedup(store);
        }
        if let Some(allowance) = opts.shed_queue_allowance {
            layer = layer.with_shedding(allowance);
        }
        let service = LoadService::new(forward, &layer);

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            service,
            shutdown_rx,
            opts.shutdown_grace,
        ));
        tracing::info!(%local_addr, %upstream, "h2c proxy listening");
        Ok(ProxyHandle {
            local_addr,
            shutdown_tx,
            task,
        })
    }
}

/// A running [`Proxy`].
#[derive(Debug)]
pub struct ProxyHandle {
    local_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ProxyHandle {
    /// The address the proxy listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, asks every connection to finish (HTTP/2 GOAWAY: open requests complete, no new ones),
    /// and returns when they have, or after the grace period, when the rest are closed.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "proxy accept task ended abnormally");
        }
    }
}

type ProxyBody = Either<Incoming, Empty<Bytes>>;
type Measured = LoadService<Forward>;

async fn accept_loop(
    listener: TcpListener,
    service: Measured,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(stream, peer, service.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            ?grace,
            "proxy shutdown grace elapsed; closing open connections"
        );
        connections.shutdown().await;
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    service: Measured,
    mut shutdown: watch::Receiver<bool>,
) {
    let hyper_service =
        hyper::service::service_fn(move |req: Request<Incoming>| service.clone().oneshot(req));
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), hyper_service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "proxy connection ended with an error");
    }
}

/// Forwards one request to the upstream; never fails (upstream errors become gRPC `UNAVAILABLE`).
#[derive(Clone)]
struct Forward {
    client: Client<HttpConnector, Incoming>,
    authority: Authority,
    label: Arc<str>,
}

impl Service<Request<Incoming>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        // The pooled client has no readiness of its own; h2 flow control provides the backpressure.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = parts.uri.path_and_query().cloned();
        let uri = match Uri::from_parts(uri) {
            Ok(uri) => uri,
            Err(e) => {
                let resp = grpc_error(tonic::Status::internal(format!(
                    "lateral-agent proxy: bad request URI: {e}"
                )));
                return Box::pin(std::future::ready(Ok(resp)));
            }
        };
        parts.uri = uri;
        parts.version = http::Version::HTTP_2;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(http::header::HOST);
        let span = tracing::info_span!(
            "lateral.proxy",
            otel.kind = "server",
            rpc.method = parts.uri.path(),
            upstream = %self.label,
            http.status_code = tracing::field::Empty,
            grpc.status = tracing::field::Empty,
        );
        lateral_ops::propagation::set_remote_parent(&span, &parts.headers);
        lateral_ops::propagation::inject_span(&span, &mut parts.headers);
        let request = Request::from_parts(parts, body);
        let client = self.client.clone();
        let label = Arc::clone(&self.label);
        let future = async move {
            Ok(match client.request(request).await {
                Ok(response) => {
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    let current = tracing::Span::current();
                    current.record("http.status_code", parts.status.as_u16());
                    if let Some(code) = parts
                        .headers
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                    {
                        current.record("grpc.status", code);
                    }
                    Response::from_parts(parts, Either::Left(body))
                }
                Err(e) => {
                    let cause = error_chain(&e);
                    let message = if e.is_connect() {
                        format!(
                            "lateral-agent proxy: upstream {label} unavailable (request not sent): {cause}"
                        )
                    } else {
                        format!(
                            "lateral-agent proxy: upstream {label} failed before responding: {cause}"
                        )
                    };
                    tracing::warn!(upstream = %label, error = %cause, "proxy upstream error");
                    grpc_error(tonic::Status::unavailable(message))
                }
            })
        };
        Box::pin(tracing::Instrument::instrument(future, span))
    }
}

fn grpc_error(status: tonic::Status) -> Response<ProxyBody> {
    status.into_http::<Empty<Bytes>>().map(Either::Right)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Removes hop-by-hop headers (and those listed in `Connection`); keeps `te: trailers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if name != http::header::TE {
            headers.remove(name);
        }
    }
    let te_trailers = headers
        .get_all(http::header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_stripped_te_trailers_kept() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-private".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        h.insert("grpc-timeout", "1S".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["grpc-timeout", "te", "traceparent"]);
        assert_eq!(h["te"], "trailers");
    }
}
