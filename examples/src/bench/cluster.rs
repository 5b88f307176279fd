//! The backends of a scenario as real tonic servers with their agents, and the event runner that makes them
//! follow the scenario's timeline.
//!
//! The runner reconciles rather than replays: every 50 ms it computes [`Scenario::truth_at`] and applies the
//! difference (kill, restart, blackhole, service time, error rate), so flaps and ramps need no special timers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lateral_coordinator::CoordinatorConfig;
use lateral_coordinator::config::{EndpointConfig, ServiceConfig, TlsConfig};
use lateral_ops::tls::DevPki;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::scenario::{BackendTruth, Scenario};
use crate::backend::{Backend, BackendSpec};

/// The service name the coordinators and balancers use.
pub const SERVICE: &str = "echo";

/// `LATERAL_SHED_QUEUE_ALLOWANCE=N` sets the backends' shedding allowance for experiments (`off`: never
/// shed); otherwise the agent's default.
fn shed_queue_allowance() -> Option<f64> {
    match std::env::var("LATERAL_SHED_QUEUE_ALLOWANCE") {
        Ok(v) if v == "off" => None,
        Ok(v) => v.parse().ok().or(Some(
            lateral_agent::layer::shedding::DEFAULT_QUEUE_ALLOWANCE,
        )),
        Err(_) => Some(lateral_agent::layer::shedding::DEFAULT_QUEUE_ALLOWANCE),
    }
}

/// Running backends of one scenario.
pub struct Cluster {
    /// The backends, in scenario order (locked by the event runner while it changes one).
    pub backends: Arc<Mutex<Vec<Backend>>>,
    /// Names, in scenario order.
    pub names: Vec<String>,
    /// gRPC URIs, in scenario order.
    pub uris: Vec<String>,
    /// Agent QUIC addresses, in scenario order.
    pub agents: Vec<SocketAddr>,
    pki: DevPki,
}

/// A change the event runner applied, for reports and plots.
#[derive(Debug, Clone)]
pub struct AppliedEvent {
    /// Seconds after traffic start.
    pub t: f64,
    /// Which backend.
    pub backend: String,
    /// What was done.
    pub what: String,
}

impl Cluster {
    /// Starts every backend of `scenario` on free loopback ports (mutual TLS for QUIC from an in-memory dev CA).
    pub async fn start(scenario: &Scenario, seed: u64) -> Result<Self, tower::BoxError> {
        let pki = DevPki::generate("lateral-bench-ca")?;
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut backends = Vec::new();
        for (i, b) in scenario.backends.iter().enumerate() {
            let spec = BackendSpec {
                shed_queue_allowance: shed_queue_allowance(),
                distribution: b.distribution,
                declare_capacity: b.declare_capacity,
                seed: seed.wrapping_mul(1000).wrapping_add(i as u64),
                ..BackendSpec::new(
                    &b.name,
                    b.slots,
                    Duration::from_secs_f64(b.service_time_ms / 1000.0),
                )
            };
            let backend = Backend::start(spec, any, any, pki.mutual_mode("agent")?)
                .await
                .map_err(|e| format!("backend `{}` did not start: {e}", b.name))?;
            backend.knobs().set_errors(
                b.error_rate,
                Duration::from_secs_f64(b.error_latency_ms / 1000.0),
            );
            backends.push(backend);
        }
        Ok(Self {
            names: backends.iter().map(|b| b.spec().name.clone()).collect(),
            uris: backends.iter().map(Backend::uri).collect(),
            agents: backends.iter().map(Backend::agent_addr).collect(),
            backends: Arc::new(Mutex::new(backends)),
            pki,
        })
    }

    /// The dev CA the backends' agents and the coordinators share.
    pub fn pki(&self) -> &DevPki {
        &self.pki
    }

    /// An embedded coordinator's configuration for these backends (no gRPC server; labels from the scenario).
    pub fn coordinator_config(
        &self,
        scenario: &Scenario,
    ) -> Result<CoordinatorConfig, tower::BoxError> {
        let issued = self.pki.issue("coordinator")?;
        // Parsed from a minimal file, then filled in, so fields added to the configuration later keep their
        // defaults (the same pattern as the demo).
        let mut config = CoordinatorConfig::parse(
            "[tls]\ninsecure_dev = true\n[[service]]\nname = \"echo\"\n[[service.endpoint]]\nid = \"x\"\n\
             address = \"http://127.0.0.1:1\"\nagent = \"127.0.0.1:1\"\n",
            "lateral-bench",
        )?;
        config.listen.grpc = None; // embedded: no server
        config.tls = TlsConfig {
            ca_pem: Some(self.pki.ca_pem().to_string()),
            cert_pem: Some(issued.cert_pem),
            key_pem: Some(issued.key_pem),
            ..TlsConfig::default()
        };
        config.engine = scenario.engine_config();
        config.services = vec![ServiceConfig {
            name: SERVICE.into(),
            endpoints: scenario
                .backends
                .iter()
                .zip(self.uris.iter().zip(&self.agents))
                .map(|(b, (uri, agent))| EndpointConfig {
                    id: b.name.clone(),
                    address: uri.clone(),
                    agent: *agent,
                    zone: b.zone().map(String::from),
                    labels: b.labels.clone(),
                    // No static weight: the engine starts from the agents' declared slots.
                    static_weight: None,
                    declared_capacity: None,
                })
                .collect(),
            dns: vec![],
            etcd: vec![],
        }];
        Ok(config)
    }

