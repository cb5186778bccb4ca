//! Property tests of the MQTT codec.
//!
//! - every valid packet survives encode → decode unchanged, and `encoded_len`
//!   is the length `encode` writes;
//! - the decoder never panics, never consumes more than it was given, and
//!   consumes nothing unless it returns a packet — on arbitrary bytes and on
//!   mutated valid encodings;
//! - a stream of packets cut at arbitrary points and fed piecemeal decodes to
//!   the same packets.

use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use easy_mqtt_core::codec::{DecodeError, Decoded, decode, encode, encode_publish, encoded_len};
use easy_mqtt_core::topic::{validate_topic_filter, validate_topic_name};
use easy_mqtt_core::{
    ByteStr, ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PacketId, ProtocolVersion,
    Publish, QoS, QosPid, SubAck, Subscribe, SubscribeFilter, SubscribeReturnCode, Unsubscribe,
};
use proptest::prelude::*;
use proptest::sample::Index;

// ---- Strategies ----------------------------------------------------------

fn packet_id() -> impl Strategy<Value = PacketId> {
    any::<u16>().prop_filter_map("packet ids are non-zero", NonZeroU16::new)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce),
    ]
}

/// One topic level without wildcards or separators (possibly empty).
fn level() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _$.\\-\u{e9}\u{20ac}\u{1F600}\u{FEFF}]{0,6}"
}

fn topic_name() -> impl Strategy<Value = ByteStr> {
    prop::collection::vec(level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("topic names are not empty", |name| !name.is_empty())
        .prop_map(ByteStr::from)
}

fn topic_filter() -> impl Strategy<Value = ByteStr> {
    let level = prop_oneof![1 => Just("+".to_owned()), 3 => level()];
    (prop::collection::vec(level, 0..5), any::<bool>())
        .prop_map(|(mut levels, multi)| {
            if multi {
                levels.push("#".to_owned());
            }
            levels.join("/")
        })
        .prop_filter("topic filters are not empty", |filter| !filter.is_empty())
        .prop_map(ByteStr::from)
}

/// Any string without U+0000.
fn string(max: usize) -> impl Strategy<Value = ByteStr> {
    prop::collection::vec(
        any::<char>().prop_filter("no U+0000", |&c| c != '\0'),
        0..max,
    )
    .prop_map(|chars| ByteStr::from(chars.into_iter().collect::<String>()))
}

fn binary(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn connect() -> impl Strategy<Value = Connect> {
    let will = (topic_name(), binary(32), qos(), any::<bool>()).prop_map(
        |(topic, payload, qos, retain)| LastWill {
            topic,
            payload,
            qos,
            retain,
        },
    );
    let protocol = prop_oneof![Just(ProtocolVersion::V3_1_1), Just(ProtocolVersion::V3_1)];
    let credentials = prop::option::of((string(16), prop::option::of(binary(16))));
    (
        protocol,
        any::<bool>(),
        any::<u16>(),
        string(24),
        prop::option::of(will),
        credentials,
    )
        .prop_map(
            |(protocol, clean_session, keep_alive, client_id, will, credentials)| {
                let (username, password) = match credentials {
                    Some((username, password)) => (Some(username), password),
                    None => (None, None),
                };
                Connect {
                    protocol,
                    clean_session,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                }
            },
        )
}

fn connack() -> impl Strategy<Value = ConnAck> {
    (any::<bool>(), 0u8..=5).prop_filter_map("return codes are 0 to 5", |(present, code)| {
        Some(ConnAck {
            session_present: present,
            code: ConnectReturnCode::from_u8(code)?,
        })
    })
}

fn publish() -> impl Strategy<Value = Publish> {
    (
        any::<bool>(),
        qos(),
        packet_id(),
        any::<bool>(),
        topic_name(),
        binary(200),
    )
        .prop_filter_map(
            "QoS and packet id agree",
            |(dup, qos, id, retain, topic, payload)| {
                let qos_pid = QosPid::new(qos, Some(id))?;
                Some(Publish {
                    // [MQTT-3.3.1-2]
                    dup: dup && qos != QoS::AtMostOnce,
                    qos_pid,
                    retain,
                    topic,
                    payload,
                })
            },
        )
}

fn subscribe() -> impl Strategy<Value = Subscribe> {
    let filter = (topic_filter(), qos()).prop_map(|(filter, qos)| SubscribeFilter { filter, qos });
    (packet_id(), prop::collection::vec(filter, 1..5))
        .prop_map(|(packet_id, filters)| Subscribe { packet_id, filters })
}

fn suback() -> impl Strategy<Value = SubAck> {
    let code = prop_oneof![
        3 => qos().prop_map(SubscribeReturnCode::Granted),
        1 => Just(SubscribeReturnCode::Failure),
    ];
    (packet_id(), prop::collection::vec(code, 1..5)).prop_map(|(packet_id, return_codes)| SubAck {
        packet_id,
        return_codes,
    })
}

fn unsubscribe() -> impl Strategy<Value = Unsubscribe> {
    (packet_id(), prop::collection::vec(topic_filter(), 1..5))
        .prop_map(|(packet_id, filters)| Unsubscribe { packet_id, filters })
}

/// Every packet type, with valid contents.
fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        1 => connect().prop_map(Packet::Connect),
        1 => connack().prop_map(Packet::ConnAck),
        3 => publish().prop_map(Packet::Publish),
        1 => packet_id().prop_map(Packet::PubAck),
        1 => packet_id().prop_map(Packet::PubRec),
        1 => packet_id().prop_map(Packet::PubRel),
        1 => packet_id().prop_map(Packet::PubComp),
        1 => subscribe().prop_map(Packet::Subscribe),
        1 => suback().prop_map(Packet::SubAck),
        1 => unsubscribe().prop_map(Packet::Unsubscribe),
        1 => packet_id().prop_map(Packet::UnsubAck),
        1 => Just(Packet::PingReq),
        1 => Just(Packet::PingResp),
        1 => Just(Packet::Disconnect),
    ]
}

