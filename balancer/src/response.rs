//! The response body a call returns ([`ResponseBody`]): one wrapper around the transport's body, not boxed
//! again, for everything the balancer reads or counts at the end of a response.
//!
//! - The request's in-flight count on its endpoint ends with the body (its trailers, its end, an error or
//!   the body being dropped).
//! - ORCA load reports in the trailers go to the endpoint ([`super::orca`]).
//! - The trailers' `grpc-status` goes on the call's span when the response headers had none (a normal
//!   unary answer carries its status in trailers; only a trailers-only answer has it in the headers).
//! - With a split ([`super::split`]), the request is counted in its group when the response ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use tokio::time::Instant;
use tonic::body::Body;

use super::endpoints::InFlightGuard;
use super::orca;
use super::snapshot::Shared;
use super::split::{Group, Pending};

/// Wraps the body of the response a call returns (see the module docs). `split`: the request's group and
/// when the call started, with a split.
pub(crate) fn wrap(
    response: Response<Body>,
    guard: InFlightGuard,
    shared: &Arc<Shared>,
    split: Option<(Group, Instant)>,
) -> Response<ResponseBody> {
    let span = if response.headers().contains_key("grpc-status") {
        None
    } else {
        let span = tracing::Span::current();
        (!span.is_disabled()).then_some(span)
    };
    let split = split.map(|(group, started)| Pending::new(group, started, response.headers()));
    let shared = Arc::clone(shared);
    response.map(|inner| ResponseBody {
        inner,
        guard: Some(guard),
        shared,
        span,
        split,
    })
}

/// The body of a response through a [`Balancer`](crate::Balancer): the endpoint's gRPC body as tonic's
/// transport returned it. It ends the request's in-flight count on its endpoint and reads the ORCA load report
/// in its trailers. A concrete type rather than a `tonic::body::Body` (which would box it once more per
/// call); generated tonic clients take any body, and `tonic::body::Body::new` converts it where a
/// `Body` is required.
pub struct ResponseBody {
    inner: Body,
    guard: Option<InFlightGuard>,
    shared: Arc<Shared>,
    /// The call's span while it still lacks `grpc.status` (`None` when it has one or records nothing).
    span: Option<tracing::Span>,
    /// The split's count of this request, until it is made.
    split: Option<Pending>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field(
                "endpoint",
                &self.guard.as_ref().map(InFlightGuard::endpoint),
            )
            .field("ended", &self.guard.is_none())
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    fn on_trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some(guard) = self.guard.take()
            && let Some(reading) = orca::read_report(trailers)
        {
            let now_us = self.shared.now_us();
            self.shared.on_orca(guard.endpoint(), reading, now_us);
        }
        if let Some(span) = self.span.take()
            && let Some(code) = trailers.get("grpc-status").and_then(|v| v.to_str().ok())
        {
            span.record("grpc.status", code);
        }
        if let Some(pending) = self.split.take() {
            pending.finish(&self.shared.metrics, super::split::grpc_status(trailers));
        }
    }

    /// The body ended without trailers (`error`: with an error).
    fn on_end(&mut self, error: bool) {
        self.guard = None;
        if let Some(pending) = self.split.take() {
            let status = if error { None } else { pending.header_status() };
            pending.finish(&self.shared.metrics, status);
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.on_trailers(trailers);
                }
            }
            Poll::Ready(Some(Err(_))) => self.on_end(true),
            Poll::Ready(None) => self.on_end(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Dropped before its end: a trailers-only answer counts by its status, anything else was cut short.
        if let Some(pending) = self.split.take() {
            let status = pending.header_status();
            pending.finish(&self.shared.metrics, status);
        }
    }
}
