//! Compact binary encodings of stored values. Every value starts with a
//! version byte, so the format can change without guessing.
//!
//! - Message (retained, bus entries): `01 | flags | topic length (u32 BE) |
//!   topic | payload`, flags = QoS in bits 0–1, RETAIN in bit 2. The
//!   payload is the rest of the value, byte for byte.
//! - Message body: `02 | stored at, ms since the epoch (u64 BE) | flags |
//!   topic length | topic | payload`; a body in the message format above
//!   (written before bodies had a time) loads with time 0 (unknown).
//! - Session record: `01 | created_at_ms (u64 BE) | client id`.
//! - In-flight entry: `01 | message id (u64 BE) | flags | send order (u64
//!   BE)`, flags = QoS bits 0–1, RETAIN bit 2, phase bit 3 (1 = Released).
//! - Packet ids: 2 bytes BE; message ids in sorted sets: 8 bytes BE.
//! - Cluster values (inbox entries, presence, owners): see their encoders.
//! - Held score: `order × 8 + QoS × 2 + RETAIN`, exact in an `f64` while
//!   the order stays below 2^50.

use std::sync::Arc;

use bytes::Bytes;
use easy_mqtt_core::cluster::{BusEntry, Owner, Presence};
use easy_mqtt_core::packet::{ByteStr, PacketId, QoS};
use easy_mqtt_core::session::{Message, OutboundPhase};
use easy_mqtt_core::storage::{MessageId, SessionRecord, StorageError};

const VERSION: u8 = 1;
/// The version of a message body that carries its time ([`encode_body`]).
const BODY_VERSION: u8 = 2;
/// Send orders stay below this (a bound kept from layout 1, where orders
/// were sorted-set scores: exact `f64`s).
pub(crate) const MAX_ORDER: u64 = 1 << 50;

fn corrupt(key: &str, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn flags(qos: QoS, retain: bool) -> u8 {
    (qos as u8) | (u8::from(retain) << 2)
}

fn qos_of(flags: u8, key: &str) -> Result<QoS, StorageError> {
    QoS::from_u8(flags & 0b11).ok_or_else(|| corrupt(key, "QoS 3"))
}

pub(crate) fn encode_message(message: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + message.topic.len() + message.payload.len());
    out.push(VERSION);
    write_message(&mut out, message);
    out
}

