//! One ADS stream's state of the world: what the client subscribed to per type URL, what was last sent
//! (version and nonce), and what it acknowledged or rejected. Pure: the server feeds it requests and new
//! catalogs, and sends the responses it returns.
//!
//! The rules (xDS protocol, "ACK and NACK semantics"):
//! - a request whose `response_nonce` is not the nonce of the last response of its type is stale and ignored;
//! - a request answering the last nonce is an ACK, or a NACK when it carries `error_detail`: the client keeps
//!   its last good version (the request's `version_info`), and this stream does not send the rejected version
//!   again — only a newer one, or the same one if the subscription changes;
//! - a request with no nonce (the first of its type on a stream) is always answered with the current
//!   resources, whatever version it names;
//! - names: none (or `*`) is a wildcard subscription; otherwise exactly the named resources are sent.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use crate::catalog::{Catalog, ListenerShape};
use crate::resources::TypeUrl;

/// What a request meant, for the server's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A first request of its type on this stream (or a changed subscription).
    Subscribed {
        /// The type.
        type_url: TypeUrl,
        /// The names asked for; empty for a wildcard subscription.
        names: Vec<String>,
    },
    /// The client applied `version`.
    Ack {
        /// The type.
        type_url: TypeUrl,
        /// The version acknowledged.
        version: String,
    },
    /// The client rejected `rejected` and keeps `kept`.
    Nack {
        /// The type.
        type_url: TypeUrl,
        /// The version it rejected (the one this stream last sent).
        rejected: String,
        /// The version it keeps (its request's `version_info`; empty if it has none).
        kept: String,
        /// The client's `error_detail` message.
        message: String,
    },
    /// A request answering an older response; ignored.
    Stale {
        /// The type.
        type_url: TypeUrl,
        /// Its nonce.
        nonce: String,
    },
    /// A type this server does not publish.
    UnknownType(String),
}

#[derive(Debug, Default)]
struct Subscription {
    /// `None`: wildcard.
    names: Option<BTreeSet<String>>,
    sent_version: Option<u64>,
    sent_nonce: String,
    nacked_version: Option<u64>,
}

impl Subscription {
    fn shape(&self) -> ListenerShape {
        if self.names.is_some() {
            ListenerShape::Api
        } else {
            ListenerShape::Socket
        }
    }
}

/// The state of one ADS stream.
#[derive(Debug, Default)]
pub struct StreamState {
    nonces: u64,
    subscriptions: BTreeMap<TypeUrl, Subscription>,
}

impl StreamState {
    /// A stream that has received nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles one request against the current catalog: what it meant, and the response to send, if any.
    pub fn on_request(
        &mut self,
        request: &DiscoveryRequest,
        catalog: &Catalog,
    ) -> (Vec<Note>, Option<DiscoveryResponse>) {
        let Some(type_url) = TypeUrl::parse(&request.type_url) else {
            return (vec![Note::UnknownType(request.type_url.clone())], None);
        };
        let mut notes = Vec::new();
        let sub = self.subscriptions.entry(type_url).or_default();
        let first = request.response_nonce.is_empty();
        if !first && request.response_nonce != sub.sent_nonce {
            let nonce = request.response_nonce.clone();
            return (vec![Note::Stale { type_url, nonce }], None);
        }
        let names: Option<BTreeSet<String>> = if request.resource_names.is_empty()
            || request.resource_names.iter().any(|n| n == "*")
        {
            None
        } else {
            Some(request.resource_names.iter().cloned().collect())
        };
        let resubscribed = first || names != sub.names;
        sub.names = names;
        if resubscribed {
            notes.push(Note::Subscribed {
                type_url,
                names: request.resource_names.clone(),
            });
        }
        if !first {
            let sent = sub.sent_version.map(|v| v.to_string()).unwrap_or_default();
            match &request.error_detail {
                Some(status) => {
                    sub.nacked_version = sub.sent_version;
                    notes.push(Note::Nack {
                        type_url,
                        rejected: sent,
                        kept: request.version_info.clone(),
                        message: status.message.clone(),
                    });
                }
                None => notes.push(Note::Ack {
                    type_url,
                    version: sent,
                }),
            }
        }
        let current = catalog.get(type_url, sub.shape()).version;
        let due = resubscribed
            || (Some(current) != sub.sent_version && Some(current) != sub.nacked_version);
        let response = due.then(|| self.respond(type_url, catalog));
        (notes, response.flatten())
    }