/// Maximum packet sizes to decode with: tiny, small, roomy, unlimited.
fn max_packet_size() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0), Just(2), Just(16), Just(256), Just(usize::MAX)]
}

// ---- Helpers ---------------------------------------------------------------

fn encoded(packet: &Packet) -> Result<BytesMut, TestCaseError> {
    let mut buf = BytesMut::new();
    encode(packet, &mut buf).map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
    Ok(buf)
}

/// Decodes from the front of `input` and checks the consumption contract;
/// a decoded packet must re-encode and decode to itself.
fn decode_checked(input: &[u8], max: usize) -> Result<Result<Decoded, DecodeError>, TestCaseError> {
    let mut buf = BytesMut::from(input);
    let result = decode(&mut buf, max);
    match &result {
        Ok(Decoded::Packet(packet)) => {
            let consumed = input.len() - buf.len();
            prop_assert!(consumed >= 2 && consumed <= max);
            prop_assert_eq!(&buf[..], &input[consumed..]);
            let again = encoded(packet)?;
            prop_assert_eq!(encoded_len(packet), Ok(again.len()));
            // Only non-minimal remaining lengths make the input longer.
            prop_assert!(again.len() <= consumed);
            let mut again = again;
            prop_assert_eq!(
                decode(&mut again, usize::MAX),
                Ok(Decoded::Packet(packet.clone()))
            );
        }
        Ok(Decoded::Incomplete { needed }) => {
            prop_assert!(*needed >= 1);
            prop_assert_eq!(&buf[..], input);
        }
        Err(_) => prop_assert_eq!(&buf[..], input),
    }
    Ok(result)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(at, bits)| Mutation::Flip(at, bits)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        any::<Index>().prop_map(Mutation::Remove),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match mutation {
        Mutation::Flip(at, bits) => {
            let at = at.index(bytes.len());
            if let Some(byte) = bytes.get_mut(at) {
                *byte ^= bits;
            }
        }
        Mutation::Insert(at, byte) => bytes.insert(at.index(bytes.len() + 1), *byte),
        Mutation::Remove(at) => {
            bytes.remove(at.index(bytes.len()));
        }
        Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len())),
    }
}