/// A message after its version byte: `flags | topic length | topic | payload`.
fn write_message(out: &mut Vec<u8>, message: &Message) {
    let topic = message.topic.as_bytes();
    out.push(flags(message.qos, message.retain));
    out.extend_from_slice(&u32::try_from(topic.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(topic);
    out.extend_from_slice(&message.payload);
}

/// A stored message body with the time it was stored (ms since the Unix
/// epoch): `02 | at_ms (u64 BE) | flags | topic length | topic | payload`.
pub(crate) fn encode_body(message: &Message, at_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + message.topic.len() + message.payload.len());
    out.push(BODY_VERSION);
    out.extend_from_slice(&at_ms.to_be_bytes());
    write_message(&mut out, message);
    out
}

/// A stored message body and its time: version 2 ([`encode_body`]), or
/// version 1 (a message as [`encode_message`] writes it, stored before
/// bodies had a time), whose time is 0 (unknown).
pub(crate) fn decode_body(key: &str, bytes: &[u8]) -> Result<(Message, u64), StorageError> {
    match bytes {
        [BODY_VERSION, rest @ ..] => {
            let Some((at_ms, message)) = rest.split_first_chunk::<8>() else {
                return Err(corrupt(key, "message body shorter than its time"));
            };
            Ok((
                decode_message_fields(key, message)?,
                u64::from_be_bytes(*at_ms),
            ))
        }
        _ => Ok((decode_message(key, bytes)?, 0)),
    }
}

pub(crate) fn decode_message(key: &str, bytes: &[u8]) -> Result<Message, StorageError> {
    let [version, rest @ ..] = bytes else {
        return Err(corrupt(key, "message shorter than its header"));
    };
    if *version != VERSION {
        return Err(corrupt(key, format!("message version {version}")));
    }
    decode_message_fields(key, rest)
}

/// A message after its version byte (see [`write_message`]).
fn decode_message_fields(key: &str, bytes: &[u8]) -> Result<Message, StorageError> {
    let [flags, a, b, c, d, rest @ ..] = bytes else {
        return Err(corrupt(key, "message shorter than its header"));
    };
    if flags & !0b111 != 0 {
        return Err(corrupt(key, format!("message flags {flags:#x}")));
    }
    let topic_len = usize::try_from(u32::from_be_bytes([*a, *b, *c, *d]))
        .map_err(|_| corrupt(key, "topic length"))?;
    if rest.len() < topic_len {
        return Err(corrupt(key, "message shorter than its topic"));
    }
    let (topic, payload) = rest.split_at(topic_len);
    let topic = ByteStr::from_utf8(Bytes::copy_from_slice(topic))
        .map_err(|_| corrupt(key, "topic is not UTF-8"))?;
    Ok(Message {
        topic,
        payload: Bytes::copy_from_slice(payload),
        qos: qos_of(*flags, key)?,
        retain: flags & 0b100 != 0,
    })
}

pub(crate) fn encode_record(record: &SessionRecord) -> Vec<u8> {
    let id = record.client_id.as_bytes();
    let mut out = Vec::with_capacity(9 + id.len());
    out.push(VERSION);
    out.extend_from_slice(&record.created_at_ms.to_be_bytes());
    out.extend_from_slice(id);
    out
}

pub(crate) fn decode_record(key: &str, bytes: &[u8]) -> Result<SessionRecord, StorageError> {
    let [version, rest @ ..] = bytes else {
        return Err(corrupt(key, "empty session record"));
    };
    if *version != VERSION {
        return Err(corrupt(key, format!("session record version {version}")));
    }
    let Some((created, id)) = rest.split_first_chunk::<8>() else {
        return Err(corrupt(key, "session record too short"));
    };
    let client_id = ByteStr::from_utf8(Bytes::copy_from_slice(id))
        .map_err(|_| corrupt(key, "client id is not UTF-8"))?;
    Ok(SessionRecord {
        client_id,
        created_at_ms: u64::from_be_bytes(*created),
    })
}

/// An entry of the in-flight window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowEntry {
    pub id: MessageId,
    pub qos: QoS,
    pub retain: bool,
    pub phase: OutboundPhase,
    /// Send order.
    pub order: u64,
}

/// Length of an encoded window entry.
pub(crate) const WINDOW_ENTRY_LEN: usize = 18;

pub(crate) fn encode_window(entry: &WindowEntry) -> [u8; WINDOW_ENTRY_LEN] {
    let phase = match entry.phase {
        OutboundPhase::Published => 0,
        OutboundPhase::Released => 0b1000,
    };
    let mut out = [0; WINDOW_ENTRY_LEN];
    out[0] = VERSION;
    out[1..9].copy_from_slice(&entry.id.0.to_be_bytes());
    out[9] = flags(entry.qos, entry.retain) | phase;
    out[10..].copy_from_slice(&entry.order.to_be_bytes());
    out
}

pub(crate) fn decode_window(key: &str, bytes: &[u8]) -> Result<WindowEntry, StorageError> {
    let [version, rest @ ..] = bytes else {
        return Err(corrupt(key, "empty in-flight entry"));
    };
    if *version != VERSION {
        return Err(corrupt(key, format!("in-flight entry version {version}")));
    }
    let Some((id, rest)) = rest.split_first_chunk::<8>() else {
        return Err(corrupt(key, "in-flight entry too short"));
    };
    let [flags, order @ ..] = rest else {
        return Err(corrupt(key, "in-flight entry too short"));
    };
    let Ok(order) = <[u8; 8]>::try_from(order) else {
        return Err(corrupt(key, "in-flight entry length"));
    };
    if flags & !0b1111 != 0 {
        return Err(corrupt(key, format!("in-flight flags {flags:#x}")));
    }
    Ok(WindowEntry {
        id: MessageId(u64::from_be_bytes(*id)),
        qos: qos_of(*flags, key)?,
        retain: flags & 0b100 != 0,
        phase: if flags & 0b1000 != 0 {
            OutboundPhase::Released
        } else {
            OutboundPhase::Published
        },
        order: u64::from_be_bytes(order),
    })
}

