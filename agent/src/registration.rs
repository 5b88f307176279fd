//! Registration in etcd: the agent announces its endpoint so coordinators with a `[[service.etcd]]` source
//! find it without configuration, and forget it when the agent goes away.
//!
//! The agent writes an [`EndpointRecord`] at `<prefix><id>` (see `lateral_proto::etcd`), bound to a lease of
//! `ttl` it keeps alive every `ttl / 3`. Stopping ([`Registration::run`]'s token) revokes the lease, which
//! deletes the key at once; a crashed agent's key expires after `ttl`. When etcd is unreachable, or the lease
//! is lost (etcd restarted, a long pause), it registers again with a new lease after a jittered backoff
//! (0.5 s doubling to 10 s). Plain HTTP/2 to etcd (loopback or a private network).

use std::time::Duration;

use lateral_ops::etcd::{Backoff, EtcdError, connect, timed};
use lateral_proto::etcd::EndpointRecord;
use lateral_proto::etcd::etcdserverpb::kv_client::KvClient;
use lateral_proto::etcd::etcdserverpb::lease_client::LeaseClient;
use lateral_proto::etcd::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// The shortest lease accepted (etcd's own minimum is a few seconds; below that a GC pause loses it).
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// What to register, where, and for how long without a keep-alive.
#[derive(Debug, Clone)]
pub struct Registration {
    /// etcd client URLs (`http://host:port`), tried in turn.
    pub etcd: Vec<String>,
    /// The key prefix, ending with `/` (`lateral_proto::etcd::default_prefix(service)` by default).
    pub prefix: String,
    /// The record written at `<prefix><record.id>`.
    pub record: EndpointRecord,
    /// The lease's time to live: how long a crashed agent stays listed.
    pub ttl: Duration,
}

impl Registration {
    /// Checks every field, naming the flag at fault.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &str, expected: String| Error::Config {
            field: field.into(),
            expected,
        };
        if self.etcd.is_empty() {
            return Err(bad("--etcd", "at least one etcd URL".into()));
        }
        for url in &self.etcd {
            if !url.starts_with("http://") {
                return Err(bad(
                    "--etcd",
                    format!(
                        "an http:// URL like http://127.0.0.1:2379 (TLS to etcd is not supported yet), found {url:?}"
                    ),
                ));
            }
            Endpoint::from_shared(url.clone())
                .map_err(|e| bad("--etcd", format!("a valid URL, found {url:?} ({e})")))?;
        }
        if !self.prefix.ends_with('/') {
            return Err(bad(
                "--etcd-prefix",
                format!("a key prefix ending with '/', found {:?}", self.prefix),
            ));
        }
        if self.ttl < MIN_TTL {
            return Err(bad(
                "--etcd-ttl",
                format!("at least {MIN_TTL:?}, found {:?}", self.ttl),
            ));
        }
        self.record
            .validate()
            .map_err(|e| bad("--advertise-*", e.to_string()))
    }

    /// The key the record lives at.
    pub fn key(&self) -> String {
        format!("{}{}", self.prefix, self.record.id)
    }

    /// Keeps the endpoint registered until `stop` fires, then revokes the lease (the key disappears at once).
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut first = 0usize;
        // The lease last granted and not known to have expired: revoked on stop even if the session holding
        // it failed since (a lost connection does not end a lease, and etcd may still hold the key).
        let mut lease = None;
        loop {
            let outcome = self.session(first, &stop, &mut lease, &mut backoff).await;
            if stop.is_cancelled() {
                break;
            }
            if let Err(e) = outcome {
                tracing::warn!(key = %self.key(), error = %e, retry_in_ms = backoff.step().as_millis() as u64, "etcd registration lost; registering again");
            }
            first = first.wrapping_add(1);
            let wait = backoff.next_wait();
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        if let Some((channel, id)) = lease {
            self.revoke(channel, id).await;
        }
    }

    /// Grants a lease, writes the record, keeps the lease alive. Returns `Ok` when stopped, `Err` when the
    /// registration was lost; `lease` holds the lease granted until it is known to have expired.
    async fn session(
        &self,
        first: usize,
        stop: &CancellationToken,
        lease: &mut Option<(Channel, i64)>,
        backoff: &mut Backoff,
    ) -> Result<(), Error> {
        let channel = connect(&self.etcd, first).await?;
        let ttl_secs = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let granted = timed(
            "LeaseGrant",
            LeaseClient::new(channel.clone()).lease_grant(LeaseGrantRequest {
                ttl: ttl_secs,
                id: 0,
            }),
        )
        .await?;
        if !granted.error.is_empty() || granted.id == 0 {
            return Err(etcd_error("LeaseGrant", &granted.error));
        }
        let id = granted.id;
        *lease = Some((channel.clone(), id));
        timed(
            "Put",
            KvClient::new(channel.clone()).put(PutRequest {
                key: self.key().into_bytes(),
                value: self.record.encode(),
                lease: id,
                prev_kv: false,
            }),
        )
        .await?;
        tracing::info!(key = %self.key(), lease = id, ttl_s = ttl_secs, "registered in etcd");
        backoff.reset();

        // The first ping is queued before the call: etcd answers the call (headers included) only once a
        // keep-alive arrives, so awaiting the call with an empty request stream would wait forever.
        let (pings, ping_rx) = mpsc::channel(1);
        pings
            .send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| etcd_error("LeaseKeepAlive", "stream closed"))?;
        let mut answers = timed(
            "LeaseKeepAlive",
            LeaseClient::new(channel).lease_keep_alive(ReceiverStream::new(ping_rx)),
        )
        .await?;
        let mut every =
            tokio::time::interval_at(tokio::time::Instant::now() + self.ttl / 3, self.ttl / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_answer = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                _ = every.tick() => {
                    if last_answer.elapsed() > self.ttl {
                        return Err(etcd_error("LeaseKeepAlive", "no answer within the lease's TTL"));
                    }
                    // A ping still queued means etcd is not reading: skip this one (the TTL check above
                    // catches a dead stream); never block the loop on it.
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        pings.try_send(LeaseKeepAliveRequest { id })
                    {
                        return Err(etcd_error("LeaseKeepAlive", "stream closed"));
                    }
                }
                answer = answers.message() => {
                    let answer = answer
                        .map_err(|s| etcd_error("LeaseKeepAlive", s.message()))?
                        .ok_or_else(|| etcd_error("LeaseKeepAlive", "the stream ended"))?;
                    if answer.ttl <= 0 {
                        *lease = None;
                        return Err(etcd_error("LeaseKeepAlive", "the lease expired"));
                    }
                    last_answer = tokio::time::Instant::now();
                }
            }
        }
    }

    async fn revoke(&self, channel: Channel, id: i64) {
        let revoked = timed(
            "LeaseRevoke",
            LeaseClient::new(channel).lease_revoke(LeaseRevokeRequest { id }),
        )
        .await;
        match revoked {
            Ok(_) => tracing::info!(key = %self.key(), "deregistered from etcd"),
            Err(e) => {
                tracing::warn!(key = %self.key(), error = %e, "could not revoke the etcd lease; the key expires with it")
            }
        }
    }
}

fn etcd_error(call: &'static str, detail: &str) -> Error {
    EtcdError::new(call, detail).into()
}
