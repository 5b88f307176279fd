//! The coordinator's HTTP/1 server for operators (`[listen] http`): Prometheus metrics, a live dashboard and
//! its JSON feed.
//!
//! | route           | what                                                                                   |
//! |-----------------|----------------------------------------------------------------------------------------|
//! | `GET /metrics`  | Prometheus text exposition ([`CoordinatorMetrics::render_prometheus`])                  |
//! | `GET /`         | the dashboard: one self-contained page (HTML, CSS and JS embedded in the binary, no CDN) |
//! | `GET /api/state`| JSON: services, endpoints with history, the newest decisions and alerts, ingest counters |
//! | `GET /api/events`| the same JSON as server-sent events, one `state` event per second                     |
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections and [`MAX_EVENT_STREAMS`] event streams; beyond that new
//! ones are refused (closed, or `503`). Nothing here is on the weight path: the server reads shared state.
//! The accept loop, its limits and its graceful stop are `lateral_ops::http_server`, shared with the agent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use lateral_ops::http_server::{self, HttpServer, ServerConfig};
use lateral_proto::coordinator as pb;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::CoordinatorHandle;
use super::metrics::ServiceView;
use crate::Error;
use lateral_ops::prometheus::CONTENT_TYPE;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Server-sent event streams open at once.
pub const MAX_EVENT_STREAMS: usize = 32;
/// Decisions and alerts in one `/api/state` answer.
const RECENT: usize = 200;
/// History points per endpoint in one `/api/state` answer, by default (`?history=N` changes it, up to 600).
const DEFAULT_HISTORY: usize = 300;
/// Time between two server-sent events.
const EVENT_EVERY: Duration = Duration::from_secs(1);

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

type Body = BoxBody<Bytes, Infallible>;

/// Binds `addr` and serves the routes above on the shared `lateral_ops::http_server` until it is shut down or
/// dropped.
pub(crate) async fn serve(
    addr: SocketAddr,
    handle: Arc<CoordinatorHandle>,
) -> Result<HttpServer, Error> {
    let streams = Arc::new(Semaphore::new(MAX_EVENT_STREAMS));
    let config = ServerConfig::new("coordinator HTTP").max_connections(MAX_CONNECTIONS);
    let server = http_server::serve(addr, config, move |req| {
        std::future::ready(route(req, &handle, &streams))
    })
    .await
    .map_err(|e| Error::Transport(format!("cannot listen for HTTP on {addr}: {e}")))?;
    let local = server.local_addr();
    tracing::info!(%local, "coordinator HTTP (metrics, dashboard) listening");
    Ok(server)
}

fn route(
    req: Request<Incoming>,
    handle: &Arc<CoordinatorHandle>,
    streams: &Arc<Semaphore>,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    let now = super::driver::now();
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            CONTENT_TYPE,
            handle.metrics.render_prometheus(now, &handle.stats),
        ),
        "/" | "/index.html" => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            INDEX_HTML.into(),
        ),
        "/dashboard.js" => text(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            DASHBOARD_JS.into(),
        ),
        "/dashboard.css" => text(
            StatusCode::OK,
            "text/css; charset=utf-8",
            DASHBOARD_CSS.into(),
        ),
        "/api/state" => {
            let history = query_usize(req.uri().query(), "history").unwrap_or(DEFAULT_HISTORY);
            text(
                StatusCode::OK,
                "application/json",
                state_json(handle, history.min(super::metrics::HISTORY_LEN)),
            )
        }
        "/api/events" => match streams.clone().try_acquire_owned() {
            Ok(permit) => events(handle, permit),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "too many event streams; poll /api/state instead\n".into(),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

fn query_usize(query: Option<&str>, key: &str) -> Option<usize> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

fn events(
    handle: &Arc<CoordinatorHandle>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response<Body> {
    // A weak reference: an open event stream must not keep a stopped coordinator alive; it ends instead.
    let handle = Arc::downgrade(handle);
    let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(EVENT_EVERY));
    let stream = ticks
        .map(move |_| {
            let _held = &permit;
            let h = handle.upgrade()?;
            let body = format!("event: state\ndata: {}\n\n", state_json(&h, 60));
            Some(Ok::<_, Infallible>(Frame::data(Bytes::from(body))))
        })
        .take_while(|item| std::future::ready(item.is_some()))
        .filter_map(std::future::ready);
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The `/api/state` document.
#[derive(Serialize)]
struct State {
    generated_at_ms: i64,
    services: Vec<ServiceView>,
    decisions: Vec<DecisionView>,
    alerts: Vec<AlertView>,
    ingest: Ingest,
}

#[derive(Serialize)]
struct Ingest {
    heartbeats: u64,
    dropped: u64,
    rejected: u64,
    missed: u64,
    connections: u64,
}

#[derive(Serialize)]
struct DecisionView {
    sequence: u64,
    at_ms: i64,
    service: String,
    endpoint: String,
    old_weight: f64,
    new_weight: f64,
    old_state: &'static str,
    new_state: &'static str,
    rule: String,
    reason: String,
    inputs: std::collections::BTreeMap<String, f64>,
}

#[derive(Serialize)]
struct AlertView {
    at_ms: i64,
    service: String,
    endpoint: String,
    kind: String,
    message: String,
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn ts_ms(ts: &Option<prost_types::Timestamp>) -> i64 {
    ts.as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
        .unwrap_or(0)
}

fn state_name(state: i32) -> &'static str {
    match pb::EndpointState::try_from(state) {
        Ok(pb::EndpointState::Ramping) => "ramping",
        Ok(pb::EndpointState::Active) => "active",
        Ok(pb::EndpointState::Degraded) => "degraded",
        Ok(pb::EndpointState::Ejected) => "ejected",
        Ok(pb::EndpointState::Tripped) => "tripped",
        Ok(pb::EndpointState::Draining) => "draining",
        _ => "unspecified",
    }
}

/// The dashboard's JSON document.
pub(crate) fn state_json(handle: &CoordinatorHandle, history: usize) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let now = super::driver::now();
    let wall = wall_ms();
    let (decisions, alerts) = handle.log.query("", "", 0, RECENT);
    let state = State {
        generated_at_ms: wall,
        services: handle.metrics.state(now, wall, history),
        decisions: decisions
            .into_iter()
            .map(|d| DecisionView {
                sequence: d.sequence,
                at_ms: ts_ms(&d.at),
                old_state: state_name(d.old_state),
                new_state: state_name(d.new_state),
                service: d.service,
                endpoint: d.endpoint,
                old_weight: d.old_weight,
                new_weight: d.new_weight,
                rule: d.rule,
                reason: d.reason,
                inputs: d.inputs.into_iter().collect(),
            })
            .collect(),
        alerts: alerts
            .into_iter()
            .map(|a| AlertView {
                at_ms: ts_ms(&a.at),
                service: a.service,
                endpoint: a.endpoint,
                kind: a.kind,
                message: a.message,
            })
            .collect(),
        ingest: Ingest {
            heartbeats: handle.stats.heartbeats.load(Relaxed),
            dropped: handle.stats.dropped.load(Relaxed),
            rejected: handle.stats.rejected.load(Relaxed),
            missed: handle.stats.missed.load(Relaxed),
            connections: handle.stats.connections.load(Relaxed),
        },
    };
    // Plain data: serialising cannot fail (non-finite floats become null).
    serde_json::to_string(&state).unwrap_or_else(|_| "{}".to_string())
}