    /// Writes what an external `lateral-coordinator` needs to join these backends' agents into `dir`: the dev
    /// CA (`ca.pem`), a coordinator certificate and key it issues, and `coordinator.toml` (gRPC API on
    /// `grpc_listen`, the dashboard and metrics on `http_listen`, the scenario's backends as service `echo`,
    /// default engine rules). The file is loaded back with the coordinator's own checker before it is
    /// reported. Returns the configuration's path.
    pub fn write_coordinator_files(
        &self,
        scenario: &Scenario,
        dir: &std::path::Path,
        grpc_listen: SocketAddr,
        http_listen: SocketAddr,
    ) -> Result<std::path::PathBuf, tower::BoxError> {
        let at = |name: &str| dir.join(name);
        let write = |name: &str, text: &str| {
            std::fs::write(at(name), text)
                .map_err(|e| format!("cannot write {}: {e}", at(name).display()))
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let issued = self.pki.issue("coordinator")?;
        write("ca.pem", self.pki.ca_pem())?;
        write("coordinator.pem", &issued.cert_pem)?;
        write("coordinator-key.pem", &issued.key_pem)?;
        // TOML basic strings take JSON's escapes.
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        let path = |name: &str| quote(&at(name).display().to_string());
        let mut toml = format!(
            "# Written by `lateral-bench serve {name}`: an external coordinator for this run's backends.\n\
             [listen]\ngrpc = {grpc}\nhttp = {http}\n\n[tls]\nca = {ca}\ncert = {cert}\nkey = {key}\n\n\
             [[service]]\nname = {service}\n",
            name = scenario.name,
            grpc = quote(&grpc_listen.to_string()),
            http = quote(&http_listen.to_string()),
            ca = path("ca.pem"),
            cert = path("coordinator.pem"),
            key = path("coordinator-key.pem"),
            service = quote(SERVICE),
        );
        for (b, (uri, agent)) in scenario
            .backends
            .iter()
            .zip(self.uris.iter().zip(&self.agents))
        {
            toml.push_str(&format!(
                "\n  [[service.endpoint]]\n  id = {}\n  address = {}\n  agent = {}\n",
                quote(&b.name),
                quote(uri),
                quote(&agent.to_string())
            ));
            if let Some(zone) = b.zone() {
                toml.push_str(&format!("  zone = {}\n", quote(zone)));
            }
            if !b.labels.is_empty() {
                let labels: Vec<String> = b
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{} = {}", quote(k), quote(v)))
                    .collect();
                toml.push_str(&format!("  labels = {{ {} }}\n", labels.join(", ")));
            }
        }
        write("coordinator.toml", &toml)?;
        let config_path = at("coordinator.toml");
        CoordinatorConfig::load(&config_path)?;
        Ok(config_path)
    }

    /// Follows the scenario's timeline from `start` for `until`, calling `on_event` for every change applied.
    pub async fn run_events(
        &self,
        scenario: &Scenario,
        start: Instant,
        until: Duration,
        mut on_event: impl FnMut(AppliedEvent),
    ) {
        let mut current: Vec<BackendTruth> = scenario.truth_at(-1.0);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let elapsed = start.elapsed();
            let t = elapsed.as_secs_f64();
            let target = scenario.truth_at(t);
            let mut backends = self.backends.lock().await;
            for (i, (now, want)) in current.iter_mut().zip(&target).enumerate() {
                let Some(backend) = backends.get_mut(i) else {
                    continue;
                };
                let name = self.names[i].clone();
                let mut applied = |what: String| {
                    on_event(AppliedEvent {
                        t,
                        backend: name.clone(),
                        what,
                    })
                };
                if now.up != want.up {
                    if want.up {
                        match backend.restart().await {
                            Ok(()) => applied("restart".into()),
                            Err(e) => applied(format!("restart FAILED: {e}")),
                        }
                    } else {
                        backend.kill().await;
                        applied("kill".into());
                    }
                }
                if now.blackhole != want.blackhole {
                    backend.knobs().set_blackhole(want.blackhole);
                    applied(format!(
                        "blackhole {}",
                        if want.blackhole { "on" } else { "off" }
                    ));
                }
                if (now.service_factor - want.service_factor).abs() > 1e-9 {
                    let base = backend.spec().service_time.as_secs_f64();
                    backend
                        .knobs()
                        .set_service_time(Duration::from_secs_f64(base * want.service_factor));
                    // A ramp changes every tick; report only round steps of it.
                    if (now.service_factor * 4.0).round() != (want.service_factor * 4.0).round()
                        || (want.service_factor - want.service_factor.round()).abs() < 1e-9
                    {
                        applied(format!("service time ×{:.2}", want.service_factor));
                    }
                }
                if (now.error_rate - want.error_rate).abs() > 1e-9
                    || (now.error_latency_ms - want.error_latency_ms).abs() > 1e-9
                {
                    backend.knobs().set_errors(
                        want.error_rate,
                        Duration::from_secs_f64(want.error_latency_ms / 1000.0),
                    );
                    if (now.error_rate * 20.0).round() != (want.error_rate * 20.0).round() {
                        applied(format!(
                            "error rate {:.0}% in {} ms",
                            want.error_rate * 100.0,
                            want.error_latency_ms
                        ));
                    }
                }
                *now = *want;
            }
            drop(backends);
            if elapsed >= until {
                return;
            }
        }
    }

    /// Kills every backend.
    pub async fn stop(&self) {
        for b in self.backends.lock().await.iter_mut() {
            b.kill().await;
        }
    }
}
