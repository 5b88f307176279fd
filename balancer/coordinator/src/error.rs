//! The crate's one error type.

/// Everything that can go wrong in `lateral-coordinator`, mapped to a `tonic::Status` at the gRPC boundary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid: names the source (file or flag), the field and what was expected.
    #[error("invalid configuration in {source_name}: field `{field}`: {expected}")]
    Config {
        /// File path or "flag --x" / "env LATERAL_X".
        source_name: String,
        /// Dotted path of the offending field.
        field: String,
        /// What was expected, and what was found.
        expected: String,
    },
    /// A configuration file could not be read or parsed.
    #[error("cannot load configuration {path}: {message}")]
    ConfigFile {
        /// The file.
        path: String,
        /// The reader's or parser's message (with line and column where known).
        message: String,
    },
    /// The named service is not configured.
    #[error("unknown service `{0}`")]
    UnknownService(String),
    /// A transport (QUIC, TLS, gRPC) failed.
    #[error("transport error: {0}")]
    Transport(String),
    /// An etcd endpoint source could not reach etcd or lost its watch (the source retries).
    #[error("etcd {call}: {detail}")]
    Etcd {
        /// What was being done: connect, Range, Watch.
        call: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// Trace export or the `tracing` subscriber could not be set up.
    #[error("telemetry: {0}")]
    Telemetry(#[from] lateral_ops::Error),
    /// An I/O operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::Config { .. } | Error::ConfigFile { .. } => {
                tonic::Status::failed_precondition(message)
            }
            Error::UnknownService(_) => tonic::Status::not_found(message),
            Error::Transport(_) | Error::Etcd { .. } | Error::Io(_) | Error::Telemetry(_) => {
                tonic::Status::unavailable(message)
            }
        }
    }
}

impl From<lateral_ops::etcd::EtcdError> for Error {
    fn from(e: lateral_ops::etcd::EtcdError) -> Self {
        Error::Etcd {
            call: e.call,
            detail: e.detail,
        }
    }
}
