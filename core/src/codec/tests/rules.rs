//! One test per receiver rule; each names the normative statement it checks.

use bytes::BytesMut;

use super::{connect_bytes, decode_bytes, decode_err, decode_ok, pid, with_header};
use crate::codec::{DecodeError, Decoded, decode};
use crate::packet::{Packet, QoS, QosPid, SubscribeReturnCode};
use crate::topic::TopicError;

// ---- Fixed header -------------------------------------------------------

/// Section 2.2.1: types 0 and 15 are reserved; refused from the first byte.
#[test]
fn mqtt_2_2_1_reserved_packet_types() {
    assert_eq!(decode_err(&[0x00]), DecodeError::ReservedPacketType(0));
    assert_eq!(
        decode_err(&[0x00, 0x00]),
        DecodeError::ReservedPacketType(0)
    );
    assert_eq!(decode_err(&[0xF0]), DecodeError::ReservedPacketType(15));
    assert_eq!(
        decode_err(&[0xF0, 0x00]),
        DecodeError::ReservedPacketType(15)
    );
}

/// [MQTT-2.2.2-1], [MQTT-2.2.2-2]: every packet other than PUBLISH must carry
/// exactly the flags of table 2.2, checked from the first byte alone.
#[test]
fn mqtt_2_2_2_1_and_2_fixed_header_flags_are_the_reserved_values() {
    for packet_type in (1u8..=14).filter(|&t| t != 3) {
        let expected = if matches!(packet_type, 6 | 8 | 10) {
            0b0010
        } else {
            0
        };
        for flags in 0u8..16 {
            let result = decode_bytes(&[packet_type << 4 | flags]);
            if flags == expected {
                assert_eq!(result, Ok(Decoded::Incomplete { needed: 1 }));
            } else {
                match result {
                    Err(DecodeError::InvalidFlags {
                        flags: got,
                        expected: want,
                        ..
                    }) => assert_eq!((got, want), (flags, expected)),
                    other => panic!("type {packet_type} flags {flags:04b}: {other:?}"),
                }
            }
        }
    }
    let error = decode_err(&[0x41, 0x02, 0x00, 0x01]);
    assert_eq!(
        error.to_string(),
        "reserved flags of PUBACK must be 0000, got 0001 [MQTT-2.2.2-1], [MQTT-2.2.2-2]"
    );
}

/// [MQTT-3.6.1-1]: PUBREL flags are 0010.
#[test]
fn mqtt_3_6_1_1_pubrel_reserved_flags() {
    let error = decode_err(&[0x60, 0x02, 0x00, 0x01]);
    assert_eq!(
        error,
        DecodeError::InvalidFlags {
            packet: "PUBREL",
            flags: 0,
            expected: 0b0010,
            rule: "[MQTT-3.6.1-1]",
        }
    );
    assert_eq!(
        error.to_string(),
        "reserved flags of PUBREL must be 0010, got 0000 [MQTT-3.6.1-1]"
    );
    assert_eq!(decode_ok(&[0x62, 0x02, 0x00, 0x01]), Packet::PubRel(pid(1)));
}

/// [MQTT-3.8.1-1]: SUBSCRIBE flags are 0010.
#[test]
fn mqtt_3_8_1_1_subscribe_reserved_flags() {
    let error = decode_err(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00]);
    assert!(matches!(
        error,
        DecodeError::InvalidFlags {
            packet: "SUBSCRIBE",
            flags: 0,
            rule: "[MQTT-3.8.1-1]",
            ..
        }
    ));
    assert!(error.to_string().contains("[MQTT-3.8.1-1]"));
}

/// [MQTT-3.10.1-1]: UNSUBSCRIBE flags are 0010.
#[test]
fn mqtt_3_10_1_1_unsubscribe_reserved_flags() {
    let error = decode_err(&[0xA3, 0x05, 0x00, 0x01, 0x00, 0x01, b'a']);
    assert!(matches!(
        error,
        DecodeError::InvalidFlags {
            packet: "UNSUBSCRIBE",
            flags: 0b0011,
            rule: "[MQTT-3.10.1-1]",
            ..
        }
    ));
}