    /// The responses a new catalog calls for: one per subscribed type whose version moved.
    pub fn on_catalog(&mut self, catalog: &Catalog) -> Vec<DiscoveryResponse> {
        let due: Vec<TypeUrl> = self
            .subscriptions
            .iter()
            .filter(|(t, sub)| {
                let current = catalog.get(**t, sub.shape()).version;
                Some(current) != sub.sent_version && Some(current) != sub.nacked_version
            })
            .map(|(t, _)| *t)
            .collect();
        due.into_iter()
            .filter_map(|t| self.respond(t, catalog))
            .collect()
    }

    /// The versions last sent, per type (for tests and logs).
    pub fn sent_versions(&self) -> BTreeMap<TypeUrl, u64> {
        self.subscriptions
            .iter()
            .filter_map(|(t, s)| s.sent_version.map(|v| (*t, v)))
            .collect()
    }

    fn respond(&mut self, type_url: TypeUrl, catalog: &Catalog) -> Option<DiscoveryResponse> {
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let sub = self.subscriptions.get_mut(&type_url)?;
        let published = catalog.get(type_url, sub.shape());
        let resources = published
            .resources
            .iter()
            .filter(|(name, _)| sub.names.as_ref().is_none_or(|n| n.contains(*name)))
            .map(|(_, any)| any.clone())
            .collect();
        sub.sent_version = Some(published.version);
        sub.sent_nonce = nonce.clone();
        Some(DiscoveryResponse {
            version_info: published.version.to_string(),
            resources,
            type_url: type_url.as_str().to_string(),
            nonce,
            ..DiscoveryResponse::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::XdsConfig;
    use envoy_types::pb::google::rpc::Status;
    use lateral_proto::coordinator::{EndpointState, EndpointWeight, WeightSnapshot};
    use std::sync::Arc;

    fn catalog_with(prev: &Catalog, services: &[(&str, f64)]) -> Catalog {
        let mut config = XdsConfig::default();
        let mut snapshots = BTreeMap::new();
        for (i, (name, w)) in services.iter().enumerate() {
            config.listeners.insert(name.to_string(), 10000 + i as u16);
            snapshots.insert(
                name.to_string(),
                Arc::new(WeightSnapshot {
                    service: name.to_string(),
                    endpoints: vec![EndpointWeight {
                        id: "a".into(),
                        address: "127.0.0.1:1".into(),
                        weight: *w,
                        state: EndpointState::Active as i32,
                        ..EndpointWeight::default()
                    }],
                    ..WeightSnapshot::default()
                }),
            );
        }
        prev.next(&config, &snapshots).0
    }

    fn request(t: TypeUrl, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..DiscoveryRequest::default()
        }
    }

    #[test]
    fn subscribe_ack_push_nack_and_keep_quiet_until_something_newer() {
        let c1 = catalog_with(&Catalog::default(), &[("greeter", 0.5), ("echo", 0.5)]);
        let mut s = StreamState::new();

        // First EDS request, named: the named assignment only.
        let (notes, r) = s.on_request(&request(TypeUrl::Endpoints, &["greeter"], "", ""), &c1);
        assert!(matches!(notes[0], Note::Subscribed { .. }));
        let r = r.expect("a first request is always answered");
        assert_eq!((r.version_info.as_str(), r.resources.len()), ("1", 1));

        // ACK: nothing more to send.
        let (notes, none) = s.on_request(
            &request(TypeUrl::Endpoints, &["greeter"], "1", &r.nonce),
            &c1,
        );
        assert_eq!(
            notes,
            vec![Note::Ack {
                type_url: TypeUrl::Endpoints,
                version: "1".into()
            }]
        );
        assert!(none.is_none());

        // New weights: pushed.
        let c2 = catalog_with(&c1, &[("greeter", 0.4), ("echo", 0.5)]);
        let pushed = s.on_catalog(&c2);
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].version_info, "2");

        // A request answering the first response now is stale.
        let (notes, none) = s.on_request(
            &request(TypeUrl::Endpoints, &["greeter"], "1", &r.nonce),
            &c2,
        );
        assert!(matches!(notes[0], Note::Stale { .. }), "{notes:?}");
        assert!(none.is_none());

        // NACK of version 2: logged with the error, the client keeps 1, and 2 is not sent again.
        let mut nack = request(TypeUrl::Endpoints, &["greeter"], "1", &pushed[0].nonce);
        nack.error_detail = Some(Status {
            code: 3,
            message: "bad weight".into(),
            details: vec![],
        });
        let (notes, none) = s.on_request(&nack, &c2);
        assert_eq!(
            notes,
            vec![Note::Nack {
                type_url: TypeUrl::Endpoints,
                rejected: "2".into(),
                kept: "1".into(),
                message: "bad weight".into()
            }]
        );
        assert!(none.is_none());
        assert!(s.on_catalog(&c2).is_empty());

        // A newer version is sent.
        let c3 = catalog_with(&c2, &[("greeter", 0.3), ("echo", 0.5)]);
        assert_eq!(s.on_catalog(&c3)[0].version_info, "3");
        assert_eq!(s.sent_versions()[&TypeUrl::Endpoints], 3);
    }

