//! Warm restart: the last good weights of every service, kept where a restarted or newly promoted
//! coordinator finds them, and read back as the engine's seed ([`crate::engine::Engine::seed`]).
//!
//! What is kept: each service's latest published [`WeightSnapshot`] that is not a static fallback (static
//! weights are what a coordinator falls back to anyway; persisting them would overwrite the last good
//! ones), as a JSON [`PersistedWeights`] with its epoch and version. Where:
//! - in etcd, under `<ha prefix>weights/<service>`, when `[ha] etcd` (or `--ha-etcd`) is set: the standbys
//!   mirror it (see `election.rs`) and a promoted one seeds from it;
//! - else in the local file `[persist] path`, one JSON document for every service, written atomically
//!   (a temporary file in the same directory, fsynced, then renamed over the old one).
//!
//! Writes are bounded: the writer looks at the published weights once per [`WRITE_INTERVAL`] and writes
//! only what changed since, so a busy service costs at most one write per second. A restart therefore
//! starts from weights at most about a second old. Seeds older than `[persist] max_age_s` are not used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lateral_proto::coordinator::{self as pb, WeightSnapshot};
use lateral_proto::etcd::etcdserverpb::kv_client::KvClient;
use lateral_proto::etcd::etcdserverpb::{PutRequest, RangeRequest};
use lateral_proto::etcd::prefix_range_end;
use serde::{Deserialize, Serialize};

use crate::config::CoordinatorConfig;
use crate::election::{Elector, HaConfig};
use crate::metrics::CoordinatorMetrics;
use crate::{CoordinatorHandle, Error, WeightsReceiver};

/// The most often the weights of one service are written.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// The largest persisted record read back, in bytes (a record is ~150 bytes per endpoint).
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;
/// The format version of the file.
const FILE_FORMAT: u32 = 1;

/// `[persist]`: where a coordinator without `[ha]` keeps its last weights.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistConfig {
    /// The file (its directory must exist and be writable; a `.tmp` sibling is used while writing).
    pub path: Option<PathBuf>,
    /// Seeds older than this many seconds are ignored (default 600): after a long outage the endpoints'
    /// capacities may have changed, and static weights are the honest start.
    #[serde(default = "default_max_age_s")]
    pub max_age_s: u64,
}

impl Default for PersistConfig {
    fn default() -> Self {
        Self {
            path: None,
            max_age_s: default_max_age_s(),
        }
    }
}

fn default_max_age_s() -> u64 {
    600
}

/// One endpoint's row of a persisted table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedEndpoint {
    /// Endpoint id.
    pub id: String,
    /// The address clients dial.
    pub address: String,
    /// Zone, empty if unknown.
    #[serde(default)]
    pub zone: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Share of traffic.
    pub weight: f64,
    /// `lateral.v1.EndpointState` as its number.
    pub state: i32,
    /// The rule behind the share.
    #[serde(default)]
    pub rule: String,
}

/// A service's last published weights, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedWeights {
    /// The service.
    pub service: String,
    /// The epoch of the coordinator that published them.
    pub epoch: u64,
    /// Their version within that epoch.
    pub version: u64,
    /// When they were published, milliseconds since the Unix epoch.
    pub published_at_ms: i64,
    /// The publisher's heartbeat interval, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Every endpoint's row.
    pub endpoints: Vec<PersistedEndpoint>,
}

impl PersistedWeights {
    /// The record of a published snapshot.
    pub fn of(snapshot: &WeightSnapshot) -> Self {
        let published_at_ms = snapshot
            .generated_at
            .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
        Self {
            service: snapshot.service.clone(),
            epoch: snapshot.epoch,
            version: snapshot.version,
            published_at_ms,
            heartbeat_interval_ms: snapshot
                .heartbeat_interval
                .and_then(|d| Duration::try_from(d).ok())
                .map_or(0, |d| d.as_millis() as u64),
            endpoints: snapshot
                .endpoints
                .iter()
                .map(|e| PersistedEndpoint {
                    id: e.id.clone(),
                    address: e.address.clone(),
                    zone: e.zone.clone(),
                    labels: e.labels.clone().into_iter().collect(),
                    weight: e.weight,
                    state: e.state,
                    rule: e.rule.clone(),
                })
                .collect(),
        }
    }

