//! An etcd endpoint source: lists the endpoints agents registered under a prefix, then watches the prefix and
//! reports every change (see [`EtcdSourceConfig`] and `lateral_proto::etcd` for the key layout and record).
//!
//! One task per `[[service.etcd]]`: a session dials the first reachable URL, lists the prefix (at most
//! [`MAX_ENDPOINTS`] keys), reports the set, and opens a watch from the listed revision + 1, so nothing between
//! the list and the watch is missed. Any failure (etcd down, the watch cancelled or compacted, a dead
//! connection caught by HTTP/2 keep-alives) ends the session: the last endpoints stay, and a new session
//! starts after a jittered backoff (0.5 s doubling to 10 s, reset by a successful list). A record that does not
//! decode, or whose id is not its key's last segment, is logged with its key and left out.

use std::collections::BTreeMap;
use std::sync::Arc;

use lateral_ops::etcd::{Backoff, EtcdError, connect, timed};
use lateral_proto::etcd::etcdserverpb::kv_client::KvClient;
use lateral_proto::etcd::etcdserverpb::watch_client::WatchClient;
use lateral_proto::etcd::etcdserverpb::watch_request::RequestUnion;
use lateral_proto::etcd::etcdserverpb::{RangeRequest, WatchCreateRequest, WatchRequest};
use lateral_proto::etcd::mvccpb::{self, event::EventType};
use lateral_proto::etcd::{EndpointRecord, prefix_range_end};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::config::{EndpointConfig, EtcdSourceConfig};
use super::driver::{Command, EndpointSource};
use super::metrics::CoordinatorMetrics;
use crate::Error;

/// The most endpoints one source reports (keys beyond it are ignored, with a warning).
pub const MAX_ENDPOINTS: usize = 10_000;

/// Runs the source until the driver goes away.
pub(crate) async fn run(
    service: String,
    index: usize,
    config: EtcdSourceConfig,
    commands: mpsc::WeakSender<Command>,
    metrics: Arc<CoordinatorMetrics>,
) {
    let prefix = config.prefix_for(&service);
    let mut session = Session {
        service,
        source: EndpointSource::Etcd(index),
        members: Members::new(prefix.clone().into_bytes()),
        commands,
        reported: None,
        metrics,
    };
    let mut backoff = Backoff::default();
    let mut first_url = 0usize;
    loop {
        let outcome = session
            .run(&config.endpoints, first_url, &mut backoff)
            .await;
        match outcome {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(service = %session.service, %prefix, error = %e, retry_in_ms = backoff.step().as_millis() as u64, "etcd source: keeping the last endpoints and retrying");
                session
                    .metrics
                    .on_source(&session.service, &session.source.label(), false);
            }
        }
        first_url = first_url.wrapping_add(1);
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

struct Session {
    service: String,
    source: EndpointSource,
    members: Members,
    commands: mpsc::WeakSender<Command>,
    /// The set last sent to the driver (nothing is sent when a change leaves it the same).
    reported: Option<Vec<EndpointConfig>>,
    metrics: Arc<CoordinatorMetrics>,
}

impl Session {
    /// One session: connect, list, watch. `Ok(())` when the driver is gone (stop), `Err` to retry.
    async fn run(
        &mut self,
        urls: &[String],
        first: usize,
        backoff: &mut Backoff,
    ) -> Result<(), Error> {
        let channel = connect(urls, first).await?;
        let prefix = self.members.prefix.clone();
        let range_end = prefix_range_end(&prefix);
        let listed = timed(
            "Range",
            KvClient::new(channel.clone()).range(RangeRequest {
                key: prefix.clone(),
                range_end: range_end.clone(),
                limit: MAX_ENDPOINTS as i64 + 1,
                ..Default::default()
            }),
        )
        .await?;
        let revision = listed.header.map_or(0, |h| h.revision);
        if listed.more || listed.kvs.len() > MAX_ENDPOINTS {
            tracing::warn!(service = %self.service, count = listed.count, limit = MAX_ENDPOINTS, "etcd source: more keys than the limit; the rest are ignored");
        }
        let kvs = listed.kvs.into_iter().take(MAX_ENDPOINTS);
        self.members.replace_all(kvs.map(|kv| (kv.key, kv.value)));
        backoff.reset();
        self.metrics
            .on_source(&self.service, &self.source.label(), true);
        if !self.report().await {
            return Ok(());
        }

        // The request side stays open for the session: etcd ends a watch whose request stream closes.
        let (requests, request_rx) = mpsc::channel(1);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix,
                range_end,
                start_revision: revision + 1,
                ..Default::default()
            })),
        };
        requests
            .send(create)
            .await
            .map_err(|_| call_error("Watch", "request stream closed"))?;
        let mut responses = timed(
            "Watch",
            WatchClient::new(channel).watch(ReceiverStream::new(request_rx)),
        )
        .await?;
        loop {
            let response = responses
                .message()
                .await
                .map_err(|s| call_error("Watch", s.message()))?
                .ok_or_else(|| call_error("Watch", "the stream ended"))?;
            if response.canceled {
                let why = if response.compact_revision > 0 {
                    format!(
                        "revision {} was compacted (listing again)",
                        response.compact_revision
                    )
                } else {
                    response.cancel_reason
                };
                return Err(call_error("Watch", &format!("cancelled by etcd: {why}")));
            }
            let mut changed = false;
            for event in response.events {
                changed |= self.members.apply(event);
            }
            if changed && !self.report().await {
                return Ok(());
            }
        }
    }

    /// Sends the current set if it differs from the last one sent; `false` when the driver is gone.
    async fn report(&mut self) -> bool {
        let endpoints = self.members.endpoints();
        if self.reported.as_ref() == Some(&endpoints) {
            return true;
        }
        let Some(commands) = self.commands.upgrade() else {
            return false;
        };
        let sent = commands
            .send(Command::Resolved {
                service: self.service.clone(),
                source: self.source,
                endpoints: endpoints.clone(),
            })
            .await
            .is_ok();
        self.reported = Some(endpoints);
        sent
    }
}

