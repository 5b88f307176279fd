//! The slow-drip fault: a backend that sends response headers and then nothing, ever.
//!
//! [`Drip`] sits between the agent's measuring layer and the gRPC routes. While [`Knobs::drip`] is on, a
//! request is answered with `200`, `content-type: application/grpc` and a body that never yields a frame:
//! the client has its headers (so nothing at the transport level looks wrong) and waits for a message that
//! does not come. The layer outside keeps the request in flight, as a real stuck handler would.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use http::{Request, Response};
use hyper::body::{Body, Frame};

use crate::echo_service::Knobs;

/// Wraps the routes; see the [module docs](self).
#[derive(Clone)]
pub struct Drip<S> {
    inner: S,
    knobs: Arc<Knobs>,
}

impl<S> Drip<S> {
    /// Wraps `inner`, dripping while `knobs` says so.
    pub fn new(inner: S, knobs: Arc<Knobs>) -> Self {
        Self { inner, knobs }
    }
}

/// A response body that never produces a frame and never ends.
struct Silent;

impl Body for Silent {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Poll::Pending
    }
}

impl<S, B> tower::Service<Request<B>> for Drip<S>
where
    S: tower::Service<Request<B>, Response = Response<tonic::body::Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !self.knobs.dripping() {
            return self.inner.call(request).boxed();
        }
        let mut response = Response::new(tonic::body::Body::new(Silent));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        std::future::ready(Ok(response)).boxed()
    }
}
