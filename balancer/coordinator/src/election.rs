//! HA: coordinators elect a leader through an etcd lease, and standbys republish the leader's weights.
//!
//! **Election** (etcd's election recipe, campaign and observe): each coordinator grants a lease of
//! `[ha] lease_ttl_s`, keeps it alive every third of its TTL, and puts the key
//! `<prefix>election/<lease id>` bound to it. The key with the lowest create revision leads. A candidate
//! that does not lead watches the key just before its own and looks again when that key is deleted (its
//! owner revoked or lost its lease), so exactly one candidate reacts to each departure. A leader that
//! cannot renew its lease within the TTL steps down at once (it may no longer hold it), so two
//! coordinators never both believe they lead for longer than the network's delay.
//!
//! **Who serves:** every instance serves `WatchWeights` (and xDS), and only the leader computes: a standby
//! republishes the weights the leader persists under `<prefix>weights/` (see `persist.rs`, at most one
//! write per second per service). Why: clients keep one coordinator address and never have to find the
//! leader, a failover changes nothing on their side but the snapshot epoch (which they already follow
//! across a restart), and the standby's subscribers are fed the leader's shares all along — so a
//! promoted standby starts from them (a seeded engine, rule `seeded`) with no jump to static weights.
//! The price is that a standby's clients see the leader's weights up to a second late.
//!
//! **Resigning:** `Coordinator::shutdown` (SIGTERM, Ctrl-C for the binary) revokes the lease after
//! demoting the driver (so it persists nothing more), and etcd deletes the key at once: the successor
//! leads within a round trip (20 ms measured in `ha_failover.rs`) instead of a TTL later. A coordinator
//! dropped without `shutdown` is taken for dead.
//!
//! **Takeover time:** a dead leader's key disappears when its lease expires, at most the TTL after its
//! last keep-alive, plus etcd's lease-expiry check (every 500 ms). With `lease_ttl_s = 1` that is ≤ 1.5 s;
//! etcd raises a TTL below its minimum (1.5 × its election timeout, rounded up to seconds: 2 s with the
//! default 1000 ms), so a 2 s takeover needs etcd's `--election-timeout` ≤ 666 ms (e.g. 500, with
//! `--heartbeat-interval 50`) — the granted TTL is logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lateral_ops::etcd::{Backoff, EtcdError, connect, timed};
use lateral_proto::etcd::etcdserverpb::kv_client::KvClient;
use lateral_proto::etcd::etcdserverpb::lease_client::LeaseClient;
use lateral_proto::etcd::etcdserverpb::watch_client::WatchClient;
use lateral_proto::etcd::etcdserverpb::watch_request::RequestUnion;
use lateral_proto::etcd::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    WatchCreateRequest, WatchRequest,
};
use lateral_proto::etcd::mvccpb::event::EventType;
use lateral_proto::etcd::prefix_range_end;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::Error;
use crate::driver::Command;
use crate::persist::{PersistedWeights, Store, load_seeds, weights_prefix};

/// `[ha]`: leader election among coordinators through etcd.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// etcd client URLs, `http://host:port`, tried in turn (`--ha-etcd` sets them).
    pub etcd: Vec<String>,
    /// The key prefix shared by the coordinators of one deployment (must end with `/`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The election lease's TTL in seconds (default 1; etcd may raise it, see the module docs).
    #[serde(default = "default_ttl")]
    pub lease_ttl_s: u64,
    /// This instance's name in the election key's value (default: the gRPC listen address).
    #[serde(default)]
    pub name: Option<String>,
}

/// The default HA prefix.
pub fn default_prefix() -> String {
    "/lateral/coordinator/".into()
}

fn default_ttl() -> u64 {
    1
}

impl HaConfig {
    /// The configuration `--ha-etcd URLS` means: these URLs, every other field at its default.
    pub fn with_urls(etcd: Vec<String>) -> Self {
        Self {
            etcd,
            prefix: default_prefix(),
            lease_ttl_s: default_ttl(),
            name: None,
        }
    }

