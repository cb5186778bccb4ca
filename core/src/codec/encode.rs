//! The encoder.
//!
//! Lengths are computed (and checked) first, so that `encode` reserves the
//! exact size once and then only appends.

use bytes::{BufMut, BytesMut};

use super::MAX_REMAINING_LENGTH;
use super::error::EncodeError;
use crate::packet::{Connect, Packet, ProtocolVersion, Publish, QosPid, Subscribe, Unsubscribe};

/// Total encoded size of `packet`, fixed header included.
pub fn encoded_len(packet: &Packet) -> Result<usize, EncodeError> {
    let remaining_length = remaining_length(packet)?;
    Ok(1 + remaining_length_len(remaining_length) + remaining_length)
}

/// Appends the encoding of `packet` to `buf`. On error `buf` is unchanged.
pub fn encode(packet: &Packet, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let remaining_length = remaining_length(packet)?;
    buf.reserve(1 + remaining_length_len(remaining_length) + remaining_length);
    let start = buf.len();
    buf.put_u8(first_byte(packet));
    put_remaining_length(buf, remaining_length);
    let written = write_body(packet, buf);
    if written.is_err() {
        // Unreachable in practice: `remaining_length` checked every field.
        buf.truncate(start);
    }
    written
}

/// Appends a PUBLISH made of borrowed parts, exactly as [`encode`] would
/// encode the same [`Publish`]. A delivery is encoded from the message all
/// its subscribers share: building a `Publish` for it cloned the topic and
/// the payload, two atomic reference-count updates per delivery (and two
/// more to drop them) on counters every subscriber's thread touches. On
/// error `buf` is unchanged.
pub fn encode_publish(
    buf: &mut BytesMut,
    dup: bool,
    qos_pid: QosPid,
    retain: bool,
    topic: &[u8],
    payload: &[u8],
) -> Result<(), EncodeError> {
    let remaining_length = publish_remaining_length(dup, qos_pid, topic.len(), payload.len())?;
    if remaining_length > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge { remaining_length });
    }
    buf.reserve(1 + remaining_length_len(remaining_length) + remaining_length);
    buf.put_u8(3 << 4 | u8::from(dup) << 3 | (qos_pid.qos() as u8) << 1 | u8::from(retain));
    put_remaining_length(buf, remaining_length);
    put_publish_body(buf, topic, qos_pid, payload)
}

/// A PUBLISH's remaining length (checks shared by [`encode`] and
/// [`encode_publish`]).
fn publish_remaining_length(
    dup: bool,
    qos_pid: QosPid,
    topic_len: usize,
    payload_len: usize,
) -> Result<usize, EncodeError> {
    if dup && qos_pid == QosPid::AtMostOnce {
        return Err(EncodeError::DupWithQos0);
    }
    let id_len = if qos_pid == QosPid::AtMostOnce { 0 } else { 2 };
    Ok(prefixed_len("topic name", topic_len)?
        .saturating_add(id_len)
        .saturating_add(payload_len))
}

fn put_publish_body(
    buf: &mut BytesMut,
    topic: &[u8],
    qos_pid: QosPid,
    payload: &[u8],
) -> Result<(), EncodeError> {
    put_prefixed(buf, "topic name", topic)?;
    if let Some(id) = qos_pid.packet_id() {
        buf.put_u16(id.get());
    }
    buf.extend_from_slice(payload);
    Ok(())
}

