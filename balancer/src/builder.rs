//! [`Builder`]: how a [`Balancer`] is configured.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use lateral_proto::coordinator::WatchRequest;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::channel::{Balancer, Inner};
use super::endpoints::EndpointConfig;
use super::hashing::{DEFAULT_TABLE_SIZE, maglev};
use super::metrics::ClientMetrics;
use super::picker::{DEFAULT_CHOICE_COUNT, PickerSnapshot};
use super::retry::{RetryBudget, RetryBudgetConfig};
use super::snapshot::{Policy, RoutingOptions, Shared, WeightsFeed};
use super::split::Splitter;
use super::zones::ZonePolicy;
use crate::Error;

/// The default largest request body buffered for retries.
pub const DEFAULT_MAX_REPLAY_BYTES: usize = 64 * 1024;

/// Configures a [`Balancer`]; start with [`Balancer::builder`].
#[derive(Debug)]
pub struct Builder {
    service: String,
    endpoints: Vec<EndpointConfig>,
    static_weights: HashMap<String, f64>,
    coordinator: Option<String>,
    feed: Option<WeightsFeed>,
    idempotent: HashSet<String>,
    retry_budget: RetryBudgetConfig,
    client_id: Option<String>,
    zone: String,
    seed: Option<u64>,
    max_replay_bytes: usize,
    choice_count: usize,
    orca_refresh: Duration,
    attached: Vec<Attached>,
    hash_key_header: Option<String>,
    hash_table_size: usize,
    dynamic_fraction: Option<f64>,
    zone_policy: Option<ZonePolicy>,
}

struct Attached(Box<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attached(..)")
    }
}

impl Balancer {
    /// Starts configuring a balancer for `service` (the name the coordinator knows it by).
    pub fn builder(service: impl Into<String>) -> Builder {
        Builder {
            service: service.into(),
            endpoints: Vec::new(),
            static_weights: HashMap::new(),
            coordinator: None,
            feed: None,
            idempotent: HashSet::new(),
            retry_budget: RetryBudgetConfig::default(),
            client_id: None,
            zone: String::new(),
            seed: None,
            max_replay_bytes: DEFAULT_MAX_REPLAY_BYTES,
            choice_count: DEFAULT_CHOICE_COUNT,
            orca_refresh: Duration::from_millis(100),
            attached: Vec::new(),
            hash_key_header: None,
            hash_table_size: DEFAULT_TABLE_SIZE,
            dynamic_fraction: None,
            zone_policy: None,
        }
    }
}

impl Builder {
    /// Adds endpoints as `(id, address)`; the address is a URI (`http://10.0.0.1:50051`) or `host:port`.
    pub fn endpoints<I, K, A>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = (K, A)>,
        K: Into<String>,
        A: Into<String>,
    {
        for (id, address) in endpoints {
            self.endpoints.push(EndpointConfig {
                id: id.into(),
                address: address.into(),
                zone: String::new(),
                labels: BTreeMap::new(),
            });
        }
        self
    }

