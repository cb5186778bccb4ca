//! Receiver rules of CONNECT (section 3.1); each test names its statement.

use super::{connect_bytes, decode_err, decode_ok, with_header};
use crate::codec::DecodeError;
use crate::packet::Packet;
use crate::topic::TopicError;

/// [MQTT-3.1.2-1]: a protocol name other than "MQTT" (or "MQIsdp").
#[test]
fn mqtt_3_1_2_1_invalid_protocol_name() {
    for name in [
        &b"MQTX"[..],
        b"mqtt",
        b"MQIsdP",
        b"",
        b"MQTTT",
        &[0xFF, 0xFE],
    ] {
        let len = u8::try_from(name.len()).expect("short");
        let mut body = vec![0x00, len];
        body.extend_from_slice(name);
        body.extend_from_slice(&[0x04, 0x02, 0x00, 0x3C, 0x00, 0x00]);
        assert_eq!(
            decode_err(&with_header(0x10, &body)),
            DecodeError::InvalidProtocolName,
            "{name:02x?}"
        );
    }
}

/// [MQTT-3.1.2-2]: a known protocol name with an unsupported level gets its
/// own error, because the server answers it with CONNACK 0x01.
#[test]
fn mqtt_3_1_2_2_unsupported_protocol_level() {
    // An MQTT 5 CONNECT (with an empty property block) is refused at the level.
    let v5 = with_header(
        0x10,
        &[
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x00, 0x00, 0x00,
        ],
    );
    let error = decode_err(&v5);
    assert_eq!(error, DecodeError::UnsupportedProtocolLevel(5));
    assert!(error.is_unsupported_protocol_level());
    assert!(error.to_string().contains("CONNACK return code 1"));
    assert!(error.to_string().contains("[MQTT-3.1.2-2]"));

    for level in [0, 3, 6, 255] {
        let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level];
        body.extend_from_slice(&[0x02, 0x00, 0x3C, 0x00, 0x00]);
        assert_eq!(
            decode_err(&with_header(0x10, &body)),
            DecodeError::UnsupportedProtocolLevel(level)
        );
    }
    let mut body = b"\x00\x06MQIsdp\x04".to_vec();
    body.extend_from_slice(&[0x02, 0x00, 0x3C, 0x00, 0x00]);
    assert_eq!(
        decode_err(&with_header(0x10, &body)),
        DecodeError::UnsupportedProtocolLevel(4)
    );
}

/// [MQTT-3.1.2-3]: the reserved connect flag is 0.
#[test]
fn mqtt_3_1_2_3_connect_reserved_flag() {
    assert_eq!(
        decode_err(&connect_bytes(&[0x03, 0x00, 0x3C, 0x00, 0x00])),
        DecodeError::ConnectReservedFlag
    );
}

/// [MQTT-3.1.2-11], [MQTT-3.1.2-13]: will QoS is 0 without a will.
#[test]
fn mqtt_3_1_2_13_will_qos_without_will_flag() {
    for flags in [0b0000_1010, 0b0001_0010, 0b0001_1010] {
        assert_eq!(
            decode_err(&connect_bytes(&[flags, 0x00, 0x3C, 0x00, 0x00])),
            DecodeError::WillQosWithoutWill
        );
    }
}

/// [MQTT-3.1.2-11], [MQTT-3.1.2-15]: will retain is 0 without a will.
#[test]
fn mqtt_3_1_2_15_will_retain_without_will_flag() {
    assert_eq!(
        decode_err(&connect_bytes(&[0b0010_0010, 0x00, 0x3C, 0x00, 0x00])),
        DecodeError::WillRetainWithoutWill
    );
}

/// [MQTT-3.1.2-14]: will QoS 3 is refused.
#[test]
fn mqtt_3_1_2_14_will_qos_3() {
    let rest = [
        0b0001_1110,
        0x00,
        0x3C,
        0x00,
        0x00,
        0x00,
        0x01,
        b't',
        0x00,
        0x00,
    ];
    assert_eq!(
        decode_err(&connect_bytes(&rest)),
        DecodeError::InvalidWillQos
    );
}

