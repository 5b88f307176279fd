//! The agent's own Prometheus endpoint (`--metrics-listen`): what it measured in the last window and totals
//! since start, in the text exposition format, written by `lateral_ops::prometheus::TextWriter` and served by
//! `lateral_ops::http_server` (the coordinator uses both too).
//!
//! [`Metered`] wraps the [`MeasurementSource`] the reporter reads: every closed window is observed here on its
//! way to the coordinators, so `/metrics` and the heartbeats always show the same numbers. Nothing is measured
//! twice and no request path touches this module.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use lateral_ops::http_server::{self, HttpServer, ServerConfig};
use lateral_ops::prometheus::{CONTENT_TYPE, Kind, TextWriter};

use crate::Error;
use crate::measurement::{Measurement, MeasurementSource};
use crate::recorder::Recorder;

/// Connections served at once; more are closed.
const MAX_CONNECTIONS: usize = 64;

/// The agent's metrics registry.
#[derive(Debug)]
pub struct AgentMetrics {
    endpoint: String,
    last: Mutex<Option<Measurement>>,
    windows: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    recorder: Option<Recorder>,
}

impl AgentMetrics {
    /// A registry for the endpoint `endpoint_id` (the `endpoint` label of every series).
    pub fn new(endpoint_id: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint_id.into(),
            last: Mutex::new(None),
            windows: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            recorder: None,
        }
    }

    /// Also reports the live in-flight count and cancellations of an in-band recorder (layer or proxy).
    pub fn with_recorder(mut self, recorder: Recorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Records a closed window.
    pub fn observe(&self, m: &Measurement) {
        self.windows.fetch_add(1, Ordering::Relaxed);
        self.completed.fetch_add(m.completed, Ordering::Relaxed);
        self.failed.fetch_add(m.failed, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(m.clone());
    }

    /// The Prometheus text exposition.
    pub fn render_prometheus(&self) -> String {
        let mut w = TextWriter::default();
        let endpoint = ("endpoint", self.endpoint.as_str());
        // A family with the samples it has now (none before the first window for the windowed ones).
        let mut family = |name: &str, kind: Kind, help: &str, samples: &[(Option<&str>, f64)]| {
            w.family(name, kind, help);
            for (quantile, value) in samples {
                match quantile {
                    Some(q) => w.sample(name, &[endpoint, ("quantile", q)], *value),
                    None => w.sample(name, &[endpoint], *value),
                }
            }
        };
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let in_flight = match (&self.recorder, &last) {
            (Some(r), _) => Some(f64::from(r.in_flight())),
            (None, Some(m)) => Some(f64::from(m.in_flight)),
            (None, None) => None,
        };
        family(
            "lateral_agent_in_flight",
            Kind::Gauge,
            "Requests in flight at the backend (live for the layer and the proxy, else at the last window).",
            &in_flight.map(|v| vec![(None, v)]).unwrap_or_default(),
        );
        let (quantiles, mean, errors, rps, accepting) = match &last {
            Some(m) => {
                let secs = m.window.as_secs_f64();
                (
                    vec![
                        (Some("0.5"), m.latency_p50.as_secs_f64()),
                        (Some("0.99"), m.latency_p99.as_secs_f64()),
                    ],
                    vec![(None, m.latency_mean.as_secs_f64())],
                    vec![(
                        None,
                        if m.completed == 0 {
                            0.0
                        } else {
                            m.failed as f64 / m.completed as f64
                        },
                    )],
                    vec![(
                        None,
                        if secs > 0.0 {
                            m.completed as f64 / secs
                        } else {
                            0.0
                        },
                    )],
                    vec![(None, if m.accepting { 1.0 } else { 0.0 })],
                )
            }
            None => Default::default(),
        };
        family(
            "lateral_agent_latency_seconds",
            Kind::Gauge,
            "Latency quantiles over the last heartbeat window, seconds.",
            &quantiles,
        );
        family(
            "lateral_agent_latency_mean_seconds",
            Kind::Gauge,
            "Mean latency over the last heartbeat window, seconds.",
            &mean,
        );
        family(
            "lateral_agent_error_ratio",
            Kind::Gauge,
            "Failed / completed requests over the last heartbeat window.",
            &errors,
        );
        family(
            "lateral_agent_requests_per_second",
            Kind::Gauge,
            "Completed requests per second over the last heartbeat window.",
            &rps,
        );
        family(
            "lateral_agent_accepting",
            Kind::Gauge,
            "1 while the backend accepts new requests, 0 while draining.",
            &accepting,
        );
        let capacity = last
            .as_ref()
            .and_then(|m| m.declared_capacity)
            .map(|c| vec![(None, f64::from(c))])
            .unwrap_or_default();
        family(
            "lateral_agent_declared_capacity",
            Kind::Gauge,
            "Declared capacity in concurrent requests, when configured.",
            &capacity,
        );
        family(
            "lateral_agent_requests_total",
            Kind::Counter,
            "Requests completed (successes and failures) since the agent started.",
            &[(None, self.completed.load(Ordering::Relaxed) as f64)],
        );
        family(
            "lateral_agent_failures_total",
            Kind::Counter,
            "Requests failed (by grpc-status) since the agent started.",
            &[(None, self.failed.load(Ordering::Relaxed) as f64)],
        );
        family(
            "lateral_agent_windows_total",
            Kind::Counter,
            "Measurement windows closed (one per heartbeat interval).",
            &[(None, self.windows.load(Ordering::Relaxed) as f64)],
        );
        if let Some(r) = &self.recorder {
            family(
                "lateral_agent_cancelled_total",
                Kind::Counter,
                "Requests the client abandoned before the response ended.",
                &[(None, r.cancelled_total() as f64)],
            );
            family(
                "lateral_agent_shed_total",
                Kind::Counter,
                "Requests refused unprocessed (UNAVAILABLE \"overloaded\") because the backend's queue stood past its allowance or reached twice it.",
                &[(None, r.shed_total() as f64)],
            );
        }
        w.finish()
    }
}

/// A measurement source that shows every window it hands out in an [`AgentMetrics`].
pub struct Metered {
    inner: Arc<dyn MeasurementSource>,
    metrics: Arc<AgentMetrics>,
}

impl Metered {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn MeasurementSource>, metrics: Arc<AgentMetrics>) -> Self {
        Self { inner, metrics }
    }
}

