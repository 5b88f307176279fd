//! Lateral's weights over xDS: an Aggregated Discovery Service (ADS, state of the world) that Envoy and gRPC's
//! proxyless xDS clients (any language) subscribe to, so they route in the shares the coordinator publishes.
//!
//! # What this crate owns, and what it does not touch
//! - **Input:** one `tokio::sync::watch::Receiver<Option<Arc<WeightSnapshot>>>` per service — what the
//!   coordinator's `CoordinatorHandle::subscribe(service)` returns. The crate never talks to agents, never
//!   reads the engine, and never changes a weight; it only translates snapshots.
//! - **Pure part** ([`resources`], [`catalog`], [`stream`]): snapshots → xDS resources (LDS, RDS, CDS, EDS),
//!   versions per type URL, and the per-stream state machine (subscriptions, nonces, ACK/NACK). No sockets, no
//!   clocks; unit-tested without a network.
//! - **I/O shell** ([`publisher`], [`server`]): a task that follows the receivers and publishes a new
//!   [`Catalog`] on change but no more often than [`XdsConfig::push_interval`], and the tonic service
//!   `envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources`. Incremental (delta) xDS
//!   is not served: `DeltaAggregatedResources` answers `UNIMPLEMENTED`, and both Envoy and gRPC fall back to
//!   state of the world when configured for it (`api_type: GRPC`, the default).
//!
//! # The resources, per service `S`
//! - **LDS** — two shapes, because the two kinds of client want different listeners. A subscriber that names
//!   listeners (gRPC clients always do: the name is the host of the `xds:///S` target) gets an *API listener*
//!   `S` (`api_listener` holding an `HttpConnectionManager`); a wildcard subscriber (Envoy, which asks for every
//!   listener) gets a *socket listener* `S` on `listener_host:port` for every service given a port in
//!   [`XdsConfig::listeners`], with the same `HttpConnectionManager` in its filter chain. Services without a
//!   port are not listened for by Envoy (its clusters are still published, for routes configured elsewhere).
//! - **RDS** — route configuration `S`: one virtual host, domains `*`, prefix `""` → cluster `S`.
//! - **CDS** — cluster `S`: type EDS over ADS (`eds_config { ads {} }`, service name `S`), `ROUND_ROBIN`,
//!   `common_lb_config { locality_weighted_lb_config {}, healthy_panic_threshold: 0% }`, upstream HTTP/2 (gRPC).
//! - **EDS** — `ClusterLoadAssignment` `S`, encoded as described next.
//!
//! # The weight encoding that steers both Envoy and gRPC
//! gRPC's xDS clients ignore endpoint weights under `round_robin` (grpc/grpc issue 32004: the legacy
//! `ROUND_ROBIN` policy becomes `xds_wrr_locality` over `round_robin`, and only the *locality* weights are
//! weighted), while Envoy uses endpoint weights and, with `locality_weighted_lb_config` on the cluster, also
//! locality weights. So every endpoint gets **a locality of its own** (`region: "lateral"`, `zone`: the endpoint's
//! zone, `sub_zone`: the endpoint id, which keeps localities distinct), and its weight is put **both** on the
//! locality (`LocalityLbEndpoints.load_balancing_weight`) and on its single `LbEndpoint`:
//! - gRPC picks a locality by weight (weighted target), then round robin over its one endpoint — the share is the
//!   locality weight;
//! - Envoy picks a locality by weight (locality-weighted LB), then its one endpoint — the same share. Without
//!   `locality_weighted_lb_config` Envoy would ignore the locality weights and use the endpoint weights, which
//!   are equal, so the encoding also holds for an Envoy whose cluster comes from elsewhere.
//!
//! The weight is the endpoint's share in parts per million (`WeightSnapshot`'s `weight × 10⁶`), at least 1 for
//! every endpoint because Envoy rejects 0. Health carries what the weight cannot: `ACTIVE`/`RAMPING` →
//! `HEALTHY`, `DEGRADED` → `DEGRADED`, `EJECTED`/`TRIPPED` → `UNHEALTHY`, `DRAINING` → `DRAINING`. In Envoy a
//! locality whose only host is unhealthy has no availability and gets no traffic; a `DEGRADED` host is used
//! only when healthy ones fall short (Envoy's meaning of degraded, stricter than Lateral's reduced weight), and
//! gRPC ignores every endpoint that is not `HEALTHY` or `UNKNOWN` (gRPC's `doc/grpc_xds_features.md`), so a
//! degraded endpoint gets no traffic from gRPC clients and only overflow from Envoy. Panic mode is
//! off (`healthy_panic_threshold: 0%`) so Envoy never sends to ejected hosts because too few are healthy. When
//! the snapshot is a *static fallback* (no data, or every endpoint unhealthy) the Lateral client routes by the
//! static weights, and so does this encoding: every endpoint with a static weight above zero is published
//! `HEALTHY`.
//!
//! # Features
//! `server` (default): everything above. Without it only [`XdsConfig`] and [`Error`] compile, so the
//! coordinator parses and validates its `[xds]` table without building Envoy's protos.
//!
//! Endpoint addresses must be IP literals (`http://10.0.0.1:50051`, `10.0.0.1:50051`): Envoy does not
//! resolve EDS host names. An endpoint whose address is a host name is left out and logged.
#![warn(missing_docs)]

#[cfg(feature = "server")]
pub mod catalog;
mod config;
mod error;
#[cfg(feature = "server")]
pub mod publisher;
#[cfg(feature = "server")]
pub mod resources;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod stream;

#[cfg(feature = "server")]
pub use catalog::Catalog;
pub use config::XdsConfig;
pub use error::Error;
#[cfg(feature = "server")]
pub use publisher::{Publisher, WeightsReceiver};
#[cfg(feature = "server")]
pub use resources::TypeUrl;
#[cfg(feature = "server")]
pub use server::XdsServer;
