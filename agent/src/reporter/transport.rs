//! The quinn server configuration: TLS from [`lateral_ops::tls`], keep-alive, idle timeout, tight limits.

use std::sync::Arc;

use lateral_ops::tls::{self, TlsMode};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{IdleTimeout, TransportConfig, VarInt};

use super::ReporterOptions;
use crate::Error;

/// Bytes in flight per connection that the agent keeps buffered for a peer (heartbeats are ~60 bytes).
const SEND_WINDOW: u64 = 64 * 1024;
/// The peer sends nothing on streams; keep what it may make us buffer small.
const RECEIVE_WINDOW: u32 = 16 * 1024;

pub(super) fn server_config(
    mode: &TlsMode,
    opts: &ReporterOptions,
) -> Result<quinn::ServerConfig, Error> {
    let crypto = tls::server_config(mode).map_err(|e| Error::Tls(e.to_string()))?;
    let crypto = QuicServerConfig::try_from(crypto)
        .map_err(|e| Error::Tls(format!("TLS config unusable for QUIC: {e}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));

    let idle = IdleTimeout::try_from(opts.idle_timeout).map_err(|_| Error::Config {
        field: "idle_timeout".to_owned(),
        expected: "an idle timeout below 2^62 microseconds".to_owned(),
    })?;
    let mut transport = TransportConfig::default();
    transport
        .keep_alive_interval(Some(opts.keep_alive))
        .max_idle_timeout(Some(idle))
        // The agent opens the only stream; the coordinator opens none.
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .datagram_receive_buffer_size(None);
    server.transport_config(Arc::new(transport));
    // Bound handshakes in progress: a few per subscriber slot.
    server.max_incoming(opts.max_subscribers.saturating_mul(2).saturating_add(16));
    Ok(server)
}
