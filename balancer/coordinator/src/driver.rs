//! The driver: the only code that owns the engine's clock. It applies ingest events with their receive time,
//! ticks every engine each heartbeat interval (and at the engine's own deadlines), publishes weight snapshots
//! and records decisions and alerts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use lateral_proto::coordinator::{self as pb, WeightSnapshot};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::config::{CoordinatorConfig, EndpointConfig, ServiceConfig};
use super::decision_log::DecisionLog;
use super::ingest::{self, IngestEvent, IngestKind, IngestSettings};
use super::metrics::CoordinatorMetrics;
use crate::engine::{
    Alert, Decision, EndpointSpec, EndpointState, Engine, LoadReport, WeightTable,
};

mod standby;

/// The latest snapshot of a service, `None` until the first one is computed.
pub type WeightsReceiver = watch::Receiver<Option<Arc<WeightSnapshot>>>;

/// Requests to the driver from the outside.
pub(crate) enum Command {
    /// Apply a new, already validated configuration.
    Reload(Box<CoordinatorConfig>, oneshot::Sender<()>),
    /// A dynamic source (DNS, etcd) found this set of endpoints.
    Resolved {
        service: String,
        source: EndpointSource,
        endpoints: Vec<EndpointConfig>,
    },
    /// Subscribe to a service's weights.
    Subscribe(String, oneshot::Sender<Option<WeightsReceiver>>),
    /// HA: the leader's weights, republished while standing by (`election.rs`).
    Mirror(Arc<WeightSnapshot>),
    /// HA: this coordinator leads: rebuild every engine, seeded (or from the mirrored weights).
    Promote(BTreeMap<String, crate::persist::Seed>),
    /// HA: this coordinator lost its lease and stands by.
    Demote,
}

/// Converts the engine's `Instant`s to wall-clock timestamps for records (the engine never sees wall time).
#[derive(Clone, Copy)]
pub(crate) struct WallClock {
    base_instant: Instant,
    base_system: SystemTime,
}

impl WallClock {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            base_instant: now,
            base_system: SystemTime::now(),
        }
    }

    pub(crate) fn timestamp(&self, at: Instant) -> prost_types::Timestamp {
        let system = match at.checked_duration_since(self.base_instant) {
            Some(after) => self.base_system + after,
            None => self.base_system - self.base_instant.duration_since(at),
        };
        prost_types::Timestamp::from(system)
    }
}

/// The driver's clock: tokio's, so that tests with paused time control it.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Where an endpoint of a service came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndpointSource {
    /// Listed in the configuration.
    Static,
    /// The service's i-th `[[service.dns]]` source.
    Dns(usize),
    /// The service's i-th `[[service.etcd]]` source.
    Etcd(usize),
}

impl EndpointSource {
    /// The label of the source in metrics: `static`, `dns[0]`, `etcd[1]`.
    pub(crate) fn label(&self) -> String {
        match self {
            Self::Static => "static".into(),
            Self::Dns(i) => format!("dns[{i}]"),
            Self::Etcd(i) => format!("etcd[{i}]"),
        }
    }
}

impl std::fmt::Display for EndpointSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static => f.write_str("the configuration"),
            Self::Dns(i) => write!(f, "DNS source {i}"),
            Self::Etcd(i) => write!(f, "etcd source {i}"),
        }
    }
}

struct RunningEndpoint {
    config: EndpointConfig,
    source: EndpointSource,
    ingest: JoinHandle<()>,
}

impl Drop for RunningEndpoint {
    fn drop(&mut self) {
        self.ingest.abort();
    }
}

pub(crate) struct ServiceRuntime {
    name: Arc<str>,
    pub(crate) engine: Engine,
    endpoints: BTreeMap<Arc<str>, RunningEndpoint>,
    /// The DNS and etcd source tasks.
    source_tasks: Vec<JoinHandle<()>>,
    pub(crate) weights: watch::Sender<Option<Arc<WeightSnapshot>>>,
    /// The engine table version last published.
    engine_version: u64,
    /// What clients see: grows whenever the published weights change, across engine rebuilds too.
    published_version: u64,
}

