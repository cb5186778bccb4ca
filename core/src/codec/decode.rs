//! The decoder: fixed header, remaining length, and the body of each packet.
//!
//! The decoder never indexes a slice without a bounds check, never allocates
//! in proportion to a length it has only been told about, and looks at a
//! packet's body only once all of it is in the buffer (so that every field
//! can be sliced out of one shared [`Bytes`]).

use bytes::{Buf, Bytes, BytesMut};

use super::error::DecodeError;
use super::{Decoded, MAX_REMAINING_LENGTH};
use crate::packet::{
    ByteStr, ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PacketId, ProtocolVersion,
    Publish, QoS, QosPid, SubAck, Subscribe, SubscribeFilter, SubscribeReturnCode, Unsubscribe,
};
use crate::topic::{validate_topic_filter, validate_topic_name};

/// The longest remaining-length encoding: four bytes (section 2.2.3).
const MAX_REMAINING_LENGTH_BYTES: usize = 4;

pub(super) fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Decoded, DecodeError> {
    let Some((&first, after_first)) = buf.split_first() else {
        return Ok(Decoded::Incomplete { needed: 1 });
    };
    // The first byte alone can be wrong; say so before waiting for more.
    check_first_byte(first)?;
    let Some((remaining_length, length_bytes)) = decode_remaining_length(after_first)? else {
        return Ok(Decoded::Incomplete { needed: 1 });
    };
    let packet_type = first >> 4;
    if let Some(fixed) = fixed_remaining_length(packet_type) {
        // A PINGREQ that claims 100 000 bytes is refused now, not once they
        // have arrived.
        if remaining_length > fixed {
            return Err(DecodeError::TrailingBytes {
                packet: packet_name(packet_type),
                extra: remaining_length - fixed,
            });
        }
    }
    let header_len = 1 + length_bytes;
    // Cannot overflow: remaining_length <= MAX_REMAINING_LENGTH.
    let size = header_len + remaining_length;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(Decoded::Incomplete {
            needed: size - buf.len(),
        });
    }

    if let Some(packet) = fixed_size_packet(first, buf.get(header_len..size)) {
        // Cannot panic: `buf.len() >= size`.
        buf.advance(size);
        return Ok(Decoded::Packet(packet));
    }

    // Kept for the error path, which puts the packet back (see `restore`).
    let mut header = [0u8; 1 + MAX_REMAINING_LENGTH_BYTES];
    for (slot, &byte) in header.iter_mut().zip(buf.iter().take(header_len)) {
        *slot = byte;
    }
    let mut body = buf.split_to(size).freeze();
    // Cannot panic: the frame is `size >= header_len` bytes long. Advancing
    // (unlike slicing) leaves the reference count alone.
    body.advance(header_len);
    let mut reader = Reader {
        bytes: body,
        pos: 0,
        packet: packet_name(packet_type),
    };
    match decode_body(first, &mut reader) {
        Ok(packet) => Ok(Decoded::Packet(packet)),
        Err(error) => {
            restore(
                buf,
                header.get(..header_len).unwrap_or_default(),
                &reader.bytes,
            );
            Err(error)
        }
    }
}

/// A valid acknowledgement (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK),
/// PINGREQ, PINGRESP or DISCONNECT, read straight from the buffer: one
/// arrives for every QoS 1/2 delivery, and splitting the shared read buffer
/// for two bytes (two atomic reference-count updates, and a promotion of
/// the buffer to shared) was a tenth of the broker's CPU in a fan-out.
/// `None` for anything else, and for a malformed one, which the general
/// path decodes and reports.
fn fixed_size_packet(first: u8, body: Option<&[u8]>) -> Option<Packet> {
    let body = body?;
    let packet_id = || match *body {
        [high, low] => PacketId::new(u16::from_be_bytes([high, low])),
        _ => None,
    };
    match first {
        0x40 => packet_id().map(Packet::PubAck),
        0x50 => packet_id().map(Packet::PubRec),
        0x62 => packet_id().map(Packet::PubRel),
        0x70 => packet_id().map(Packet::PubComp),
        0xB0 => packet_id().map(Packet::UnsubAck),
        0xC0 if body.is_empty() => Some(Packet::PingReq),
        0xD0 if body.is_empty() => Some(Packet::PingResp),
        0xE0 if body.is_empty() => Some(Packet::Disconnect),
        _ => None,
    }
}

/// Puts a packet that failed to decode back in front of `buf`, so that an
/// error consumes nothing.
///
/// This copies. It runs only on the error path, which ends the connection
/// ([MQTT-4.8.0-1]), and the packet is at most `max_packet_size` bytes; in
/// exchange the successful path decodes in one pass straight into slices of
/// the read buffer.
#[cold]
fn restore(buf: &mut BytesMut, header: &[u8], body: &Bytes) {
    let mut whole = BytesMut::with_capacity(header.len() + body.len() + buf.len());
    whole.extend_from_slice(header);
    whole.extend_from_slice(body);
    whole.extend_from_slice(buf);
    *buf = whole;
}

