//! Misbehaving agents for the fault matrix, on the QUIC address a coordinator dials for a real endpoint.
//!
//! - [`RogueFrames`]: a QUIC server with a certificate from the fleet's own CA (so the handshake succeeds)
//!   that writes a valid `Hello` and then what no agent would write: random bytes ([`Frames::Garbage`]), or
//!   frame headers announcing bodies far over `MAX_BODY_LEN` followed by that many bytes
//!   ([`Frames::Oversized`]). The coordinator must drop the stream, count it and keep the rest running.
//! - [`impostor`]: the agent's real reporter with a certificate from *another* CA, reporting an idle backend
//!   with a huge declared capacity: if a coordinator believed it, the endpoint would draw most traffic.
//!   Mutual TLS must refuse it at the handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lateral_agent::measurement::{Measurement, MeasurementSource};
use lateral_agent::reporter::{Reporter, ReporterHandle, ReporterOptions};
use lateral_ops::tls::{self, DevPki, TlsMode};
use lateral_proto::heartbeat::{self, Hello, MAGIC, MAX_BODY_LEN, Message, PROTOCOL_VERSION};
use quinn::crypto::rustls::QuicServerConfig;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a [`RogueFrames`] server writes after its `Hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frames {
    /// 256 random bytes every 20 ms.
    Garbage,
    /// A header announcing a 1 MiB body (64× `MAX_BODY_LEN`), then 64 KiB of body, every 20 ms.
    Oversized,
}

/// A running rogue frame server; stops when dropped.
pub struct RogueFrames {
    endpoint: quinn::Endpoint,
    tasks: JoinSet<()>,
}

impl RogueFrames {
    /// Serves on `addr` (normally a killed agent's address) as endpoint `endpoint_id`.
    pub fn start(
        addr: SocketAddr,
        tls_mode: &TlsMode,
        endpoint_id: &str,
        frames: Frames,
    ) -> Result<Self, BoxError> {
        let crypto = QuicServerConfig::try_from(tls::server_config(tls_mode)?)?;
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(config, addr)?;
        let hello = heartbeat::encode(&Message::Hello(Hello {
            agent_id: "rogue".into(),
            endpoint_id: endpoint_id.into(),
            protocol_version: PROTOCOL_VERSION,
            capabilities: vec![],
            heartbeat_interval_ms: 500,
        }))?;
        let mut tasks = JoinSet::new();
        let accepting = endpoint.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Some(incoming) = accepting.accept().await {
                let hello = hello.clone();
                connections.spawn(async move {
                    let Ok(connection) = incoming.await else {
                        return;
                    };
                    let _ = write_rogue(connection, hello, frames).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self { endpoint, tasks })
    }

    /// Closes every connection and releases the address.
    pub async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.endpoint
            .close(quinn::VarInt::from_u32(1), b"rogue gone");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

async fn write_rogue(
    connection: quinn::Connection,
    hello: Vec<u8>,
    frames: Frames,
) -> Result<(), BoxError> {
    let mut stream = connection.open_uni().await?;
    stream.write_all(&hello).await?;
    let mut rng = SmallRng::seed_from_u64(0x5EED);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let bytes = match frames {
            Frames::Garbage => (0..256).map(|_| rng.random::<u8>()).collect::<Vec<u8>>(),
            Frames::Oversized => {
                let mut frame = Vec::with_capacity(10 + 64 * 1024);
                frame.extend_from_slice(&MAGIC);
                frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
                frame.extend_from_slice(&((MAX_BODY_LEN * 64) as u32).to_be_bytes());
                frame.resize(10 + 64 * 1024, 0xAB);
                frame
            }
        };
        // A coordinator that dropped the stream makes this fail: the rogue then waits for the next dial.
        stream.write_all(&bytes).await?;
    }
}

/// An idle backend with a huge capacity: what an impostor claims.
struct Idle;

impl MeasurementSource for Idle {
    fn take_window(&self) -> Measurement {
        Measurement {
            in_flight: 0,
            completed: 50_000,
            failed: 0,
            window: Duration::from_millis(500),
            latency_mean: Duration::from_micros(200),
            latency_p50: Duration::from_micros(200),
            latency_p99: Duration::from_micros(300),
            accepting: true,
            declared_capacity: Some(10_000),
            utilization: Some(0.01),
            mean_in_flight: 0.0,
            busy_fraction: Some(0.01),
            oldest_in_flight: None,
        }
    }
}

/// Starts the impostor on `addr` as `endpoint_id`, with a certificate from a CA of its own.
pub fn impostor(addr: SocketAddr, endpoint_id: &str) -> Result<ReporterHandle, BoxError> {
    let foreign = DevPki::generate("rogue-ca")?;
    let tls = foreign.mutual_mode("agent")?;
    let options = ReporterOptions::new("impostor", endpoint_id);
    Ok(Reporter::bind(addr, &tls, Arc::new(Idle), options)?)
}