/// Length of an encoded packet id.
pub(crate) const PACKET_ID_LEN: usize = 2;

/// Length of an encoded message id.
pub(crate) const MESSAGE_ID_LEN: usize = 8;

pub(crate) fn encode_packet_id(packet_id: PacketId) -> [u8; PACKET_ID_LEN] {
    packet_id.get().to_be_bytes()
}

pub(crate) fn decode_packet_id(key: &str, bytes: &[u8]) -> Result<PacketId, StorageError> {
    let Ok(bytes) = <[u8; 2]>::try_from(bytes) else {
        return Err(corrupt(key, "packet id is not 2 bytes"));
    };
    PacketId::new(u16::from_be_bytes(bytes)).ok_or_else(|| corrupt(key, "packet id 0"))
}

pub(crate) fn encode_message_id(id: MessageId) -> [u8; MESSAGE_ID_LEN] {
    id.0.to_be_bytes()
}

pub(crate) fn decode_message_id(key: &str, bytes: &[u8]) -> Result<MessageId, StorageError> {
    let Ok(bytes) = <[u8; 8]>::try_from(bytes) else {
        return Err(corrupt(key, "message id is not 8 bytes"));
    };
    Ok(MessageId(u64::from_be_bytes(bytes)))
}

/// The flags of a held message, the value of its holder field in the body's
/// hash: the QoS digit, then `r` if RETAIN is set (`1`, `2r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    pub qos: QoS,
    pub retain: bool,
}

impl Held {
    pub fn encode(self) -> &'static [u8] {
        match (self.qos, self.retain) {
            (QoS::AtMostOnce, false) => b"0",
            (QoS::AtLeastOnce, false) => b"1",
            (QoS::ExactlyOnce, false) => b"2",
            (QoS::AtMostOnce, true) => b"0r",
            (QoS::AtLeastOnce, true) => b"1r",
            (QoS::ExactlyOnce, true) => b"2r",
        }
    }

    pub fn decode(key: &str, bytes: &[u8]) -> Result<Held, StorageError> {
        let bad = || corrupt(key, "holder field is not a QoS digit and flag");
        let (digit, retain) = match bytes {
            [digit] => (*digit, false),
            [digit, b'r'] => (*digit, true),
            _ => return Err(bad()),
        };
        let qos = (digit.checked_sub(b'0').and_then(QoS::from_u8)).ok_or_else(bad)?;
        Ok(Held { qos, retain })
    }

    /// The flags in a score of layout 1's held sorted set (order × 8 +
    /// QoS × 2 + RETAIN), which the migration reads.
    pub fn from_legacy_score(key: &str, score: f64) -> Result<Held, StorageError> {
        // Scores were written as integers below 2^53, so they read back exactly.
        if !(0.0..9.007_199_254_740_992e15).contains(&score) || score.fract() != 0.0 {
            return Err(corrupt(key, format!("score {score}")));
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let score = score as u64;
        let qos = u8::try_from((score >> 1) & 0b11).unwrap_or(3);
        Ok(Held {
            qos: QoS::from_u8(qos).ok_or_else(|| corrupt(key, "QoS 3 in score"))?,
            retain: score & 1 != 0,
        })
    }
}

pub(crate) fn qos_digit(qos: QoS) -> &'static [u8] {
    match qos {
        QoS::AtMostOnce => b"0",
        QoS::AtLeastOnce => b"1",
        QoS::ExactlyOnce => b"2",
    }
}

pub(crate) fn decode_qos_digit(key: &str, bytes: &[u8]) -> Result<QoS, StorageError> {
    match bytes {
        b"0" => Ok(QoS::AtMostOnce),
        b"1" => Ok(QoS::AtLeastOnce),
        b"2" => Ok(QoS::ExactlyOnce),
        _ => Err(corrupt(key, "subscription QoS is not 0, 1 or 2")),
    }
}

pub(crate) fn decode_utf8(key: &str, bytes: Vec<u8>) -> Result<ByteStr, StorageError> {
    ByteStr::from_utf8(Bytes::from(bytes)).map_err(|_| corrupt(key, "not UTF-8"))
}

