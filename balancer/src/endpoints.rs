//! Per-endpoint state: one lazily-connected tonic channel, the client's own in-flight count, the live queue
//! and liveness estimate ([`super::live_load`]) and the ORCA utilization zone preference reads.
//!
//! A handle is shared (`Arc`) by the endpoint table, every published picker snapshot and every in-flight
//! call. When a snapshot removes an endpoint, the table and the next picker drop their references, but calls
//! in flight keep theirs, so the channel (and its connection) lives until the last of them finishes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_queue::ArrayQueue;

use tonic::transport::{Channel, Endpoint};

use super::live_load::LiveLoad;
use super::orca::OrcaSignal;
use crate::Error;

/// The most idle channel clones an endpoint keeps: calls getting ready at the same instant, not calls in
/// flight (a clone is given back once its request is handed to the transport).
const MAX_IDLE_CHANNELS: usize = 32;

/// Static configuration of one endpoint, as given to the builder.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointConfig {
    /// Stable id, unique within the service.
    pub id: String,
    /// The gRPC address: a URI (`http://127.0.0.1:50051`) or `host:port`.
    pub address: String,
    /// Zone or locality; empty when unknown.
    pub zone: String,
    /// Labels from configuration.
    pub labels: BTreeMap<String, String>,
}

/// One endpoint the client can send to.
#[derive(Debug)]
pub(crate) struct EndpointHandle {
    id: Arc<str>,
    address: String,
    channel: Channel,
    /// Clones of `channel` between calls (see [`take_channel`](Self::take_channel)).
    /// Lock-free and bounded: calls on one endpoint take and give back clones without a lock.
    idle_channels: ArrayQueue<Channel>,
    in_flight: AtomicUsize,
    picks: Arc<AtomicU64>,
    pub(crate) orca: OrcaSignal,
    /// The live queue estimate and liveness from completions.
    pub(crate) live: LiveLoad,
    /// The client's own "unreachable" (or "stalled") signal ([`super::outlier`]).
    pub(crate) local_ejection: Arc<super::outlier::LocalEjection>,
}

impl EndpointHandle {
    /// Creates the handle and its lazily-connected channel (nothing is dialed until the first request).
    pub(crate) fn new(id: &str, address: &str, picks: Arc<AtomicU64>) -> Result<Self, Error> {
        let uri = lateral_proto::grpc_uri(address);
        let endpoint = Endpoint::from_shared(uri.clone()).map_err(|e| Error::Config {
            source_name: "endpoint list".into(),
            field: format!("endpoints.{id}.address"),
            expected: format!("a gRPC URI or host:port, found `{address}`: {e}"),
        })?;
        let channel = endpoint.tcp_nodelay(true).connect_lazy();
        Ok(Self {
            id: Arc::from(id),
            address: uri,
            channel,
            idle_channels: ArrayQueue::new(MAX_IDLE_CHANNELS),
            in_flight: AtomicUsize::new(0),
            picks,
            orca: OrcaSignal::default(),
            live: LiveLoad::default(),
            local_ejection: Arc::default(),
        })
    }

    /// The endpoint's id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The normalised URI the channel dials.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// A handle to the endpoint's channel for one call: an idle clone when there is one, else a new clone.
    /// A fresh clone allocates on its first `poll_ready` (its buffer sender's reservation future); one given
    /// back with [`give_back_channel`](Self::give_back_channel) reuses its own, so a call costs no
    /// allocation here once there are as many idle clones as calls getting ready at once.
    pub(crate) fn take_channel(&self) -> Channel {
        self.idle_channels
            .pop()
            .unwrap_or_else(|| self.channel.clone())
    }

    /// Keeps a channel from [`take_channel`](Self::take_channel) after its `call` (not after a failed
    /// `poll_ready`), up to [`MAX_IDLE_CHANNELS`].
    pub(crate) fn give_back_channel(&self, channel: Channel) {
        // Full: MAX_IDLE_CHANNELS are kept already; this one is dropped.
        let _ = self.idle_channels.push(channel);
    }

    /// This client's requests in flight on this endpoint.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests this client has sent to this endpoint (first attempts and retries).
    pub(crate) fn picks(&self) -> u64 {
        self.picks.load(Ordering::Relaxed)
    }

    /// Counts a pick and a new in-flight request started at `now_us`; the guard un-counts the request when
    /// dropped.
    pub(crate) fn start(self: &Arc<Self>, now_us: u64) -> InFlightGuard {
        self.picks.fetch_add(1, Ordering::Relaxed);
        if self.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            self.live.on_busy(now_us);
        }
        InFlightGuard {
            endpoint: Arc::clone(self),
        }
    }
}

/// Holds one in-flight request against an endpoint (and the endpoint itself alive).
#[derive(Debug)]
pub(crate) struct InFlightGuard {
    endpoint: Arc<EndpointHandle>,
}

impl InFlightGuard {
    /// The endpoint this request went to.
    pub(crate) fn endpoint(&self) -> &Arc<EndpointHandle> {
        &self.endpoint
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