    #[test]
    fn wildcard_listeners_are_sockets_and_named_ones_are_api_listeners() {
        use envoy_types::pb::envoy::config::listener::v3::Listener;
        use prost::Message;
        let c = catalog_with(&Catalog::default(), &[("greeter", 0.5), ("echo", 0.5)]);
        let listeners = |r: DiscoveryResponse| -> Vec<Listener> {
            r.resources
                .iter()
                .map(|a| Listener::decode(a.value.as_slice()).unwrap())
                .collect()
        };
        let mut envoy = StreamState::new();
        let (_, r) = envoy.on_request(&request(TypeUrl::Listener, &[], "", ""), &c);
        let l = listeners(r.unwrap());
        assert_eq!(l.len(), 2);
        assert!(
            l.iter()
                .all(|l| l.address.is_some() && l.api_listener.is_none())
        );

        let mut grpc = StreamState::new();
        let (_, r) = grpc.on_request(&request(TypeUrl::Listener, &["greeter"], "", ""), &c);
        let l = listeners(r.unwrap());
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name, "greeter");
        assert!(l[0].api_listener.is_some() && l[0].address.is_none());
    }

    #[test]
    fn a_changed_subscription_is_answered_even_at_the_same_version() {
        let c = catalog_with(&Catalog::default(), &[("greeter", 0.5), ("echo", 0.5)]);
        let mut s = StreamState::new();
        let (_, r) = s.on_request(&request(TypeUrl::Cluster, &["greeter"], "", ""), &c);
        let r = r.unwrap();
        let (notes, r2) = s.on_request(
            &request(TypeUrl::Cluster, &["greeter", "echo"], "1", &r.nonce),
            &c,
        );
        assert!(notes.iter().any(|n| matches!(n, Note::Subscribed { .. })));
        assert_eq!(r2.unwrap().resources.len(), 2);
        let unknown = DiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig".into(),
            ..DiscoveryRequest::default()
        };
        let (notes, none) = s.on_request(&unknown, &c);
        assert!(matches!(notes[0], Note::UnknownType(_)) && none.is_none());
    }
}
