//! Unit tests of the codec: one per receiver rule (`rules`, `connect_rules`),
//! and byte-exact examples of every packet plus framing behaviour
//! (`examples`).

mod connect_rules;
mod examples;
mod rules;

use bytes::BytesMut;

use super::{DecodeError, Decoded, decode, encode, encoded_len};
use crate::packet::{Packet, PacketId};

fn pid(id: u16) -> PacketId {
    PacketId::new(id).expect("non-zero packet id in test")
}

/// Decodes `bytes` with no size limit, checking the consumption contract:
/// everything consumed on success, nothing on `Incomplete` or error.
fn decode_bytes(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let result = decode(&mut buf, usize::MAX);
    match &result {
        Ok(Decoded::Packet(_)) => assert!(buf.is_empty(), "left over: {:02x?}", &buf[..]),
        _ => assert_eq!(&buf[..], bytes, "bytes consumed by {result:?}"),
    }
    result
}

fn decode_ok(bytes: &[u8]) -> Packet {
    match decode_bytes(bytes) {
        Ok(Decoded::Packet(packet)) => packet,
        other => panic!("expected a packet from {bytes:02x?}, got {other:?}"),
    }
}

fn decode_err(bytes: &[u8]) -> DecodeError {
    match decode_bytes(bytes) {
        Err(error) => error,
        other => panic!("expected an error from {bytes:02x?}, got {other:?}"),
    }
}

fn encode_vec(packet: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, &mut buf).expect("encodable packet");
    buf.to_vec()
}

/// `packet` encodes to exactly `bytes`, `encoded_len` agrees, and `bytes`
/// decode back to `packet`.
fn assert_round_trip(packet: &Packet, bytes: &[u8]) {
    assert_eq!(encode_vec(packet), bytes, "encoding of {packet:?}");
    assert_eq!(
        encoded_len(packet),
        Ok(bytes.len()),
        "encoded_len of {packet:?}"
    );
    assert_eq!(&decode_ok(bytes), packet, "decoding of {bytes:02x?}");
}

/// A CONNECT (MQTT 3.1.1) whose body after the protocol level is `rest`.
fn connect_bytes(rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04];
    body.extend_from_slice(rest);
    with_header(0x10, &body)
}

/// Prefixes `body` with `first` and a (short) remaining length.
fn with_header(first: u8, body: &[u8]) -> Vec<u8> {
    let len = u8::try_from(body.len()).expect("short test body");
    assert!(len < 128, "short test body");
    let mut bytes = vec![first, len];
    bytes.extend_from_slice(body);
    bytes
}
