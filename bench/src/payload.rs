//! What a benchmark message carries: who sent it, its sequence number and
//! when, padded to the payload size.
//!
//! Layout (big-endian): `EMQB` magic, publisher id u32, sequence u32, send
//! time u64 (nanoseconds, [`crate::clock::now_ns`]), then zero padding.

use bytes::{BufMut, Bytes, BytesMut};

pub const MAGIC: [u8; 4] = *b"EMQB";
/// A probe publication (before the timed phase): `EMQP`, then the index of
/// the broker it was published to (u32), padded like a stamp.
pub const PROBE_MAGIC: [u8; 4] = *b"EMQP";
/// The smallest payload that can carry the header.
pub const HEADER_LEN: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub seq: u32,
    pub sent_ns: u64,
}

/// A payload of `size` bytes (at least [`HEADER_LEN`]) carrying `stamp`.
pub fn encode(stamp: Stamp, size: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(size.max(HEADER_LEN));
    buf.put_slice(&MAGIC);
    buf.put_u32(stamp.publisher);
    buf.put_u32(stamp.seq);
    buf.put_u64(stamp.sent_ns);
    buf.resize(size.max(HEADER_LEN), 0);
    buf.freeze()
}

/// The stamp of a benchmark payload; `None` for anything else.
pub fn decode(payload: &[u8]) -> Option<Stamp> {
    let header = payload.get(..HEADER_LEN)?;
    if header.get(..4)? != MAGIC {
        return None;
    }
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(header.get(at..at + 4)?.try_into().ok()?))
    };
    let sent_ns = u64::from_be_bytes(header.get(12..20)?.try_into().ok()?);
    Some(Stamp {
        publisher: u32_at(4)?,
        seq: u32_at(8)?,
        sent_ns,
    })
}

/// A probe payload from the `broker`-th publishers' broker.
pub fn probe(broker: u32) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER_LEN);
    buf.put_slice(&PROBE_MAGIC);
    buf.put_u32(broker);
    buf.resize(HEADER_LEN, 0);
    buf.freeze()
}

/// The broker index of a probe payload; `None` for anything else.
pub fn decode_probe(payload: &[u8]) -> Option<u32> {
    if payload.get(..4)? != PROBE_MAGIC {
        return None;
    }
    Some(u32::from_be_bytes(payload.get(4..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let stamp = Stamp {
            publisher: 299,
            seq: 65_536,
            sent_ns: 1_700_000_000_123_456_789,
        };
        let payload = encode(stamp, 64);
        assert_eq!(payload.len(), 64);
        assert_eq!(decode(&payload), Some(stamp));
        assert_eq!(encode(stamp, 3).len(), HEADER_LEN);
        assert_eq!(decode(b"not a benchmark payload"), None);
        assert_eq!(decode(&payload[..10]), None);
        assert_eq!(decode_probe(&probe(3)), Some(3));
        assert_eq!(decode(&probe(3)), None);
        assert_eq!(decode_probe(&payload), None);
    }
}
