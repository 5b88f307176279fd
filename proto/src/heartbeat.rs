//! The heartbeat protocol between an agent and a coordinator, carried on one persistent QUIC stream per
//! coordinator.
//!
//! # Frame
//! ```text
//! +--------+---------+-------------+---------------------------+
//! | magic  | version | body length | body (bincode 2, standard) |
//! | "LTHB" | u16 BE  | u32 BE      | body length bytes          |
//! +--------+---------+-------------+---------------------------+
//! ```
//! A body is at most [`MAX_BODY_LEN`] bytes. The decoder checks the magic, the version and the length
//! before it reads or allocates anything, and bincode is configured with the same byte limit, so a hostile
//! peer can make it allocate at most one frame's worth of memory.
//!
//! # Sequence on a stream
//! The agent sends [`Message::Hello`] first, then a [`Message::Heartbeat`] every interval (500 ms by
//! default), and [`Message::Goodbye`] when it drains. The coordinator sends nothing on the stream.
//!
//! # Evolving the protocol without breaking older peers
//! - A *compatible* change appends fields at the end of a message. Decoders read the fields they know and
//!   ignore whatever follows inside the frame (the length prefix says where the frame ends), so an older
//!   coordinator reads a newer agent's heartbeats. A newer decoder that meets an older, shorter message gets a
//!   decode error for the missing field; to avoid that, new fields are added as a new message variant
//!   (e.g. `HeartbeatV2`) that the agent only sends when the `Hello` exchange shows the peer understands it.
//! - New message kinds are new enum variants at the end; an older decoder reports
//!   [`FrameError::Body`] for them and the stream stays in sync, so the receiver can log and skip.
//! - An *incompatible* change bumps [`PROTOCOL_VERSION`]; a decoder refuses frames of another version with
//!   [`FrameError::UnsupportedVersion`].

mod frame;
mod message;

pub use frame::{
    FrameError, FrameHeader, HEADER_LEN, MAGIC, MAX_BODY_LEN, PROTOCOL_VERSION, decode,
    decode_body, encode,
};
pub use message::{Goodbye, Heartbeat, Hello, Message, capability};