/// Section 2.2.3: the remaining length is at most four bytes; the fourth
/// with its continuation bit set is an error as soon as it is seen.
#[test]
fn mqtt_2_2_3_remaining_length_has_at_most_four_bytes() {
    for bytes in [
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF][..],
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        &[0xC0, 0x80, 0x80, 0x80, 0x80, 0x00],
    ] {
        assert_eq!(decode_err(bytes), DecodeError::MalformedRemainingLength);
    }
    // Three continuation bytes: a fourth may still come.
    assert_eq!(
        decode_bytes(&[0x30, 0xFF, 0xFF, 0xFF]),
        Ok(Decoded::Incomplete { needed: 1 })
    );
}

/// Section 2.2.3: 0xFF 0xFF 0xFF 0x7F is the largest remaining length.
#[test]
fn mqtt_2_2_3_four_byte_remaining_length_maximum() {
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(
        decode(&mut buf, usize::MAX),
        Ok(Decoded::Incomplete {
            needed: 268_435_455
        })
    );
    assert_eq!(
        decode(&mut buf, 268_435_455 + 4),
        Err(DecodeError::PacketTooLarge {
            size: 268_435_455 + 5,
            max: 268_435_455 + 4,
        })
    );
    assert_eq!(buf.len(), 5);
}

/// Section 2.2.3 does not require receivers to refuse non-minimal
/// remaining-length encodings; they are accepted.
#[test]
fn mqtt_2_2_3_non_minimal_remaining_length_is_accepted() {
    assert_eq!(decode_ok(&[0xC0, 0x80, 0x00]), Packet::PingReq);
    assert_eq!(
        decode_ok(&[0x40, 0x82, 0x80, 0x00, 0x00, 0x07]),
        Packet::PubAck(pid(7))
    );
}

// ---- Remaining length against the fields --------------------------------

/// A fixed-layout packet whose remaining length is too long is refused from
/// the header alone (section 2.2.3 / 3.4.1: PUBACK's remaining length is 2).
#[test]
fn remaining_length_too_long_for_fixed_layout() {
    assert_eq!(
        decode_err(&[0x40, 0x03]),
        DecodeError::TrailingBytes {
            packet: "PUBACK",
            extra: 1
        }
    );
    assert_eq!(
        decode_err(&[0x40, 0x03, 0x00, 0x01, 0x00]),
        DecodeError::TrailingBytes {
            packet: "PUBACK",
            extra: 1
        }
    );
    assert_eq!(
        decode_err(&[0x20, 0x03, 0x00, 0x00, 0x00]),
        DecodeError::TrailingBytes {
            packet: "CONNACK",
            extra: 1
        }
    );
}

