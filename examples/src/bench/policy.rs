//! The policies compared, by name, each built into one type-erased transport per client instance so the same
//! load generator drives them all through a generated `EchoClient`.
//!
//! | name | what |
//! |---|---|
//! | `round_robin` | one tonic `Channel` per backend, taken in turn |
//! | `tonic_p2c` | tonic's `Channel::balance_list` (tower p2c inside tonic) |
//! | `p2c_pending` | `tower::balance::p2c` over `PendingRequestsDiscover` |
//! | `p2c_peak_ewma` | `tower::balance::p2c` over `PeakEwmaDiscover` (Linkerd's choice; default RTT 30 ms, decay 10 s) |
//! | `static_oracle` | Lateral's `Balancer` with static weights at the true goodput capacity ratio, no feed |
//! | `lateral` | Lateral's `Balancer` fed by its own embedded coordinator (the default deployment) |
//! | `envoy_cswrr` | a real Envoy front proxy, `ClientSideWeightedRoundRobin` on the backends' ORCA trailers (`blackout_period: 0s`, `weight_update_period: 0.1s`, other fields default) |
//! | `envoy_least_request` | the same Envoy front proxy with `lb_policy: LEAST_REQUEST` (default `choice_count: 2`) |
//! | `ideal` | the limit: one dispatcher shared by every client instance, exact in-flight counts and the scenario's ground truth, shortest expected delay (see [`super::ideal`]) |
//! | `direct:ADDR` | everything to one address (a proxy in front of the same backends) |
//!
//! The Envoy policies start one Envoy per run over the run's fresh backends (see [`super::envoy`]), kept in
//! [`Clients::envoy`] for as long as the transports; each client instance has its own `Channel` to it.
//!
//! `LATERAL_CHOICE_COUNT=N` sets the `choice_count` of Lateral's balancers (default 2) for experiments.
//!
//! The tower balancers sit behind `tower::buffer::Buffer` so every clone of the client shares one balancer.
//! Lateral's `Balancer` (both `lateral` and `static_oracle`) is told `Unary` is idempotent, so it retries an
//! UNAVAILABLE answer once on another endpoint, as its users would configure it; the other policies have no
//! retry layer, as they come.
//!
//! A scenario's `[routing]` table configures Lateral's balancer: `hash_keys` turns on
//! `hash_key_header("x-lateral-key")` (both `lateral` and `static_oracle`), `client_zone` and `zone_policy`
//! set `zone(..)` and `zone_policy(..)` (both; backends carry their zones in the builder and in the
//! coordinator), and `dynamic_fraction` sets `dynamic_fraction(..)` on `lateral` only, with the static group
//! on `static_oracle`'s weights. The other policies get the same requests (with the key header) and ignore it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use lateral_balancer::Balancer;
use lateral_coordinator::Coordinator;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::BoxError;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use super::cluster::{Cluster, SERVICE};
use super::envoy::{EnvoyLb, EnvoyProxy};
use super::ideal::{IdealDispatcher, IdealTransport};
use super::scenario::{KEY_HEADER, Scenario};

/// The gRPC path of the benchmark's request.
pub const UNARY: &str = "/lateral.demo.v1.Echo/Unary";

/// What every policy is turned into: a cloneable HTTP/2 service a generated client takes like a `Channel`.
pub type Transport = BoxCloneService<http::Request<Body>, http::Response<Body>, TransportError>;

/// A transport error of any policy. A concrete type rather than `BoxError`: a boxed trait object as the
/// service error trips a higher-ranked `From` bound when the generated client's future is spawned.
#[derive(Debug)]
pub struct TransportError(pub BoxError);

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A policy by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Round robin over one channel per backend.
    RoundRobin,
    /// tonic's `balance_list`.
    TonicP2c,
    /// tower p2c on pending requests.
    P2cPending,
    /// tower p2c on peak EWMA latency.
    P2cPeakEwma,
    /// Lateral's balancer with static weights at the true capacity ratio.
    StaticOracle,
    /// Lateral with an embedded coordinator per client.
    Lateral,
    /// A real Envoy front proxy with client-side weighted round robin on ORCA.
    EnvoyCswrr,
    /// A real Envoy front proxy with least request.
    EnvoyLeastRequest,
    /// The limit: one shared dispatcher with perfect, instant knowledge.
    Ideal,
    /// Everything to one address.
    Direct(String),
}

