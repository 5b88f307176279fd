//! Framing: magic, version, length prefix and a bounded bincode-2 body.

use super::Message;
use super::message::v1;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"LTHB";
/// The protocol version this crate speaks: [`encode`] writes it, and decoders accept it and
/// [`OLDEST_DECODED_VERSION`]`..` it.
///
/// Version 2 appended `Heartbeat::oldest_in_flight_us` and `Heartbeat::mean_in_flight`.
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest version the decoder still accepts: version-1 frames (older agents) decode with the fields
/// version 2 added set to 0.
pub const OLDEST_DECODED_VERSION: u16 = 1;
/// Length of the fixed header: magic, version (u16) and body length (u32).
pub const HEADER_LEN: usize = 10;
/// The largest body a frame may carry. Heartbeats are ~60 bytes; the limit leaves room for `Hello`
/// capabilities while bounding what a hostile peer can make a decoder allocate.
pub const MAX_BODY_LEN: usize = 16 * 1024;

const BINCODE: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_BODY_LEN>,
> = bincode::config::standard().with_limit::<MAX_BODY_LEN>();

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first four bytes are not [`MAGIC`]: the peer does not speak this protocol.
    #[error("not a Lateral heartbeat frame: magic {found:02x?}, expected {MAGIC:02x?} (\"LTHB\")")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// The frame's version is one this decoder does not speak.
    #[error(
        "unsupported heartbeat protocol version {found}; this build speaks version {PROTOCOL_VERSION} \
         (and decodes versions {OLDEST_DECODED_VERSION} to {PROTOCOL_VERSION})"
    )]
    UnsupportedVersion {
        /// The version in the frame header.
        found: u16,
    },
    /// The body length exceeds [`MAX_BODY_LEN`] (or is zero).
    #[error("heartbeat frame body of {len} bytes is outside the allowed 1..={MAX_BODY_LEN}")]
    BadLength {
        /// The length announced by the header.
        len: u64,
    },
    /// The body is not a valid message (truncated, corrupt, or a message kind this build does not know).
    #[error("malformed heartbeat frame body: {0}")]
    Body(String),
    /// A message could not be encoded (it would exceed [`MAX_BODY_LEN`]).
    #[error("cannot encode heartbeat message: {0}")]
    Encode(String),
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Protocol version, within [`OLDEST_DECODED_VERSION`]`..=`[`PROTOCOL_VERSION`] once validated; pass it
    /// to [`decode_body_as`].
    pub version: u16,
    /// Body length in bytes, within `1..=MAX_BODY_LEN`.
    pub body_len: usize,
}

impl FrameHeader {
    /// Parses and validates a header: magic, version and length.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, FrameError> {
        let [m0, m1, m2, m3, v0, v1, l0, l1, l2, l3] = *bytes;
        let found = [m0, m1, m2, m3];
        if found != MAGIC {
            return Err(FrameError::BadMagic { found });
        }
        let version = u16::from_be_bytes([v0, v1]);
        if !(OLDEST_DECODED_VERSION..=PROTOCOL_VERSION).contains(&version) {
            return Err(FrameError::UnsupportedVersion { found: version });
        }
        let len = u32::from_be_bytes([l0, l1, l2, l3]);
        if len == 0 || len as usize > MAX_BODY_LEN {
            return Err(FrameError::BadLength {
                len: u64::from(len),
            });
        }
        Ok(Self {
            version,
            body_len: len as usize,
        })
    }
}

/// Encodes one message as a complete frame.
pub fn encode(message: &Message) -> Result<Vec<u8>, FrameError> {
    let body =
        bincode::encode_to_vec(message, BINCODE).map_err(|e| FrameError::Encode(e.to_string()))?;
    if body.len() > MAX_BODY_LEN {
        return Err(FrameError::Encode(format!(
            "body of {} bytes exceeds the limit of {MAX_BODY_LEN}",
            body.len()
        )));
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    // `body.len() <= MAX_BODY_LEN`, which fits in a u32.
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Decodes a body (the bytes after a validated header) of a frame of the given `version` (the header's
/// [`FrameHeader::version`]). A version-1 body is decoded with the version-1 message types and converted (the
/// fields version 2 added are 0). Bytes after the known fields are ignored: that is how newer peers append
/// fields (see the module docs). Any other version is [`FrameError::UnsupportedVersion`].
pub fn decode_body_as(version: u16, body: &[u8]) -> Result<Message, FrameError> {
    if body.is_empty() || body.len() > MAX_BODY_LEN {
        return Err(FrameError::BadLength {
            len: body.len() as u64,
        });
    }
    match version {
        PROTOCOL_VERSION => decode_with::<Message>(body),
        1 => decode_with::<v1::Message>(body).map(Message::from),
        found => Err(FrameError::UnsupportedVersion { found }),
    }
}

/// Decodes a body without knowing its frame's version, for callers that kept only the body: as
/// [`PROTOCOL_VERSION`] first and, if that fails, as version 1 (a version-1 heartbeat body is shorter than a
/// version-2 one, so it fails as version 2 and decodes as version 1; `Hello` and `Goodbye` are the same in
/// both). On failure the error is the version-2 one. Prefer [`decode_body_as`] with the header's version,
/// which never guesses.
pub fn decode_body(body: &[u8]) -> Result<Message, FrameError> {
    decode_body_as(PROTOCOL_VERSION, body).or_else(|current| match current {
        FrameError::Body(_) => decode_body_as(1, body).map_err(|_| current),
        other => Err(other),
    })
}

fn decode_with<M: bincode::Decode<()>>(body: &[u8]) -> Result<M, FrameError> {
    bincode::decode_from_slice(body, BINCODE)
        .map(|(message, _read)| message)
        .map_err(|e| FrameError::Body(e.to_string()))
}

/// Decodes the first frame in `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame (read more and call again), or the message and
/// the number of bytes it took. An error means the stream is unusable from this point (except
/// [`FrameError::Body`], after which the caller may skip `HEADER_LEN + body_len` bytes).
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        // Reject a wrong magic as early as possible rather than waiting for ten bytes.
        let n = buf.len().min(MAGIC.len());
        if buf[..n] != MAGIC[..n] {
            let mut found = [0u8; 4];
            found[..n].copy_from_slice(&buf[..n]);
            return Err(FrameError::BadMagic { found });
        }
        return Ok(None);
    };
    let header = FrameHeader::parse(header)?;
    let end = HEADER_LEN + header.body_len;
    let Some(body) = buf.get(HEADER_LEN..end) else {
        return Ok(None);
    };
    decode_body_as(header.version, body).map(|message| Some((message, end)))
}
