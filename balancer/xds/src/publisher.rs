//! Follows every service's weight receiver and publishes a new [`Catalog`] when the resources change, at most
//! once per [`XdsConfig::push_interval`]: changes inside an interval are coalesced (a `watch` keeps only the
//! latest snapshot) and the newest is published when the interval ends.
//!
//! The set of services (and the configuration) can be replaced while it runs ([`Publisher::set_services`]:
//! a coordinator's reload); a service left out of the new set leaves the resources at the next push.
//!
//! The only clock read is tokio's, so tests with paused time drive it.

use std::collections::BTreeMap;
use std::sync::Arc;

use lateral_proto::coordinator::WeightSnapshot;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::WatchStream;

use crate::{Catalog, XdsConfig};

/// One service's weights, as the coordinator's `CoordinatorHandle::subscribe` returns them.
pub type WeightsReceiver = watch::Receiver<Option<Arc<WeightSnapshot>>>;

/// The running publisher: the latest catalog, and the task that updates it.
#[derive(Debug)]
pub struct Publisher {
    catalog: watch::Receiver<Arc<Catalog>>,
    task: JoinHandle<()>,
    sets: mpsc::UnboundedSender<ServiceSet>,
}

/// What to publish: the configuration and every service's weights.
type ServiceSet = (XdsConfig, Vec<(String, WeightsReceiver)>);

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Publisher {
    /// Starts following `receivers` (service name → its weights).
    pub fn spawn(config: XdsConfig, receivers: Vec<(String, WeightsReceiver)>) -> Self {
        let (tx, catalog) = watch::channel(Arc::new(Catalog::default()));
        let (sets, next_sets) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(config, receivers, next_sets, tx));
        Self {
            catalog,
            task,
            sets,
        }
    }

    /// Replaces the configuration and the services (the caller validated `config` against them): every
    /// receiver is followed afresh, and services not in `receivers` are no longer published.
    pub fn set_services(&self, config: XdsConfig, receivers: Vec<(String, WeightsReceiver)>) {
        // Fails only when the task has ended, and then nothing is served to set.
        let _ = self.sets.send((config, receivers));
    }

    /// The latest catalog; `changed()` on a clone wakes on every publication.
    pub fn catalog(&self) -> watch::Receiver<Arc<Catalog>> {
        self.catalog.clone()
    }
}