    /// The persisted weights' store under this prefix.
    pub(crate) fn store(&self) -> Store {
        Store::Etcd {
            urls: self.etcd.clone(),
            prefix: self.prefix.clone(),
        }
    }

    /// Checks the fields: the field and what was expected.
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        if self.etcd.is_empty() {
            return Err(("ha.etcd".into(), "at least one etcd URL".into()));
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') {
            return Err((
                "ha.prefix".into(),
                format!(
                    "a key prefix starting and ending with '/', found {:?}",
                    self.prefix
                ),
            ));
        }
        if !(1..=60).contains(&self.lease_ttl_s) {
            return Err((
                "ha.lease_ttl_s".into(),
                format!("1 to 60 seconds, found {}", self.lease_ttl_s),
            ));
        }
        Ok(())
    }

    fn election_prefix(&self) -> String {
        format!("{}election/", self.prefix)
    }
}

/// What the election and mirror tasks need.
pub(crate) struct Elector {
    pub(crate) config: HaConfig,
    pub(crate) name: String,
    pub(crate) commands: mpsc::WeakSender<Command>,
    /// Whether this elector won (the driver keeps its own flag, set by the commands it sends).
    pub(crate) leading: AtomicBool,
    pub(crate) max_age: Duration,
    /// Set by a graceful shutdown: revoke the lease now rather than let it expire.
    pub(crate) resign: watch::Receiver<bool>,
}

impl Elector {
    /// Whether the coordinator is still running (its driver's command channel is open) and not resigning.
    fn alive(&self) -> bool {
        !*self.resign.borrow() && self.commands.upgrade().is_some_and(|s| !s.is_closed())
    }

    async fn send(&self, command: Command) -> bool {
        match self.commands.upgrade() {
            Some(s) => s.send(command).await.is_ok(),
            None => false,
        }
    }

    async fn step_down(&self, why: &str) {
        if self.leading.swap(false, Ordering::Relaxed) {
            tracing::warn!(name = %self.name, why, "coordinator stepping down as leader");
            self.send(Command::Demote).await;
        }
    }
}