fn utf8(key: &str, bytes: &[u8], what: &str) -> Result<ByteStr, StorageError> {
    ByteStr::from_utf8(Bytes::copy_from_slice(bytes))
        .map_err(|_| corrupt(key, format!("{what} is not UTF-8")))
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Splits a `u32 BE` length-prefixed string off `bytes`.
fn take_str<'b>(
    key: &str,
    bytes: &'b [u8],
    what: &str,
) -> Result<(ByteStr, &'b [u8]), StorageError> {
    let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(corrupt(key, format!("{what} length missing")));
    };
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| corrupt(key, "length"))?;
    if rest.len() < len {
        return Err(corrupt(key, format!("{what} cut short")));
    }
    let (text, rest) = rest.split_at(len);
    Ok((utf8(key, text, what)?, rest))
}

fn take_u64<'b>(key: &str, bytes: &'b [u8], what: &str) -> Result<(u64, &'b [u8]), StorageError> {
    let Some((value, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(corrupt(key, format!("{what} cut short")));
    };
    Ok((u64::from_be_bytes(*value), rest))
}

fn versioned<'b>(key: &str, bytes: &'b [u8], what: &str) -> Result<&'b [u8], StorageError> {
    match bytes {
        [VERSION, rest @ ..] => Ok(rest),
        [version, ..] => Err(corrupt(key, format!("{what} version {version}"))),
        [] => Err(corrupt(key, format!("empty {what}"))),
    }
}

/// Bus entry kinds (the byte after the version).
const PUBLISH: u8 = 0;
const DIRECT: u8 = 1;
const KICK: u8 = 2;
const RELEASED: u8 = 3;
const ROUTES_CHANGED: u8 = 4;
const READ_RETAINED: u8 = 5;

/// An inbox entry: `01 | kind | …`, by kind:
/// - Publish: `message id (u64 BE) | message`;
/// - Direct: `message id (u64 BE) | QoS | client id (u32 BE length) | message`;
/// - Kick: `epoch (u64 BE) | client id (u32 BE length) | from`;
/// - Released: `epoch (u64 BE) | client id`;
/// - RoutesChanged: `node`;
/// - ReadRetained: nothing;
///
/// where a message is encoded as a stored body (payload byte for byte).
pub(crate) fn encode_bus_entry(entry: &BusEntry) -> Vec<u8> {
    let mut out = vec![VERSION];
    match entry {
        BusEntry::Publish { id, message } => {
            out.push(PUBLISH);
            out.extend_from_slice(&id.0.to_be_bytes());
            out.extend_from_slice(&encode_message(message));
        }
        BusEntry::Direct {
            client_id,
            id,
            message,
            qos,
        } => {
            out.push(DIRECT);
            out.extend_from_slice(&id.0.to_be_bytes());
            out.push(*qos as u8);
            put_str(&mut out, client_id);
            out.extend_from_slice(&encode_message(message));
        }
        BusEntry::Kick {
            client_id,
            epoch,
            from,
        } => {
            out.push(KICK);
            out.extend_from_slice(&epoch.to_be_bytes());
            put_str(&mut out, client_id);
            out.extend_from_slice(from.as_bytes());
        }
        BusEntry::Released { client_id, epoch } => {
            out.push(RELEASED);
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(client_id.as_bytes());
        }
        BusEntry::RoutesChanged { node } => {
            out.push(ROUTES_CHANGED);
            out.extend_from_slice(node.as_bytes());
        }
        BusEntry::ReadRetained => out.push(READ_RETAINED),
    }
    out
}