// ---- Properties ----------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The strategies only produce what the decoder must accept.
    #[test]
    fn strategies_produce_valid_topics(name in topic_name(), filter in topic_filter()) {
        prop_assert_eq!(validate_topic_name(&name), Ok(()));
        prop_assert_eq!(validate_topic_filter(&filter), Ok(()));
    }

    /// encode → decode is the identity, `encoded_len` is exact, and the
    /// packet fits a `max_packet_size` of exactly its size but not one less.
    #[test]
    fn encode_then_decode_is_identity(packet in packet()) {
        let mut buf = encoded(&packet)?;
        let len = buf.len();
        prop_assert_eq!(encoded_len(&packet), Ok(len));
        prop_assert_eq!(
            decode(&mut buf.clone(), len - 1),
            Err(DecodeError::PacketTooLarge { size: len, max: len - 1 })
        );
        prop_assert_eq!(decode(&mut buf, len), Ok(Decoded::Packet(packet)));
        prop_assert!(buf.is_empty());
    }

    /// A PUBLISH encoded from borrowed parts (how deliveries are sent) is
    /// byte for byte the encoding of the same `Publish` packet.
    #[test]
    fn publish_from_parts_encodes_like_the_packet(publish in publish()) {
        let expected = encoded(&Packet::Publish(publish.clone()))?;
        let mut buf = BytesMut::from(&b"before"[..]);
        encode_publish(
            &mut buf,
            publish.dup,
            publish.qos_pid,
            publish.retain,
            publish.topic.as_bytes(),
            &publish.payload,
        )
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&buf[..6], &b"before"[..]);
        prop_assert_eq!(&buf[6..], &expected[..]);
    }

    /// Every proper prefix of an encoding is Incomplete (or, before the
    /// header is complete, needs one byte), and `needed` never overshoots.
    #[test]
    fn prefixes_are_incomplete(packet in packet(), cut in any::<Index>()) {
        let bytes = encoded(&packet)?;
        let cut = cut.index(bytes.len());
        let result = decode_checked(&bytes[..cut], usize::MAX)?;
        match result {
            Ok(Decoded::Incomplete { needed }) => prop_assert!(needed <= bytes.len() - cut),
            other => prop_assert!(false, "prefix of {} bytes: {:?}", cut, other),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Arbitrary bytes never panic the decoder nor break its contract.
    #[test]
    fn arbitrary_bytes_never_panic(
        input in prop::collection::vec(any::<u8>(), 0..128),
        max in max_packet_size(),
    ) {
        let _ = decode_checked(&input, max)?;
    }

    /// Arbitrary bytes that start like a packet: a valid first byte and a
    /// short remaining length, so bodies are actually parsed.
    #[test]
    fn arbitrary_bodies_never_panic(
        packet_type in 1u8..=14,
        flags in 0u8..16,
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let flags = match packet_type {
            3 => flags,
            6 | 8 | 10 => 0b0010,
            _ => 0,
        };
        let mut input = vec![packet_type << 4 | flags, u8::try_from(body.len()).unwrap_or(0)];
        input.extend_from_slice(&body);
        let _ = decode_checked(&input, usize::MAX)?;
    }

    /// Mutated valid encodings never panic the decoder nor break its contract.
    #[test]
    fn mutated_encodings_never_panic(
        packet in packet(),
        mutations in prop::collection::vec(mutation(), 1..4),
        max in max_packet_size(),
    ) {
        let mut bytes = encoded(&packet)?.to_vec();
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        let _ = decode_checked(&bytes, max)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A stream of packets split at arbitrary points and fed chunk by chunk
    /// decodes to the same packets.
    #[test]
    fn split_stream_decodes_to_the_same_packets(
        packets in prop::collection::vec(packet(), 1..6),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let mut stream = BytesMut::new();
        for packet in &packets {
            encode(packet, &mut stream)
                .map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();

        let mut decoded = Vec::new();
        let mut buf = BytesMut::new();
        let mut fed = 0;
        for cut in cuts {
            buf.extend_from_slice(&stream[fed..cut]);
            fed = cut;
            loop {
                match decode(&mut buf, usize::MAX) {
                    Ok(Decoded::Packet(packet)) => decoded.push(packet),
                    Ok(Decoded::Incomplete { needed }) => {
                        prop_assert!(needed >= 1);
                        // The stream is valid: what is needed is still to come.
                        prop_assert!(needed <= stream.len() - fed || fed == stream.len());
                        break;
                    }
                    Err(error) => prop_assert!(false, "decode error: {}", error),
                }
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, packets);
    }
}
