//! The polling way of measuring: read a backend's JSON load endpoint and normalise it.
//!
//! A [`Poller`] sends `GET <url>` (HTTP/1.1, hyper-util client; meant for a loopback endpoint such as
//! `http://127.0.0.1:9090/load`) every [`PollOptions::interval`] (500 ms by default) when driven by
//! [`Poller::run`], or once per [`Poller::poll_once`]. Each answer is parsed as a [`LoadReport`] and turned
//! into a [`Measurement`] by the pure [`normalise`]. The poller is a [`MeasurementSource`]: `take_window`
//! returns the latest normalised measurement.
//!
//! # Field mapping
//!
//! Every field is optional; unknown fields are ignored; numbers may be integers or decimals. Non-finite or
//! negative numbers count as missing (rates and percentages are clamped into their range).
//!
//! | JSON field | unit | → `Measurement` | when missing |
//! |---|---|---|---|
//! | `current_load` | requests in flight | `in_flight` (rounded) | from `queue_depth` + `busy_workers` |
//! | `queue_depth`, `busy_workers` | requests waiting / being served | `in_flight = queue_depth + busy_workers`, only when `current_load` is missing | 0 each (both missing: `in_flight` 0) |
//! | `average_latency_ms` | ms | `latency_mean` | `p50_latency_ms`, else 0 |
//! | `p50_latency_ms` | ms | `latency_p50` | `average_latency_ms`, else 0 |
//! | `p99_latency_ms` | ms | `latency_p99` | max of p50 and mean |
//! | `requests_per_second` | 1/s | `completed = round(rps × window)` | `completed` |
//! | `completed` | cumulative count since the backend started | `completed` = increase since the previous poll (a decrease means a restart: the new value is the increase) | 0 (and 0 on the first poll: no baseline) |
//! | `error_rate` | fraction 0..1 | `failed = round(completed × error_rate)` | 0 |
//! | `max_capacity` | concurrent requests | `declared_capacity` (rounded, ≥ 1) | none |
//! | `accepting` | bool | `accepting` | `true` |
//! | `utilization` | fraction 0..1 | `utilization` | from `cpu_percent` |
//! | `cpu_percent` | 0..100 | `utilization = cpu_percent / 100`, only when `utilization` is missing | none |
//!
//! A poll sees one moment, so `mean_in_flight` is that poll's `in_flight`, and `busy_fraction` and
//! `oldest_in_flight` are `None` (nothing to integrate over time; the heartbeat's `utilization` then comes
//! from `utilization` / `cpu_percent` only).
//!
//! Latencies are capped at one day. `window` is the time since the previous successful poll on the poller's
//! [`Clock`] (the configured interval for the first one).
//!
//! # Failures
//!
//! Each poll is bounded: a [`PollOptions::timeout`] for the whole exchange (connect, headers, body) and a
//! [`PollOptions::max_body_bytes`] body limit. An unreachable endpoint, a timeout, a non-2xx status, an
//! oversized body or malformed JSON is logged (`warn`), returned as [`Error::Poll`] from `poll_once`, and
//! the latest measurement becomes a *not accepting* one with zero counts (an endpoint we cannot read
//! must not attract traffic). The next successful poll's window then spans the outage.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::time::{Instant, MissedTickBehavior};

use crate::Error;
use crate::measurement::{Measurement, MeasurementSource};
use crate::recorder::{Clock, TokioClock};

/// A backend's JSON load report, as read; see the [module docs](self) for each field's meaning.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
#[allow(missing_docs)] // the table in the module docs documents every field
pub struct LoadReport {
    pub current_load: Option<f64>,
    pub queue_depth: Option<f64>,
    pub busy_workers: Option<f64>,
    pub average_latency_ms: Option<f64>,
    pub p50_latency_ms: Option<f64>,
    pub p99_latency_ms: Option<f64>,
    pub requests_per_second: Option<f64>,
    pub completed: Option<f64>,
    pub error_rate: Option<f64>,
    pub max_capacity: Option<f64>,
    pub accepting: Option<bool>,
    pub utilization: Option<f64>,
    pub cpu_percent: Option<f64>,
}

