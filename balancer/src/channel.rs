//! The `tower::Service` a generated tonic client drives: request ids, pick, dispatch, retry, response
//! tracking, and liveness from completions.
//!
//! Liveness: an attempt whose endpoint has answered nothing since the attempt started, for longer than the
//! endpoint's stall bound ([`super::live_load`]: a multiple of its recent latency, 250 ms..1 s), is on a
//! path that completes nothing (a blackhole whose agent still heartbeats). The endpoint is set aside
//! locally at once (1 s, doubling while it stays stalled, like a refused connection), and the attempt is
//! cancelled and retried on another endpoint when that is safe: the method is idempotent and the sent-request
//! retry is unused (a request that may have reached a backend is retried at most once, and the agent drops
//! a duplicate by request id). A non-idempotent attempt keeps waiting for its own deadline. An attempt on an
//! endpoint that keeps answering other requests is slow, not stalled, and is left alone.
//!
//! Retries: a request that never left (connect refused, reset before headers) or that an agent refused
//! before its backend saw it (`x-lateral-refused`, overload shedding) may try up to three endpoints, whatever
//! the method; one that may have reached a backend is retried once, and only if idempotent. All of them
//! draw on the retry budget.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio_util::sync::DropGuard;
use tonic::body::Body;
use tower::{Service, ServiceExt};

use lateral_proto::headers::REFUSED_HEADER;

use super::endpoints::{EndpointHandle, InFlightGuard};
use super::metrics::ClientMetrics;
use super::orca;
use super::request_body::RequestBody;
use super::request_id::REQUEST_ID_NAME;
use super::resend::RequestHead;
use super::response::ResponseBody;
use super::retry::RetryBudget;
use super::snapshot::Shared;
use super::split::{Group, Splitter};

/// The error type of [`Balancer`]: tonic turns it into a `Status` (a `tonic::Status` inside is kept as is,
/// transport errors become UNAVAILABLE, as with a plain `Channel`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The future returned by [`Balancer::call`](Service::call).
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send + 'static>>;

/// A drop-in replacement for `tonic::transport::Channel` that routes each request to one of a service's
/// endpoints by the latest weights. Cheap to clone; clones share everything. Built with
/// [`Balancer::builder`].
#[derive(Debug, Clone)]
pub struct Balancer {
    pub(crate) inner: Arc<Inner>,
}

/// What every clone shares. Dropping the last clone stops the background tasks.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) idempotent: HashSet<String>,
    pub(crate) budget: RetryBudget,
    pub(crate) client_id: String,
    pub(crate) next_request: AtomicU64,
    pub(crate) max_replay_bytes: usize,
    /// Key-hashed routing: the metadata carrying the key.
    pub(crate) hash_key: Option<http::HeaderName>,
    /// A dynamic/static split: assigns each request its group.
    pub(crate) split: Option<Splitter>,
    pub(crate) _stop: DropGuard,
    pub(crate) _attached: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl Balancer {
    /// The client's metrics registry.
    pub fn metrics(&self) -> &ClientMetrics {
        &self.inner.shared.metrics
    }

    /// The service this balancer routes.
    pub fn service(&self) -> &str {
        &self.inner.shared.service
    }

    /// This client's id (the prefix of its request ids).
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The ids of the endpoints in the current picker and their scheduled share of traffic (the
    /// coordinator's weights after exclusions and zone preference), in [0, 1]. What the two-level pick
    /// really sent is [`achieved_shares`](Self::achieved_shares).
    pub fn current_weights(&self) -> Vec<(String, f64)> {
        let picker = self.inner.shared.picker.load();
        picker
            .endpoints
            .iter()
            .zip(&picker.shares)
            .map(|(e, s)| (e.id().to_string(), *s))
            .collect()
    }
}

impl Balancer {
    /// Requests this client sent to each endpoint of the current picker (first attempts and retries) since
    /// it was built, as shares summing to 1 (empty before the first request): what the per-request choice
    /// made of the weights.
    pub fn achieved_shares(&self) -> Vec<(String, f64)> {
        let picker = self.inner.shared.picker.load();
        let total: u64 = picker.endpoints.iter().map(|e| e.picks()).sum();
        if total == 0 {
            return Vec::new();
        }
        picker
            .endpoints
            .iter()
            .map(|e| (e.id().to_string(), e.picks() as f64 / total as f64))
            .collect()
    }
}

impl Service<Request<Body>> for Balancer {
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    /// Always ready: readiness is per endpoint and is awaited inside the call, after the pick.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // One span per call (`otel.kind = client`), at debug level: the endpoint picked, its weight, retries,
        // the grpc-status (from the headers, else from the trailers). Its W3C context goes out in
        // `traceparent`, so the agent's proxy and the backend continue the trace. When no subscriber wants
        // it (an application's `fmt::init()` logs at info) the span is disabled and costs a callsite check.
        let span = tracing::debug_span!(
            "lateral.client",
            otel.kind = "client",
            rpc.service = %self.inner.shared.service,
            rpc.method = request.uri().path(),
            endpoint = tracing::field::Empty,
            weight = tracing::field::Empty,
            retries = 0u32,
            grpc.status = tracing::field::Empty,
        );
        Box::pin(tracing::Instrument::instrument(
            Arc::clone(&self.inner).dispatch(request),
            span,
        ))
    }
}