impl MeasurementSource for Metered {
    fn take_window(&self) -> Measurement {
        let m = self.inner.take_window();
        self.metrics.observe(&m);
        m
    }
}

/// A running metrics server; dropping it stops it.
#[derive(Debug)]
pub struct MetricsServer {
    server: HttpServer,
}

impl MetricsServer {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops it, letting a scrape in flight finish (bounded; see `lateral_ops::http_server`).
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// Serves `GET /metrics` on `addr` (HTTP/1.1, the shared `lateral_ops::http_server`).
pub async fn serve(addr: SocketAddr, metrics: Arc<AgentMetrics>) -> Result<MetricsServer, Error> {
    let config = ServerConfig::new("agent metrics").max_connections(MAX_CONNECTIONS);
    let server = http_server::serve(addr, config, move |req| {
        std::future::ready(respond(&req, &metrics))
    })
    .await
    .map_err(|e| match e {
        lateral_ops::Error::Bind { source, .. } => Error::Io(source),
        other => Error::Transport(other.to_string()),
    })?;
    let local_addr = server.local_addr();
    tracing::info!(%local_addr, "agent metrics at http://{local_addr}/metrics");
    Ok(MetricsServer { server })
}

fn respond(req: &Request<Incoming>, metrics: &AgentMetrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, metrics.render_prometheus()),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics\n".into(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn renders_the_last_window_and_totals() {
        let metrics = AgentMetrics::new("a\"b");
        let text = metrics.render_prometheus();
        assert!(text.contains("# TYPE lateral_agent_requests_total counter"));
        assert!(text.contains("lateral_agent_requests_total{endpoint=\"a\\\"b\"} 0"));
        metrics.observe(&Measurement {
            in_flight: 3,
            completed: 10,
            failed: 1,
            window: Duration::from_millis(500),
            latency_mean: Duration::from_millis(4),
            latency_p50: Duration::from_millis(3),
            latency_p99: Duration::from_millis(9),
            accepting: true,
            declared_capacity: None,
            utilization: None,
            mean_in_flight: 3.0,
            busy_fraction: None,
            oldest_in_flight: None,
        });
        let text = metrics.render_prometheus();
        assert!(
            text.contains("lateral_agent_in_flight{endpoint=\"a\\\"b\"} 3"),
            "{text}"
        );
        assert!(text.contains(
            "lateral_agent_latency_seconds{endpoint=\"a\\\"b\",quantile=\"0.99\"} 0.009"
        ));
        assert!(text.contains("lateral_agent_error_ratio{endpoint=\"a\\\"b\"} 0.1"));
        assert!(text.contains("lateral_agent_requests_per_second{endpoint=\"a\\\"b\"} 20"));
    }
}