/// A usable number: finite and non-negative.
fn valid(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite() && *v >= 0.0)
}

fn round_u64(x: f64) -> u64 {
    // `as` saturates; `x` is finite and non-negative here.
    x.round() as u64
}

fn round_u32(x: f64) -> u32 {
    x.round().min(f64::from(u32::MAX)) as u32
}

const MAX_LATENCY_MS: f64 = 86_400_000.0;

fn millis(ms: f64) -> Duration {
    Duration::from_secs_f64(ms.min(MAX_LATENCY_MS) / 1000.0)
}

/// Parses a load endpoint's body as the poller does; `pub` (hidden) only so the fuzz target feeds this parser.
#[doc(hidden)]
pub fn parse_body(body: &[u8]) -> Result<LoadReport, String> {
    serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))
}

/// Turns a [`LoadReport`] into a [`Measurement`] over `window`; `previous` is the last successfully read
/// report (for the cumulative `completed` counter). Pure; see the mapping table in the [module docs](self).
pub fn normalise(
    report: &LoadReport,
    previous: Option<&LoadReport>,
    window: Duration,
) -> Measurement {
    let in_flight = match valid(report.current_load) {
        Some(load) => round_u32(load),
        None => {
            let queued = valid(report.queue_depth).unwrap_or(0.0);
            let busy = valid(report.busy_workers).unwrap_or(0.0);
            round_u32(queued + busy)
        }
    };

    let mean = valid(report.average_latency_ms);
    let p50 = valid(report.p50_latency_ms);
    let p99 = valid(report.p99_latency_ms);
    let mean_ms = mean.or(p50).unwrap_or(0.0);
    let p50_ms = p50.or(mean).unwrap_or(0.0);
    let p99_ms = p99.unwrap_or(mean_ms.max(p50_ms));

    let completed = match valid(report.requests_per_second) {
        Some(rps) => round_u64(rps * window.as_secs_f64()),
        None => match (
            valid(report.completed),
            previous.and_then(|p| valid(p.completed)),
        ) {
            (Some(now), Some(before)) if now >= before => round_u64(now - before),
            (Some(now), Some(_)) => round_u64(now),
            _ => 0,
        },
    };
    let error_rate = valid(report.error_rate).unwrap_or(0.0).min(1.0);
    let failed = round_u64(completed as f64 * error_rate).min(completed);

    let declared_capacity = valid(report.max_capacity)
        .filter(|c| *c > 0.0)
        .map(|c| round_u32(c).max(1));
    let utilization = valid(report.utilization)
        .or_else(|| valid(report.cpu_percent).map(|p| p / 100.0))
        .map(|u| u.min(1.0));

    Measurement {
        in_flight,
        completed,
        failed,
        window,
        latency_mean: millis(mean_ms),
        latency_p50: millis(p50_ms),
        latency_p99: millis(p99_ms),
        accepting: report.accepting.unwrap_or(true),
        declared_capacity,
        utilization,
        // A poll sees one moment: its in-flight figure stands for the window; nothing to integrate or age.
        mean_in_flight: f64::from(in_flight),
        busy_fraction: None,
        oldest_in_flight: None,
    }
}

/// The measurement reported when the endpoint cannot be read: not accepting, nothing counted.
pub fn unreadable(window: Duration) -> Measurement {
    Measurement {
        in_flight: 0,
        completed: 0,
        failed: 0,
        window,
        latency_mean: Duration::ZERO,
        latency_p50: Duration::ZERO,
        latency_p99: Duration::ZERO,
        accepting: false,
        declared_capacity: None,
        utilization: None,
        mean_in_flight: 0.0,
        busy_fraction: None,
        oldest_in_flight: None,
    }
}

