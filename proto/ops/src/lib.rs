//! What Lateral's agent and coordinator share at run time, written once so the two cannot drift.
//!
//! What this crate owns:
//! - [`etcd`] (feature `etcd`): the etcd client plumbing, one dialer (keep-alives, timeouts), bounded calls
//!   and jittered backoff for the agent's registration and the coordinator's endpoint source.
//! - [`prometheus`]: the Prometheus text exposition writer every `/metrics` endpoint uses (agent,
//!   coordinator and client).
//! - [`http_server`] (feature `http`): the small HTTP/1.1 server behind the operator endpoints: bind, a
//!   connection limit, a header read timeout, graceful stop. Each binary brings its own routes.
//! - [`tls`] (feature `tls`): the mutual-TLS configurations both QUIC sides build from (rustls with ring),
//!   and a development CA (rcgen).
//! - [`propagation`] (feature `propagation`): W3C trace context on `http::HeaderMap`s, through the
//!   OpenTelemetry API only (the client's `otel` feature uses it without the SDK).
//! - [`otlp`] (feature `otlp`): OTLP/gRPC trace export through a bounded batch processor, and the process's
//!   `tracing` subscriber, configured by the standard `OTEL_*` variables and a `[telemetry]` table.
//!
//! What it does not touch: which metrics and spans exist (each binary names its own) and the wire formats
//! (`lateral-proto`).
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "http")]
pub mod http_server;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod prometheus;
#[cfg(feature = "propagation")]
pub mod propagation;
#[cfg(feature = "tls")]
pub mod tls;

pub use error::Error;