/// [MQTT-3.1.2-9]: with the will flag set, will topic and will message follow.
#[test]
fn mqtt_3_1_2_9_will_topic_and_message_present() {
    assert_eq!(
        decode_err(&connect_bytes(&[0b0000_0110, 0x00, 0x3C, 0x00, 0x00])),
        DecodeError::Truncated {
            packet: "CONNECT",
            field: "will topic"
        }
    );
    assert_eq!(
        decode_err(&connect_bytes(&[
            0b0000_0110,
            0x00,
            0x3C,
            0x00,
            0x00,
            0x00,
            0x01,
            b't'
        ])),
        DecodeError::Truncated {
            packet: "CONNECT",
            field: "will message"
        }
    );
}

/// [MQTT-3.1.3-10]: the will topic is a UTF-8 string, and a topic name
/// (no wildcards, [MQTT-3.3.2-2]; not empty, [MQTT-4.7.3-1]).
#[test]
fn mqtt_3_1_3_10_will_topic_is_a_topic_name() {
    for (topic, error) in [
        (&b"a/#"[..], TopicError::WildcardInName),
        (b"", TopicError::Empty),
    ] {
        let len = u8::try_from(topic.len()).expect("short");
        let mut rest = vec![0b0000_0110, 0x00, 0x3C, 0x00, 0x00, 0x00, len];
        rest.extend_from_slice(topic);
        rest.extend_from_slice(&[0x00, 0x00]);
        assert_eq!(
            decode_err(&connect_bytes(&rest)),
            DecodeError::InvalidWillTopic(error)
        );
    }
}

/// [MQTT-3.1.2-19]: with the user name flag set, a user name follows.
#[test]
fn mqtt_3_1_2_19_user_name_present() {
    assert_eq!(
        decode_err(&connect_bytes(&[0b1000_0010, 0x00, 0x3C, 0x00, 0x00])),
        DecodeError::Truncated {
            packet: "CONNECT",
            field: "user name"
        }
    );
}

/// [MQTT-3.1.2-21]: with the password flag set, a password follows.
#[test]
fn mqtt_3_1_2_21_password_present() {
    assert_eq!(
        decode_err(&connect_bytes(&[
            0b1100_0010,
            0x00,
            0x3C,
            0x00,
            0x00,
            0x00,
            0x01,
            b'u'
        ])),
        DecodeError::Truncated {
            packet: "CONNECT",
            field: "password"
        }
    );
}

/// [MQTT-3.1.2-22]: no password without a user name.
#[test]
fn mqtt_3_1_2_22_password_without_user_name() {
    let rest = [0b0100_0010, 0x00, 0x3C, 0x00, 0x00, 0x00, 0x01, b'p'];
    assert_eq!(
        decode_err(&connect_bytes(&rest)),
        DecodeError::PasswordWithoutUsername
    );
}

/// [MQTT-3.1.3-6]: a zero-byte client id is for the server to judge, not the
/// codec; section 3.1.3.5: the password is binary data, not UTF-8.
#[test]
fn mqtt_3_1_3_6_empty_client_id_and_binary_password() {
    let rest = [
        0b1100_0000,
        0x00,
        0x00,
        0x00,
        0x00,
        0x00,
        0x01,
        b'u',
        0x00,
        0x02,
        0xFF,
        0x00,
    ];
    let Packet::Connect(connect) = decode_ok(&connect_bytes(&rest)) else {
        panic!("not a CONNECT");
    };
    assert_eq!(connect.client_id, "");
    assert!(!connect.clean_session);
    assert_eq!(connect.username.as_deref(), Some("u"));
    assert_eq!(connect.password.as_deref(), Some(&[0xFF, 0x00][..]));
}