    /// The snapshot it was made from (what a standby republishes).
    pub fn to_snapshot(&self) -> WeightSnapshot {
        WeightSnapshot {
            service: self.service.clone(),
            version: self.version,
            epoch: self.epoch,
            heartbeat_interval: prost_types::Duration::try_from(Duration::from_millis(
                self.heartbeat_interval_ms,
            ))
            .ok(),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| pb::EndpointWeight {
                    id: e.id.clone(),
                    address: e.address.clone(),
                    zone: e.zone.clone(),
                    labels: e.labels.clone().into_iter().collect(),
                    weight: e.weight,
                    load_balancing_weight: (e.weight.clamp(0.0, 1.0) * 1e6).round() as u32,
                    state: e.state,
                    rule: e.rule.clone(),
                    reason: format!(
                        "published by epoch {:x} at version {}",
                        self.epoch, self.version
                    ),
                })
                .collect(),
            generated_at: Some(prost_types::Timestamp {
                seconds: self.published_at_ms.div_euclid(1000),
                nanos: (self.published_at_ms.rem_euclid(1000) * 1_000_000) as i32,
            }),
            static_fallback: false,
        }
    }

    /// The engine seed: shares by endpoint id, and the sentence its decision records start with. `None`
    /// when older than `max_age` at `now` (wall clock), or without a positive share.
    pub fn seed(&self, now: SystemTime, max_age: Duration) -> Option<Seed> {
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let age = Duration::from_millis(now_ms.saturating_sub(self.published_at_ms).max(0) as u64);
        if age > max_age || !self.endpoints.iter().any(|e| e.weight > 0.0) {
            return None;
        }
        Some(Seed {
            shares: self
                .endpoints
                .iter()
                .map(|e| (e.id.clone(), e.weight))
                .collect(),
            origin: format!(
                "the weights epoch {:x} published at version {} ({:.1} s before)",
                self.epoch,
                self.version,
                age.as_secs_f64()
            ),
        })
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(format!("{} bytes, over the limit", bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// Shares to seed an engine with, and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Seed {
    /// Shares by endpoint id.
    pub shares: Vec<(String, f64)>,
    /// Where they came from, for the decision records.
    pub origin: String,
}

#[derive(Serialize, Deserialize)]
struct FileContents {
    format: u32,
    services: BTreeMap<String, PersistedWeights>,
}

/// Where the weights are kept.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    /// One JSON file.
    File(PathBuf),
    /// etcd keys `<prefix>weights/<service>`.
    Etcd {
        /// Client URLs.
        urls: Vec<String>,
        /// The HA prefix (ends with `/`).
        prefix: String,
    },
}

impl Store {
    /// Every persisted service's weights; nothing (with a warning) when the store holds garbage.
    pub(crate) async fn load(&self) -> Result<BTreeMap<String, PersistedWeights>, Error> {
        match self {
            Store::File(path) => Ok(load_file(path)),
            Store::Etcd { urls, prefix } => {
                let channel = lateral_ops::etcd::connect(urls, 0).await?;
                let mut kv = KvClient::new(channel);
                let key = weights_prefix(prefix).into_bytes();
                let range_end = prefix_range_end(&key);
                let response = lateral_ops::etcd::timed(
                    "Range",
                    kv.range(RangeRequest {
                        key,
                        range_end,
                        ..Default::default()
                    }),
                )
                .await?;
                let mut out = BTreeMap::new();
                for kv in response.kvs {
                    match PersistedWeights::decode(&kv.value) {
                        Ok(w) => {
                            out.insert(w.service.clone(), w);
                        }
                        Err(e) => {
                            tracing::warn!(key = %String::from_utf8_lossy(&kv.key), error = %e, "persisted weights unreadable; ignored")
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    async fn save(
        &self,
        all: &BTreeMap<String, PersistedWeights>,
        changed: &[String],
        kv: &mut Option<KvClient<tonic::transport::Channel>>,
    ) -> Result<(), Error> {
        match self {
            Store::File(path) => {
                let contents = FileContents {
                    format: FILE_FORMAT,
                    services: all.clone(),
                };
                let bytes = serde_json::to_vec_pretty(&contents)
                    .map_err(|e| Error::Io(std::io::Error::other(e)))?;
                let path = path.clone();
                tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
                    .await
                    .map_err(|e| Error::Io(std::io::Error::other(e)))??;
                Ok(())
            }
            Store::Etcd { urls, prefix } => {
                if kv.is_none() {
                    *kv = Some(KvClient::new(lateral_ops::etcd::connect(urls, 0).await?));
                }
                let Some(client) = kv.as_mut() else {
                    return Ok(());
                };
                for name in changed {
                    let Some(w) = all.get(name) else { continue };
                    let value = serde_json::to_vec(w).unwrap_or_default();
                    let put = lateral_ops::etcd::timed(
                        "Put",
                        client.put(PutRequest {
                            key: weights_key(prefix, name).into_bytes(),
                            value,
                            ..Default::default()
                        }),
                    )
                    .await;
                    if let Err(e) = put {
                        *kv = None;
                        return Err(e.into());
                    }
                }
                Ok(())
            }
        }
    }
}

/// The key prefix of the persisted weights under an HA prefix.
pub(crate) fn weights_prefix(prefix: &str) -> String {
    format!("{prefix}weights/")
}

fn weights_key(prefix: &str, service: &str) -> String {
    format!("{}{service}", weights_prefix(prefix))
}

fn load_file(path: &Path) -> BTreeMap<String, PersistedWeights> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the persisted weights; starting from static weights");
            return BTreeMap::new();
        }
    };
    if bytes.len() > MAX_RECORD_BYTES {
        tracing::warn!(path = %path.display(), bytes = bytes.len(), "persisted weights file too large; ignored");
        return BTreeMap::new();
    }
    match serde_json::from_slice::<FileContents>(&bytes) {
        Ok(c) if c.format == FILE_FORMAT => c.services,
        Ok(c) => {
            tracing::warn!(path = %path.display(), format = c.format, "persisted weights in an unknown format; ignored");
            BTreeMap::new()
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "persisted weights unreadable; ignored");
            BTreeMap::new()
        }
    }
}

/// Writes `bytes` to `path` so a reader sees the old file or the new one, never a part: a temporary
/// sibling, fsynced, renamed over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Seeds for every service from what `store` holds, fresh enough for `max_age`.
pub(crate) async fn load_seeds(store: &Store, max_age: Duration) -> BTreeMap<String, Seed> {
    match store.load().await {
        Ok(all) => all
            .into_iter()
            .filter_map(|(name, w)| Some((name, w.seed(SystemTime::now(), max_age)?)))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot load the persisted weights; starting from static weights");
            BTreeMap::new()
        }
    }
}

/// What the driver starts with: seeds by service, and whether it leads (always, without `[ha]`).
pub(crate) struct Warm {
    pub(crate) seeds: BTreeMap<String, Seed>,
    pub(crate) leading: Arc<AtomicBool>,
    pub(crate) max_age: Duration,
}

/// The store the configuration names: etcd with `[ha]`, else the `[persist]` file, else none.
fn store_of(config: &CoordinatorConfig) -> Option<Store> {
    config
        .ha
        .as_ref()
        .map(HaConfig::store)
        .or_else(|| config.persist.path.clone().map(Store::File))
}

/// Reads the seeds the configuration points at; a coordinator with `[ha]` starts as a standby.
pub(crate) async fn prepare(config: &CoordinatorConfig, metrics: &CoordinatorMetrics) -> Warm {
    let max_age = Duration::from_secs(config.persist.max_age_s);
    let seeds = match store_of(config) {
        Some(store) => load_seeds(&store, max_age).await,
        None => BTreeMap::new(),
    };
    let leading = config.ha.is_none();
    if !leading {
        metrics.set_leader(false);
    }
    Warm {
        seeds,
        leading: Arc::new(AtomicBool::new(leading)),
        max_age,
    }
}

/// The tasks warm restart and HA run beside the driver: the writer, the election and the mirror.
pub(crate) struct Background {
    store: Option<Store>,
    ha: Option<HaConfig>,
    leading: Arc<AtomicBool>,
    max_age: Duration,
}

impl Background {
    pub(crate) fn of(config: &CoordinatorConfig, warm: &Warm) -> Self {
        Self {
            store: store_of(config),
            ha: config.ha.clone(),
            leading: warm.leading.clone(),
            max_age: warm.max_age,
        }
    }

    /// Starts them; each ends by itself when the coordinator stops. With HA, the returned handle resigns
    /// from the election on a graceful shutdown.
    pub(crate) fn spawn(
        self,
        handle: &Arc<CoordinatorHandle>,
        grpc: Option<std::net::SocketAddr>,
    ) -> Option<Candidacy> {
        if let Some(store) = self.store {
            tokio::spawn(run_writer(store, Arc::downgrade(handle), self.leading));
        }
        let ha = self.ha?;
        let name = ha.name.clone().unwrap_or_else(|| match grpc {
            Some(addr) => format!("{addr} (pid {})", std::process::id()),
            None => format!("pid {}", std::process::id()),
        });
        let (resign, resigned) = tokio::sync::watch::channel(false);
        let elector = Arc::new(Elector {
            config: ha,
            name,
            commands: handle.commands.downgrade(),
            leading: AtomicBool::new(false),
            max_age: self.max_age,
            resign: resigned,
        });
        let election = tokio::spawn(crate::election::run(elector.clone()));
        tokio::spawn(crate::election::run_mirror(elector));
        Some(Candidacy { resign, election })
    }
}

/// This coordinator's part in the HA election.
pub(crate) struct Candidacy {
    resign: tokio::sync::watch::Sender<bool>,
    election: tokio::task::JoinHandle<()>,
}

impl Candidacy {
    /// Leaves the election (the lease revoked, so a standby leads at once), waiting at most `within`.
    pub(crate) async fn resign(self, within: Duration) {
        self.resign.send_replace(true);
        if tokio::time::timeout(within, self.election).await.is_err() {
            tracing::warn!(
                "HA election: did not resign within {within:?}; the lease expires by itself"
            );
        }
    }
}

/// Persists every service's weights as they are published, at most once per [`WRITE_INTERVAL`], while
/// `leading` (a standby republishes the leader's weights and must not write them back). Follows the
/// configured services (a reload adds and removes them; a removed one's last record stays in the store, so
/// re-adding it soon seeds it). Ends when the coordinator stops.
pub(crate) async fn run_writer(
    store: Store,
    handle: std::sync::Weak<CoordinatorHandle>,
    leading: Arc<AtomicBool>,
) {
    let mut receivers: Vec<(String, WeightsReceiver)> = Vec::new();
    let mut all: BTreeMap<String, PersistedWeights> = store.load().await.unwrap_or_default();
    let mut kv = None;
    let mut tick = tokio::time::interval(WRITE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        {
            let Some(h) = handle.upgrade() else { return };
            if h.commands.is_closed() {
                return;
            }
            let names: Vec<String> = h
                .services
                .read()
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            receivers.retain(|(name, _)| names.contains(name));
            for name in names {
                if !receivers.iter().any(|(n, _)| *n == name)
                    && let Ok(rx) = h.subscribe(&name).await
                {
                    receivers.push((name, rx));
                }
            }
        }
        tick.tick().await;
        let mut changed = Vec::new();
        for (name, rx) in &mut receivers {
            match rx.has_changed() {
                // The service was removed (the next round drops its receiver).
                Err(_) | Ok(false) => continue,
                Ok(true) => {}
            }
            let Some(snapshot) = rx.borrow_and_update().clone() else {
                continue;
            };
            if snapshot.static_fallback || !leading.load(Ordering::Relaxed) {
                continue;
            }
            let same = all
                .get(name.as_str())
                .is_some_and(|w| (w.epoch, w.version) == (snapshot.epoch, snapshot.version));
            if !same {
                all.insert(name.clone(), PersistedWeights::of(&snapshot));
                changed.push(name.clone());
            }
        }
        if !changed.is_empty()
            && let Err(e) = store.save(&all, &changed, &mut kv).await
        {
            tracing::warn!(error = %e, "cannot persist the published weights; retrying on the next change");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> WeightSnapshot {
        WeightSnapshot {
            service: "svc".into(),
            version: 9,
            epoch: 0xabc,
            heartbeat_interval: prost_types::Duration::try_from(Duration::from_millis(500)).ok(),
            endpoints: vec![pb::EndpointWeight {
                id: "a".into(),
                address: "http://127.0.0.1:1".into(),
                weight: 0.75,
                load_balancing_weight: 750_000,
                state: pb::EndpointState::Active as i32,
                rule: "capacity".into(),
                ..Default::default()
            }],
            generated_at: Some(prost_types::Timestamp::from(SystemTime::now())),
            static_fallback: false,
        }
    }

    #[test]
    fn a_record_round_trips_and_seeds_while_fresh() {
        let s = snapshot();
        let w = PersistedWeights::of(&s);
        let back = PersistedWeights::decode(&serde_json::to_vec(&w).unwrap()).unwrap();
        assert_eq!(back, w);
        let again = back.to_snapshot();
        assert_eq!(again.endpoints[0].weight, 0.75);
        assert_eq!((again.epoch, again.version), (0xabc, 9));
        let seed = w.seed(SystemTime::now(), Duration::from_secs(60)).unwrap();
        assert_eq!(seed.shares, vec![("a".to_string(), 0.75)]);
        assert!(seed.origin.contains("epoch abc"), "{}", seed.origin);
        let later = SystemTime::now() + Duration::from_secs(120);
        assert_eq!(w.seed(later, Duration::from_secs(60)), None, "too old");
    }

    #[test]
    fn the_file_is_replaced_atomically_and_garbage_is_ignored() {
        let dir = std::env::temp_dir().join(format!("lateral-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("weights.json");
        assert!(load_file(&path).is_empty(), "a missing file is no seed");
        let w = PersistedWeights::of(&snapshot());
        let contents = FileContents {
            format: FILE_FORMAT,
            services: BTreeMap::from([("svc".to_string(), w.clone())]),
        };
        write_atomically(&path, &serde_json::to_vec(&contents).unwrap()).unwrap();
        assert_eq!(load_file(&path).get("svc"), Some(&w));
        assert!(!dir.join("weights.json.tmp").exists());
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(load_file(&path).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