    /// Adds one endpoint with its zone and labels.
    pub fn endpoint<L, K, V>(
        mut self,
        id: impl Into<String>,
        address: impl Into<String>,
        zone: impl Into<String>,
        labels: L,
    ) -> Self
    where
        L: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.endpoints.push(EndpointConfig {
            id: id.into(),
            address: address.into(),
            zone: zone.into(),
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        });
        self
    }

    /// Static weights by endpoint id, used until (and unless) a snapshot arrives. Give one for every
    /// configured endpoint, or none (equal weights). Relative values: they need not sum to 1.
    pub fn static_weights<I, K>(mut self, weights: I) -> Self
    where
        I: IntoIterator<Item = (K, f64)>,
        K: Into<String>,
    {
        self.static_weights
            .extend(weights.into_iter().map(|(k, w)| (k.into(), w)));
        self
    }

    /// Sidecar mode: subscribe to `WatchWeights` of the coordinator at `uri`, reconnecting with jittered
    /// exponential backoff. Until the first snapshot the static (or equal) weights apply.
    pub fn coordinator(mut self, uri: impl Into<String>) -> Self {
        self.coordinator = Some(uri.into());
        self
    }

    /// The low-level weight feed: the latest snapshot for this service (`None` until there is one). The
    /// embedded coordinator hands one of these over; `.coordinator(uri)` builds one from a gRPC stream.
    pub fn weights_feed(
        mut self,
        feed: watch::Receiver<Option<Arc<lateral_proto::coordinator::WeightSnapshot>>>,
    ) -> Self {
        self.feed = Some(feed);
        self
    }

    /// Embedded mode, the default way to run Lateral: the coordinator (engine, QUIC ingest from the agents)
    /// runs inside this process and feeds this balancer directly; nothing else has to be deployed. Returns at
    /// once: until the first snapshot the static (or equal) weights apply. The coordinator lives as long as any
    /// clone of the balancer. `config` should name this balancer's service; its gRPC listener is turned off
    /// unless `config.listen.grpc` is set on purpose (then other clients may watch it too). Must be called
    /// inside a tokio runtime.
    #[cfg(feature = "embedded")]
    pub fn embedded(self, config: lateral_coordinator::CoordinatorConfig) -> Self {
        let (feed, guard) = lateral_coordinator::spawn_embedded(config, &self.service);
        self.weights_feed(feed).attach(guard)
    }

    /// Keeps `resource` alive as long as any clone of the balancer (e.g. the handle of an embedded
    /// coordinator that produces the weight feed).
    pub fn attach<T: Send + Sync + 'static>(mut self, resource: T) -> Self {
        self.attached.push(Attached(Box::new(resource)));
        self
    }

    /// Methods (full gRPC paths, e.g. `/lateral.demo.v1.Echo/Unary`) that are safe to send twice: an
    /// UNAVAILABLE answer from the server is retried once on another endpoint.
    pub fn idempotent_methods<I, S>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.idempotent.extend(methods.into_iter().map(Into::into));
        self
    }

    /// The retry budget (default: retries ≤ 20% of requests, plus 10 per second).
    pub fn retry_budget(mut self, budget: RetryBudgetConfig) -> Self {
        self.retry_budget = budget;
        self
    }

    /// This client's id: sent to the coordinator and used as the prefix of every `x-lateral-request-id`.
    /// Must be unique among the clients of the same backends (default: process id + a random number).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// The client's zone, sent to the coordinator (and preferred when [`zone_policy`](Self::zone_policy) is
    /// set).
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = zone.into();
        self
    }

    /// Zone preference with spillover (see [`zones`](super::zones)): requests go to endpoints of this
    /// client's [`zone`](Self::zone), renormalised within it; when the local zone is busy, the part it cannot
    /// carry spills to the other zones (all of it when the zone is unhealthy), with hysteresis. Requires a
    /// zone.
    pub fn zone_policy(mut self, policy: ZonePolicy) -> Self {
        self.zone_policy = Some(policy);
        self
    }

    /// Key-hashed routing (see [`hashing`](super::hashing)): a request carrying metadata `header` (e.g.
    /// `x-user-id`) goes to the endpoint owning its value in a weighted Maglev table; requests without it
    /// take the weighted pick.
    pub fn hash_key_header(mut self, header: impl Into<String>) -> Self {
        self.hash_key_header = Some(header.into());
        self
    }

    /// The Maglev table size of key hashing: a prime (default 65 537). Larger is closer to the weights and
    /// costs memory (4 bytes a slot) and build time.
    pub fn hash_table_size(mut self, slots: usize) -> Self {
        self.hash_table_size = slots;
        self
    }

    /// A dynamic/static split for a safe rollout of Lateral (see [`split`](super::split)): `fraction` of the
    /// requests (in [0, 1], e.g. 0.1) follow the coordinator's weights, the rest the static weights; both
    /// groups' latency and errors are in the metrics.
    pub fn dynamic_fraction(mut self, fraction: f64) -> Self {
        self.dynamic_fraction = Some(fraction);
        self
    }

    /// Seeds the scheduler's start positions and the reconnect jitter (deterministic tests). Does not affect
    /// the default client id.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The largest request body kept to be sent again on a retry (default 64 KiB).
    pub fn max_replay_bytes(mut self, bytes: usize) -> Self {
        self.max_replay_bytes = bytes;
        self
    }

    /// How many candidates each pick compares by expected delay (Envoy's `choice_count`): the scheduled
    /// endpoint and `n − 1` drawn by weight (default 2; 1 follows the coordinator's schedule alone, exactly;
    /// values are clamped to 1..=8). See [`picker`](super::picker).
    pub fn choice_count(mut self, n: usize) -> Self {
        self.choice_count = n.clamp(1, 8);
        self
    }

    /// How often, at most, ORCA utilization reports republish the picker while zone preference is on
    /// (default 100 ms; without zone preference the ORCA in-flight counts are read at pick time and nothing
    /// is republished).
    pub fn orca_refresh(mut self, every: Duration) -> Self {
        self.orca_refresh = every;
        self
    }

    /// The service name.
    pub fn service_name(&self) -> &str {
        &self.service
    }

    /// The endpoints configured so far (for an embedded coordinator to watch the same set).
    pub fn configured_endpoints(&self) -> &[EndpointConfig] {
        &self.endpoints
    }

    /// Builds the balancer and starts its background task(s) on the current tokio runtime. Never waits for
    /// the coordinator.
    pub fn build(self) -> Result<Balancer, Error> {
        let config_error = |field: &str, expected: String| Error::Config {
            source_name: format!("Balancer::builder(\"{}\")", self.service),
            field: field.to_string(),
            expected,
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| config_error("build", "to be called within a tokio runtime".into()))?;
        if self.endpoints.is_empty() && self.coordinator.is_none() && self.feed.is_none() {
            return Err(config_error(
                "endpoints",
                "at least one endpoint, a coordinator or a weights feed".into(),
            ));
        }
        if self.coordinator.is_some() && self.feed.is_some() {
            return Err(config_error(
                "coordinator",
                "either .coordinator(uri) or .weights_feed(..), not both".into(),
            ));
        }
        let mut ids = HashSet::new();
        for e in &self.endpoints {
            if !ids.insert(e.id.as_str()) {
                return Err(config_error(
                    "endpoints",
                    format!("unique ids, `{}` appears twice", e.id),
                ));
            }
        }
        if !self.static_weights.is_empty() {
            for (id, w) in &self.static_weights {
                if !ids.contains(id.as_str()) {
                    return Err(config_error(
                        "static_weights",
                        format!("ids of configured endpoints, found `{id}`"),
                    ));
                }
                if !w.is_finite() || *w < 0.0 {
                    return Err(config_error(
                        "static_weights",
                        format!("finite weights ≥ 0, `{id}` has {w}"),
                    ));
                }
            }
            if let Some(missing) = self
                .endpoints
                .iter()
                .find(|e| !self.static_weights.contains_key(&e.id))
            {
                return Err(config_error(
                    "static_weights",
                    format!(
                        "a weight for every endpoint or none; `{}` has none",
                        missing.id
                    ),
                ));
            }
        }
        let hash_key = match &self.hash_key_header {
            Some(name) => Some(http::HeaderName::try_from(name.as_str()).map_err(|_| {
                config_error(
                    "hash_key_header",
                    format!("a valid metadata (header) name, found {name:?}"),
                )
            })?),
            None => None,
        };
        if hash_key.is_some() && !maglev::is_prime(self.hash_table_size) {
            return Err(config_error(
                "hash_table_size",
                format!("a prime number of slots, found {}", self.hash_table_size),
            ));
        }
        if let Some(f) = self.dynamic_fraction
            && !(f.is_finite() && (0.0..=1.0).contains(&f))
        {
            return Err(config_error(
                "dynamic_fraction",
                format!("a fraction in [0, 1], found {f}"),
            ));
        }
        if let Some(policy) = &self.zone_policy {
            if self.zone.is_empty() {
                return Err(config_error(
                    "zone_policy",
                    "a client zone: call .zone(\"..\") too".into(),
                ));
            }
            if let Some(why) = policy.invalid() {
                return Err(config_error("zone_policy", why));
            }
        }
        let routing = RoutingOptions {
            hash_table_size: hash_key.is_some().then_some(self.hash_table_size),
            split: self.dynamic_fraction.is_some(),
            zone: self.zone_policy.map(|p| (self.zone.clone(), p)),
        };
        let client_id = match self.client_id {
            Some(id) => id,
            None => format!(
                "{:x}-{:08x}",
                std::process::id(),
                rand::rng().random::<u32>()
            ),
        };
        if client_id.is_empty() || HeaderValue::try_from(client_id.as_str()).is_err() {
            return Err(config_error(
                "client_id",
                format!("a non-empty header-safe string, found {client_id:?}"),
            ));
        }
        let mut rng = match self.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_rng(&mut rand::rng()),
        };
        let shared = Arc::new(Shared {
            service: self.service.clone(),
            picker: ArcSwap::from_pointee(PickerSnapshot::empty()),
            metrics: Arc::new(ClientMetrics::new(&self.service)),
            zones_on: routing.zone.is_some(),
            orca_dirty: AtomicBool::new(false),
            orca_notify: Notify::new(),
            clock_base: tokio::time::Instant::now(),
        });
        let _enter = runtime.enter();
        let policy = Policy::new(
            Arc::clone(&shared),
            &self.endpoints,
            &self.static_weights,
            Some(rng.random()),
            self.choice_count,
            self.orca_refresh,
            routing,
        )?;
        let stop = CancellationToken::new();
        let mut feed = self.feed;
        if let Some(uri) = self.coordinator {
            let (tx, rx) = watch::channel(None);
            feed = Some(rx);
            let request = WatchRequest {
                service: self.service.clone(),
                client_id: client_id.clone(),
                zone: self.zone.clone(),
            };
            let watch_rng = SmallRng::seed_from_u64(rng.random());
            runtime.spawn(super::watch::run(
                uri,
                request,
                tx,
                watch_rng,
                stop.child_token(),
            ));
        }
        runtime.spawn(policy.run(feed, stop.child_token()));
        Ok(Balancer {
            inner: Arc::new(Inner {
                shared,
                idempotent: self.idempotent,
                budget: RetryBudget::new(self.retry_budget),
                client_id,
                next_request: AtomicU64::new(0),
                max_replay_bytes: self.max_replay_bytes,
                hash_key,
                split: self.dynamic_fraction.map(Splitter::new),
                _stop: stop.drop_guard(),
                _attached: self.attached.into_iter().map(|a| a.0).collect(),
            }),
        })
    }
}