/// Every policy name, in the default run order.
pub const ALL: &[&str] = &[
    "round_robin",
    "tonic_p2c",
    "p2c_pending",
    "p2c_peak_ewma",
    "envoy_cswrr",
    "envoy_least_request",
    "static_oracle",
    "lateral",
    "ideal",
];

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim() {
            "round_robin" => Policy::RoundRobin,
            "tonic_p2c" => Policy::TonicP2c,
            "p2c_pending" => Policy::P2cPending,
            "p2c_peak_ewma" => Policy::P2cPeakEwma,
            "static_oracle" => Policy::StaticOracle,
            "lateral" => Policy::Lateral,
            "envoy_cswrr" => Policy::EnvoyCswrr,
            "envoy_least_request" => Policy::EnvoyLeastRequest,
            "ideal" => Policy::Ideal,
            other => match other.strip_prefix("direct:") {
                Some(addr) if !addr.is_empty() => Policy::Direct(addr.to_string()),
                _ => {
                    return Err(format!(
                        "unknown policy `{other}`: expected one of {}, or direct:HOST:PORT",
                        ALL.join(", ")
                    ));
                }
            },
        })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::RoundRobin => f.write_str("round_robin"),
            Policy::TonicP2c => f.write_str("tonic_p2c"),
            Policy::P2cPending => f.write_str("p2c_pending"),
            Policy::P2cPeakEwma => f.write_str("p2c_peak_ewma"),
            Policy::StaticOracle => f.write_str("static_oracle"),
            Policy::Lateral => f.write_str("lateral"),
            Policy::EnvoyCswrr => f.write_str("envoy_cswrr"),
            Policy::EnvoyLeastRequest => f.write_str("envoy_least_request"),
            Policy::Ideal => f.write_str("ideal"),
            Policy::Direct(addr) => write!(f, "direct:{addr}"),
        }
    }
}

/// One weight snapshot lateral's first client received: seconds since its coordinator started, and shares.
#[derive(Debug, Clone)]
pub struct WeightSample {
    /// When it arrived.
    pub at: Instant,
    /// Share per endpoint id.
    pub weights: BTreeMap<String, f64>,
}

/// The client instances of one policy, and what keeps them running.
pub struct Clients {
    /// One transport per client instance.
    pub transports: Vec<Transport>,
    /// Lateral's coordinators (one per client), kept alive for the run; the first one's decisions are plotted.
    pub coordinators: Vec<Coordinator>,
    /// Lateral's balancers (for retry counters).
    pub balancers: Vec<Balancer>,
    /// Weight snapshots seen by the first client's coordinator.
    pub weights: Arc<Mutex<Vec<WeightSample>>>,
    /// The Envoy policies: the front proxy every transport sends to, killed when this is dropped.
    pub envoy: Option<EnvoyProxy>,
    /// `ideal`: the dispatcher every client instance shares (the run starts it following the timeline).
    pub ideal: Option<Arc<IdealDispatcher>>,
}

fn channel(uri: &str) -> Result<Endpoint, BoxError> {
    Ok(Endpoint::from_shared(uri.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true))
}

/// One transport type for every policy: errors boxed, and the response body as a `tonic::body::Body` (a
/// no-op for a body that is one already; the Balancer's own body type is boxed here, as any body a user's
/// layer erases).
pub(crate) fn erase<S, B>(service: S) -> Transport
where
    S: Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneService::new(
        service
            .map_response(|response| response.map(Body::new))
            .map_err(|e| TransportError(e.into())),
    )
}

/// tower's p2c takes its own small RNG trait; this feeds it from a seeded `SmallRng`.
struct SeededRng(SmallRng);

impl tower::util::rng::Rng for SeededRng {
    fn next_u64(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.0)
    }
}

/// Round robin over channels, without readiness tricks: each call goes to the next channel in turn.
#[derive(Clone)]
struct RoundRobin {
    channels: Arc<[Channel]>,
    next: Arc<std::sync::atomic::AtomicUsize>,
}

impl Service<http::Request<Body>> for RoundRobin {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.channels.len();
        let channel = self.channels[i].clone();
        Box::pin(channel.oneshot(request))
    }
}

impl Policy {
    /// The Envoy load balancer of an Envoy policy.
    pub fn envoy_lb(&self) -> Option<EnvoyLb> {
        match self {
            Policy::EnvoyCswrr => Some(EnvoyLb::Cswrr),
            Policy::EnvoyLeastRequest => Some(EnvoyLb::LeastRequest),
            _ => None,
        }
    }