fn packet_name(packet_type: u8) -> &'static str {
    match packet_type {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        _ => "reserved packet type",
    }
}

/// Checks the packet type and the fixed-header flags (table 2.2).
fn check_first_byte(first: u8) -> Result<(), DecodeError> {
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    let (expected, rule) = match packet_type {
        0 | 15 => return Err(DecodeError::ReservedPacketType(packet_type)),
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::PublishQos3);
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::PublishDupWithQos0);
            }
            return Ok(());
        }
        6 => (0b0010, "[MQTT-3.6.1-1]"),
        8 => (0b0010, "[MQTT-3.8.1-1]"),
        10 => (0b0010, "[MQTT-3.10.1-1]"),
        _ => (0b0000, "[MQTT-2.2.2-1], [MQTT-2.2.2-2]"),
    };
    if flags != expected {
        return Err(DecodeError::InvalidFlags {
            packet: packet_name(packet_type),
            flags,
            expected,
            rule,
        });
    }
    Ok(())
}

/// The remaining length of packets whose body has a fixed layout.
fn fixed_remaining_length(packet_type: u8) -> Option<usize> {
    match packet_type {
        2 | 4 | 5 | 6 | 7 | 11 => Some(2),
        12..=14 => Some(0),
        _ => None,
    }
}

/// Decodes the variable byte integer that follows the first byte.
///
/// `Ok(None)` means more bytes are needed. Non-minimal encodings (such as
/// `0x80 0x00` for 0) are accepted: MQTT 3.1.1 does not forbid them to
/// receivers. `Ok(Some((value, bytes_used)))` otherwise.
pub(super) fn decode_remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (index, &byte) in bytes.iter().take(MAX_REMAINING_LENGTH_BYTES).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            debug_assert!(value <= MAX_REMAINING_LENGTH);
            return Ok(Some((value, index + 1)));
        }
    }
    if bytes.len() >= MAX_REMAINING_LENGTH_BYTES {
        // The fourth byte has its continuation bit set.
        return Err(DecodeError::MalformedRemainingLength);
    }
    Ok(None)
}

/// Reads the fields of a packet body; running out is [`DecodeError::Truncated`].
///
/// It reads by position and leaves `bytes` whole, so that on error the body
/// can be put back; only [`Reader::take_rest`] gives it away.
struct Reader {
    bytes: Bytes,
    /// Invariant: `pos <= bytes.len()`.
    pos: usize,
    packet: &'static str,
}

impl Reader {
    fn truncated(&self, field: &'static str) -> DecodeError {
        DecodeError::Truncated {
            packet: self.packet,
            field,
        }
    }

    /// The bytes not read yet.
    fn remaining(&self) -> &[u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    fn is_empty(&self) -> bool {
        self.remaining().is_empty()
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let &byte = self
            .remaining()
            .first()
            .ok_or_else(|| self.truncated(field))?;
        self.pos += 1;
        Ok(byte)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let &[high, low, ..] = self.remaining() else {
            return Err(self.truncated(field));
        };
        self.pos += 2;
        Ok(u16::from_be_bytes([high, low]))
    }

    fn packet_id(&mut self) -> Result<PacketId, DecodeError> {
        let id = self.u16("packet identifier")?;
        PacketId::new(id).ok_or(DecodeError::ZeroPacketId {
            packet: self.packet,
        })
    }

    /// Two-byte length, then that many bytes (sections 1.5.3 and 3.1.3.5).
    fn binary(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16(field)?);
        if self.remaining().len() < len {
            return Err(self.truncated(field));
        }
        let start = self.pos;
        self.pos += len;
        Ok(self.bytes.slice(start..self.pos))
    }

    /// A UTF-8 encoded string (section 1.5.3).
    fn string(&mut self, field: &'static str) -> Result<ByteStr, DecodeError> {
        let raw = self.binary(field)?;
        // U+FEFF is kept as it is [MQTT-1.5.3-3].
        let string = ByteStr::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8 {
            packet: self.packet,
            field,
        })?;
        // In well-formed UTF-8 a zero byte can only be U+0000.
        if string.as_bytes().contains(&0) {
            return Err(DecodeError::NullCharacter {
                packet: self.packet,
                field,
            });
        }
        Ok(string)
    }

    /// The rest of the body, without touching the reference count. Must be
    /// the last read: nothing may fail after it.
    fn take_rest(&mut self) -> Bytes {
        let mut rest = std::mem::take(&mut self.bytes);
        rest.advance(self.pos.min(rest.len()));
        self.pos = 0;
        rest
    }

    /// Refuses bytes after the last field.
    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining().len() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes {
                packet: self.packet,
                extra,
            }),
        }
    }
}