fn call_error(call: &'static str, detail: &str) -> Error {
    EtcdError::new(call, detail).into()
}

/// The valid records under a prefix, by key. Pure: fed keys and values, it says what the endpoint set is.
#[derive(Debug)]
pub(crate) struct Members {
    prefix: Vec<u8>,
    by_key: BTreeMap<Vec<u8>, EndpointConfig>,
}

impl Members {
    pub(crate) fn new(prefix: Vec<u8>) -> Self {
        Self {
            prefix,
            by_key: BTreeMap::new(),
        }
    }

    /// Replaces everything with a fresh listing.
    pub(crate) fn replace_all(&mut self, kvs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) {
        self.by_key.clear();
        for (key, value) in kvs {
            if let Some(endpoint) = self.parse(&key, &value) {
                self.by_key.insert(key, endpoint);
            }
        }
    }

    /// Applies one watch event; returns whether the set may have changed.
    pub(crate) fn apply(&mut self, event: mvccpb::Event) -> bool {
        let Some(kv) = event.kv else {
            return false;
        };
        if event.r#type == EventType::Delete as i32 {
            return self.by_key.remove(&kv.key).is_some();
        }
        if self.by_key.len() >= MAX_ENDPOINTS && !self.by_key.contains_key(&kv.key) {
            tracing::warn!(key = %String::from_utf8_lossy(&kv.key), limit = MAX_ENDPOINTS, "etcd source: endpoint limit reached; key ignored");
            return false;
        }
        match self.parse(&kv.key, &kv.value) {
            Some(endpoint) => {
                let changed = self.by_key.get(&kv.key) != Some(&endpoint);
                self.by_key.insert(kv.key, endpoint);
                changed
            }
            // An invalid value replaces a valid one: the key no longer describes a usable endpoint.
            None => self.by_key.remove(&kv.key).is_some(),
        }
    }

    /// The endpoints, in key order.
    pub(crate) fn endpoints(&self) -> Vec<EndpointConfig> {
        self.by_key.values().cloned().collect()
    }

    fn parse(&self, key: &[u8], value: &[u8]) -> Option<EndpointConfig> {
        let shown = String::from_utf8_lossy(key);
        let record = match EndpointRecord::decode(value) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(key = %shown, error = %e, "etcd source: endpoint record refused");
                return None;
            }
        };
        let suffix = key.strip_prefix(self.prefix.as_slice()).unwrap_or(key);
        if suffix != record.id.as_bytes() {
            tracing::warn!(key = %shown, id = %record.id, "etcd source: endpoint record refused: its id is not its key's last segment (`<prefix><id>`)");
            return None;
        }
        Some(EndpointConfig {
            id: record.id,
            address: record.address,
            agent: record.agent,
            zone: record.zone,
            labels: record.labels,
            static_weight: record.static_weight,
            declared_capacity: record.declared_capacity,
        })
    }
}

