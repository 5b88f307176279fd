//! EDS: a service's [`WeightSnapshot`] as a `ClusterLoadAssignment`, one locality per endpoint with the
//! endpoint's share on both the locality and the endpoint (see the crate docs for why).

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, Locality, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use lateral_proto::coordinator::{EndpointState, EndpointWeight, WeightSnapshot};

/// The region every published locality carries (the zone and sub-zone tell endpoints apart).
pub const REGION: &str = "lateral";
/// Weights are shares in parts per million.
pub const WEIGHT_SCALE: f64 = 1_000_000.0;

/// An endpoint left out of an assignment, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The endpoint id.
    pub endpoint: String,
    /// A sentence for the log.
    pub reason: String,
}

/// The load assignment for cluster `service` from `snapshot`, and the endpoints that could not be expressed.
pub fn load_assignment(
    service: &str,
    snapshot: &WeightSnapshot,
) -> (ClusterLoadAssignment, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut localities = Vec::with_capacity(snapshot.endpoints.len());
    for endpoint in &snapshot.endpoints {
        let Some(addr) = socket_addr(&endpoint.address) else {
            skipped.push(Skipped {
                endpoint: endpoint.id.clone(),
                reason: format!(
                    "address `{}` is not an IP literal with a port (Envoy does not resolve EDS host names)",
                    endpoint.address
                ),
            });
            continue;
        };
        let weight = Some(UInt32Value {
            value: lb_weight(endpoint),
        });
        localities.push(LocalityLbEndpoints {
            locality: Some(Locality {
                region: REGION.into(),
                zone: endpoint.zone.clone(),
                sub_zone: endpoint.id.clone(),
            }),
            lb_endpoints: vec![LbEndpoint {
                health_status: health(endpoint, snapshot.static_fallback) as i32,
                load_balancing_weight: weight,
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(address_of(addr)),
                    hostname: endpoint.id.clone(),
                    ..Endpoint::default()
                })),
                ..LbEndpoint::default()
            }],
            load_balancing_weight: weight,
            priority: 0,
            ..LocalityLbEndpoints::default()
        });
    }
    let assignment = ClusterLoadAssignment {
        cluster_name: service.to_string(),
        endpoints: localities,
        ..ClusterLoadAssignment::default()
    };
    (assignment, skipped)
}

/// The endpoint's share in parts per million, at least 1 (Envoy rejects a weight of 0; health, not weight,
/// keeps traffic off an ejected endpoint).
pub fn lb_weight(endpoint: &EndpointWeight) -> u32 {
    let ppm = if endpoint.weight.is_finite() {
        (endpoint.weight.clamp(0.0, 1.0) * WEIGHT_SCALE).round() as u32
    } else {
        0
    };
    ppm.max(1)
}

/// The health Envoy and gRPC see: from the engine's state, except in a static fallback, where every endpoint
/// with a weight is to be used (as the Lateral client does).
pub fn health(endpoint: &EndpointWeight, static_fallback: bool) -> HealthStatus {
    if static_fallback && endpoint.weight > 0.0 {
        return HealthStatus::Healthy;
    }
    match EndpointState::try_from(endpoint.state) {
        Ok(EndpointState::Active | EndpointState::Ramping) => HealthStatus::Healthy,
        Ok(EndpointState::Degraded) => HealthStatus::Degraded,
        Ok(EndpointState::Draining) => HealthStatus::Draining,
        Ok(EndpointState::Ejected | EndpointState::Tripped | EndpointState::Unspecified)
        | Err(_) => HealthStatus::Unhealthy,
    }
}

/// `http://1.2.3.4:5`, `https://[::1]:5`, `1.2.3.4:5` → a socket address; a host name → `None`.
pub fn socket_addr(address: &str) -> Option<SocketAddr> {
    let rest = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    rest.trim_end_matches('/').parse().ok()
}