/// Bytes a remaining length takes on the wire (minimal encoding).
pub(super) fn remaining_length_len(remaining_length: usize) -> usize {
    match remaining_length {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `value` (at most [`MAX_REMAINING_LENGTH`]) as a minimal variable
/// byte integer.
pub(super) fn put_remaining_length(buf: &mut BytesMut, mut value: usize) {
    loop {
        // Truncation is the point: the low seven bits.
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

fn first_byte(packet: &Packet) -> u8 {
    let flags = match packet {
        Packet::Publish(publish) => {
            u8::from(publish.dup) << 3 | (publish.qos() as u8) << 1 | u8::from(publish.retain)
        }
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
        _ => 0,
    };
    packet.packet_type() << 4 | flags
}

/// Length of a two-byte-length-prefixed field, prefix included.
fn prefixed_len(field: &'static str, len: usize) -> Result<usize, EncodeError> {
    if len > usize::from(u16::MAX) {
        return Err(EncodeError::StringTooLong { field, len });
    }
    Ok(2 + len)
}

fn remaining_length(packet: &Packet) -> Result<usize, EncodeError> {
    let len = match packet {
        Packet::Connect(connect) => connect_len(connect)?,
        Packet::ConnAck(_) => 2,
        Packet::Publish(publish) => publish_len(publish)?,
        Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::UnsubAck(_) => 2,
        Packet::Subscribe(subscribe) => subscribe_len(subscribe)?,
        Packet::SubAck(suback) => 2usize.saturating_add(suback.return_codes.len()),
        Packet::Unsubscribe(unsubscribe) => unsubscribe_len(unsubscribe)?,
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
    };
    if len > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge {
            remaining_length: len,
        });
    }
    Ok(len)
}

fn connect_len(connect: &Connect) -> Result<usize, EncodeError> {
    if connect.password.is_some() && connect.username.is_none() {
        return Err(EncodeError::PasswordWithoutUsername);
    }
    // Protocol name, level, flags, keep alive.
    let mut len = 2 + connect.protocol.protocol_name().len() + 1 + 1 + 2;
    len += prefixed_len("client identifier", connect.client_id.len())?;
    if let Some(will) = &connect.will {
        len += prefixed_len("will topic", will.topic.len())?;
        len += prefixed_len("will message", will.payload.len())?;
    }
    if let Some(username) = &connect.username {
        len += prefixed_len("user name", username.len())?;
    }
    if let Some(password) = &connect.password {
        len += prefixed_len("password", password.len())?;
    }
    Ok(len)
}

fn publish_len(publish: &Publish) -> Result<usize, EncodeError> {
    publish_remaining_length(
        publish.dup,
        publish.qos_pid,
        publish.topic.len(),
        publish.payload.len(),
    )
}

fn subscribe_len(subscribe: &Subscribe) -> Result<usize, EncodeError> {
    if subscribe.filters.is_empty() {
        return Err(EncodeError::NoTopicFilters {
            packet: "SUBSCRIBE",
        });
    }
    subscribe.filters.iter().try_fold(2usize, |len, filter| {
        // Filter and requested-QoS byte.
        Ok(len.saturating_add(prefixed_len("topic filter", filter.filter.len())? + 1))
    })
}

fn unsubscribe_len(unsubscribe: &Unsubscribe) -> Result<usize, EncodeError> {
    if unsubscribe.filters.is_empty() {
        return Err(EncodeError::NoTopicFilters {
            packet: "UNSUBSCRIBE",
        });
    }
    unsubscribe.filters.iter().try_fold(2usize, |len, filter| {
        Ok(len.saturating_add(prefixed_len("topic filter", filter.len())?))
    })
}

/// Writes a two-byte length and then `data`.
fn put_prefixed(buf: &mut BytesMut, field: &'static str, data: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(data.len()).map_err(|_| EncodeError::StringTooLong {
        field,
        len: data.len(),
    })?;
    buf.put_u16(len);
    buf.extend_from_slice(data);
    Ok(())
}

fn write_body(packet: &Packet, buf: &mut BytesMut) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(connect) => write_connect(connect, buf)?,
        Packet::ConnAck(connack) => {
            buf.put_u8(u8::from(connack.session_present));
            buf.put_u8(connack.code as u8);
        }
        Packet::Publish(publish) => put_publish_body(
            buf,
            publish.topic.as_bytes(),
            publish.qos_pid,
            &publish.payload,
        )?,
        Packet::PubAck(id)
        | Packet::PubRec(id)
        | Packet::PubRel(id)
        | Packet::PubComp(id)
        | Packet::UnsubAck(id) => buf.put_u16(id.get()),
        Packet::Subscribe(subscribe) => {
            buf.put_u16(subscribe.packet_id.get());
            for filter in &subscribe.filters {
                put_prefixed(buf, "topic filter", filter.filter.as_bytes())?;
                buf.put_u8(filter.qos as u8);
            }
        }
        Packet::SubAck(suback) => {
            buf.put_u16(suback.packet_id.get());
            for code in &suback.return_codes {
                buf.put_u8(code.to_u8());
            }
        }
        Packet::Unsubscribe(unsubscribe) => {
            buf.put_u16(unsubscribe.packet_id.get());
            for filter in &unsubscribe.filters {
                put_prefixed(buf, "topic filter", filter.as_bytes())?;
            }
        }
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => {}
    }
    Ok(())
}

fn write_connect(connect: &Connect, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let protocol: ProtocolVersion = connect.protocol;
    put_prefixed(buf, "protocol name", protocol.protocol_name().as_bytes())?;
    buf.put_u8(protocol.level());
    let mut flags = u8::from(connect.clean_session) << 1;
    if let Some(will) = &connect.will {
        flags |= 0b0000_0100 | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
    }
    if connect.password.is_some() {
        flags |= 0b0100_0000;
    }
    if connect.username.is_some() {
        flags |= 0b1000_0000;
    }
    buf.put_u8(flags);
    buf.put_u16(connect.keep_alive);
    put_prefixed(buf, "client identifier", connect.client_id.as_bytes())?;
    if let Some(will) = &connect.will {
        put_prefixed(buf, "will topic", will.topic.as_bytes())?;
        put_prefixed(buf, "will message", &will.payload)?;
    }
    if let Some(username) = &connect.username {
        put_prefixed(buf, "user name", username.as_bytes())?;
    }
    if let Some(password) = &connect.password {
        put_prefixed(buf, "password", password)?;
    }
    Ok(())
}
