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
}
