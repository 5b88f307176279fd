//! LDS: the listeners of a service — an API listener for gRPC clients (named by their `xds:///` target) and a
//! socket listener for Envoy — both holding the same HTTP connection manager, which takes its routes from RDS
//! over ADS and ends in the router filter.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, config_source,
};
use envoy_types::pb::envoy::config::listener::v3::{
    ApiListener, Filter, FilterChain, Listener, filter,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};

use super::endpoints::address_of;
use super::pack;

/// The name of Envoy's HTTP connection manager network filter.
pub const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
/// The name of the router HTTP filter.
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// A config source that means "over the same ADS stream", v3 resources.
pub fn over_ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..ConfigSource::default()
    }
}

/// The HTTP connection manager for `service`: routes from RDS (route configuration `service`), the router
/// filter, HTTP/1 or HTTP/2 downstream (gRPC clients speak HTTP/2).
pub fn connection_manager(service: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        codec_type: http_connection_manager::CodecType::Auto as i32,
        stat_prefix: format!("lateral_{service}"),
        http_filters: vec![HttpFilter {
            name: ROUTER_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack(
                &Router::default(),
            ))),
            ..HttpFilter::default()
        }],
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(over_ads()),
            route_config_name: service.to_string(),
        })),
        ..HttpConnectionManager::default()
    }
}

/// The listener a gRPC client asks for by name: `name` (the host of its `xds:///name` target) as an API
/// listener routing to the service of the same name.
pub fn api_listener(name: &str) -> Listener {
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack(&connection_manager(name))),
        }),
        ..Listener::default()
    }
}

/// The listener Envoy opens for `service` on `addr`.
pub fn socket_listener(service: &str, addr: SocketAddr) -> Listener {
    Listener {
        name: service.to_string(),
        address: Some(address_of(addr)),
        stat_prefix: format!("lateral_{service}"),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: HCM_FILTER.into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&connection_manager(
                    service,
                )))),
            }],
            ..FilterChain::default()
        }],
        ..Listener::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn hcm_of(any: &envoy_types::pb::google::protobuf::Any) -> HttpConnectionManager {
        assert!(any.type_url.ends_with("HttpConnectionManager"));
        HttpConnectionManager::decode(any.value.as_slice()).unwrap()
    }

    fn routes_from_rds(hcm: &HttpConnectionManager, service: &str) {
        let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
            panic!("routes from RDS")
        };
        assert_eq!(rds.route_config_name, service);
        assert_eq!(rds.config_source, Some(over_ads()));
        assert_eq!(hcm.http_filters.last().unwrap().name, ROUTER_FILTER);
    }

    #[test]
    fn the_api_listener_holds_a_connection_manager_routing_over_ads() {
        let l = api_listener("greeter");
        assert_eq!(l.name, "greeter");
        assert!(l.address.is_none() && l.filter_chains.is_empty());
        let any = l.api_listener.unwrap().api_listener.unwrap();
        routes_from_rds(&hcm_of(&any), "greeter");
    }

    #[test]
    fn the_socket_listener_binds_the_port_and_holds_the_same_manager() {
        let l = socket_listener("greeter", "127.0.0.1:10000".parse().unwrap());
        assert_eq!(
            l.address,
            Some(address_of("127.0.0.1:10000".parse().unwrap()))
        );
        let filter = &l.filter_chains[0].filters[0];
        assert_eq!(filter.name, HCM_FILTER);
        let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
            panic!("a typed config")
        };
        routes_from_rds(&hcm_of(any), "greeter");
    }
}
