//! The crate's one error type.

/// What can go wrong when configuring or starting the xDS server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration field holds a value the server cannot use.
    #[error("xDS configuration: `{field}` must be {expected}")]
    Config {
        /// The field, as written in the coordinator's configuration (e.g. `xds.listeners.greeter`).
        field: String,
        /// What the field must hold.
        expected: String,
    },
    /// The ADS listen address could not be bound.
    #[error("cannot listen for xDS (ADS) on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}