impl Drop for ServiceRuntime {
    fn drop(&mut self) {
        for task in &self.source_tasks {
            task.abort();
        }
    }
}

pub(crate) struct Driver {
    config: CoordinatorConfig,
    services: HashMap<String, ServiceRuntime>,
    ingest: IngestSettings,
    events: mpsc::Receiver<IngestEvent>,
    commands: mpsc::Receiver<Command>,
    command_sender: mpsc::WeakSender<Command>,
    log: Arc<DecisionLog>,
    metrics: Arc<CoordinatorMetrics>,
    clock: WallClock,
    /// This process's snapshot epoch (see `WeightSnapshot.epoch`).
    epoch: u64,
    /// Seeds not yet used, by service (`persist.rs`); whether this coordinator leads (`election.rs`).
    warm: crate::persist::Warm,
}

/// A random, non-zero epoch: a restarted coordinator's versions start again, and clients tell its
/// snapshots from the previous process's by this.
pub(crate) fn new_epoch() -> u64 {
    use rand::Rng;
    rand::rng().random_range(1..=u64::MAX)
}

/// What the driver reads from: heartbeats and goodbyes from the ingest tasks, commands from the handle and
/// the source tasks (which get `command_sender` to send theirs).
pub(crate) struct Inbox {
    pub(crate) events: mpsc::Receiver<IngestEvent>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) command_sender: mpsc::WeakSender<Command>,
}

impl Driver {
    pub(crate) fn new(
        config: CoordinatorConfig,
        ingest: IngestSettings,
        inbox: Inbox,
        log: Arc<DecisionLog>,
        metrics: Arc<CoordinatorMetrics>,
        epoch: u64,
        warm: crate::persist::Warm,
    ) -> Self {
        let Inbox {
            events,
            commands,
            command_sender,
        } = inbox;
        let mut driver = Self {
            config: config.clone(),
            services: HashMap::new(),
            ingest,
            events,
            commands,
            command_sender,
            log,
            metrics,
            clock: WallClock::new(now()),
            epoch,
            warm,
        };
        driver.apply_config(config);
        driver
    }

