//! Lateral's client: [`Balancer`], a drop-in replacement for `tonic::transport::Channel` that routes
//! each request to one endpoint of a service by the latest coordinator weights.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use lateral_balancer::Balancer;
//! use lateral_proto::demo::echo_client::EchoClient;
//!
//! let balancer = Balancer::builder("echo")
//!     .endpoints([("a", "http://10.0.0.1:50051"), ("b", "http://10.0.0.2:50051")])
//!     .static_weights([("a", 3.0), ("b", 1.0)])
//!     .coordinator("http://127.0.0.1:7070")
//!     .build()?;
//! let mut client = EchoClient::new(balancer);
//! # Ok(()) }
//! ```
//!
//! How it is put together:
//! - [`builder`]: configuration; [`Builder::build`] starts one policy task (and, in sidecar mode, the
//!   `WatchWeights` subscriber of [`watch`]) on the current runtime and returns at once.
//! - [`snapshot`]: the policy task turns weight snapshots into immutable pickers (membership, states,
//!   staleness) and publishes them with `arc-swap`.
//! - [`picker`]: the pick path, two-level: gRFC A58's static stride scheduler over the coordinator's weights
//!   names a candidate, a second one is drawn by weight, and the one with the shorter expected delay for its
//!   capacity wins, from a live queue estimate (own in-flight plus the other clients' from ORCA trailers).
//!   Lock-free, allocation-free.
//! - [`channel`]: the `tower::Service`: request ids, pick, dispatch on the endpoint's lazily-connected
//!   tonic channel ([`endpoints`]), retries under a budget ([`retry`]), response tracking, and liveness
//!   from completions: an attempt on an endpoint that answers nothing is cancelled and, when safe, retried.
//!   A call answers `http::Response<`[`ResponseBody`]`>`: the transport's body with the end-of-response
//!   bookkeeping, not boxed again (generated tonic clients take any body; `tonic::body::Body::new` makes
//!   one where a `Body` is required). Per call the balancer allocates twice beyond a plain `Channel` (the
//!   boxed future and the request body tonic's `Body` boxes), plus what h2 spends carrying the request id.
//! - [`orca`]: reading ORCA trailers (server-side in-flight for the pick, utilization for zone preference);
//!   [`metrics`]: Prometheus text.
//! - Routing variants, each off by default and precomputed by the policy task so that the pick stays
//!   lock-free and allocation-free: [`hashing`] (key-hashed routing on a weighted Maglev table),
//!   [`zones`] (zone preference with spillover and hysteresis), [`split`] (a fraction of requests on
//!   dynamic weights, the rest on static ones, compared in the metrics).
//!
//! Which variant when:
//! - **default (weighted pick)**: stateless services; the most exact balance by the coordinator's weights.
//! - **[`hash_key_header`](Builder::hash_key_header)**: stateful services (caches, sessions, actors) where a
//!   key should keep hitting the same endpoint; each endpoint's share of keys follows its weight, and a
//!   weight change moves close to the minimum of keys. Balance is only as even as the keys are.
//! - **[`zone_policy`](Builder::zone_policy)**: backends in several zones where crossing zones costs
//!   latency or money and each zone is sized for its own clients; spills only what the local zone cannot
//!   carry (everything when it is unhealthy), and does not flap.
//! - **[`dynamic_fraction`](Builder::dynamic_fraction)**: adopting Lateral: put 10% of traffic on the
//!   coordinator's weights, compare the `group="dynamic"` and `group="static"` series, then raise it.
//!
//! They combine: hashed requests follow their group's table, zone preference applies to both groups'
//! weighted picks (not to hashed requests: a key has one owner across zones).
//!
//! Features:
//! - `embedded` (default): [`Builder::embedded`] runs the coordinator (`lateral-coordinator`: engine, QUIC
//!   ingest from the agents) inside this process, re-exported as [`coordinator`]. Without it the crate
//!   compiles no QUIC stack, certificate generator, CLI or TOML parser, and no OpenTelemetry SDK: a client
//!   that talks to a sidecar coordinator uses [`Builder::coordinator`] and needs nothing more.
//! - `otel`: W3C trace context (`traceparent`) injected into every outgoing request from the current
//!   `tracing` span, through the OpenTelemetry API (the application installs the SDK and the propagator).
//!
//! What it does not touch: computing weights (the engine and the coordinator do that) and deduplicating
//! requests (the agent does, by `x-lateral-request-id`).

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod builder;
mod channel;
mod endpoints;
mod error;
pub mod hashing;
mod live_load;
mod metrics;
mod orca;
mod outlier;
mod picker;
mod request_body;
mod request_id;
mod resend;
mod response;
mod retry;
mod snapshot;
mod split;
mod watch;
mod zones;

pub use builder::Builder;
pub use channel::{Balancer, BoxError, ResponseFuture};
pub use endpoints::EndpointConfig;
pub use error::Error;
pub use metrics::ClientMetrics;
pub use response::ResponseBody;
pub use retry::RetryBudgetConfig;
pub use snapshot::WeightsFeed;
pub use split::{Group, GroupStats};
pub use zones::ZonePolicy;

/// The coordinator this client can embed ([`Builder::embedded`]): the crate `lateral-coordinator`.
#[cfg(feature = "embedded")]
#[doc(inline)]
pub use lateral_coordinator as coordinator;

/// The request header carrying a request id that stays the same across retries, so the agent can drop a
/// duplicate.
pub use lateral_proto::headers::REQUEST_ID_HEADER;

/// Internals that the benches and fuzz targets drive directly; not a stable API.
#[doc(hidden)]
pub mod internals {
    pub use crate::orca::{
        DECLARED_CAPACITY_METRIC, IN_FLIGHT_METRIC, OrcaReading, parse_report, read_report,
    };
    pub use crate::picker::{MAX_WEIGHT, PickBench, StrideScheduler};
    pub use crate::request_id::{REQUEST_ID_NAME, request_id};
}
