//! The in-process way of measuring: a tower [`Layer`] for tonic (or any `http`) servers.
//!
//! ```no_run
//! # use lateral_agent::{layer::LoadLayer, recorder::Recorder};
//! # async fn run(svc: lateral_proto::demo::echo_server::EchoServer<impl lateral_proto::demo::echo_server::Echo>) {
//! let recorder = Recorder::new();
//! tonic::transport::Server::builder()
//!     .layer(LoadLayer::new(recorder.clone()).with_orca(true))
//!     .add_service(svc)
//!     .serve("127.0.0.1:50051".parse().unwrap())
//!     .await
//!     .unwrap();
//! # }
//! ```
//!
//! What a request counts as ([`LoadService`]):
//! - **in flight** from the moment the layer is called until the response body ends (its trailers or its
//!   last frame are produced) or is dropped — so a long server stream stays in flight for its whole life;
//! - **latency**: from the call to the end of the response body;
//! - **failure** or **success**, from the `grpc-status` found in the response headers (trailers-only
//!   responses) or in the body's trailers (so a stream that ends in error is a failure), by
//!   [`grpc_status_outcome`]; a response with no `grpc-status` at all is a failure if it is a gRPC response
//!   (`content-type: application/grpc…`, a protocol violation) or has an HTTP 5xx status, a success
//!   otherwise; a body error or an error from the inner service is a failure;
//! - **cancelled** (neither) when the response body is dropped before its end, e.g. the client reset the
//!   stream; see [`crate::recorder`].
//!
//! Options:
//! - [`LoadLayer::with_orca`]: put the ORCA `endpoint-load-metrics-bin` report ([`crate::orca`]) in every gRPC
//!   response's trailers, or in its headers for a trailers-only response;
//! - [`LoadLayer::with_dedup`]: answer a request whose `x-lateral-request-id` was already seen
//!   ([`crate::dedup`]) with `ALREADY_EXISTS` without calling the inner service. Rejected duplicates are not
//!   measured (they cost the backend nothing, and their ~0 latency would skew the window).
//! - [`LoadLayer::with_shedding`]: with a declared capacity, answer a request that arrives when the backend is
//!   full past its queue allowance with an immediate `UNAVAILABLE` ("overloaded: ..."), before the dedup check
//!   and without calling the inner service ([`shedding`] says why the rule lives here and how it was chosen).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::dedup::{DedupFuture, DedupStore, REQUEST_ID_HEADER, Verdict};
use crate::orca;
use crate::recorder::{InFlightGuard, Outcome, Recorder};

pub mod shedding;

/// The gRPC status codes counted as the backend failing, with their names.
///
/// `UNKNOWN`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`,
/// `DATA_LOSS`. Everything else — `OK`, and the codes that describe the request or the caller
/// (`CANCELLED`, `INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, `PERMISSION_DENIED`,
/// `FAILED_PRECONDITION`, `ABORTED`, `OUT_OF_RANGE`, `UNAUTHENTICATED`) — is a success: the backend did its job.
pub const FAILURE_CODES: [(i32, &str); 7] = [
    (2, "UNKNOWN"),
    (4, "DEADLINE_EXCEEDED"),
    (8, "RESOURCE_EXHAUSTED"),
    (12, "UNIMPLEMENTED"),
    (13, "INTERNAL"),
    (14, "UNAVAILABLE"),
    (15, "DATA_LOSS"),
];

