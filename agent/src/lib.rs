//! The Lateral agent: measures one gRPC backend and streams heartbeats to coordinators over QUIC.
//!
//! What this crate owns:
//! - [`measurement`]: the normalised report every way of measuring produces ([`measurement::Measurement`])
//!   and the [`measurement::MeasurementSource`] seam the reporter reads from;
//! - measuring: a tower layer for tonic servers, an h2c reverse proxy for backends in any language, and a
//!   poller for backends that expose a JSON load endpoint;
//! - request-id dedup ([`dedup`]): dropping a retry the backend already received, in memory or shared by
//!   several agents through Redis;
//! - reporting: a QUIC server (quinn, mutual TLS) that gives every subscribing coordinator one persistent
//!   stream and fans each measurement out to all of them, plus ORCA `endpoint-load-metrics-bin` trailers;
//! - membership ([`registration`]): registering the endpoint in etcd under a lease, so coordinators find it and
//!   forget it when the agent goes away;
//! - draining on SIGTERM or admin request.
//!
//! What it does not touch: weights. The agent reports; the coordinator (crate `lateral-coordinator`) decides.
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod error;
pub mod measurement;
// reporting: QUIC reporter, drain, binary config
pub mod config;
pub mod drain;
pub mod registration;
pub mod reporter;
// measuring: recorder, layer, ORCA trailers, dedup, proxy, poller
pub mod dedup;
pub mod layer;
pub mod metrics_http;
pub mod orca;
pub mod poll;
pub mod proxy;
pub mod recorder;
// observability: OTLP traces and W3C trace context

pub use error::Error;
