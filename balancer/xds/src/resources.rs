//! Snapshots → xDS resources, one module per resource type. Pure: no I/O, no clock.
//!
//! Every function here takes a service name (and for EDS its [`WeightSnapshot`]) and returns the Envoy proto
//! message; [`pack`] wraps one in a `google.protobuf.Any` for a `DiscoveryResponse`. The encoding of weights
//! and health is described in the crate docs.

pub mod cluster;
pub mod endpoints;
pub mod listener;
pub mod route;

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

pub use lateral_proto::coordinator::WeightSnapshot;

/// The four resource types this server publishes, by their xDS type URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeUrl {
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    Route,
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoints,
}

impl TypeUrl {
    /// Every type, in the order Envoy needs them warmed (clusters before endpoints, listeners before routes).
    pub const ALL: [TypeUrl; 4] = [Self::Cluster, Self::Endpoints, Self::Listener, Self::Route];

    /// The type URL string carried in requests and responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Self::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Self::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Self::Endpoints => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        }
    }

    /// The type named by a request's `type_url`, if this server publishes it.
    pub fn parse(type_url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == type_url)
    }

    /// A short name for logs: `LDS`, `RDS`, `CDS`, `EDS`.
    pub fn short(self) -> &'static str {
        match self {
            Self::Listener => "LDS",
            Self::Route => "RDS",
            Self::Cluster => "CDS",
            Self::Endpoints => "EDS",
        }
    }
}

/// Wraps a message in `google.protobuf.Any` with its type URL.
pub fn pack<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_match_the_generated_messages_and_parse_back() {
        use envoy_types::pb::envoy::config;
        assert_eq!(
            TypeUrl::Listener.as_str(),
            config::listener::v3::Listener::type_url()
        );
        assert_eq!(
            TypeUrl::Route.as_str(),
            config::route::v3::RouteConfiguration::type_url()
        );
        assert_eq!(
            TypeUrl::Cluster.as_str(),
            config::cluster::v3::Cluster::type_url()
        );
        assert_eq!(
            TypeUrl::Endpoints.as_str(),
            config::endpoint::v3::ClusterLoadAssignment::type_url()
        );
        for t in TypeUrl::ALL {
            assert_eq!(TypeUrl::parse(t.as_str()), Some(t));
        }
        assert_eq!(TypeUrl::parse("type.googleapis.com/x.Y"), None);
    }
}