/// How the poller polls.
#[derive(Debug, Clone)]
pub struct PollOptions {
    /// Time between polls in [`Poller::run`] (default 500 ms).
    pub interval: Duration,
    /// Bound on one whole poll: connect, headers and body (default 400 ms).
    pub timeout: Duration,
    /// Largest accepted body (default 64 KiB).
    pub max_body_bytes: usize,
}

impl Default for PollOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(400),
            max_body_bytes: 64 * 1024,
        }
    }
}

struct PollState {
    latest: Measurement,
    last_report: Option<LoadReport>,
    last_ok: Option<Instant>,
    last_error: Option<String>,
}

/// Polls one JSON load endpoint; see the [module docs](self).
pub struct Poller {
    url: Uri,
    opts: PollOptions,
    clock: Arc<dyn Clock>,
    client: Client<HttpConnector, Empty<Bytes>>,
    state: Mutex<PollState>,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("url", &self.url)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Poller {
    /// A poller for `url` (`http://…`), on the [`TokioClock`].
    pub fn new(url: Uri, opts: PollOptions) -> Result<Self, Error> {
        Self::with_clock(url, opts, Arc::new(TokioClock))
    }

    /// Like [`new`](Self::new), reading time from `clock`.
    ///
    /// Until the first poll, the latest measurement is [`unreadable`] (not accepting).
    pub fn with_clock(url: Uri, opts: PollOptions, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        if url.scheme() != Some(&http::uri::Scheme::HTTP) || url.authority().is_none() {
            return Err(Error::Config {
                field: "poll url".into(),
                expected: format!("an http:// URL like http://127.0.0.1:9090/load, found {url:?}"),
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(opts.timeout));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            state: Mutex::new(PollState {
                latest: unreadable(opts.interval),
                last_report: None,
                last_ok: None,
                last_error: None,
            }),
            url,
            opts,
            clock,
            client,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PollState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latest normalised measurement.
    pub fn latest(&self) -> Measurement {
        self.lock().latest.clone()
    }

    /// The error of the latest poll, if it failed.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// Polls once: fetches, normalises and stores the measurement (or the not-accepting one on error).
    pub async fn poll_once(&self) -> Result<Measurement, Error> {
        let fetched = self.fetch().await;
        let now = self.clock.now();
        let mut state = self.lock();
        let window = state
            .last_ok
            .map_or(self.opts.interval, |t| now.saturating_duration_since(t));
        match fetched {
            Ok(report) => {
                let m = normalise(&report, state.last_report.as_ref(), window);
                state.latest = m.clone();
                state.last_report = Some(report);
                state.last_ok = Some(now);
                state.last_error = None;
                Ok(m)
            }
            Err(reason) => {
                let err = Error::Poll {
                    url: self.url.to_string(),
                    reason,
                };
                tracing::warn!(error = %err, "load endpoint unreadable; reporting not accepting");
                state.latest = unreadable(window);
                state.last_error = Some(err.to_string());
                Err(err)
            }
        }
    }

    async fn fetch(&self) -> Result<LoadReport, String> {
        match tokio::time::timeout(self.opts.timeout, self.fetch_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no complete answer within {:?}", self.opts.timeout)),
        }
    }

    async fn fetch_unbounded(&self) -> Result<LoadReport, String> {
        let request = Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("unreachable: {}", error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP status {status}"));
        }
        let limit = self.opts.max_body_bytes;
        let too_large = || format!("body larger than {limit} bytes");
        if let Some(len) = response.headers().get(http::header::CONTENT_LENGTH)
            && len
                .to_str()
                .ok()
                .and_then(|l| l.parse::<u64>().ok())
                .is_none_or(|l| l > limit as u64)
        {
            return Err(too_large());
        }
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large()
                } else {
                    format!("reading body: {e}")
                }
            })?
            .to_bytes();
        parse_body(&body)
    }

    /// Polls every [`PollOptions::interval`] forever (tokio time; a late poll delays the next one rather than
    /// bursting). Spawn it; abort the task to stop.
    pub async fn run(&self) {
        let mut ticker = tokio::time::interval(self.opts.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            // Errors are logged and turned into a not-accepting measurement by `poll_once`.
            let _ = self.poll_once().await;
        }
    }
}

impl MeasurementSource for Poller {
    /// The latest normalised measurement (polling, not the reporter, decides the window).
    fn take_window(&self) -> Measurement {
        self.latest()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn report(json: &str) -> LoadReport {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn current_load_wins_over_queue_depth() {
        let r = report(r#"{"current_load": 4, "queue_depth": 10, "busy_workers": 2}"#);
        assert_eq!(normalise(&r, None, Duration::from_millis(500)).in_flight, 4);
        let r = report(r#"{"queue_depth": 10, "busy_workers": 2}"#);
        assert_eq!(
            normalise(&r, None, Duration::from_millis(500)).in_flight,
            12
        );
    }

    #[test]
    fn cumulative_completed_is_diffed_and_survives_restarts() {
        let w = Duration::from_millis(500);
        let a = report(r#"{"completed": 100, "error_rate": 0.1}"#);
        let b = report(r#"{"completed": 150, "error_rate": 0.1}"#);
        let c = report(r#"{"completed": 20}"#);
        assert_eq!(normalise(&a, None, w).completed, 0);
        let m = normalise(&b, Some(&a), w);
        assert_eq!((m.completed, m.failed), (50, 5));
        assert_eq!(normalise(&c, Some(&b), w).completed, 20);
    }

    #[test]
    fn defaults_for_an_empty_object() {
        let m = normalise(&report("{}"), None, Duration::from_millis(500));
        assert_eq!(
            m,
            Measurement {
                accepting: true,
                ..unreadable(Duration::from_millis(500))
            }
        );
    }

    fn num() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            Just(None),
            Just(Some(f64::NAN)),
            Just(Some(f64::INFINITY)),
            Just(Some(f64::NEG_INFINITY)),
            Just(Some(f64::MAX)),
            any::<f64>().prop_map(Some),
            (0.0..1e6f64).prop_map(Some),
        ]
    }

    fn any_report() -> impl Strategy<Value = LoadReport> {
        (proptest::collection::vec(num(), 12), any::<Option<bool>>()).prop_map(|(n, accepting)| {
            LoadReport {
                current_load: n[0],
                queue_depth: n[1],
                busy_workers: n[2],
                average_latency_ms: n[3],
                p50_latency_ms: n[4],
                p99_latency_ms: n[5],
                requests_per_second: n[6],
                completed: n[7],
                error_rate: n[8],
                max_capacity: n[9],
                utilization: n[10],
                cpu_percent: n[11],
                accepting,
            }
        })
    }

    proptest! {
        #[test]
        fn normalise_is_total_and_in_range(r in any_report(), prev in any_report(), window_ms in 0u64..10_000) {
            let window = Duration::from_millis(window_ms);
            let m = normalise(&r, Some(&prev), window);
            prop_assert!(m.failed <= m.completed);
            prop_assert_eq!(m.window, window);
            prop_assert!(m.utilization.is_none_or(|u| (0.0..=1.0).contains(&u)));
            prop_assert!(m.declared_capacity != Some(0));
            prop_assert!(m.latency_p99 <= Duration::from_secs(86_400));
            prop_assert_eq!(m.accepting, r.accepting.unwrap_or(true));
            if valid(r.p99_latency_ms).is_none() {
                prop_assert!(m.latency_p99 >= m.latency_p50 && m.latency_p99 >= m.latency_mean);
            }
            if let Some(cpu) = valid(r.cpu_percent).filter(|_| valid(r.utilization).is_none()) {
                prop_assert_eq!(m.utilization, Some((cpu / 100.0).min(1.0)));
            }
        }
    }
}