/// Exists for fuzzing: the set a session keeps after the listing `kvs` under `prefix`, then after each watch
/// event with what [`Members::apply`] said (whether the set may have changed).
#[doc(hidden)]
pub fn fuzz_membership(
    prefix: &[u8],
    kvs: Vec<(Vec<u8>, Vec<u8>)>,
    events: Vec<mvccpb::Event>,
) -> (Vec<EndpointConfig>, Vec<(bool, Vec<EndpointConfig>)>) {
    let mut members = Members::new(prefix.to_vec());
    members.replace_all(kvs.into_iter().take(MAX_ENDPOINTS));
    let listed = members.endpoints();
    let after = events
        .into_iter()
        .map(|event| (members.apply(event), members.endpoints()))
        .collect();
    (listed, after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(id: &str, port: u16) -> Vec<u8> {
        format!(r#"{{"id":"{id}","address":"http://127.0.0.1:{port}","agent":"127.0.0.1:{port}"}}"#)
            .into_bytes()
    }

    fn put(key: &str, value: Vec<u8>) -> mvccpb::Event {
        mvccpb::Event {
            r#type: EventType::Put as i32,
            kv: Some(mvccpb::KeyValue {
                key: key.as_bytes().to_vec(),
                value,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn delete(key: &str) -> mvccpb::Event {
        mvccpb::Event {
            r#type: EventType::Delete as i32,
            kv: Some(mvccpb::KeyValue {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn ids(m: &Members) -> Vec<String> {
        m.endpoints().into_iter().map(|e| e.id).collect()
    }

    #[test]
    fn a_listing_keeps_the_valid_records_and_leaves_out_the_rest() {
        let mut m = Members::new(b"/svc/".to_vec());
        m.replace_all([
            (b"/svc/a".to_vec(), value("a", 1)),
            (b"/svc/b".to_vec(), b"{not json".to_vec()),
            (b"/svc/c".to_vec(), value("someone-else", 3)),
            (b"/svc/d".to_vec(), value("d", 4)),
        ]);
        assert_eq!(ids(&m), ["a", "d"]);
        let a = &m.endpoints()[0];
        assert_eq!(a.address, "http://127.0.0.1:1");
        assert_eq!(a.agent, "127.0.0.1:1".parse().unwrap());
    }

    #[test]
    fn events_add_change_and_remove() {
        let mut m = Members::new(b"/svc/".to_vec());
        assert!(m.apply(put("/svc/a", value("a", 1))));
        assert!(
            !m.apply(put("/svc/a", value("a", 1))),
            "same record: no change"
        );
        assert!(m.apply(put("/svc/a", value("a", 2))), "moved");
        assert_eq!(m.endpoints()[0].agent.port(), 2);
        assert!(m.apply(put("/svc/b", value("b", 3))));
        // A valid record overwritten with garbage no longer describes an endpoint.
        assert!(m.apply(put("/svc/b", b"garbage".to_vec())));
        assert_eq!(ids(&m), ["a"]);
        assert!(m.apply(delete("/svc/a")));
        assert!(!m.apply(delete("/svc/a")));
        assert!(m.endpoints().is_empty());
        // An event without a key-value is ignored.
        assert!(!m.apply(mvccpb::Event::default()));
    }
}
