//! Compact binary encodings of stored values. Every value starts with a
//! version byte, so the format can change without guessing.
//!
//! - Message (body and retained): `01 | flags | topic length (u32 BE) |
//!   topic | payload`, flags = QoS in bits 0–1, RETAIN in bit 2. The
//!   payload is the rest of the value, byte for byte.
//! - Session record: `01 | created_at_ms (u64 BE) | client id`.
//! - In-flight entry: `01 | message id (u64 BE) | flags | send order (u64
//!   BE)`, flags = QoS bits 0–1, RETAIN bit 2, phase bit 3 (1 = Released).
//! - Packet ids: 2 bytes BE; message ids in sorted sets: 8 bytes BE.
//! - Held score: `order × 8 + QoS × 2 + RETAIN`, exact in an `f64` while
//!   the order stays below 2^50.

use bytes::Bytes;
use easy_mqtt_core::packet::{ByteStr, PacketId, QoS};
use easy_mqtt_core::session::{Message, OutboundPhase};
use easy_mqtt_core::storage::{MessageId, SessionRecord, StorageError};

const VERSION: u8 = 1;
/// Send orders stay below this so that a score is an exact `f64`.
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
    let topic = message.topic.as_bytes();
    let mut out = Vec::with_capacity(6 + topic.len() + message.payload.len());
    out.push(VERSION);
    out.push(flags(message.qos, message.retain));
    out.extend_from_slice(&u32::try_from(topic.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(topic);
    out.extend_from_slice(&message.payload);
    out
}

pub(crate) fn decode_message(key: &str, bytes: &[u8]) -> Result<Message, StorageError> {
    let [version, flags, a, b, c, d, rest @ ..] = bytes else {
        return Err(corrupt(key, "message shorter than its header"));
    };
    if *version != VERSION {
        return Err(corrupt(key, format!("message version {version}")));
    }
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

pub(crate) fn encode_window(entry: &WindowEntry) -> Vec<u8> {
    let phase = match entry.phase {
        OutboundPhase::Published => 0,
        OutboundPhase::Released => 0b1000,
    };
    let mut out = Vec::with_capacity(18);
    out.push(VERSION);
    out.extend_from_slice(&entry.id.0.to_be_bytes());
    out.push(flags(entry.qos, entry.retain) | phase);
    out.extend_from_slice(&entry.order.to_be_bytes());
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

pub(crate) fn encode_packet_id(packet_id: PacketId) -> [u8; 2] {
    packet_id.get().to_be_bytes()
}

pub(crate) fn decode_packet_id(key: &str, bytes: &[u8]) -> Result<PacketId, StorageError> {
    let Ok(bytes) = <[u8; 2]>::try_from(bytes) else {
        return Err(corrupt(key, "packet id is not 2 bytes"));
    };
    PacketId::new(u16::from_be_bytes(bytes)).ok_or_else(|| corrupt(key, "packet id 0"))
}

pub(crate) fn encode_message_id(id: MessageId) -> [u8; 8] {
    id.0.to_be_bytes()
}

pub(crate) fn decode_message_id(key: &str, bytes: &[u8]) -> Result<MessageId, StorageError> {
    let Ok(bytes) = <[u8; 8]>::try_from(bytes) else {
        return Err(corrupt(key, "message id is not 8 bytes"));
    };
    Ok(MessageId(u64::from_be_bytes(bytes)))
}

/// A held message's order and flags, packed into a sorted-set score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    pub order: u64,
    pub qos: QoS,
    pub retain: bool,
}

impl Held {
    pub fn score(self) -> u64 {
        (self.order << 3) | (u64::from(self.qos as u8) << 1) | u64::from(self.retain)
    }

    pub fn from_score(key: &str, score: f64) -> Result<Held, StorageError> {
        // Scores are written as integers below 2^53, so they read back exactly.
        if !(0.0..9.007_199_254_740_992e15).contains(&score) || score.fract() != 0.0 {
            return Err(corrupt(key, format!("score {score}")));
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let score = score as u64;
        let qos = u8::try_from((score >> 1) & 0b11).unwrap_or(3);
        Ok(Held {
            order: score >> 3,
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
    fn scores_round_trip() {
        for (order, qos, retain) in [
            (1, QoS::AtMostOnce, false),
            (MAX_ORDER - 1, QoS::ExactlyOnce, true),
            (42, QoS::AtLeastOnce, true),
        ] {
            let held = Held { order, qos, retain };
            #[allow(clippy::cast_precision_loss)]
            let score = held.score() as f64;
            assert_eq!(Held::from_score("k", score), Ok(held));
        }
        assert!(Held::from_score("k", 0.5).is_err());
        assert!(Held::from_score("k", 7.0).is_err());
    }
}