/// Campaigns until the coordinator stops: sessions with etcd, a jittered backoff between them.
pub(crate) async fn run(elector: Arc<Elector>) {
    let mut backoff = Backoff::default();
    let mut first = 0usize;
    while elector.alive() {
        match campaign(&elector, first, &mut backoff).await {
            Ok(()) => return,
            Err(e) => {
                elector.step_down(&e.to_string()).await;
                tracing::warn!(error = %e, retry_in_ms = backoff.step().as_millis() as u64, "HA election: session lost; campaigning again");
            }
        }
        first = first.wrapping_add(1);
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

fn call_error(call: &'static str, detail: impl Into<String>) -> Error {
    EtcdError::new(call, detail).into()
}

/// One session: a lease, a key, and observing until the lease is lost (`Err`) or the coordinator stops.
async fn campaign(elector: &Elector, first: usize, backoff: &mut Backoff) -> Result<(), Error> {
    let config = &elector.config;
    let channel = connect(&config.etcd, first).await?;
    let mut leases = LeaseClient::new(channel.clone());
    let mut kv = KvClient::new(channel.clone());
    let granted = timed(
        "LeaseGrant",
        leases.lease_grant(LeaseGrantRequest {
            ttl: config.lease_ttl_s.max(1) as i64,
            id: 0,
        }),
    )
    .await?;
    if !granted.error.is_empty() {
        return Err(call_error("LeaseGrant", granted.error));
    }
    let lease = granted.id;
    let ttl = Duration::from_secs(granted.ttl.max(1) as u64);
    let renew_every = ttl / 4;
    tracing::info!(name = %elector.name, lease = format_args!("{lease:x}"), ttl_s = granted.ttl, "HA election: lease granted");
    // The first keep-alive is queued before the call: etcd answers it (headers included) only once a
    // keep-alive arrives, so awaiting the call with an empty request stream would wait for ever.
    let (renew_tx, renew_rx) = mpsc::channel(4);
    renew_tx
        .send(LeaseKeepAliveRequest { id: lease })
        .await
        .map_err(|_| call_error("LeaseKeepAlive", "request stream closed"))?;
    let mut renewals = timed(
        "LeaseKeepAlive",
        leases
            .clone()
            .lease_keep_alive(ReceiverStream::new(renew_rx)),
    )
    .await?;
    let key = format!("{}{lease:016x}", config.election_prefix());
    let put = timed(
        "Put",
        kv.put(PutRequest {
            key: key.clone().into_bytes(),
            value: elector.name.clone().into_bytes(),
            lease,
            prev_kv: false,
        }),
    )
    .await?;
    let my_revision = put.header.map_or(0, |h| h.revision);
    backoff.reset();

    let mut renew = tokio::time::interval(renew_every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed_at = tokio::time::Instant::now();
    loop {
        // Observe: who leads now, and whom to wait for.
        let prefix = config.election_prefix().into_bytes();
        let listed = timed(
            "Range",
            kv.range(RangeRequest {
                range_end: prefix_range_end(&prefix),
                key: prefix,
                ..Default::default()
            }),
        )
        .await?;
        let revision = listed.header.map_or(0, |h| h.revision);
        let ours = listed.kvs.iter().find(|k| k.key == key.as_bytes());
        let my_create = ours.map_or(my_revision, |k| k.create_revision);
        if ours.is_none() {
            return Err(call_error("Range", "our election key is gone (lease lost)"));
        }
        let predecessor = listed
            .kvs
            .iter()
            .filter(|k| k.create_revision < my_create)
            .max_by_key(|k| k.create_revision)
            .map(|k| k.key.clone());
        let mut watch = match &predecessor {
            None => {
                if !elector.leading.swap(true, Ordering::Relaxed) {
                    tracing::info!(name = %elector.name, "HA election: this coordinator leads");
                    let seeds = load_seeds(&config.store(), elector.max_age).await;
                    if !elector.send(Command::Promote(seeds)).await {
                        return Ok(());
                    }
                }
                None
            }
            Some(pred) => {
                tracing::info!(name = %elector.name, waiting_for = %String::from_utf8_lossy(pred), "HA election: standing by");
                let (tx, rx) = mpsc::channel(1);
                tx.send(WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                        key: pred.clone(),
                        start_revision: revision + 1,
                        ..Default::default()
                    })),
                })
                .await
                .map_err(|_| call_error("Watch", "request stream closed"))?;
                let stream = timed(
                    "Watch",
                    WatchClient::new(channel.clone()).watch(ReceiverStream::new(rx)),
                )
                .await?;
                Some((tx, stream))
            }
        };
        // Keep the lease and wait for the predecessor to go (a leader waits here for ever).
        let mut resign = elector.resign.clone();
        loop {
            let deadline = renewed_at + ttl;
            tokio::select! {
                () = async {
                    // The guard `wait_for` returns is not `Send`: dropped before the branch runs. A
                    // coordinator dropped without `shutdown` (a crash, as etcd sees it) does not resign.
                    if resign.wait_for(|r| *r).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                } => {
                    resign_now(elector, &mut leases, lease).await;
                    return Ok(());
                }
                _ = renew.tick() => {
                    if !elector.alive() {
                        // Dropped without a shutdown: not revoked, so it is replaced like a dead one,
                        // when its lease expires (within the TTL).
                        return Ok(());
                    }
                    renew_tx
                        .send(LeaseKeepAliveRequest { id: lease })
                        .await
                        .map_err(|_| call_error("LeaseKeepAlive", "request stream closed"))?;
                }
                answer = renewals.message() => {
                    let answer = answer
                        .map_err(|s| call_error("LeaseKeepAlive", s.message()))?
                        .ok_or_else(|| call_error("LeaseKeepAlive", "the stream ended"))?;
                    if answer.ttl <= 0 {
                        return Err(call_error("LeaseKeepAlive", "the lease expired"));
                    }
                    renewed_at = tokio::time::Instant::now();
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(call_error("LeaseKeepAlive", format!("not renewed within its {ttl:?} TTL")));
                }
                event = async {
                    match watch.as_mut() {
                        Some((_, stream)) => stream.message().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let response = event
                        .map_err(|s| call_error("Watch", s.message()))?
                        .ok_or_else(|| call_error("Watch", "the stream ended"))?;
                    if response.canceled {
                        return Err(call_error("Watch", format!("cancelled: {}", response.cancel_reason)));
                    }
                    if response.events.iter().any(|e| e.r#type == EventType::Delete as i32) {
                        break;
                    }
                }
            }
        }
    }
}