pub(crate) fn decode_bus_entry(key: &str, bytes: &[u8]) -> Result<BusEntry, StorageError> {
    let [kind, rest @ ..] = versioned(key, bytes, "inbox entry")? else {
        return Err(corrupt(key, "inbox entry without a kind"));
    };
    match *kind {
        PUBLISH => {
            let (id, rest) = take_u64(key, rest, "message id")?;
            Ok(BusEntry::Publish {
                id: MessageId(id),
                message: Arc::new(decode_message(key, rest)?),
            })
        }
        DIRECT => {
            let (id, rest) = take_u64(key, rest, "message id")?;
            let [qos, rest @ ..] = rest else {
                return Err(corrupt(key, "direct entry without a QoS"));
            };
            let qos = QoS::from_u8(*qos).ok_or_else(|| corrupt(key, format!("QoS {qos}")))?;
            let (client_id, rest) = take_str(key, rest, "client id")?;
            Ok(BusEntry::Direct {
                client_id,
                id: MessageId(id),
                message: Arc::new(decode_message(key, rest)?),
                qos,
            })
        }
        KICK => {
            let (epoch, rest) = take_u64(key, rest, "epoch")?;
            let (client_id, rest) = take_str(key, rest, "client id")?;
            Ok(BusEntry::Kick {
                client_id,
                epoch,
                from: utf8(key, rest, "node")?,
            })
        }
        RELEASED => {
            let (epoch, rest) = take_u64(key, rest, "epoch")?;
            Ok(BusEntry::Released {
                client_id: utf8(key, rest, "client id")?,
                epoch,
            })
        }
        ROUTES_CHANGED => Ok(BusEntry::RoutesChanged {
            node: utf8(key, rest, "node")?,
        }),
        READ_RETAINED if rest.is_empty() => Ok(BusEntry::ReadRetained),
        READ_RETAINED => Err(corrupt(key, "read-retained entry with a body")),
        other => Err(corrupt(key, format!("inbox entry kind {other}"))),
    }
}

/// A presence: `01 | epoch (u64 BE) | since_ms (u64 BE) | client id (u32
/// BE length) | 0`, or `… | 1 | will` with the will encoded as a message.
pub(crate) fn encode_presence(presence: &Presence) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend_from_slice(&presence.epoch.to_be_bytes());
    out.extend_from_slice(&presence.since_ms.to_be_bytes());
    put_str(&mut out, &presence.client_id);
    match &presence.will {
        None => out.push(0),
        Some(will) => {
            out.push(1);
            out.extend_from_slice(&encode_message(will));
        }
    }
    out
}

pub(crate) fn decode_presence(key: &str, bytes: &[u8]) -> Result<Presence, StorageError> {
    let rest = versioned(key, bytes, "presence")?;
    let (epoch, rest) = take_u64(key, rest, "epoch")?;
    let (since_ms, rest) = take_u64(key, rest, "since")?;
    let (client_id, rest) = take_str(key, rest, "client id")?;
    let will = match rest {
        [0] => None,
        [1, will @ ..] => Some(Arc::new(decode_message(key, will)?)),
        _ => return Err(corrupt(key, "presence will flag")),
    };
    Ok(Presence {
        client_id,
        epoch,
        will,
        since_ms,
    })
}

/// The owner of a client id: `01 | epoch (u64 BE) | node`.
pub(crate) fn encode_owner(owner: &Owner) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + owner.node.len());
    out.push(VERSION);
    out.extend_from_slice(&owner.epoch.to_be_bytes());
    out.extend_from_slice(owner.node.as_bytes());
    out
}

pub(crate) fn decode_owner(key: &str, bytes: &[u8]) -> Result<Owner, StorageError> {
    let rest = versioned(key, bytes, "owner")?;
    let (epoch, rest) = take_u64(key, rest, "epoch")?;
    Ok(Owner {
        node: utf8(key, rest, "node")?,
        epoch,
    })
}

