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
    /// The process already has a global `tracing` subscriber; the first one stays.
    #[error("a tracing subscriber is already installed: {0}")]
    SubscriberInstalled(String),
}