/// Puts the endpoint picked and its share on the call's span (only when the span is recorded).
fn record_pick(
    span: &tracing::Span,
    picker: &super::picker::PickerSnapshot,
    endpoint: &Arc<EndpointHandle>,
) {
    if span.is_disabled() {
        return;
    }
    span.record("endpoint", endpoint.id());
    if let Some(share) = picker
        .endpoints
        .iter()
        .position(|e| Arc::ptr_eq(e, endpoint))
        .and_then(|i| picker.shares.get(i))
    {
        span.record("weight", *share);
    }
}

/// An attempt's answer: the response (its body not yet wrapped) and the in-flight count it holds.
type Answer = Result<(Response<Body>, InFlightGuard), BoxError>;

/// How a failed attempt may be retried.
enum Outcome {
    Done(Answer),
    /// Worth retrying elsewhere if the body can be sent again and the budget allows; `sent` when the
    /// request may have reached a backend (only an idempotent method is then retried, once).
    Retry {
        result: Answer,
        sent: bool,
    },
}

impl Inner {
    /// Routes one call; with a split, assigns its group and counts it in the group's metrics (a failure
    /// at once, a response when it ends).
    async fn dispatch(
        self: Arc<Self>,
        request: Request<Body>,
    ) -> Result<Response<ResponseBody>, BoxError> {
        let split = self
            .split
            .as_ref()
            .map(|splitter| (splitter.assign(), tokio::time::Instant::now()));
        let group = split.map_or(Group::Dynamic, |(group, _)| group);
        match self.dispatch_in(request, group).await {
            Ok((response, guard)) => {
                Ok(super::response::wrap(response, guard, &self.shared, split))
            }
            Err(error) => {
                if let Some((group, started)) = split {
                    let metrics = &self.shared.metrics;
                    metrics.split.record(group, started.elapsed(), false);
                }
                Err(error)
            }
        }
    }

