//! Lateral's client side: the coordinator around the weight engine, and a drop-in tonic channel.
//!
//! What this crate owns:
//! - [`engine`] is the crate `lateral-engine`, re-exported: the pure, sans-IO weight engine. Every rule from
//!   the reference article (windows, capacity estimates, headroom shares, smoothing, floors, freshness,
//!   re-admission, canary breaker and promotion, oscillation damping, drift alerts) as a deterministic state
//!   machine that takes `now` as an argument, in a crate of its own that depends on nothing async.
//! - [`coordinator`]: the I/O shell around the engine: configuration, QUIC heartbeat ingest from agents,
//!   ticks, and the `lateral.v1.Coordinator` gRPC service (`WatchWeights`, `GetDecisions`). It is the
//!   binary `lateral-coordinator` and can also run embedded in a client process.
//! - [`client`]: [`client::Balancer`], a `tower::Service<http::Request<tonic::body::Body>>` that generated
//!   tonic clients take in place of a `tonic::transport::Channel`, picking endpoints by the latest weights
//!   (lock-free, allocation-free pick path).
//!
//! What it does not touch: measuring backends (that is `lateral-agent`) and wire formats (that is
//! `lateral-proto`).
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
pub mod coordinator;
#[doc(inline)]
pub use lateral_engine as engine;
mod error;
pub mod telemetry;

pub use error::Error;
