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
//! A body is at most [`MAX_BODY_LEN`] bytes; its layout depends on the version (see
//! [Versions](#versions)). The decoder checks the magic, the version and the length before it reads or
//! allocates anything, and bincode is configured with the same byte limit, so a hostile peer can make it
//! allocate at most one frame's worth of memory.
//!
//! # Sequence on a stream
//! The agent sends [`Message::Hello`] first, then a [`Message::Heartbeat`] every interval (500 ms by
//! default), and [`Message::Goodbye`] when it drains. The coordinator sends nothing on the stream.
//!
//! # Versions
//! - **2** (this build's [`PROTOCOL_VERSION`], what [`encode`] writes): `Heartbeat` gained
//!   `oldest_in_flight_us` and `mean_in_flight` at its end.
//! - **1**: the original messages. The decoder still accepts version-1 frames from older agents: it decodes
//!   them with a private copy of the version-1 types and converts them, the version-2 fields set to 0.
//!
//! Any other version is refused with [`FrameError::UnsupportedVersion`]. A version-1 *decoder* (an older
//! coordinator) refuses version-2 frames the same way, so upgrade coordinators before agents.
//!
//! # Evolving the protocol without breaking older peers
//! - A *compatible* change appends fields at the end of a message. Decoders read the fields they know and
//!   ignore whatever follows inside the frame (the length prefix says where the frame ends), so an older
//!   decoder reads a newer peer's messages. A newer decoder that meets an older, shorter message gets a
//!   decode error for the missing field; so a change that newer decoders must be able to read from older
//!   peers bumps [`PROTOCOL_VERSION`] and keeps a copy of the old types to decode the old version with
//!   (as version 2 did), or adds a new message variant.
//! - New message kinds are new enum variants at the end; an older decoder reports
//!   [`FrameError::Body`] for them and the stream stays in sync, so the receiver can log and skip.
//! - A decoder refuses frames of a version it does not know with [`FrameError::UnsupportedVersion`].

mod frame;
mod message;

pub use frame::{
    FrameError, FrameHeader, HEADER_LEN, MAGIC, MAX_BODY_LEN, OLDEST_DECODED_VERSION,
    PROTOCOL_VERSION, decode, decode_body, decode_body_as, encode,
};
pub use message::{Goodbye, Heartbeat, Hello, Message, capability};