/// A decimal number (incarnations, epochs).
pub(crate) fn decode_u64(key: &str, bytes: &[u8]) -> Result<u64, StorageError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| corrupt(key, "not a decimal number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip_is_byte_exact() {
        let payload: Vec<u8> = (0..=255).collect();
        let message = Message {
            topic: ByteStr::from("a/ü/{b}"),
            payload: Bytes::from(payload),
            qos: QoS::ExactlyOnce,
            retain: true,
        };
        let encoded = encode_message(&message);
        assert_eq!(decode_message("k", &encoded), Ok(message));
        assert!(decode_message("k", &encoded[..5]).is_err());
        let mut bad = encoded.clone();
        bad[1] = 0b11;
        assert!(decode_message("k", &bad).is_err());
    }

    #[test]
    fn body_carries_its_time_and_old_bodies_load_without_one() {
        let message = Message {
            topic: ByteStr::from("a/b"),
            payload: Bytes::from_static(b"\x00payload"),
            qos: QoS::AtLeastOnce,
            retain: false,
        };
        let encoded = encode_body(&message, 1_700_000_000_123);
        assert_eq!(
            decode_body("k", &encoded),
            Ok((message.clone(), 1_700_000_000_123))
        );
        assert!(decode_body("k", &encoded[..8]).is_err());
        // A body written before bodies had a time: the message format.
        assert_eq!(
            decode_body("k", &encode_message(&message)),
            Ok((message, 0))
        );
        assert!(decode_body("k", &[3, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn record_and_window_round_trip() {
        let record = SessionRecord {
            client_id: ByteStr::from("c-1"),
            created_at_ms: 1_700_000_000_123,
        };
        assert_eq!(decode_record("k", &encode_record(&record)), Ok(record));
        let entry = WindowEntry {
            id: MessageId::new(7, 99),
            qos: QoS::AtLeastOnce,
            retain: true,
            phase: OutboundPhase::Released,
            order: 12,
        };
        assert_eq!(decode_window("k", &encode_window(&entry)), Ok(entry));
    }

    #[test]
    fn cluster_values_round_trip() {
        let payload: Vec<u8> = (0..=255).rev().collect();
        let message = Arc::new(Message {
            topic: ByteStr::from("t/ü"),
            payload: Bytes::from(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
        });
        let entries = [
            BusEntry::Publish {
                id: MessageId::new(3, 4),
                message: Arc::clone(&message),
            },
            BusEntry::Direct {
                client_id: ByteStr::from("c{1}"),
                id: MessageId(u64::MAX),
                message: Arc::clone(&message),
                qos: QoS::ExactlyOnce,
            },
            BusEntry::Kick {
                client_id: ByteStr::from(""),
                epoch: 9,
                from: ByteStr::from("n1"),
            },
            BusEntry::Released {
                client_id: ByteStr::from("c"),
                epoch: 0,
            },
            BusEntry::RoutesChanged {
                node: ByteStr::from("ü"),
            },
            BusEntry::ReadRetained,
        ];
        for entry in entries {
            let encoded = encode_bus_entry(&entry);
            assert_eq!(decode_bus_entry("k", &encoded), Ok(entry));
            assert!(decode_bus_entry("k", &encoded[..1]).is_err());
        }
        assert!(decode_bus_entry("k", &[1, READ_RETAINED, 0]).is_err());
        assert!(decode_bus_entry("k", &[1, 9]).is_err());
        for will in [None, Some(message)] {
            let presence = Presence {
                client_id: ByteStr::from("c"),
                epoch: 5,
                will,
                since_ms: 1_700_000_000_000,
            };
            let encoded = encode_presence(&presence);
            assert_eq!(decode_presence("k", &encoded), Ok(presence));
            assert!(decode_presence("k", &encoded[..20]).is_err());
        }
        let owner = Owner {
            node: ByteStr::from("n"),
            epoch: 77,
        };
        assert_eq!(decode_owner("k", &encode_owner(&owner)), Ok(owner));
        assert!(decode_owner("k", &[1, 0]).is_err());
        assert_eq!(decode_u64("k", b"42"), Ok(42));
        assert!(decode_u64("k", b"x").is_err());
    }

    #[test]
    fn holder_flags_round_trip_and_legacy_scores_read() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for retain in [false, true] {
                let held = Held { qos, retain };
                assert_eq!(Held::decode("k", held.encode()), Ok(held));
            }
        }
        assert_eq!(Held::decode("k", b"2r").map(|held| held.retain), Ok(true));
        for bad in [&b""[..], b"3", b"1x", b"1rr", b"r"] {
            assert!(Held::decode("k", bad).is_err(), "{bad:?}");
        }
        // order 5, QoS 2, RETAIN: 5 × 8 + 2 × 2 + 1.
        let held = Held::from_legacy_score("k", 45.0);
        assert_eq!(
            held,
            Ok(Held {
                qos: QoS::ExactlyOnce,
                retain: true
            })
        );
        assert!(Held::from_legacy_score("k", 0.5).is_err());
        assert!(Held::from_legacy_score("k", 7.0).is_err());
    }
}
