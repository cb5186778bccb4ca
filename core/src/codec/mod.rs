//! MQTT 3.1.1 (and 3.1) packet codec.
//!
//! [`decode`] takes one packet off the front of a read buffer, [`encode`]
//! appends one to a write buffer. Both are sans-IO and allocation-light:
//! decoded topics, client ids and payloads are slices of the read buffer, not
//! copies.
//!
//! The decoder enforces the receiver rules of the specification (each
//! violation is its own [`DecodeError`] variant naming the rule) and never
//! panics, whatever the input.
//!
//! ```
//! use bytes::BytesMut;
//! use easy_mqtt_core::codec::{decode, encode, Decoded};
//! use easy_mqtt_core::Packet;
//!
//! let mut wire = BytesMut::new();
//! encode(&Packet::PingReq, &mut wire).unwrap();
//! assert_eq!(&wire[..], [0xC0, 0x00]);
//! assert_eq!(decode(&mut wire, 1024), Ok(Decoded::Packet(Packet::PingReq)));
//! assert!(wire.is_empty());
//! ```

mod decode;
mod encode;
mod error;
#[cfg(test)]
mod tests;

use bytes::BytesMut;

use crate::packet::Packet;

pub use encode::{encode, encode_publish, encoded_len};
pub use error::{DecodeError, EncodeError};

/// The largest remaining length a four-byte variable byte integer can carry
/// (section 2.2.3).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// The outcome of a successful [`decode`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole packet, whose bytes have been removed from the buffer.
    Packet(Packet),
    /// The buffer holds the beginning of a packet (or nothing). `needed` is
    /// at least 1 and no more than the number of further bytes required
    /// before `decode` can make progress: exact once the fixed header is
    /// complete, 1 while it is not.
    Incomplete { needed: usize },
}

/// Decodes one packet from the front of `buf`.
///
/// On `Ok(Decoded::Packet(_))` exactly that packet's bytes are removed from
/// `buf`; the packet's topics, strings and payload share them (no copy). On
/// `Ok(Decoded::Incomplete { .. })` or `Err(_)` nothing is consumed.
///
/// `max_packet_size` bounds the whole packet, fixed header included. It is
/// checked as soon as the remaining length is known, before the body has
/// arrived, so an oversized packet is refused without being buffered. Errors
/// detectable from the first byte (reserved type, wrong flags) are reported
/// as soon as that byte is present.
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Decoded, DecodeError> {
    decode::decode(buf, max_packet_size)
}
