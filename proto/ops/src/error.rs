//! The crate's one error type.

/// What can go wrong while setting up shared run-time plumbing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The OTLP exporter could not be built for this endpoint.
    #[error("OTLP exporter for {endpoint}: {detail}")]
    Exporter {
        /// The collector endpoint.
        endpoint: String,
        /// The exporter's message.
        detail: String,
    },
    /// An HTTP server could not listen on its address (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The process already has a global `tracing` subscriber; the first one stays.
    #[error("a tracing subscriber is already installed: {0}")]
    SubscriberInstalled(String),
}
