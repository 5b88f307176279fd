//! One subscribed coordinator: handshake, one uni stream, `Hello`, the shared heartbeats, `Goodbye`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::Semaphore;
use tokio::sync::broadcast::error::RecvError;

use super::{Shared, close_code};

/// Longest a subscriber waits for its `Goodbye` to be acknowledged before the connection may be closed.
pub(super) const FLUSH_BOUND: Duration = Duration::from_secs(1);

/// Why a stream ended.
enum End {
    /// The coordinator closed the connection (or it timed out).
    PeerGone(quinn::ConnectionError),
    /// `Goodbye` was sent and the reporter then stopped.
    Drained,
    /// The reporter stopped without draining.
    Shutdown,
    /// A write stalled longer than the write timeout.
    TooSlow,
    /// A write failed.
    Failed(String),
}

/// Counts the subscriber while alive.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) async fn serve(shared: Arc<Shared>, incoming: quinn::Incoming, permits: Arc<Semaphore>) {
    let peer = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "could not accept QUIC connection");
            return;
        }
    };
    let conn = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        result = connecting => match result {
            Ok(conn) => conn,
            Err(e) => {
                // An unauthenticated peer (no certificate, or one from another CA) ends here.
                tracing::warn!(%peer, error = %e, "coordinator refused: QUIC/TLS handshake failed");
                return;
            }
        },
    };
    let Ok(_permit) = permits.try_acquire_owned() else {
        let max = shared.opts.max_subscribers;
        tracing::warn!(%peer, max, "coordinator refused: too many subscribers");
        let reason = format!("too many subscribers (max {max})");
        conn.close(
            VarInt::from_u32(close_code::TOO_MANY_SUBSCRIBERS),
            reason.as_bytes(),
        );
        return;
    };
    let _counted = Counted::new(&shared.subscribers);
    tracing::info!(%peer, subscribers = shared.subscribers.load(Ordering::Relaxed), "coordinator subscribed");

    match stream(&shared, &conn).await {
        End::PeerGone(e) => tracing::info!(%peer, reason = %e, "coordinator disconnected"),
        End::Drained => conn.close(VarInt::from_u32(close_code::DRAINED), b"drained"),
        End::Shutdown => conn.close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown"),
        End::TooSlow => {
            let timeout_ms = shared.opts.write_timeout.as_millis() as u64;
            tracing::warn!(%peer, timeout_ms, "coordinator disconnected: it stopped taking heartbeats");
            conn.close(VarInt::from_u32(close_code::TOO_SLOW), b"too slow");
        }
        End::Failed(e) => {
            tracing::warn!(%peer, error = %e, "heartbeat stream failed");
            conn.close(VarInt::from_u32(close_code::INTERNAL), b"stream failed");
        }
    }
}

async fn stream(shared: &Shared, conn: &quinn::Connection) -> End {
    // Subscribe before Hello so that no heartbeat measured after Hello is missed.
    let mut frames = shared.frames.subscribe();
    let mut goodbye = shared.goodbye.subscribe();
    let mut send = tokio::select! {
        _ = shared.shutdown.cancelled() => return End::Shutdown,
        e = conn.closed() => return End::PeerGone(e),
        opened = conn.open_uni() => match opened {
            Ok(send) => send,
            Err(e) => return End::PeerGone(e),
        },
    };
    let timeout = shared.opts.write_timeout;
    if let Err(end) = write(&mut send, shared.hello.clone(), timeout).await {
        return end;
    }
    loop {
        let pending_goodbye = goodbye.borrow_and_update().clone();
        if let Some(frame) = pending_goodbye {
            if let Err(end) = write(&mut send, frame, timeout).await {
                return end;
            }
            let _ = send.finish();
            // Let the Goodbye reach the peer before anyone closes the connection (bounded).
            let _ = tokio::time::timeout(FLUSH_BOUND, send.stopped()).await;
            return tokio::select! {
                _ = shared.shutdown.cancelled() => End::Drained,
                e = conn.closed() => End::PeerGone(e),
            };
        }
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return End::Shutdown,
            e = conn.closed() => return End::PeerGone(e),
            changed = goodbye.changed() => {
                if changed.is_err() {
                    return End::Shutdown;
                }
            }
            received = frames.recv() => match received {
                Ok(frame) => {
                    if let Err(end) = write(&mut send, frame, timeout).await {
                        return end;
                    }
                    shared.written.fetch_add(1, Ordering::Relaxed);
                }
                Err(RecvError::Lagged(skipped)) => {
                    shared.skipped.fetch_add(skipped, Ordering::Relaxed);
                    tracing::warn!(
                        peer = %conn.remote_address(),
                        skipped,
                        "coordinator lags behind; skipping its oldest heartbeats"
                    );
                }
                Err(RecvError::Closed) => return End::Shutdown,
            },
        }
    }
}

async fn write(send: &mut quinn::SendStream, frame: Bytes, timeout: Duration) -> Result<(), End> {
    match tokio::time::timeout(timeout, send.write_chunk(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(quinn::WriteError::ConnectionLost(e))) => Err(End::PeerGone(e)),
        Ok(Err(e)) => Err(End::Failed(e.to_string())),
        Err(_) => Err(End::TooSlow),
    }
}