    /// Builds `clients` independent client instances of this policy against `cluster`.
    pub async fn build(
        &self,
        scenario: &Scenario,
        cluster: &Cluster,
        clients: u32,
        seed: u64,
    ) -> Result<Clients, BoxError> {
        let mut out = Clients {
            transports: Vec::new(),
            coordinators: Vec::new(),
            balancers: Vec::new(),
            weights: Arc::default(),
            envoy: None,
            ideal: None,
        };
        if let Some(lb) = self.envoy_lb() {
            out.envoy = Some(EnvoyProxy::start_over(lb, cluster).await?);
        }
        for c in 0..clients {
            let seed = seed.wrapping_add(u64::from(c) * 7919);
            let transport = match self {
                Policy::RoundRobin => {
                    let channels = cluster
                        .uris
                        .iter()
                        .map(|u| Ok(channel(u)?.connect_lazy()))
                        .collect::<Result<Vec<_>, BoxError>>()?;
                    erase(RoundRobin {
                        channels: channels.into(),
                        // Each client starts at a different backend, as independent processes would.
                        next: Arc::new((c as usize).into()),
                    })
                }
                Policy::TonicP2c => {
                    let endpoints = cluster
                        .uris
                        .iter()
                        .map(|u| channel(u))
                        .collect::<Result<Vec<_>, _>>()?;
                    erase(Channel::balance_list(endpoints.into_iter()))
                }
                Policy::P2cPending | Policy::P2cPeakEwma => {
                    let channels = cluster
                        .uris
                        .iter()
                        .map(|u| Ok(channel(u)?.connect_lazy()))
                        .collect::<Result<Vec<_>, BoxError>>()?;
                    let list = tower::discover::ServiceList::new::<http::Request<Body>>(channels);
                    let rng = SeededRng(SmallRng::seed_from_u64(seed));
                    if *self == Policy::P2cPending {
                        let discover = tower::load::PendingRequestsDiscover::new::<
                            http::Request<Body>,
                        >(
                            list, tower::load::CompleteOnResponse::default()
                        );
                        let balance = tower::balance::p2c::Balance::from_rng(discover, rng);
                        erase(tower::buffer::Buffer::new(balance, 4096))
                    } else {
                        let discover = tower::load::PeakEwmaDiscover::new::<http::Request<Body>>(
                            list,
                            Duration::from_millis(30),
                            Duration::from_secs(10),
                            tower::load::CompleteOnResponse::default(),
                        );
                        let balance = tower::balance::p2c::Balance::from_rng(discover, rng);
                        erase(tower::buffer::Buffer::new(balance, 4096))
                    }
                }
                Policy::Ideal => {
                    if out.ideal.is_none() {
                        let channels = cluster
                            .uris
                            .iter()
                            .map(|u| Ok(channel(u)?.connect_lazy()))
                            .collect::<Result<Vec<_>, BoxError>>()?;
                        out.ideal = Some(IdealDispatcher::new(scenario, channels));
                    }
                    let dispatcher = out.ideal.clone().ok_or("ideal dispatcher missing")?;
                    erase(IdealTransport(dispatcher))
                }
                Policy::EnvoyCswrr | Policy::EnvoyLeastRequest => {
                    let envoy = out.envoy.as_ref().ok_or("the Envoy proxy is not running")?;
                    erase(channel(&envoy.uri())?.connect_lazy())
                }
                Policy::Direct(addr) => {
                    let uri = if addr.contains("://") {
                        addr.clone()
                    } else {
                        format!("http://{addr}")
                    };
                    erase(channel(&uri)?.connect_lazy())
                }
                Policy::StaticOracle | Policy::Lateral => {
                    let mut builder = Balancer::builder(SERVICE)
                        .choice_count(
                            std::env::var("LATERAL_CHOICE_COUNT")
                                .ok()
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(2),
                        )
                        .idempotent_methods([UNARY])
                        .client_id(format!("bench-{c}"))
                        .seed(seed);
                    for (b, uri) in scenario.backends.iter().zip(&cluster.uris) {
                        builder = builder.endpoint(
                            b.name.clone(),
                            uri.clone(),
                            b.zone().unwrap_or_default(),
                            b.labels.clone(),
                        );
                    }
                    if let Some(routing) = &scenario.routing {
                        if routing.hash_keys.is_some() {
                            builder = builder.hash_key_header(KEY_HEADER);
                        }
                        if let Some(zone) = &routing.client_zone {
                            builder = builder.zone(zone.clone());
                        }
                        if let Some(p) = &routing.zone_policy {
                            builder = builder.zone_policy(p.policy());
                        }
                        // The split compares the coordinator's weights with a team's static weights, taken
                        // as the true capacity ratio at the start (static_oracle's); static_oracle itself
                        // has no dynamic weights to split.
                        if let Some(f) = routing.dynamic_fraction
                            && *self == Policy::Lateral
                        {
                            builder = builder
                                .dynamic_fraction(f)
                                .static_weights(scenario.oracle_weights());
                        }
                    }
                    if *self == Policy::StaticOracle {
                        builder = builder.static_weights(scenario.oracle_weights());
                    } else {
                        let coordinator =
                            Coordinator::start(cluster.coordinator_config(scenario)?).await?;
                        let feed = coordinator.subscribe(SERVICE).await?;
                        if c == 0 {
                            let samples = out.weights.clone();
                            let mut watch = feed.clone();
                            tokio::spawn(async move {
                                loop {
                                    let latest = watch.borrow_and_update().clone();
                                    if let Some(s) = latest
                                        && let Ok(mut v) = samples.lock()
                                    {
                                        v.push(WeightSample {
                                            at: Instant::now(),
                                            weights: s
                                                .endpoints
                                                .iter()
                                                .map(|e| (e.id.clone(), e.weight))
                                                .collect(),
                                        });
                                    }
                                    if watch.changed().await.is_err() {
                                        return;
                                    }
                                }
                            });
                        }
                        builder = builder.weights_feed(feed);
                        out.coordinators.push(coordinator);
                    }
                    let balancer = builder.build()?;
                    out.balancers.push(balancer.clone());
                    erase(balancer)
                }
            };
            out.transports.push(transport);
        }
        Ok(out)
    }
}
