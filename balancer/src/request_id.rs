//! Request ids (`<client id>-<counter in hex>`, the `x-lateral-request-id` value the agent deduplicates by)
//! without an allocation per request.
//!
//! A `HeaderValue` owns a `Bytes`. Each thread keeps one block of [`BLOCK_BYTES`]; an id is written at the
//! end of it and split off as a shared `Bytes` (a view that counts a reference to the block), so about one
//! allocation serves a block's worth of ids (some 150 of 27 bytes), instead of a `format!` String and its
//! conversion per request. A block is freed when the last id cut from it is dropped. The value is marked
//! sensitive, so HPACK never indexes it.

use std::cell::RefCell;

use bytes::{BufMut, BytesMut};
use http::{HeaderName, HeaderValue};

use crate::REQUEST_ID_HEADER;

/// The request-id header's name, built once: a `&str` name passed to `HeaderMap::insert` is copied into a
/// new `Bytes` each time, and again by each retry's copy of the head.
pub static REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// The size of one thread's id block.
const BLOCK_BYTES: usize = 4096;

thread_local! {
    static BLOCK: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `n` in lower-case hex, without leading zeros, at the end of `buf`; the digits' start.
fn hex(n: u64, buf: &mut [u8; 16]) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut at = buf.len();
    let mut rest = n;
    loop {
        at -= 1;
        buf[at] = DIGITS[(rest & 0xf) as usize];
        rest >>= 4;
        if rest == 0 {
            return at;
        }
    }
}

/// The id of request `n` of client `client_id`: `format!("{client_id}-{n:x}")` as a header value; `None`
/// when `client_id` is not a valid header value (the builder rejects such ids).
pub fn request_id(client_id: &str, n: u64) -> Option<HeaderValue> {
    let mut digits = [0u8; 16];
    let start = hex(n, &mut digits);
    let digits = &digits[start..];
    let len = client_id.len() + 1 + digits.len();
    let id = BLOCK.with_borrow_mut(|block| {
        if block.capacity() < len {
            *block = BytesMut::with_capacity(BLOCK_BYTES.max(len));
        }
        block.put_slice(client_id.as_bytes());
        block.put_u8(b'-');
        block.put_slice(digits);
        block.split().freeze()
    });
    let mut value = HeaderValue::from_maybe_shared(id).ok()?;
    // Never indexed by HPACK: a value sent once would only push reusable entries (the method's metadata) out
    // of the connection's 4 KiB dynamic table at both ends (h2 encodes a sensitive value as a literal,
    // never indexed; the receiver sees an ordinary header). Measured: 0.1 allocation per call fewer.
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_the_formatted_id(client in "[a-zA-Z0-9._-]{0,80}", n in any::<u64>()) {
            let id = request_id(&client, n);
            let expected = format!("{client}-{n:x}");
            prop_assert_eq!(id.as_ref().map(HeaderValue::as_bytes), Some(expected.as_bytes()));
        }
    }

    #[test]
    fn ids_cut_from_one_block_stay_intact_across_blocks() {
        let client = "c".repeat(100);
        let ids: Vec<_> = (0..200u64).map(|n| (n, request_id(&client, n))).collect();
        for (n, id) in ids {
            assert_eq!(
                id.as_ref().map(HeaderValue::as_bytes),
                Some(format!("{client}-{n:x}").as_bytes())
            );
        }
        assert_eq!(request_id("bad\nid", 1), None, "not a header value: no id");
        let long = "x".repeat(2 * BLOCK_BYTES);
        assert_eq!(
            request_id(&long, 0xff).map(|v| v.as_bytes().len()),
            Some(long.len() + 3)
        );
    }
}
