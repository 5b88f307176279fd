//! The driver's HA roles (see `election.rs`): a standby republishes the leader's weights instead of its
//! own, and a promoted one rebuilds its engines seeded from the last weights it knows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use lateral_proto::coordinator::WeightSnapshot;

use super::{Driver, ServiceRuntime, now};
use crate::persist::{PersistedWeights, Seed};

/// Standing by: the engine's records are not ours to publish (the leader's are), and subscribers are
/// told every interval that this coordinator is alive.
pub(super) fn stand_by(service: &mut ServiceRuntime, resend: bool) {
    while service.engine.poll_decision().is_some() {}
    while service.engine.poll_alert().is_some() {}
    if resend {
        service.weights.send_modify(|_| {});
    }
}

impl Driver {
    /// The leader's weights for one service, republished while standing by.
    pub(super) fn mirror(&mut self, snapshot: Arc<WeightSnapshot>) {
        if self.warm.leading.load(Ordering::Relaxed) {
            return;
        }
        if let Some(service) = self.services.get_mut(&snapshot.service) {
            let newer = service
                .weights
                .borrow()
                .as_ref()
                .is_none_or(|s| s.epoch != snapshot.epoch || s.version < snapshot.version);
            if newer {
                service.weights.send_replace(Some(snapshot));
            }
        }
    }

    /// Leads: every engine is rebuilt and seeded from `seeds` (what the leader last persisted) or, for a
    /// service without one, from the leader's weights this standby republished last.
    pub(super) fn promote(&mut self, mut seeds: BTreeMap<String, Seed>) {
        self.metrics.set_leader(true);
        self.warm.leading.store(true, Ordering::Relaxed);
        for (name, service) in &self.services {
            if seeds.contains_key(name) {
                continue;
            }
            let mirrored = service.weights.borrow().clone();
            if let Some(snapshot) = mirrored.filter(|s| !s.static_fallback)
                && let Some(seed) = PersistedWeights::of(&snapshot)
                    .seed(std::time::SystemTime::now(), self.warm.max_age)
            {
                seeds.insert(name.clone(), seed);
            }
        }
        self.warm.seeds = seeds;
        let config = self.config.clone();
        let now = now();
        for service in &config.services {
            self.install_service(service, &config, now);
        }
        tracing::info!(
            services = config.services.len(),
            "leading: engines rebuilt from the last weights"
        );
    }

    /// Stands by: subscribers get the leader's weights from the next mirrored snapshot on.
    pub(super) fn demote(&mut self) {
        self.metrics.set_leader(false);
        self.warm.leading.store(false, Ordering::Relaxed);
    }
}
