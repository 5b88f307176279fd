//! A request body kept for (possibly) more than one attempt: read without waiting when it is complete and
//! small (every unary and server-streaming call), so each attempt sends a copy; parked otherwise, so a retry
//! gets it back only if the first attempt's transport never read it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame, SizeHint};
use tonic::body::Body;

use super::channel::BoxError;

/// A request body prepared for (possibly) more than one attempt.
pub(crate) enum RequestBody {
    /// Fully read without waiting and within the replay limit (every unary and server-streaming call, and
    /// small client streams that were already complete): each attempt sends a copy.
    Replayable(Bytes),
    /// Still streaming: the first attempt gets it; a retry gets it back only if the transport never read it.
    Streaming(Arc<Reclaim>),
}

impl RequestBody {
    /// Reads what the body has ready now (without waiting), up to `limit` bytes. A body that is one data
    /// frame (every unary request tonic encodes) is kept as that frame's bytes, with no copy and no queue.
    pub(crate) fn prepare(mut body: Body, limit: usize) -> Result<Self, BoxError> {
        let mut cx = Context::from_waker(Waker::noop());
        // The frames read, in order: the first one, then any further ones.
        let mut first: Option<Frame<Bytes>> = None;
        let mut more: VecDeque<Frame<Bytes>> = VecDeque::new();
        let mut size = 0usize;
        let mut complete = false;
        loop {
            if body.is_end_stream() {
                complete = true;
                break;
            }
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(None) => {
                    complete = true;
                    break;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let is_data = frame.is_data();
                    size += frame.data_ref().map_or(0, Bytes::len);
                    if first.is_none() {
                        first = Some(frame);
                    } else {
                        more.push_back(frame);
                    }
                    if !is_data || size > limit {
                        break;
                    }
                }
                Poll::Ready(Some(Err(status))) => return Err(Box::new(status)),
                Poll::Pending => break,
            }
        }
        let all_data = first.as_ref().is_none_or(Frame::is_data) && more.iter().all(Frame::is_data);
        if complete && all_data {
            let bytes = match (first, more.is_empty()) {
                (None, _) => Bytes::new(),
                (Some(frame), true) => frame.into_data().unwrap_or_default(),
                (Some(frame), false) => {
                    let mut all = BytesMut::with_capacity(size);
                    for frame in std::iter::once(frame).chain(more) {
                        if let Some(data) = frame.data_ref() {
                            all.extend_from_slice(data);
                        }
                    }
                    all.freeze()
                }
            };
            return Ok(Self::Replayable(bytes));
        }
        let mut prefix = more;
        if let Some(frame) = first {
            prefix.push_front(frame);
        }
        Ok(Self::Streaming(Arc::new(Reclaim {
            started: AtomicBool::new(false),
            body: Mutex::new(Some(PrefixedBody { prefix, rest: body })),
        })))
    }

    /// The body of the next attempt.
    pub(crate) fn attempt(&self) -> Body {
        match self {
            Self::Replayable(bytes) => Body::new(ReplayedBody(Some(bytes.clone()))),
            Self::Streaming(reclaim) => Body::new(ReclaimBody {
                reclaim: Arc::clone(reclaim),
                body: None,
            }),
        }
    }

    /// Whether a further attempt can carry the whole body.
    pub(crate) fn can_send_again(&self) -> bool {
        match self {
            Self::Replayable(_) => true,
            Self::Streaming(reclaim) => {
                !reclaim.started.load(Ordering::Acquire)
                    && reclaim
                        .body
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .is_some()
            }
        }
    }
}

/// A streaming body parked until an attempt's transport first reads it.
pub(crate) struct Reclaim {
    started: AtomicBool,
    body: Mutex<Option<PrefixedBody>>,
}

/// The frames read while preparing, then the rest of the body.
struct PrefixedBody {
    prefix: VecDeque<Frame<Bytes>>,
    rest: Body,
}

impl http_body::Body for PrefixedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(frame) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }
}

/// One attempt's view of a [`Reclaim`]: takes the body out on the first read.
struct ReclaimBody {
    reclaim: Arc<Reclaim>,
    body: Option<PrefixedBody>,
}

impl http_body::Body for ReclaimBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if self.body.is_none() {
            self.reclaim.started.store(true, Ordering::Release);
            let taken = self
                .reclaim
                .body
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            self.body = taken;
        }
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(Some(Err(tonic::Status::internal(
                "request body was already sent",
            )))),
        }
    }
}

/// A replayable body as one attempt sends it: its bytes as a single data frame (none when empty). Unlike
/// `http_body_util::Full` it gives no exact size hint, so hyper adds no `content-length` header (gRPC does
/// not use one): two allocations fewer at the client and one at the server, per attempt.
struct ReplayedBody(Option<Bytes>);

impl http_body::Body for ReplayedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Poll::Ready(
            self.0
                .take()
                .filter(|bytes| !bytes.is_empty())
                .map(|bytes| Ok(Frame::data(bytes))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(Bytes::is_empty)
    }

    fn size_hint(&self) -> SizeHint {
        let len = self.0.as_ref().map_or(0, Bytes::len) as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(len);
        hint
    }
}
