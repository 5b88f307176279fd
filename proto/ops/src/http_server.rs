//! The one small HTTP/1.1 server behind every operator endpoint (the agent's `/metrics`, the coordinator's
//! metrics and dashboard): bind, accept with a connection limit, serve each connection with hyper under a
//! header read timeout, and stop gracefully.
//!
//! What it owns: the accept loop, its bounds and its shutdown. What it does not: routes. The caller passes a
//! handler `Fn(Request<Incoming>) -> impl Future<Output = Response<B>>`; the peer's address is in every
//! request's extensions as [`PeerAddr`].
//!
//! - **Connection limit**: at most [`ServerConfig::max_connections`] connections are served at once; one more is
//!   closed as soon as it is accepted (the client sees the connection end with no response).
//! - **Accept errors** (e.g. out of file descriptors) are logged and retried after a short pause, not fatal.
//! - **Stop**: [`HttpServer::shutdown`] stops accepting, asks every connection to finish its response in flight
//!   and close, and waits at most [`ServerConfig::shutdown_grace`] for them; what remains (an open event
//!   stream, a slow client) is then aborted. Dropping the [`HttpServer`] aborts everything at once.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::Error;

/// Pause after a failed `accept` before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The bounds of one server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Names the server in logs ("agent metrics", "coordinator HTTP").
    pub name: &'static str,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (hyper's `header_read_timeout`).
    pub header_read_timeout: Duration,
    /// How long [`HttpServer::shutdown`] waits for connections to finish before aborting them.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// 64 connections, 10 s to send headers, 1 s of grace at shutdown.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(1),
        }
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets [`shutdown_grace`](Self::shutdown_grace).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }
}

/// The address of the client that sent a request, in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// A running server. Stop it with [`shutdown`](Self::shutdown); dropping it aborts it and its connections.
#[derive(Debug)]
pub struct HttpServer {
    name: &'static str,
    local_addr: SocketAddr,
    grace: Duration,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Where it listens (the bound port when the address asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets connections finish the response in flight, and returns once they have closed
    /// or [`ServerConfig::shutdown_grace`] has passed (then the rest is aborted).
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if tokio::time::timeout(self.grace, &mut self.task)
            .await
            .is_err()
        {
            tracing::debug!(
                name = self.name,
                "HTTP connections still open after the grace period; aborting them"
            );
        }
        // Drop aborts whatever is left.
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves every connection with `handler` until the returned server is shut down or dropped.
pub async fn serve<H, F, B>(
    addr: SocketAddr,
    config: ServerConfig,
    handler: H,
) -> Result<HttpServer, Error>
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let (stop, stopped) = watch::channel(false);
    let grace = config.shutdown_grace;
    let name = config.name;
    let task = tokio::spawn(accept_loop(
        listener,
        config.clone(),
        Arc::new(handler),
        stopped,
    ));
    tracing::debug!(name, %local_addr, "HTTP server listening");
    Ok(HttpServer {
        name,
        local_addr,
        grace,
        stop,
        task,
    })
}

async fn accept_loop<H, F, B>(
    listener: TcpListener,
    config: ServerConfig,
    handler: Arc<H>,
    mut stopped: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let name = config.name;
    let permits = Arc::new(Semaphore::new(config.max_connections));
    // Owned here, so aborting this task aborts every connection with it.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Stopped, or the server was dropped (then this task is being aborted anyway).
            () = stop_requested(&mut stopped) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(name, error = %e, "HTTP accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(name, %peer, "too many HTTP connections; closing");
            continue;
        };
        let connection = serve_connection(
            stream,
            peer,
            config.header_read_timeout,
            handler.clone(),
            stopped.clone(),
        );
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(name, %peer, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection<H, F, B>(
    stream: TcpStream,
    peer: SocketAddr,
    header_read_timeout: Duration,
    handler: Arc<H>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        let response = handler(req);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        () = stop_requested(&mut stopped) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

/// Resolves once a stop was asked for, or the server was dropped (its sender gone).
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    // The guard the wait returns is dropped here, not held across the caller's next await.
    let _ = stopped.wait_for(|stop| *stop).await;
}