/// Classifies a gRPC status code; see [`FAILURE_CODES`].
pub fn grpc_status_outcome(code: i32) -> Outcome {
    if FAILURE_CODES.iter().any(|&(c, _)| c == code) {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

/// The outcome said by a `grpc-status` in `headers`, if there is one. An unparseable status is `UNKNOWN`.
fn status_in(headers: &HeaderMap) -> Option<Outcome> {
    let value = headers.get("grpc-status")?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(2);
    Some(grpc_status_outcome(code))
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A tower layer that measures every request into a [`Recorder`]; see the [module docs](self).
#[derive(Clone)]
pub struct LoadLayer {
    shared: Arc<Shared>,
}

struct Shared {
    recorder: Recorder,
    orca: bool,
    dedup: Option<Arc<dyn DedupStore>>,
    shedding: Option<shedding::Shedding>,
}

impl std::fmt::Debug for LoadLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadLayer")
            .field("orca", &self.shared.orca)
            .field("dedup", &self.shared.dedup.is_some())
            .finish_non_exhaustive()
    }
}

impl LoadLayer {
    /// Measures into `recorder`; no ORCA trailers, no dedup.
    pub fn new(recorder: Recorder) -> Self {
        Self {
            shared: Arc::new(Shared {
                recorder,
                orca: false,
                dedup: None,
                shedding: None,
            }),
        }
    }

    fn edit(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = match Arc::try_unwrap(self.shared) {
            Ok(s) => s,
            Err(arc) => Shared {
                recorder: arc.recorder.clone(),
                orca: arc.orca,
                dedup: arc.dedup.clone(),
                shedding: arc
                    .shedding
                    .as_ref()
                    .map(|s| shedding::Shedding::new(s.queue_allowance(), arc.recorder.now())),
            },
        };
        f(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Whether to put the ORCA load report on every gRPC response ([`crate::orca`]).
    pub fn with_orca(self, enabled: bool) -> Self {
        self.edit(|s| s.orca = enabled)
    }

    /// Rejects requests whose `x-lateral-request-id` `store` has already seen ([`crate::dedup`]).
    pub fn with_dedup(self, store: Arc<dyn DedupStore>) -> Self {
        self.edit(|s| s.dedup = Some(store))
    }

    /// Refuses requests when the backend's queue stands past `queue_allowance` queued requests per declared
    /// slot, or reaches twice that ([`shedding`]; the usual allowance is
    /// [`shedding::DEFAULT_QUEUE_ALLOWANCE`]). No effect without a declared capacity.
    pub fn with_shedding(self, queue_allowance: f64) -> Self {
        self.edit(|s| {
            s.shedding = Some(shedding::Shedding::new(queue_allowance, s.recorder.now()));
        })
    }

    /// Requests refused by [`LoadLayer::with_shedding`] so far (the recorder's [`Recorder::shed_total`]).
    pub fn shed_total(&self) -> u64 {
        self.shared.recorder.shed_total()
    }

    /// The recorder this layer measures into.
    pub fn recorder(&self) -> &Recorder {
        &self.shared.recorder
    }
}

impl<S> Layer<S> for LoadLayer {
    type Service = LoadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`LoadLayer`] produces; see the [module docs](self).
#[derive(Clone)]
pub struct LoadService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for LoadService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadService").finish_non_exhaustive()
    }
}

impl<S> LoadService<S> {
    /// Wraps `inner`, measuring like `layer` does.
    pub fn new(inner: S, layer: &LoadLayer) -> Self {
        layer.layer(inner)
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for LoadService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: Body,
{
    type Response = Response<LoadBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let recorder = &self.shared.recorder;
        if let Some(refusal) = self.shared.shedding.as_ref().and_then(|s| {
            s.refuses(
                recorder.in_flight(),
                recorder.declared_capacity(),
                recorder.now(),
            )
        }) {
            recorder.count_shed();
            return ResponseFuture {
                state: State::Shed { refusal },
                shared: Arc::clone(&self.shared),
            };
        }
        let request_id = self
            .shared
            .dedup
            .as_ref()
            .and_then(|store| req.headers().get(REQUEST_ID_HEADER).map(|id| (store, id)))
            .map(|(store, id)| store.check_and_insert(&String::from_utf8_lossy(id.as_bytes())));
        let state = match request_id {
            Some(check) => {
                // The readied service goes into the future; a clone takes its place (tower's usual dance).
                let clone = self.inner.clone();
                let svc = std::mem::replace(&mut self.inner, clone);
                State::Checking {
                    check,
                    pending: Some((svc, req)),
                }
            }
            None => State::Called {
                fut: self.inner.call(req),
                guard: Some(self.shared.recorder.begin()),
            },
        };
        ResponseFuture {
            state,
            shared: Arc::clone(&self.shared),
        }
    }
}

pin_project! {
    /// The response future of [`LoadService`].
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S, ReqB>,
        shared: Arc<Shared>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        Checking {
            check: DedupFuture,
            pending: Option<(S, Request<ReqB>)>,
        },
        Called {
            #[pin]
            fut: S::Future,
            guard: Option<InFlightGuard>,
        },
        Shed {
            refusal: shedding::Refusal,
        },
    }
}

impl<S, ReqB, ResB> std::future::Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body,
{
    type Output = Result<Response<LoadBody<ResB>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Checking { check, pending } => {
                    let verdict = ready!(check.as_mut().poll(cx));
                    let Some((mut svc, req)) = pending.take() else {
                        panic!("lateral_agent::layer::ResponseFuture polled after completion");
                    };
                    match verdict {
                        Ok(Verdict::Duplicate) => {
                            let id = req.headers().get(REQUEST_ID_HEADER).cloned();
                            tracing::debug!(request_id = ?id, "rejected a duplicate Lateral request id");
                            return Poll::Ready(Ok(duplicate_response()));
                        }
                        Ok(Verdict::Fresh) => {}
                        Err(e) => warn_dedup_failure(&e),
                    }
                    let guard = Some(this.shared.recorder.begin());
                    let fut = svc.call(req);
                    this.state.set(State::Called { fut, guard });
                }
                StateProj::Shed { refusal } => {
                    tracing::debug!(?refusal, "shed a request: backend over its queue allowance");
                    let mut refusal = shedding::refusal(*refusal);
                    // The load report tells the client's live queue estimate how full this backend is.
                    if this.shared.orca {
                        orca::insert(refusal.headers_mut(), &this.shared.recorder);
                    }
                    return Poll::Ready(Ok(refusal));
                }
                StateProj::Called { fut, guard } => {
                    let result = ready!(fut.poll(cx));
                    let Some(guard) = guard.take() else {
                        panic!("lateral_agent::layer::ResponseFuture polled after completion");
                    };
                    return Poll::Ready(match result {
                        Ok(response) => Ok(wrap_response(response, guard, this.shared)),
                        Err(e) => {
                            guard.finish(Outcome::Failure);
                            Err(e)
                        }
                    });
                }
            }
        }
    }
}