    async fn dispatch_in(&self, request: Request<Body>, group: Group) -> Answer {
        let metrics = &self.shared.metrics;
        metrics.requests.fetch_add(1, Ordering::Relaxed);
        self.budget.deposit();
        let (mut parts, body) = request.into_parts();
        if !parts.headers.contains_key(&REQUEST_ID_NAME) {
            let n = self.next_request.fetch_add(1, Ordering::Relaxed);
            // The client id was validated as a header value at build time.
            if let Some(id) = super::request_id::request_id(&self.client_id, n) {
                parts.headers.insert(REQUEST_ID_NAME.clone(), id);
            }
        }
        let idempotent = self.idempotent.contains(parts.uri.path());
        let body = RequestBody::prepare(body, self.max_replay_bytes)?;

        let span = tracing::Span::current();
        if !span.is_disabled() {
            #[cfg(feature = "otel")]
            lateral_ops::propagation::inject_current(&mut parts.headers);
        }
        let key = self
            .hash_key
            .as_ref()
            .and_then(|name| parts.headers.get(name))
            .map(|value| super::hashing::hash_key(value.as_bytes()));
        let now_us = self.shared.now_us();
        let picker = self.shared.picker.load_full();
        let Some(mut endpoint) = picker.pick_for(key, group, now_us).cloned() else {
            metrics.no_endpoint.fetch_add(1, Ordering::Relaxed);
            return Err(Box::new(tonic::Status::unavailable(
                picker.why_empty.clone(),
            )));
        };
        record_pick(&span, &picker, &endpoint);
        drop(picker);
        // The first attempt sends `parts` itself; a retry sends what `head` kept of them.
        let head = RequestHead::keep(&parts);
        let mut first = Some(parts);
        // A request that reached a server is retried at most once (and only if idempotent); one that never
        // left (connect refused, reset before headers) may try up to MAX_ATTEMPTS endpoints, since a dead
        // endpoint can be picked before the coordinator has ejected it.
        const MAX_ATTEMPTS: u32 = 3;
        let mut attempts = 0u32;
        let mut sent_retry_used = false;
        loop {
            attempts += 1;
            let parts = first.take().unwrap_or_else(|| head.parts());
            let attempt = Request::from_parts(parts, body.attempt());
            let outcome = self
                .attempt(&endpoint, attempt, idempotent && !sent_retry_used)
                .await;
            let (result, sent) = match outcome {
                Outcome::Done(result) => return result,
                Outcome::Retry { result, .. }
                    if attempts >= MAX_ATTEMPTS || !body.can_send_again() =>
                {
                    return result;
                }
                Outcome::Retry { result, sent } => (result, sent),
            };
            // An answer (UNAVAILABLE to an idempotent method) or a cancelled stalled attempt means the
            // request was sent: that retry is used. `attempt` only offers it while unused.
            sent_retry_used |= sent;
            let picker = self.shared.picker.load_full();
            let now_us = self.shared.now_us();
            let Some(next) = picker.pick_other_for(&endpoint, group, now_us).cloned() else {
                return result;
            };
            if !self.budget.withdraw() {
                metrics.budget_exhausted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(service = %self.shared.service, "retry budget exhausted; returning the failure");
                return result;
            }
            metrics.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                service = %self.shared.service,
                from = %endpoint.id(),
                to = %next.id(),
                path = %head.path(),
                "retrying on another endpoint"
            );
            drop(result);
            record_pick(&span, &picker, &next);
            span.record("retries", 1u32);
            endpoint = next;
        }
    }

    async fn attempt(
        &self,
        endpoint: &Arc<EndpointHandle>,
        request: Request<Body>,
        idempotent: bool,
    ) -> Outcome {
        let started_us = self.shared.now_us();
        let guard = endpoint.start(started_us);
        let call = async {
            let mut channel = endpoint.take_channel();
            let response = match channel.ready().await {
                Ok(ready) => ready.call(request),
                Err(error) => return Err(error),
            };
            endpoint.give_back_channel(channel);
            response.await
        };
        let result = match self
            .watch_liveness(endpoint, started_us, idempotent, call)
            .await
        {
            Some(result) => result,
            None => {
                // Stalled and safe to retry: the attempt is cancelled (dropping it resets the stream).
                drop(guard);
                return Outcome::Retry {
                    result: Err(Box::new(tonic::Status::unavailable(format!(
                        "endpoint `{}` answered nothing for {:?}: stalled; attempt cancelled",
                        endpoint.id(),
                        endpoint.live.stall_bound()
                    )))),
                    sent: true,
                };
            }
        };
        match result {
            Ok(response) => {
                let now_us = self.shared.now_us();
                endpoint.live.on_answer(started_us, now_us);
                endpoint.local_ejection.on_reached();
                if let Some(code) = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                {
                    tracing::Span::current().record("grpc.status", code);
                }
                if let Some(reading) = orca::read_report(response.headers()) {
                    self.shared.on_orca(endpoint, reading, now_us);
                }
                let unavailable = response
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|v| v.as_bytes() == b"14");
                if unavailable && response.headers().contains_key(REFUSED_HEADER) {
                    // Refused by the agent before the backend saw it (overload shedding): nothing was
                    // processed, so any method may go elsewhere, like a request that never left, without
                    // using the once-only retry of a sent request.
                    self.shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
                    Outcome::Retry {
                        result: Ok((response, guard)),
                        sent: false,
                    }
                } else if unavailable && idempotent {
                    Outcome::Retry {
                        result: Ok((response, guard)),
                        sent: true,
                    }
                } else {
                    Outcome::Done(Ok((response, guard)))
                }
            }
            // No response at all: connect refused, reset before the response headers, a dead endpoint.
            Err(error) => {
                drop(guard);
                if let Some(backoff) = endpoint.local_ejection.on_unsent() {
                    tracing::warn!(
                        service = %self.shared.service,
                        endpoint = %endpoint.id(),
                        ?backoff,
                        "endpoint unreachable twice in a row; set aside locally until the backoff ends"
                    );
                    endpoint.local_ejection.schedule_return(backoff);
                }
                Outcome::Retry {
                    result: Err(error.into()),
                    sent: false,
                }
            }
        }
    }

    /// Runs `call` while watching the endpoint's liveness (see the module docs). `None` when the endpoint
    /// stalled and the attempt may be retried (`retry_safe`): the caller cancels it. Otherwise the call's
    /// own result, however long it takes.
    async fn watch_liveness<F, T>(
        &self,
        endpoint: &Arc<EndpointHandle>,
        started_us: u64,
        retry_safe: bool,
        call: F,
    ) -> Option<T>
    where
        F: Future<Output = T>,
    {
        let mut call = std::pin::pin!(call);
        let mut check_at = tokio::time::Instant::now() + endpoint.live.stall_bound();
        loop {
            tokio::select! {
                biased;
                result = &mut call => return Some(result),
                _ = tokio::time::sleep_until(check_at) => {}
            }
            if endpoint.live.progressed_since(started_us) {
                // The endpoint answers others: this request is slow, not stuck.
                return Some(call.await);
            }
            let now_us = self.shared.now_us();
            if endpoint.live.is_stalled(endpoint.in_flight(), now_us) {
                if let Some(backoff) = endpoint.local_ejection.on_stalled() {
                    tracing::warn!(
                        service = %self.shared.service,
                        endpoint = %endpoint.id(),
                        bound = ?endpoint.live.stall_bound(),
                        ?backoff,
                        "endpoint answered nothing while requests were outstanding: stalled; set aside locally"
                    );
                    endpoint.local_ejection.schedule_return(backoff);
                }
                self.shared.metrics.stalled.fetch_add(1, Ordering::Relaxed);
                if retry_safe {
                    return None;
                }
                return Some(call.await);
            }
            // Busy since later than this attempt started (an earlier answer): look again one bound on.
            check_at = tokio::time::Instant::now() + endpoint.live.stall_bound();
        }
    }
}