/// A TCP socket address as Envoy's `Address`.
pub fn address_of(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..SocketAddress::default()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn endpoint(id: &str, address: &str, weight: f64, state: EndpointState) -> EndpointWeight {
        EndpointWeight {
            id: id.into(),
            address: address.into(),
            zone: "z1".into(),
            weight,
            state: state as i32,
            ..EndpointWeight::default()
        }
    }

    fn snapshot(endpoints: Vec<EndpointWeight>) -> WeightSnapshot {
        WeightSnapshot {
            service: "greeter".into(),
            version: 7,
            endpoints,
            ..WeightSnapshot::default()
        }
    }

    #[test]
    fn one_locality_per_endpoint_with_the_share_on_locality_and_endpoint() {
        let s = snapshot(vec![
            endpoint(
                "fast",
                "http://127.0.0.1:50051",
                0.75,
                EndpointState::Active,
            ),
            endpoint("slow", "127.0.0.1:50052", 0.25, EndpointState::Ramping),
        ]);
        let (cla, skipped) = load_assignment("greeter", &s);
        assert!(skipped.is_empty());
        assert_eq!(cla.cluster_name, "greeter");
        assert_eq!(cla.endpoints.len(), 2);
        let weights: Vec<(String, u32, u32, i32)> = cla
            .endpoints
            .iter()
            .map(|l| {
                let e = &l.lb_endpoints[0];
                let locality = l.locality.as_ref().unwrap();
                assert_eq!(locality.region, REGION);
                assert_eq!(locality.zone, "z1");
                (
                    locality.sub_zone.clone(),
                    l.load_balancing_weight.unwrap().value,
                    e.load_balancing_weight.unwrap().value,
                    e.health_status,
                )
            })
            .collect();
        let healthy = HealthStatus::Healthy as i32;
        assert_eq!(
            weights,
            vec![
                ("fast".into(), 750_000, 750_000, healthy),
                ("slow".into(), 250_000, 250_000, healthy)
            ]
        );
        let Some(lb_endpoint::HostIdentifier::Endpoint(e)) =
            &cla.endpoints[1].lb_endpoints[0].host_identifier
        else {
            panic!("an endpoint")
        };
        assert_eq!(
            e.address,
            Some(address_of("127.0.0.1:50052".parse().unwrap()))
        );
    }

    #[test]
    fn states_become_health_and_zero_weights_become_one() {
        let s = snapshot(vec![
            endpoint("a", "127.0.0.1:1", 0.9, EndpointState::Active),
            endpoint("d", "127.0.0.1:2", 0.1, EndpointState::Degraded),
            endpoint("e", "127.0.0.1:3", 0.0, EndpointState::Ejected),
            endpoint("t", "127.0.0.1:4", 0.0, EndpointState::Tripped),
            endpoint("g", "127.0.0.1:5", 0.0, EndpointState::Draining),
            endpoint("u", "127.0.0.1:6", 0.0, EndpointState::Unspecified),
        ]);
        let (cla, _) = load_assignment("greeter", &s);
        let got: Vec<(i32, u32)> = cla
            .endpoints
            .iter()
            .map(|l| {
                (
                    l.lb_endpoints[0].health_status,
                    l.load_balancing_weight.unwrap().value,
                )
            })
            .collect();
        use HealthStatus::*;
        assert_eq!(
            got,
            vec![
                (Healthy as i32, 900_000),
                (Degraded as i32, 100_000),
                (Unhealthy as i32, 1),
                (Unhealthy as i32, 1),
                (Draining as i32, 1),
                (Unhealthy as i32, 1),
            ]
        );
    }

    #[test]
    fn a_static_fallback_publishes_every_weighted_endpoint_healthy() {
        let mut s = snapshot(vec![
            endpoint("a", "127.0.0.1:1", 0.5, EndpointState::Ejected),
            endpoint("b", "127.0.0.1:2", 0.5, EndpointState::Ejected),
            endpoint("c", "127.0.0.1:3", 0.0, EndpointState::Ejected),
        ]);
        s.static_fallback = true;
        let (cla, _) = load_assignment("greeter", &s);
        let health: Vec<i32> = cla
            .endpoints
            .iter()
            .map(|l| l.lb_endpoints[0].health_status)
            .collect();
        use HealthStatus::*;
        assert_eq!(
            health,
            vec![Healthy as i32, Healthy as i32, Unhealthy as i32]
        );
    }

    #[test]
    fn host_names_are_skipped_with_a_reason() {
        let s = snapshot(vec![
            endpoint(
                "named",
                "http://backend.internal:50051",
                0.5,
                EndpointState::Active,
            ),
            endpoint("v6", "http://[::1]:50051", 0.5, EndpointState::Active),
        ]);
        let (cla, skipped) = load_assignment("greeter", &s);
        assert_eq!(cla.endpoints.len(), 1);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].endpoint, "named");
        assert!(skipped[0].reason.contains("backend.internal"));
    }

    proptest! {
        /// Every published weight is in [1, 10⁶], the locality and endpoint carry the same one, and live
        /// endpoints' weights keep the shares' order.
        #[test]
        fn weights_are_positive_bounded_and_shared(
            weights in proptest::collection::vec(prop_oneof![
                Just(f64::NAN), Just(-1.0), Just(2.0), 0.0f64..=1.0
            ], 1..12)
        ) {
            let s = snapshot(weights.iter().enumerate().map(|(i, w)| {
                endpoint(&format!("e{i}"), &format!("127.0.0.1:{}", 1000 + i), *w, EndpointState::Active)
            }).collect());
            let (cla, skipped) = load_assignment("svc", &s);
            prop_assert!(skipped.is_empty());
            prop_assert_eq!(cla.endpoints.len(), weights.len());
            let mut published = Vec::new();
            for l in &cla.endpoints {
                let lw = l.load_balancing_weight.unwrap().value;
                prop_assert!((1..=1_000_000).contains(&lw));
                prop_assert_eq!(Some(lw), l.lb_endpoints[0].load_balancing_weight.map(|w| w.value));
                published.push(lw);
            }
            for i in 0..weights.len() {
                for j in 0..weights.len() {
                    let (a, b) = (weights[i], weights[j]);
                    if a.is_finite() && b.is_finite() && a.clamp(0.0, 1.0) < b.clamp(0.0, 1.0) {
                        prop_assert!(published[i] <= published[j]);
                    }
                }
            }
        }
    }
}