    pub(crate) async fn run(mut self) {
        let interval = self.config.engine.heartbeat_interval;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self
                .services
                .values()
                .filter_map(|s| s.engine.next_deadline())
                .min();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => return,
                },
                event = self.events.recv() => match event {
                    Some(event) => self.handle_event(event),
                    None => return,
                },
                _ = tick.tick() => self.tick_all(true),
                () = sleep => self.tick_all(false),
            }
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Reload(config, done) => {
                self.apply_config(*config);
                let _ = done.send(());
            }
            Command::Resolved {
                service,
                source,
                endpoints,
            } => self.apply_resolved(&service, source, endpoints),
            Command::Subscribe(service, reply) => {
                let _ = reply.send(self.services.get(&service).map(|s| s.weights.subscribe()));
            }
            Command::Mirror(snapshot) => self.mirror(snapshot),
            Command::Promote(seeds) => self.promote(seeds),
            Command::Demote => self.demote(),
        }
    }

    fn handle_event(&mut self, event: IngestEvent) {
        let Some(service) = self.services.get_mut(&*event.service) else {
            // The service was removed while its heartbeat waited in the queue: counted, not silent.
            if matches!(event.kind, IngestKind::Heartbeat(_)) {
                self.ingest.stats.discarded.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        match event.kind {
            IngestKind::Heartbeat(hb) => {
                let report = LoadReport {
                    in_flight: hb.in_flight,
                    completed: hb.completed,
                    failed: hb.failed,
                    window: Duration::from_micros(hb.window_us),
                    latency_mean: Duration::from_micros(hb.latency_mean_us),
                    latency_p50: Duration::from_micros(hb.latency_p50_us),
                    latency_p99: Duration::from_micros(hb.latency_p99_us),
                    accepting: hb.accepting,
                    declared_capacity: hb.declared_capacity,
                    utilization: hb.utilization,
                    oldest_in_flight: (hb.oldest_in_flight_us > 0)
                        .then(|| Duration::from_micros(hb.oldest_in_flight_us)),
                    mean_in_flight: hb.mean_in_flight.is_finite().then_some(hb.mean_in_flight),
                };
                // One heartbeat in N becomes a span (the rest would drown a trace backend).
                let every = self
                    .config
                    .telemetry
                    .heartbeat_span_every
                    .unwrap_or(crate::telemetry::DEFAULT_HEARTBEAT_SPAN_EVERY);
                let _span = self.metrics.heartbeat_span_due(every).then(|| {
                    tracing::info_span!(
                        "lateral.heartbeat",
                        service = %service.name,
                        endpoint = %event.endpoint,
                        in_flight = hb.in_flight,
                        completed = hb.completed,
                        failed = hb.failed,
                        p99_us = hb.latency_p99_us,
                        accepting = hb.accepting,
                    )
                    .entered()
                });
                let metered = report.clone();
                match service
                    .engine
                    .on_heartbeat(event.received_at, &event.endpoint, report)
                {
                    Ok(()) => self.metrics.on_heartbeat(
                        &service.name,
                        &event.endpoint,
                        event.received_at,
                        &metered,
                    ),
                    Err(rejection) => {
                        self.ingest.stats.discarded.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(service = %service.name, endpoint = %event.endpoint, %rejection, "heartbeat rejected");
                    }
                }
            }
            IngestKind::Goodbye(bye) => {
                tracing::info!(service = %service.name, endpoint = %event.endpoint, reason = %bye.reason, grace_ms = bye.drain_grace_ms, "agent draining");
                service
                    .engine
                    .on_goodbye(event.received_at, &event.endpoint);
            }
        }
        let name = service.name.clone();
        self.publish(&name, false);
    }

    /// Ticks engines: all of them on the interval (`resend`: re-publish unchanged snapshots as a liveness
    /// signal), or only those whose own deadline has passed.
    fn tick_all(&mut self, resend: bool) {
        let now = now();
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            if let Some(service) = self.services.get_mut(&name) {
                let due = resend || service.engine.next_deadline().is_some_and(|d| d <= now);
                if due {
                    service.engine.on_tick(now);
                }
            }
            self.publish(&name, resend);
        }
        if resend {
            let wall = self.clock.timestamp(now);
            let wall_ms = wall.seconds * 1000 + i64::from(wall.nanos) / 1_000_000;
            self.metrics.sample(now, wall_ms);
        }
    }

    /// Drains decisions and alerts, and publishes the table if it changed (or always, with `resend`).
    fn publish(&mut self, name: &str, resend: bool) {
        let Some(service) = self.services.get_mut(name) else {
            return;
        };
        if !self.warm.leading.load(Ordering::Relaxed) {
            standby::stand_by(service, resend);
            return;
        }
        let decisions: Vec<Decision> =
            std::iter::from_fn(|| service.engine.poll_decision()).collect();
        let alerts: Vec<Alert> = std::iter::from_fn(|| service.engine.poll_alert()).collect();
        if !decisions.is_empty() || !alerts.is_empty() {
            // One span per batch: every decision and alert is an event on it, with its rule and reason.
            let span = tracing::info_span!(
                "lateral.decisions",
                service = %service.name,
                decisions = decisions.len(),
                alerts = alerts.len(),
            );
            let _entered = span.enter();
            for decision in decisions {
                self.metrics
                    .on_decision(&service.name, decision.rule.as_str());
                record_decision(&self.log, &self.clock, &service.name, decision);
            }
            for alert in alerts {
                self.metrics
                    .on_alert(&service.name, alert.kind.as_str(), alert.at);
                record_alert(&self.log, &self.clock, &service.name, alert);
            }
        }
        let table = service.engine.table();
        let changed = table.version != service.engine_version;
        if changed {
            service.engine_version = table.version;
            service.published_version += 1;
            self.metrics.on_table(
                &service.name,
                service.published_version,
                self.config.engine.heartbeat_interval,
                table,
            );
            let snapshot = snapshot_of(
                &service.name,
                (self.epoch, service.published_version),
                self.config.engine.heartbeat_interval,
                table,
                self.clock.timestamp(now()),
            );
            service.weights.send_replace(Some(Arc::new(snapshot)));
        } else if resend {
            // Same Arc, new notification: subscribers learn the coordinator is alive.
            service.weights.send_modify(|_| {});
        }
    }

    fn apply_config(&mut self, config: CoordinatorConfig) {
        let now = now();
        let engine_changed = !same_engine(&self.config, &config);
        self.services
            .retain(|name, _| config.service(name).is_some());
        self.metrics
            .retain_services(|name| config.service(name).is_some());
        for service_config in &config.services {
            let rebuild = engine_changed || !self.services.contains_key(&service_config.name);
            if rebuild {
                self.install_service(service_config, &config, now);
            } else {
                let sources_changed = self.config.service(&service_config.name).is_none_or(|old| {
                    old.dns != service_config.dns || old.etcd != service_config.etcd
                });
                if sources_changed {
                    self.restart_sources(service_config);
                }
                self.reconcile_static(service_config, now);
            }
        }
        self.config = config;
    }

    fn install_service(
        &mut self,
        service: &ServiceConfig,
        config: &CoordinatorConfig,
        now: Instant,
    ) {
        let engine = match Engine::new(config.engine.clone()) {
            Ok(engine) => engine,
            Err(e) => {
                // `CoordinatorConfig::validate` checks this first; reaching here means a caller skipped it.
                tracing::error!(service = %service.name, error = %e, "engine configuration refused; keeping the running service");
                return;
            }
        };
        let previous = self.services.remove(&service.name);
        let (weights, published_version) = match previous {
            Some(mut old) => {
                // Keep subscribers and the version sequence across an engine rebuild.
                let sender = std::mem::replace(&mut old.weights, watch::channel(None).0);
                (sender, old.published_version)
            }
            None => (watch::channel(None).0, 0),
        };
        let name: Arc<str> = Arc::from(service.name.as_str());
        let mut runtime = ServiceRuntime {
            name: name.clone(),
            engine,
            endpoints: BTreeMap::new(),
            source_tasks: Vec::new(),
            weights,
            engine_version: u64::MAX,
            published_version,
        };
        for endpoint in &service.endpoints {
            add_endpoint(
                &mut runtime,
                &self.ingest,
                endpoint.clone(),
                EndpointSource::Static,
                now,
            );
        }
        if let Some(seed) = self.warm.seeds.remove(&service.name) {
            let taken = runtime.engine.seed(now, seed.shares, &seed.origin);
            tracing::info!(service = %service.name, endpoints = taken, origin = %seed.origin, "engine seeded");
        }
        runtime.source_tasks = self.spawn_sources(service);
        self.services.insert(service.name.clone(), runtime);
        self.publish(&service.name, false);
    }

    /// Starts the service's DNS and etcd source tasks.
    fn spawn_sources(&self, service: &ServiceConfig) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        for (index, source) in service.dns.iter().enumerate() {
            tasks.push(tokio::spawn(super::dns::run(
                service.name.clone(),
                index,
                source.clone(),
                self.command_sender.clone(),
                Arc::clone(&self.metrics),
            )));
        }
        for (index, source) in service.etcd.iter().enumerate() {
            tasks.push(tokio::spawn(super::etcd::run(
                service.name.clone(),
                index,
                source.clone(),
                self.command_sender.clone(),
                Arc::clone(&self.metrics),
            )));
        }
        tasks
    }

    /// Restarts the dynamic sources of a service whose DNS or etcd configuration changed on reload; their
    /// endpoints stay until the new sources report (a reload never empties a service by itself).
    fn restart_sources(&mut self, service: &ServiceConfig) {
        let tasks = self.spawn_sources(service);
        let Some(runtime) = self.services.get_mut(&service.name) else {
            return;
        };
        for task in std::mem::replace(&mut runtime.source_tasks, tasks) {
            task.abort();
        }
        let (dns, etcd) = (service.dns.len(), service.etcd.len());
        let orphaned: Vec<Arc<str>> = runtime
            .endpoints
            .iter()
            .filter(|(_, e)| match e.source {
                EndpointSource::Static => false,
                EndpointSource::Dns(i) => i >= dns,
                EndpointSource::Etcd(i) => i >= etcd,
            })
            .map(|(id, _)| id.clone())
            .collect();
        let now = now();
        for id in orphaned {
            tracing::info!(service = %service.name, endpoint = %id, "endpoint's source removed by a reload; removing");
            runtime.engine.remove_endpoint(now, &id);
            runtime.endpoints.remove(&id);
        }
    }

    fn reconcile_static(&mut self, service: &ServiceConfig, now: Instant) {
        let Some(runtime) = self.services.get_mut(&service.name) else {
            return;
        };
        let wanted: BTreeMap<&str, &EndpointConfig> = service
            .endpoints
            .iter()
            .map(|e| (e.id.as_str(), e))
            .collect();
        let stale: Vec<Arc<str>> = runtime
            .endpoints
            .iter()
            .filter(|(id, e)| e.source == EndpointSource::Static && !wanted.contains_key(&***id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            runtime.engine.remove_endpoint(now, &id);
            runtime.endpoints.remove(&id);
        }
        for endpoint in service.endpoints.iter() {
            let unchanged = runtime
                .endpoints
                .get(endpoint.id.as_str())
                .is_some_and(|e| e.config == *endpoint);
            if !unchanged {
                add_endpoint(
                    runtime,
                    &self.ingest,
                    endpoint.clone(),
                    EndpointSource::Static,
                    now,
                );
            }
        }
        let name = service.name.clone();
        self.publish(&name, false);
    }

    /// Applies what a dynamic source found: its endpoints that are gone are removed, new ones added, changed
    /// ones replaced. An id another source already holds keeps its first owner (logged).
    fn apply_resolved(
        &mut self,
        service: &str,
        source: EndpointSource,
        endpoints: Vec<EndpointConfig>,
    ) {
        let now = now();
        let Some(runtime) = self.services.get_mut(service) else {
            return;
        };
        let wanted: BTreeMap<String, EndpointConfig> =
            endpoints.into_iter().map(|e| (e.id.clone(), e)).collect();
        let gone: Vec<Arc<str>> = runtime
            .endpoints
            .iter()
            .filter(|(id, e)| e.source == source && !wanted.contains_key(&***id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            tracing::info!(service, endpoint = %id, %source, "endpoint no longer listed by its source; removing");
            runtime.engine.remove_endpoint(now, &id);
            runtime.endpoints.remove(&id);
        }
        for (id, endpoint) in wanted {
            match runtime.endpoints.get(id.as_str()) {
                Some(running) if running.source != source => {
                    tracing::warn!(service, endpoint = %id, %source, owner = %running.source, "endpoint id already held by another source; ignoring this one");
                }
                Some(running) if running.config == endpoint => {}
                Some(_) => {
                    tracing::info!(service, endpoint = %id, %source, "endpoint changed at its source; replacing");
                    add_endpoint(runtime, &self.ingest, endpoint, source, now);
                }
                None => {
                    tracing::info!(service, endpoint = %id, %source, "endpoint found by its source; adding");
                    add_endpoint(runtime, &self.ingest, endpoint, source, now);
                }
            }
        }
        self.publish(service, false);
    }
}

fn same_engine(a: &CoordinatorConfig, b: &CoordinatorConfig) -> bool {
    a.engine == b.engine
}

fn add_endpoint(
    runtime: &mut ServiceRuntime,
    ingest: &IngestSettings,
    config: EndpointConfig,
    source: EndpointSource,
    now: Instant,
) {
    runtime.engine.upsert_endpoint(
        now,
        EndpointSpec {
            id: config.id.clone(),
            address: lateral_proto::grpc_uri(&config.address),
            zone: config.zone.clone(),
            labels: config.labels.clone(),
            static_weight: config.static_weight,
            declared_capacity: config.declared_capacity,
        },
    );
    let id: Arc<str> = Arc::from(config.id.as_str());
    let task = tokio::spawn(ingest::run(
        ingest.clone(),
        runtime.name.clone(),
        id.clone(),
        config.agent,
    ));
    runtime.endpoints.insert(
        id,
        RunningEndpoint {
            config,
            source,
            ingest: task,
        },
    );
}

pub(crate) fn state_to_proto(state: EndpointState) -> pb::EndpointState {
    match state {
        EndpointState::Ramping => pb::EndpointState::Ramping,
        EndpointState::Active => pb::EndpointState::Active,
        EndpointState::Degraded => pb::EndpointState::Degraded,
        EndpointState::Ejected => pb::EndpointState::Ejected,
        EndpointState::Tripped => pb::EndpointState::Tripped,
        EndpointState::Draining => pb::EndpointState::Draining,
    }
}

fn snapshot_of(
    service: &str,
    (epoch, version): (u64, u64),
    interval: Duration,
    table: &WeightTable,
    generated_at: prost_types::Timestamp,
) -> WeightSnapshot {
    WeightSnapshot {
        service: service.to_string(),
        version,
        epoch,
        heartbeat_interval: prost_types::Duration::try_from(interval).ok(),
        endpoints: table
            .entries
            .iter()
            .map(|e| pb::EndpointWeight {
                id: e.id.clone(),
                address: e.address.clone(),
                zone: e.zone.clone().unwrap_or_default(),
                labels: e
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                weight: e.weight,
                load_balancing_weight: (e.weight.clamp(0.0, 1.0) * 1e6).round() as u32,
                state: state_to_proto(e.state) as i32,
                rule: e.rule.as_str().to_string(),
                reason: e.reason.clone(),
            })
            .collect(),
        generated_at: Some(generated_at),
        static_fallback: table.static_fallback,
    }
}

fn record_decision(log: &DecisionLog, clock: &WallClock, service: &str, d: Decision) {
    tracing::info!(
        target: "lateral::decision",
        service,
        endpoint = %d.endpoint,
        old_weight = d.old_weight,
        new_weight = d.new_weight,
        old_state = ?d.old_state,
        new_state = ?d.new_state,
        rule = d.rule.as_str(),
        inputs = ?d.inputs,
        "{}", d.reason
    );
    log.push_decision(pb::Decision {
        sequence: 0,
        at: Some(clock.timestamp(d.at)),
        service: service.to_string(),
        endpoint: d.endpoint,
        old_weight: d.old_weight,
        new_weight: d.new_weight,
        old_state: state_to_proto(d.old_state) as i32,
        new_state: state_to_proto(d.new_state) as i32,
        rule: d.rule.as_str().to_string(),
        reason: d.reason,
        inputs: d
            .inputs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    });
}

fn record_alert(log: &DecisionLog, clock: &WallClock, service: &str, a: Alert) {
    tracing::warn!(
        target: "lateral::alert",
        service,
        endpoint = a.endpoint.as_deref().unwrap_or(""),
        kind = a.kind.as_str(),
        "{}", a.message
    );
    log.push_alert(pb::Alert {
        at: Some(clock.timestamp(a.at)),
        service: service.to_string(),
        endpoint: a.endpoint.unwrap_or_default(),
        kind: a.kind.as_str().to_string(),
        message: a.message,
    });
}