fn duplicate_response<B: Body>() -> Response<LoadBody<B>> {
    tonic::Status::already_exists(format!(
        "duplicate Lateral request id ({REQUEST_ID_HEADER}): this request was already received within the dedup window"
    ))
    .into_http()
}

fn wrap_response<B: Body>(
    response: Response<B>,
    guard: InFlightGuard,
    shared: &Arc<Shared>,
) -> Response<LoadBody<B>> {
    let (mut parts, body) = response.into_parts();
    let grpc = is_grpc(&parts.headers);
    let header_outcome = status_in(&parts.headers);
    // What the response ends as if no trailers say otherwise.
    let end_outcome = match header_outcome {
        Some(o) => o,
        None if grpc || parts.status.is_server_error() => Outcome::Failure,
        None => Outcome::Success,
    };
    let trailers_only = header_outcome.is_some();
    if shared.orca && grpc && trailers_only {
        orca::insert(&mut parts.headers, &shared.recorder);
    }
    let body = LoadBody {
        kind: Kind::Inner { body },
        guard: Some(guard),
        end_outcome,
        orca_trailer: (shared.orca && grpc && !trailers_only).then(|| shared.recorder.clone()),
    };
    Response::from_parts(parts, body)
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Empty,
    }
}

pin_project! {
    /// The response body of [`LoadService`]: the inner body, observed until its end or drop.
    pub struct LoadBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B>,
        guard: Option<InFlightGuard>,
        end_outcome: Outcome,
        orca_trailer: Option<Recorder>,
    }

    impl<B> PinnedDrop for LoadBody<B>
    where
        B: Body,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(guard) = this.guard.take() {
                // Ended without being polled to the end (e.g. hyper saw `is_end_stream` and stopped):
                // finished. Otherwise the client went away: the guard's drop counts it cancelled.
                let ended = match this.kind.project() {
                    KindProj::Inner { body } => body.is_end_stream(),
                    KindProj::Empty => true,
                };
                if ended {
                    guard.finish(*this.end_outcome);
                }
            }
        }
    }
}

impl<B: Body> Default for LoadBody<B> {
    /// An empty body that measures nothing (used for responses the layer makes itself).
    fn default() -> Self {
        Self {
            kind: Kind::Empty,
            guard: None,
            end_outcome: Outcome::Success,
            orca_trailer: None,
        }
    }
}

impl<B: Body> std::fmt::Debug for LoadBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadBody")
            .field("in_flight", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> Body for LoadBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let body = match this.kind.project() {
            KindProj::Inner { body } => body,
            KindProj::Empty => return Poll::Ready(None),
        };
        let frame = match ready!(body.poll_frame(cx)) {
            None => {
                if let Some(guard) = this.guard.take() {
                    guard.finish(*this.end_outcome);
                }
                return Poll::Ready(None);
            }
            Some(Err(e)) => {
                if let Some(guard) = this.guard.take() {
                    guard.finish(Outcome::Failure);
                }
                return Poll::Ready(Some(Err(e)));
            }
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_trailers() {
            Ok(mut trailers) => {
                let outcome = status_in(&trailers).unwrap_or(*this.end_outcome);
                if let Some(recorder) = this.orca_trailer.take() {
                    orca::insert(&mut trailers, &recorder);
                }
                if let Some(guard) = this.guard.take() {
                    guard.finish(outcome);
                }
                Frame::trailers(trailers)
            }
            Err(frame) => frame,
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Logs a failed dedup check at most once a second (an outage fails every request's check), with how many
/// were not logged since.
fn warn_dedup_failure(error: &crate::Error) {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    static NEXT_MS: AtomicU64 = AtomicU64::new(0);
    static QUIET: AtomicU64 = AtomicU64::new(0);
    let now_ms = BASE
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64;
    let next = NEXT_MS.load(Ordering::Relaxed);
    if now_ms >= next
        && NEXT_MS
            .compare_exchange(next, now_ms + 1_000, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let unlogged = QUIET.swap(0, Ordering::Relaxed);
        tracing::warn!(%error, unlogged, "request-id dedup check failed; letting the request through");
    } else {
        QUIET.fetch_add(1, Ordering::Relaxed);
    }
}
