//! Every resource this server publishes at one moment, with a version per type URL. Pure.
//!
//! A [`Catalog`] is rebuilt from the latest snapshot of every service ([`Catalog::next`]); a type's version
//! grows only when one of its resources' bytes changed, so the snapshot the coordinator repeats every
//! heartbeat interval, unchanged, pushes nothing. Services without a snapshot yet publish nothing: Envoy
//! would otherwise warm a cluster that has no endpoints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use lateral_proto::coordinator::WeightSnapshot;

use crate::XdsConfig;
use crate::resources::endpoints::Skipped;
use crate::resources::{TypeUrl, cluster, endpoints, listener, pack, route};

/// The resources of one type, by name, and the version they were published under.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Versioned {
    /// Grows by one each time the resources change (starting at 1 for the first set).
    pub version: u64,
    /// Resource name → the packed resource.
    pub resources: BTreeMap<String, Any>,
}

/// Which listener set a stream receives (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerShape {
    /// Named subscriptions (gRPC clients): API listeners.
    Api,
    /// Wildcard subscriptions (Envoy): socket listeners on the configured ports.
    Socket,
}

/// Everything published at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    clusters: Versioned,
    endpoints: Versioned,
    routes: Versioned,
    api_listeners: Versioned,
    socket_listeners: Versioned,
    /// Endpoints left out of the assignments, per service.
    skipped: BTreeMap<String, Vec<Skipped>>,
}

impl Catalog {
    /// The resources of `type_url` (for listeners, of the given shape) and their version.
    pub fn get(&self, type_url: TypeUrl, shape: ListenerShape) -> &Versioned {
        match (type_url, shape) {
            (TypeUrl::Cluster, _) => &self.clusters,
            (TypeUrl::Endpoints, _) => &self.endpoints,
            (TypeUrl::Route, _) => &self.routes,
            (TypeUrl::Listener, ListenerShape::Api) => &self.api_listeners,
            (TypeUrl::Listener, ListenerShape::Socket) => &self.socket_listeners,
        }
    }

    /// Endpoints that could not be published (host-name addresses), per service.
    pub fn skipped(&self) -> &BTreeMap<String, Vec<Skipped>> {
        &self.skipped
    }

    /// The catalog for the latest `snapshots` (service → snapshot), with versions continuing from `self`.
    /// Returns the new catalog and whether any type changed.
    pub fn next(
        &self,
        config: &XdsConfig,
        snapshots: &BTreeMap<String, Arc<WeightSnapshot>>,
    ) -> (Catalog, bool) {
        let mut clusters = BTreeMap::new();
        let mut assignments = BTreeMap::new();
        let mut routes = BTreeMap::new();
        let mut api = BTreeMap::new();
        let mut socket = BTreeMap::new();
        let mut skipped = BTreeMap::new();
        for (service, snapshot) in snapshots {
            let (assignment, left_out) = endpoints::load_assignment(service, snapshot);
            if !left_out.is_empty() {
                skipped.insert(service.clone(), left_out);
            }
            assignments.insert(service.clone(), pack(&assignment));
            clusters.insert(service.clone(), pack(&cluster::cluster(service)));
            routes.insert(service.clone(), pack(&route::route_configuration(service)));
            api.insert(service.clone(), pack(&listener::api_listener(service)));
            if let Some(port) = config.listeners.get(service) {
                let addr = SocketAddr::new(config.listener_host, *port);
                socket.insert(
                    service.clone(),
                    pack(&listener::socket_listener(service, addr)),
                );
            }
        }
        let bump = |old: &Versioned, new: BTreeMap<String, Any>| {
            if old.version > 0 && old.resources == new {
                old.clone()
            } else {
                Versioned {
                    version: old.version + 1,
                    resources: new,
                }
            }
        };
        let next = Catalog {
            clusters: bump(&self.clusters, clusters),
            endpoints: bump(&self.endpoints, assignments),
            routes: bump(&self.routes, routes),
            api_listeners: bump(&self.api_listeners, api),
            socket_listeners: bump(&self.socket_listeners, socket),
            skipped,
        };
        let changed = next != *self;
        (next, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lateral_proto::coordinator::{EndpointState, EndpointWeight};

    fn snapshot(version: u64, fast: f64) -> Arc<WeightSnapshot> {
        let e = |id: &str, port: u16, weight: f64| EndpointWeight {
            id: id.into(),
            address: format!("http://127.0.0.1:{port}"),
            weight,
            state: EndpointState::Active as i32,
            ..EndpointWeight::default()
        };
        Arc::new(WeightSnapshot {
            service: "greeter".into(),
            version,
            endpoints: vec![e("fast", 1, fast), e("slow", 2, 1.0 - fast)],
            ..WeightSnapshot::default()
        })
    }

    fn config() -> XdsConfig {
        let mut c = XdsConfig::default();
        c.listeners.insert("greeter".into(), 10000);
        c
    }

    #[test]
    fn versions_grow_only_for_the_types_that_changed() {
        let mut snapshots = BTreeMap::new();
        let (empty, changed) = Catalog::default().next(&config(), &snapshots);
        assert!(changed, "the first catalog is version 1 of every type");
        assert!(
            empty
                .get(TypeUrl::Endpoints, ListenerShape::Api)
                .resources
                .is_empty()
        );

        snapshots.insert("greeter".to_string(), snapshot(1, 0.75));
        let (first, changed) = empty.next(&config(), &snapshots);
        assert!(changed);
        for t in TypeUrl::ALL {
            assert_eq!(first.get(t, ListenerShape::Socket).version, 2, "{t:?}");
            assert_eq!(first.get(t, ListenerShape::Api).resources.len(), 1, "{t:?}");
        }

        // The coordinator repeats an unchanged snapshot (a newer version number, same weights): nothing moves.
        snapshots.insert("greeter".to_string(), snapshot(2, 0.75));
        let (same, changed) = first.next(&config(), &snapshots);
        assert!(!changed);
        assert_eq!(same, first);

        // New weights: only EDS moves.
        snapshots.insert("greeter".to_string(), snapshot(3, 0.6));
        let (moved, changed) = same.next(&config(), &snapshots);
        assert!(changed);
        assert_eq!(moved.get(TypeUrl::Endpoints, ListenerShape::Api).version, 3);
        for t in [TypeUrl::Cluster, TypeUrl::Route, TypeUrl::Listener] {
            assert_eq!(moved.get(t, ListenerShape::Api).version, 2, "{t:?}");
        }
    }

    #[test]
    fn only_services_with_a_port_get_a_socket_listener() {
        let mut snapshots = BTreeMap::new();
        snapshots.insert("greeter".to_string(), snapshot(1, 0.5));
        let mut other = (*snapshot(1, 0.5)).clone();
        other.service = "echo".into();
        snapshots.insert("echo".to_string(), Arc::new(other));
        let (c, _) = Catalog::default().next(&config(), &snapshots);
        let socket = &c.get(TypeUrl::Listener, ListenerShape::Socket).resources;
        assert_eq!(socket.keys().collect::<Vec<_>>(), vec!["greeter"]);
        let api = &c.get(TypeUrl::Listener, ListenerShape::Api).resources;
        assert_eq!(api.keys().collect::<Vec<_>>(), vec!["echo", "greeter"]);
        assert_eq!(
            c.get(TypeUrl::Cluster, ListenerShape::Socket)
                .resources
                .len(),
            2
        );
    }
}