/// A body that ends before its fields do is malformed.
#[test]
fn remaining_length_too_short_for_fields() {
    assert_eq!(
        decode_err(&[0x40, 0x01, 0x00]),
        DecodeError::Truncated {
            packet: "PUBACK",
            field: "packet identifier"
        }
    );
    assert_eq!(
        decode_err(&[0x20, 0x01, 0x00]),
        DecodeError::Truncated {
            packet: "CONNACK",
            field: "return code"
        }
    );
    // SUBSCRIBE: a filter without its requested QoS.
    assert_eq!(
        decode_err(&[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a']),
        DecodeError::Truncated {
            packet: "SUBSCRIBE",
            field: "requested QoS"
        }
    );
    // CONNECT ending inside the keep alive.
    assert_eq!(
        decode_err(&connect_bytes(&[0x02, 0x00])),
        DecodeError::Truncated {
            packet: "CONNECT",
            field: "keep alive"
        }
    );
}

/// CONNECT with bytes after its last field.
#[test]
fn connect_with_trailing_bytes() {
    let bytes = connect_bytes(&[0x02, 0x00, 0x3C, 0x00, 0x00, 0xAA]);
    assert_eq!(
        decode_err(&bytes),
        DecodeError::TrailingBytes {
            packet: "CONNECT",
            extra: 1
        }
    );
}

/// PINGREQ, PINGRESP and DISCONNECT have remaining length 0 (sections
/// 3.12.1, 3.13.1, 3.14.1), refused from the header alone.
#[test]
fn ping_and_disconnect_have_remaining_length_zero() {
    for (first, packet) in [(0xC0, "PINGREQ"), (0xD0, "PINGRESP"), (0xE0, "DISCONNECT")] {
        assert_eq!(
            decode_err(&[first, 0x01]),
            DecodeError::TrailingBytes { packet, extra: 1 }
        );
        assert_eq!(
            decode_err(&[first, 0x01, 0x00]),
            DecodeError::TrailingBytes { packet, extra: 1 }
        );
    }
    let error = decode_err(&[0xC0, 0xFF, 0xFF, 0xFF, 0x7F]);
    assert_eq!(
        error,
        DecodeError::TrailingBytes {
            packet: "PINGREQ",
            extra: 268_435_455
        }
    );
}

// ---- Strings -------------------------------------------------------------

/// [MQTT-1.5.3-1]: ill-formed UTF-8, including encoded surrogates and
/// overlong forms, is refused.
#[test]
fn mqtt_1_5_3_1_strings_are_well_formed_utf8() {
    for bad in [
        &[0xC3, 0x28][..],
        &[0xED, 0xA0, 0x80],
        &[0xC0, 0x80],
        &[0xFF],
    ] {
        let len = u8::try_from(bad.len()).expect("short");
        let mut rest = vec![0x02, 0x00, 0x3C, 0x00, len];
        rest.extend_from_slice(bad);
        assert_eq!(
            decode_err(&connect_bytes(&rest)),
            DecodeError::InvalidUtf8 {
                packet: "CONNECT",
                field: "client identifier"
            },
            "{bad:02x?}"
        );
    }
    // Topic name of a PUBLISH.
    assert_eq!(
        decode_err(&[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28]),
        DecodeError::InvalidUtf8 {
            packet: "PUBLISH",
            field: "topic name"
        }
    );
}

/// [MQTT-1.5.3-2]: strings must not contain U+0000.
#[test]
fn mqtt_1_5_3_2_strings_do_not_contain_null() {
    let bytes = connect_bytes(&[0x02, 0x00, 0x3C, 0x00, 0x03, b'a', 0x00, b'b']);
    assert_eq!(
        decode_err(&bytes),
        DecodeError::NullCharacter {
            packet: "CONNECT",
            field: "client identifier"
        }
    );
    assert_eq!(
        decode_err(&[0x30, 0x05, 0x00, 0x03, b'a', 0x00, b'b']),
        DecodeError::NullCharacter {
            packet: "PUBLISH",
            field: "topic name"
        }
    );
    assert_eq!(
        decode_err(&[0xA2, 0x05, 0x00, 0x01, 0x00, 0x01, 0x00]),
        DecodeError::NullCharacter {
            packet: "UNSUBSCRIBE",
            field: "topic filter"
        }
    );
}

/// [MQTT-1.5.3-3]: U+FEFF is a character like any other and is kept.
#[test]
fn mqtt_1_5_3_3_byte_order_mark_is_not_stripped() {
    let bytes = connect_bytes(&[0x02, 0x00, 0x3C, 0x00, 0x04, 0xEF, 0xBB, 0xBF, b'a']);
    let Packet::Connect(connect) = decode_ok(&bytes) else {
        panic!("not a CONNECT");
    };
    assert_eq!(connect.client_id, "\u{FEFF}a");
    let publish = decode_ok(&[0x30, 0x05, 0x00, 0x03, 0xEF, 0xBB, 0xBF]);
    let Packet::Publish(publish) = publish else {
        panic!("not a PUBLISH");
    };
    assert_eq!(publish.topic, "\u{FEFF}");
}

/// Section 1.5.3: a length prefix larger than the bytes left is malformed.
#[test]
fn string_length_prefix_beyond_remaining_length() {
    let bytes = connect_bytes(&[0x02, 0x00, 0x3C, 0x00, 0x10, b'a', b'b', b'c']);
    assert_eq!(
        decode_err(&bytes),
        DecodeError::Truncated {
            packet: "CONNECT",
            field: "client identifier"
        }
    );
    assert_eq!(
        decode_err(&[0x30, 0x03, 0xFF, 0xFF, b'a']),
        DecodeError::Truncated {
            packet: "PUBLISH",
            field: "topic name"
        }
    );
}

// ---- Packet identifiers --------------------------------------------------

/// [MQTT-2.3.1-1]: packet identifiers are non-zero, in every packet that has one.
#[test]
fn mqtt_2_3_1_1_packet_ids_are_non_zero() {
    let cases: [(&[u8], &str); 10] = [
        (&[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00], "PUBLISH"),
        (&[0x34, 0x05, 0x00, 0x01, b'a', 0x00, 0x00], "PUBLISH"),
        (&[0x40, 0x02, 0x00, 0x00], "PUBACK"),
        (&[0x50, 0x02, 0x00, 0x00], "PUBREC"),
        (&[0x62, 0x02, 0x00, 0x00], "PUBREL"),
        (&[0x70, 0x02, 0x00, 0x00], "PUBCOMP"),
        (
            &[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00],
            "SUBSCRIBE",
        ),
        (&[0x90, 0x03, 0x00, 0x00, 0x00], "SUBACK"),
        (&[0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, b'a'], "UNSUBSCRIBE"),
        (&[0xB0, 0x02, 0x00, 0x00], "UNSUBACK"),
    ];
    for (bytes, packet) in cases {
        assert_eq!(decode_err(bytes), DecodeError::ZeroPacketId { packet });
    }
}

// ---- PUBLISH ---------------------------------------------------------------

/// [MQTT-3.3.1-4]: a PUBLISH must not have both QoS bits set.
#[test]
fn mqtt_3_3_1_4_publish_qos_3() {
    assert_eq!(decode_err(&[0x36]), DecodeError::PublishQos3);
    assert_eq!(
        decode_err(&[0x3F, 0x05, 0x00, 0x01, b'a', 0x00, 0x01]),
        DecodeError::PublishQos3
    );
}

/// [MQTT-3.3.1-2]: DUP is 0 in every QoS 0 PUBLISH.
#[test]
fn mqtt_3_3_1_2_dup_with_qos_0() {
    assert_eq!(
        decode_err(&[0x38, 0x03, 0x00, 0x01, b'a']),
        DecodeError::PublishDupWithQos0
    );
    let Packet::Publish(publish) = decode_ok(&[0x3A, 0x05, 0x00, 0x01, b'a', 0x00, 0x01]) else {
        panic!("not a PUBLISH");
    };
    assert!(publish.dup);
    assert_eq!(publish.qos_pid, QosPid::AtLeastOnce(pid(1)));
}

/// [MQTT-3.3.2-1]: the topic name is a UTF-8 string, and a topic name is at
/// least one character long [MQTT-4.7.3-1].
#[test]
fn mqtt_3_3_2_1_publish_topic_name_is_a_non_empty_string() {
    assert_eq!(
        decode_err(&[0x30, 0x02, 0x00, 0x00]),
        DecodeError::InvalidTopicName(TopicError::Empty)
    );
    assert_eq!(
        decode_err(&[0x30, 0x01, 0x00]),
        DecodeError::Truncated {
            packet: "PUBLISH",
            field: "topic name"
        }
    );
}

/// [MQTT-3.3.2-2]: the topic name of a PUBLISH has no wildcards.
#[test]
fn mqtt_3_3_2_2_publish_topic_name_has_no_wildcards() {
    for topic in [&b"a/+"[..], b"#", b"a/#", b"+"] {
        let len = u8::try_from(topic.len()).expect("short");
        let mut bytes = vec![0x30, len + 2, 0x00, len];
        bytes.extend_from_slice(topic);
        assert_eq!(
            decode_err(&bytes),
            DecodeError::InvalidTopicName(TopicError::WildcardInName)
        );
    }
}

/// Section 3.3.2.2: a QoS 1 or 2 PUBLISH carries a packet identifier.
#[test]
fn publish_qos_1_and_2_carry_a_packet_id() {
    for first in [0x32, 0x34] {
        assert_eq!(
            decode_err(&[first, 0x03, 0x00, 0x01, b'a']),
            DecodeError::Truncated {
                packet: "PUBLISH",
                field: "packet identifier"
            }
        );
    }
}

/// Section 3.3.3: a zero-length payload is valid.
#[test]
fn publish_payload_may_be_empty() {
    let Packet::Publish(publish) = decode_ok(&[0x31, 0x03, 0x00, 0x01, b'a']) else {
        panic!("not a PUBLISH");
    };
    assert!(publish.payload.is_empty());
    assert!(publish.retain);
    assert_eq!(publish.qos_pid, QosPid::AtMostOnce);
}

// ---- CONNACK ---------------------------------------------------------------

/// Section 3.2.2.1: bits 7-1 of the acknowledge flags are reserved and must
/// be 0. (The statement has no number in MQTT 3.1.1; [MQTT-3.2.2-1] is the
/// rule that Session Present is 0 after a clean session.)
#[test]
fn section_3_2_2_1_connack_reserved_flags() {
    for flags in [0x02, 0x80, 0xFF] {
        assert_eq!(
            decode_err(&[0x20, 0x02, flags, 0x00]),
            DecodeError::InvalidConnAckFlags(flags)
        );
    }
}

/// Section 3.2.2.3: return codes 6-255 are reserved.
#[test]
fn connack_return_code_above_5() {
    for code in [6, 0x80, 0xFF] {
        assert_eq!(
            decode_err(&[0x20, 0x02, 0x00, code]),
            DecodeError::InvalidConnectReturnCode(code)
        );
    }
}

// ---- SUBSCRIBE, SUBACK, UNSUBSCRIBE ---------------------------------------

/// [MQTT-3.8.3-3]: a SUBSCRIBE has at least one filter.
#[test]
fn mqtt_3_8_3_3_subscribe_without_filters() {
    assert_eq!(
        decode_err(&[0x82, 0x02, 0x00, 0x01]),
        DecodeError::EmptySubscribe
    );
}

/// [MQTT-3.8.3-1], [MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-4.7.3-1]: filters
/// are validated.
#[test]
fn mqtt_3_8_3_1_subscribe_filters_are_valid() {
    for (filter, error) in [
        (&b"a#"[..], TopicError::MisplacedMultiLevelWildcard),
        (b"#/a", TopicError::MisplacedMultiLevelWildcard),
        (b"a+", TopicError::MisplacedSingleLevelWildcard),
        (b"", TopicError::Empty),
    ] {
        let len = u8::try_from(filter.len()).expect("short");
        // A valid first filter, then the bad one.
        let mut body = vec![0x00, 0x01, 0x00, 0x01, b'a', 0x01, 0x00, len];
        body.extend_from_slice(filter);
        body.push(0x00);
        assert_eq!(
            decode_err(&with_header(0x82, &body)),
            DecodeError::InvalidTopicFilter {
                packet: "SUBSCRIBE",
                error
            }
        );
    }
}

/// [MQTT-3-8.3-4]: the requested-QoS byte has its upper 6 bits 0 and a QoS
/// of 0, 1 or 2.
#[test]
fn mqtt_3_8_3_4_subscribe_requested_qos() {
    for byte in [0x03, 0x04, 0x81, 0xFC, 0xFF] {
        let error = decode_err(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', byte]);
        assert_eq!(error, DecodeError::InvalidSubscribeQos(byte));
        assert!(error.to_string().contains("[MQTT-3-8.3-4]"));
    }
    for (byte, qos) in [
        (0, QoS::AtMostOnce),
        (1, QoS::AtLeastOnce),
        (2, QoS::ExactlyOnce),
    ] {
        let Packet::Subscribe(subscribe) =
            decode_ok(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', byte])
        else {
            panic!("not a SUBSCRIBE");
        };
        assert_eq!(subscribe.filters[0].qos, qos);
    }
}

/// Section 3.9.3: SUBACK return codes are 0x00, 0x01, 0x02 and 0x80.
#[test]
fn suback_return_codes() {
    let Packet::SubAck(suback) = decode_ok(&[0x90, 0x06, 0x00, 0x01, 0x00, 0x01, 0x02, 0x80])
    else {
        panic!("not a SUBACK");
    };
    assert_eq!(
        suback.return_codes,
        [
            SubscribeReturnCode::Granted(QoS::AtMostOnce),
            SubscribeReturnCode::Granted(QoS::AtLeastOnce),
            SubscribeReturnCode::Granted(QoS::ExactlyOnce),
            SubscribeReturnCode::Failure,
        ]
    );
    for code in [0x03, 0x7F, 0x81, 0xFF] {
        assert_eq!(
            decode_err(&[0x90, 0x03, 0x00, 0x01, code]),
            DecodeError::InvalidSubAckReturnCode(code)
        );
    }
}

/// [MQTT-3.10.3-2]: an UNSUBSCRIBE has at least one filter.
#[test]
fn mqtt_3_10_3_2_unsubscribe_without_filters() {
    assert_eq!(
        decode_err(&[0xA2, 0x02, 0x00, 0x01]),
        DecodeError::EmptyUnsubscribe
    );
}

/// [MQTT-3.10.3-1], [MQTT-4.7.1-*]: UNSUBSCRIBE filters are validated.
#[test]
fn mqtt_3_10_3_1_unsubscribe_filters_are_valid() {
    assert_eq!(
        decode_err(&[0xA2, 0x06, 0x00, 0x01, 0x00, 0x02, b'a', b'#']),
        DecodeError::InvalidTopicFilter {
            packet: "UNSUBSCRIBE",
            error: TopicError::MisplacedMultiLevelWildcard
        }
    );
}

// ---- Consumption and size ------------------------------------------------

/// An error consumes nothing, even when more bytes follow.
#[test]
fn errors_consume_nothing() {
    let mut bytes = connect_bytes(&[0x01, 0x00, 0x3C, 0x00, 0x00]);
    bytes.extend_from_slice(&[0xC0, 0x00, 0xD0]);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, 1024),
        Err(DecodeError::ConnectReservedFlag)
    );
    assert_eq!(&buf[..], &bytes[..]);
    // And again: the error is stable.
    assert_eq!(
        decode(&mut buf, 1024),
        Err(DecodeError::ConnectReservedFlag)
    );
    assert_eq!(&buf[..], &bytes[..]);
}

/// max_packet_size bounds the whole packet and is enforced from the fixed
/// header alone, before the body arrives.
#[test]
fn oversized_packet_rejected_from_header_alone() {
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0x7F][..]);
    assert_eq!(
        decode(&mut buf, 1000),
        Err(DecodeError::PacketTooLarge {
            size: 3 + 16_383,
            max: 1000
        })
    );
    assert_eq!(buf.len(), 3);

    // Exactly max_packet_size is fine, one more is not.
    let publish = [0x30, 0x04, 0x00, 0x01, b'a', b'x'];
    let mut buf = BytesMut::from(&publish[..]);
    assert_eq!(
        decode(&mut buf, 5),
        Err(DecodeError::PacketTooLarge { size: 6, max: 5 })
    );
    assert!(matches!(decode(&mut buf, 6), Ok(Decoded::Packet(_))));
}