async fn run(
    mut config: XdsConfig,
    receivers: Vec<(String, WeightsReceiver)>,
    mut sets: mpsc::UnboundedReceiver<ServiceSet>,
    tx: watch::Sender<Arc<Catalog>>,
) {
    let mut updates = StreamMap::new();
    for (service, rx) in receivers {
        updates.insert(service, WatchStream::new(rx));
    }
    let mut snapshots: BTreeMap<String, Arc<WeightSnapshot>> = BTreeMap::new();
    let mut current = Arc::new(Catalog::default());
    let mut last_push: Option<Instant> = None;
    let mut sets_open = true;
    loop {
        tokio::select! {
            update = updates.next(), if !updates.is_empty() => {
                if let Some((service, Some(snapshot))) = update {
                    snapshots.insert(service, snapshot);
                }
            }
            set = sets.recv(), if sets_open => match set {
                Some((next_config, receivers)) => {
                    config = next_config;
                    snapshots.retain(|name, _| receivers.iter().any(|(n, _)| n == name));
                    updates = StreamMap::new();
                    for (service, rx) in receivers {
                        updates.insert(service, WatchStream::new(rx));
                    }
                }
                None => sets_open = false,
            },
            else => break,
        }
        // No push before the interval since the last one ends; what arrives meanwhile is folded in.
        if let Some(at) = last_push {
            tokio::time::sleep_until(at + config.push_interval()).await;
        }
        // Take whatever else is already waiting, so one rebuild covers it.
        while let Some(Some((service, snapshot))) =
            futures_util::FutureExt::now_or_never(updates.next())
        {
            if let Some(snapshot) = snapshot {
                snapshots.insert(service, snapshot);
            }
        }
        let (next, changed) = current.next(&config, &snapshots);
        if !changed {
            continue;
        }
        if next.skipped() != current.skipped() {
            for (service, skipped) in next.skipped() {
                for s in skipped {
                    tracing::warn!(%service, endpoint = %s.endpoint, reason = %s.reason, "endpoint left out of xDS");
                }
            }
        }
        current = Arc::new(next);
        last_push = Some(Instant::now());
        tracing::debug!(
            services = snapshots.len(),
            "xDS resources changed; pushing to subscribers"
        );
        if tx.send(current.clone()).is_err() {
            // Nobody holds a receiver any more: the server is gone.
            return;
        }
    }
    tracing::info!("every service's weights have closed; xDS keeps serving the last resources");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ListenerShape;
    use crate::resources::TypeUrl;
    use lateral_proto::coordinator::{EndpointState, EndpointWeight};
    use std::time::Duration;

    fn snapshot(version: u64, fast: f64) -> Option<Arc<WeightSnapshot>> {
        let e = |id: &str, port: u16, weight: f64| EndpointWeight {
            id: id.into(),
            address: format!("127.0.0.1:{port}"),
            weight,
            state: EndpointState::Active as i32,
            ..EndpointWeight::default()
        };
        Some(Arc::new(WeightSnapshot {
            service: "greeter".into(),
            version,
            endpoints: vec![e("fast", 1, fast), e("slow", 2, 1.0 - fast)],
            ..WeightSnapshot::default()
        }))
    }

    fn eds_version(rx: &watch::Receiver<Arc<Catalog>>) -> u64 {
        rx.borrow()
            .get(TypeUrl::Endpoints, ListenerShape::Api)
            .version
    }

    #[tokio::test(start_paused = true)]
    async fn pushes_on_change_at_most_once_per_interval_with_the_latest_weights() {
        let (weights, rx) = watch::channel(snapshot(1, 0.5));
        let config = XdsConfig {
            push_interval_ms: 1000,
            ..XdsConfig::default()
        };
        let publisher = Publisher::spawn(config, vec![("greeter".into(), rx)]);
        let mut catalog = publisher.catalog();
        catalog.changed().await.unwrap();
        let start = Instant::now();
        assert_eq!(eds_version(&catalog), 1);

        // An unchanged repeat pushes nothing.
        weights.send_replace(snapshot(2, 0.5));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!catalog.has_changed().unwrap());

        // Three changes in quick succession: one push, with the last of them, no earlier than the interval.
        let second = Instant::now();
        weights.send_replace(snapshot(3, 0.6));
        catalog.changed().await.unwrap();
        assert_eq!(eds_version(&catalog), 2);
        assert!(second - start >= Duration::from_millis(1000));
        weights.send_replace(snapshot(4, 0.7));
        tokio::time::sleep(Duration::from_millis(10)).await;
        weights.send_replace(snapshot(5, 0.8));
        catalog.changed().await.unwrap();
        let third = Instant::now();
        assert!(
            third - second >= Duration::from_millis(1000),
            "{:?}",
            third - second
        );
        assert_eq!(eds_version(&catalog), 3);
        let catalog_now = catalog.borrow().clone();
        let cla = catalog_now.get(TypeUrl::Endpoints, ListenerShape::Api);
        let (_, any) = cla.resources.iter().next().unwrap();
        use prost::Message;
        let cla = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
            any.value.as_slice(),
        )
        .unwrap();
        assert_eq!(
            cla.endpoints[0].load_balancing_weight.unwrap().value,
            800_000
        );
        assert!(!catalog.has_changed().unwrap());
    }

    fn clusters(rx: &watch::Receiver<Arc<Catalog>>) -> usize {
        rx.borrow()
            .get(TypeUrl::Cluster, ListenerShape::Api)
            .resources
            .len()
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_service_set_adds_and_removes_services() {
        let (_first, rx) = watch::channel(snapshot(1, 0.75));
        let publisher =
            Publisher::spawn(XdsConfig::default(), vec![("greeter".into(), rx.clone())]);
        let mut catalog = publisher.catalog();
        catalog.changed().await.unwrap();
        assert_eq!(clusters(&catalog), 1);

        let other = snapshot(1, 0.5).map(|s| {
            Arc::new(WeightSnapshot {
                service: "other".into(),
                ..(*s).clone()
            })
        });
        let (_second, other_rx) = watch::channel(other);
        publisher.set_services(
            XdsConfig::default(),
            vec![("greeter".into(), rx), ("other".into(), other_rx.clone())],
        );
        catalog.changed().await.unwrap();
        assert_eq!(clusters(&catalog), 2, "the added service is published");

        publisher.set_services(XdsConfig::default(), vec![("other".into(), other_rx)]);
        catalog.changed().await.unwrap();
        assert_eq!(clusters(&catalog), 1, "the removed service is withdrawn");
        let names: Vec<String> = catalog
            .borrow()
            .get(TypeUrl::Cluster, ListenerShape::Api)
            .resources
            .keys()
            .cloned()
            .collect();
        assert!(names.iter().all(|n| n.contains("other")), "{names:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_coordinator_leaves_the_last_resources_published() {
        let (weights, rx) = watch::channel(snapshot(1, 0.75));
        let publisher = Publisher::spawn(XdsConfig::default(), vec![("greeter".into(), rx)]);
        let mut catalog = publisher.catalog();
        catalog.changed().await.unwrap();
        drop(weights);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !catalog.has_changed().unwrap_or(false),
            "nothing is pushed when the weights close"
        );
        let last = catalog.borrow().clone();
        assert_eq!(
            last.get(TypeUrl::Endpoints, ListenerShape::Api)
                .resources
                .len(),
            1
        );
        assert_eq!(
            last.get(TypeUrl::Cluster, ListenerShape::Api)
                .resources
                .len(),
            1
        );
    }
}
