//! The crate's one error type.

/// Everything that can go wrong in `lateral-agent`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration (flags, environment or file) is invalid.
    #[error("invalid configuration: {field}: {expected}")]
    Config {
        /// The flag, variable or field at fault.
        field: String,
        /// What was expected, and what was found.
        expected: String,
    },
    /// TLS material could not be loaded or is unusable.
    #[error("tls: {0}")]
    Tls(String),
    /// A transport (QUIC, HTTP/2) failed.
    #[error("transport error: {0}")]
    Transport(String),
    /// An I/O operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// An ORCA load report could not be decoded.
    #[error("orca: {0}")]
    Orca(String),
    /// Polling a backend's JSON load endpoint failed (unreachable, timeout, bad status, oversized or
    /// malformed body).
    #[error("polling {url}: {reason}")]
    Poll {
        /// The load endpoint polled.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// Registering in etcd failed (the registration retries; see `registration`).
    #[error("etcd {0}")]
    Etcd(String),
    /// The request-id dedup store failed: at start-up (e.g. Redis unreachable; the agent stops), or on a
    /// request (the layer logs it and lets the request through).
    #[error("dedup store: {0}")]
    Dedup(String),
}

impl From<lateral_ops::etcd::EtcdError> for Error {
    fn from(e: lateral_ops::etcd::EtcdError) -> Self {
        Error::Etcd(e.to_string())
    }
}