/// A graceful shutdown: the lease is revoked, so etcd deletes our key at once and the next candidate leads
/// without waiting out the TTL. Bounded like every etcd call; on failure the lease expires by itself.
async fn resign_now(
    elector: &Elector,
    leases: &mut LeaseClient<tonic::transport::Channel>,
    lease: i64,
) {
    // Demoted first: the driver stops persisting, so nothing we write can land after the next leader's.
    let was_leading = elector.leading.swap(false, Ordering::Relaxed);
    if was_leading {
        elector.send(Command::Demote).await;
    }
    match timed(
        "LeaseRevoke",
        leases.lease_revoke(LeaseRevokeRequest { id: lease }),
    )
    .await
    {
        Ok(_) => {
            tracing::info!(name = %elector.name, was_leading, "HA election: resigned (lease revoked)")
        }
        Err(e) => {
            tracing::warn!(name = %elector.name, error = %e, "HA election: cannot revoke the lease on shutdown; it expires within its TTL")
        }
    }
}

/// Feeds the driver the weights the leader persists (the driver republishes them only while it stands
/// by), until the coordinator stops.
pub(crate) async fn run_mirror(elector: Arc<Elector>) {
    let mut backoff = Backoff::default();
    let mut first = 0usize;
    while elector.alive() {
        if let Err(e) = mirror(&elector, first, &mut backoff).await {
            tracing::warn!(error = %e, "HA mirror: session lost; retrying");
        }
        first = first.wrapping_add(1);
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

async fn mirror(elector: &Elector, first: usize, backoff: &mut Backoff) -> Result<(), Error> {
    let channel = connect(&elector.config.etcd, first).await?;
    let prefix = weights_prefix(&elector.config.prefix).into_bytes();
    let range_end = prefix_range_end(&prefix);
    let listed = timed(
        "Range",
        KvClient::new(channel.clone()).range(RangeRequest {
            key: prefix.clone(),
            range_end: range_end.clone(),
            ..Default::default()
        }),
    )
    .await?;
    backoff.reset();
    for kv in &listed.kvs {
        forward(elector, &kv.value).await;
    }
    let (tx, rx) = mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix,
            range_end,
            start_revision: listed.header.map_or(0, |h| h.revision) + 1,
            ..Default::default()
        })),
    })
    .await
    .map_err(|_| call_error("Watch", "request stream closed"))?;
    let mut stream = timed(
        "Watch",
        WatchClient::new(channel).watch(ReceiverStream::new(rx)),
    )
    .await?;
    loop {
        // Wake up every second to notice a stopped coordinator even when nothing is published.
        let Ok(message) = tokio::time::timeout(Duration::from_secs(1), stream.message()).await
        else {
            if !elector.alive() {
                return Ok(());
            }
            continue;
        };
        let response = message
            .map_err(|s| call_error("Watch", s.message()))?
            .ok_or_else(|| call_error("Watch", "the stream ended"))?;
        if response.canceled {
            return Err(call_error(
                "Watch",
                format!("cancelled: {}", response.cancel_reason),
            ));
        }
        for event in response.events {
            if event.r#type == EventType::Put as i32
                && let Some(kv) = event.kv
                && !forward(elector, &kv.value).await
            {
                return Ok(());
            }
        }
    }
}

async fn forward(elector: &Elector, value: &[u8]) -> bool {
    match PersistedWeights::decode(value) {
        Ok(weights) => {
            elector
                .send(Command::Mirror(Arc::new(weights.to_snapshot())))
                .await
        }
        Err(e) => {
            tracing::warn!(error = %e, "HA mirror: persisted weights unreadable; ignored");
            true
        }
    }
}