fn decode_body(first: u8, r: &mut Reader) -> Result<Packet, DecodeError> {
    let packet = match first >> 4 {
        1 => Packet::Connect(connect(r)?),
        2 => Packet::ConnAck(connack(r)?),
        3 => Packet::Publish(publish(first & 0x0F, r)?),
        4 => Packet::PubAck(r.packet_id()?),
        5 => Packet::PubRec(r.packet_id()?),
        6 => Packet::PubRel(r.packet_id()?),
        7 => Packet::PubComp(r.packet_id()?),
        8 => Packet::Subscribe(subscribe(r)?),
        9 => Packet::SubAck(suback(r)?),
        10 => Packet::Unsubscribe(unsubscribe(r)?),
        11 => Packet::UnsubAck(r.packet_id()?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect,
        other => return Err(DecodeError::ReservedPacketType(other)),
    };
    r.finish()?;
    Ok(packet)
}

/// Section 3.1.
fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary("protocol name")?;
    let (protocol, known_level) = match &name[..] {
        b"MQTT" => (ProtocolVersion::V3_1_1, 4),
        b"MQIsdp" => (ProtocolVersion::V3_1, 3),
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let level = r.u8("protocol level")?;
    if level != known_level {
        // Checked before anything else: a later protocol (MQTT 5) lays the
        // rest of CONNECT out differently, and deserves CONNACK 0x01.
        return Err(DecodeError::UnsupportedProtocolLevel(level));
    }

    let flags = r.u8("connect flags")?;
    if flags & 0b0000_0001 != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let clean_session = flags & 0b0000_0010 != 0;
    let will_flag = flags & 0b0000_0100 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0b0010_0000 != 0;
    let password_flag = flags & 0b0100_0000 != 0;
    let username_flag = flags & 0b1000_0000 != 0;
    let will_qos = if will_flag {
        QoS::from_u8(will_qos).ok_or(DecodeError::InvalidWillQos)?
    } else {
        if will_qos != 0 {
            return Err(DecodeError::WillQosWithoutWill);
        }
        if will_retain {
            return Err(DecodeError::WillRetainWithoutWill);
        }
        QoS::AtMostOnce
    };
    if password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16("keep alive")?;

    // Payload, in this order [MQTT-3.1.3-1].
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let topic = r.string("will topic")?;
        validate_topic_name(&topic).map_err(DecodeError::InvalidWillTopic)?;
        let payload = r.binary("will message")?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary("password")?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_session,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

/// Section 3.2.
fn connack(r: &mut Reader) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("acknowledge flags")?;
    if flags & 0b1111_1110 != 0 {
        return Err(DecodeError::InvalidConnAckFlags(flags));
    }
    let code = r.u8("return code")?;
    let code =
        ConnectReturnCode::from_u8(code).ok_or(DecodeError::InvalidConnectReturnCode(code))?;
    Ok(ConnAck {
        session_present: flags & 1 != 0,
        code,
    })
}

/// Section 3.3. `flags` were checked by [`check_first_byte`].
fn publish(flags: u8, r: &mut Reader) -> Result<Publish, DecodeError> {
    let topic = r.string("topic name")?;
    validate_topic_name(&topic).map_err(DecodeError::InvalidTopicName)?;
    let qos_pid = match (flags >> 1) & 0b11 {
        0 => QosPid::AtMostOnce,
        1 => QosPid::AtLeastOnce(r.packet_id()?),
        2 => QosPid::ExactlyOnce(r.packet_id()?),
        _ => return Err(DecodeError::PublishQos3),
    };
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos_pid,
        retain: flags & 0b0001 != 0,
        topic,
        payload: r.take_rest(),
    })
}

fn topic_filter(r: &mut Reader) -> Result<ByteStr, DecodeError> {
    let filter = r.string("topic filter")?;
    validate_topic_filter(&filter).map_err(|error| DecodeError::InvalidTopicFilter {
        packet: r.packet,
        error,
    })?;
    Ok(filter)
}

/// Section 3.8.
fn subscribe(r: &mut Reader) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    // Grows with filters actually present, never with a declared length.
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = topic_filter(r)?;
        let requested = r.u8("requested QoS")?;
        let qos = if requested & 0b1111_1100 == 0 {
            QoS::from_u8(requested)
        } else {
            None
        };
        let qos = qos.ok_or(DecodeError::InvalidSubscribeQos(requested))?;
        filters.push(SubscribeFilter { filter, qos });
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptySubscribe);
    }
    Ok(Subscribe { packet_id, filters })
}

/// Section 3.9.
fn suback(r: &mut Reader) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let return_codes = r
        .remaining()
        .iter()
        .map(|&code| {
            SubscribeReturnCode::from_u8(code).ok_or(DecodeError::InvalidSubAckReturnCode(code))
        })
        .collect::<Result<Vec<_>, _>>()?;
    r.pos = r.bytes.len();
    Ok(SubAck {
        packet_id,
        return_codes,
    })
}

/// Section 3.10.
fn unsubscribe(r: &mut Reader) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(topic_filter(r)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptyUnsubscribe);
    }
    Ok(Unsubscribe { packet_id, filters })
}
