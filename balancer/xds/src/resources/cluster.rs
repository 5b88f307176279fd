//! CDS: a service's cluster — endpoints from EDS over ADS, locality-weighted round robin (so Envoy honours the
//! per-endpoint localities' weights as gRPC does), no panic mode, HTTP/2 to the backends.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use prost::Name;

use super::listener::over_ads;
use super::pack;

/// How long Envoy waits for a TCP connection to a backend.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Cluster `service`: EDS over ADS (service name `service`), `ROUND_ROBIN` with locality weights, panic
/// threshold 0 % (ejected endpoints never receive traffic because too few are healthy), upstream HTTP/2.
pub fn cluster(service: &str) -> Cluster {
    let http2 = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        ..HttpProtocolOptions::default()
    };
    Cluster {
        name: service.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(over_ads()),
            service_name: service.to_string(),
        }),
        connect_timeout: Some(ProtoDuration {
            seconds: CONNECT_TIMEOUT.as_secs() as i64,
            nanos: CONNECT_TIMEOUT.subsec_nanos() as i32,
        }),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        common_lb_config: Some(cluster::CommonLbConfig {
            healthy_panic_threshold: Some(Percent { value: 0.0 }),
            locality_config_specifier: Some(
                cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                    cluster::common_lb_config::LocalityWeightedLbConfig {},
                ),
            ),
            ..cluster::CommonLbConfig::default()
        }),
        typed_extension_protocol_options: [(HttpProtocolOptions::full_name(), pack(&http2))]
            .into_iter()
            .collect(),
        ..Cluster::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eds_cluster_over_ads_with_locality_weights_and_no_panic() {
        let c = cluster("greeter");
        assert_eq!(c.name, "greeter");
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32
            ))
        );
        let eds = c.eds_cluster_config.unwrap();
        assert_eq!(eds.service_name, "greeter");
        assert_eq!(eds.eds_config, Some(over_ads()));
        let lb = c.common_lb_config.unwrap();
        assert_eq!(lb.healthy_panic_threshold, Some(Percent { value: 0.0 }));
        assert!(matches!(
            lb.locality_config_specifier,
            Some(cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
        ));
        assert!(
            c.typed_extension_protocol_options
                .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
        );
    }
}
