//! Byte-exact examples of all fourteen packets, framing, and the encoder's
//! own errors.

use bytes::{Bytes, BytesMut};

use super::{assert_round_trip, decode_ok, encode_vec, pid};
use crate::codec::decode::decode_remaining_length;
use crate::codec::encode::{put_remaining_length, remaining_length_len};
use crate::codec::{
    DecodeError, Decoded, EncodeError, MAX_REMAINING_LENGTH, decode, encode, encoded_len,
};
use crate::packet::{
    ByteStr, ConnAck, Connect, ConnectReturnCode, LastWill, Packet, ProtocolVersion, Publish, QoS,
    QosPid, SubAck, Subscribe, SubscribeFilter, SubscribeReturnCode, Unsubscribe,
};

/// What `mosquitto_pub -t a -m b` sends: clean session, keep alive 60,
/// empty client id.
const MOSQUITTO_CONNECT: [u8; 14] = [
    0x10, 0x0c, 0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
];

fn minimal_connect() -> Packet {
    Packet::Connect(Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_session: true,
        keep_alive: 60,
        client_id: ByteStr::from_static(""),
        will: None,
        username: None,
        password: None,
    })
}

#[test]
fn connect_from_mosquitto_pub() {
    assert_round_trip(&minimal_connect(), &MOSQUITTO_CONNECT);
}

#[test]
fn connect_with_will_user_name_and_password() {
    let packet = Packet::Connect(Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_session: false,
        keep_alive: 0x0102,
        client_id: ByteStr::from_static("cid"),
        will: Some(LastWill {
            topic: ByteStr::from_static("w/t"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::ExactlyOnce,
            retain: true,
        }),
        username: Some(ByteStr::from_static("u")),
        password: Some(Bytes::from_static(&[0x00, 0xFF])),
    });
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x20,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04,
        // user name, password, will retain, will QoS 2, will flag; no clean session
        0b1111_0100,
        0x01, 0x02,
        0x00, 0x03, b'c', b'i', b'd',
        0x00, 0x03, b'w', b'/', b't',
        0x00, 0x03, b'b', b'y', b'e',
        0x00, 0x01, b'u',
        0x00, 0x02, 0x00, 0xFF,
    ];
    assert_round_trip(&packet, &bytes);
}

/// MQTT 3.1: protocol name "MQIsdp", level 3.
#[test]
fn connect_mqisdp_level_3() {
    let packet = Packet::Connect(Connect {
        protocol: ProtocolVersion::V3_1,
        clean_session: true,
        keep_alive: 10,
        client_id: ByteStr::from_static("c"),
        will: None,
        username: None,
        password: None,
    });
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x0F,
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03,
        0x02,
        0x00, 0x0A,
        0x00, 0x01, b'c',
    ];
    assert_round_trip(&packet, &bytes);
}

#[test]
fn connack() {
    assert_round_trip(
        &Packet::ConnAck(ConnAck {
            session_present: true,
            code: ConnectReturnCode::Accepted,
        }),
        &[0x20, 0x02, 0x01, 0x00],
    );
    assert_round_trip(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::NotAuthorized,
        }),
        &[0x20, 0x02, 0x00, 0x05],
    );
}

#[test]
fn publish_qos_0_1_2() {
    let qos0 = Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
        topic: ByteStr::from_static("a/b"),
        payload: Bytes::from_static(b"hi"),
    });
    assert_round_trip(
        &qos0,
        &[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'],
    );

    let qos1 = Packet::Publish(Publish {
        dup: true,
        qos_pid: QosPid::AtLeastOnce(pid(0x1234)),
        retain: true,
        topic: ByteStr::from_static("t"),
        payload: Bytes::from_static(b"x"),
    });
    assert_round_trip(&qos1, &[0x3B, 0x06, 0x00, 0x01, b't', 0x12, 0x34, b'x']);

    let qos2 = Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::ExactlyOnce(pid(1)),
        retain: false,
        topic: ByteStr::from_static("t"),
        payload: Bytes::new(),
    });
    assert_round_trip(&qos2, &[0x34, 0x05, 0x00, 0x01, b't', 0x00, 0x01]);
}

#[test]
fn acknowledgements() {
    assert_round_trip(&Packet::PubAck(pid(0x1234)), &[0x40, 0x02, 0x12, 0x34]);
    assert_round_trip(&Packet::PubRec(pid(2)), &[0x50, 0x02, 0x00, 0x02]);
    assert_round_trip(&Packet::PubRel(pid(3)), &[0x62, 0x02, 0x00, 0x03]);
    assert_round_trip(&Packet::PubComp(pid(0xFFFF)), &[0x70, 0x02, 0xFF, 0xFF]);
    assert_round_trip(&Packet::UnsubAck(pid(9)), &[0xB0, 0x02, 0x00, 0x09]);
}

#[test]
fn subscribe_and_suback() {
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: pid(10),
        filters: vec![
            SubscribeFilter {
                filter: ByteStr::from_static("a/+"),
                qos: QoS::AtLeastOnce,
            },
            SubscribeFilter {
                filter: ByteStr::from_static("#"),
                qos: QoS::ExactlyOnce,
            },
        ],
    });
    #[rustfmt::skip]
    let bytes = [
        0x82, 0x0C,
        0x00, 0x0A,
        0x00, 0x03, b'a', b'/', b'+', 0x01,
        0x00, 0x01, b'#', 0x02,
    ];
    assert_round_trip(&subscribe, &bytes);

    let suback = Packet::SubAck(SubAck {
        packet_id: pid(10),
        return_codes: vec![
            SubscribeReturnCode::Granted(QoS::AtLeastOnce),
            SubscribeReturnCode::Failure,
        ],
    });
    assert_round_trip(&suback, &[0x90, 0x04, 0x00, 0x0A, 0x01, 0x80]);
}

#[test]
fn unsubscribe() {
    let packet = Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(11),
        filters: vec![ByteStr::from_static("a/#"), ByteStr::from_static("b")],
    });
    #[rustfmt::skip]
    let bytes = [
        0xA2, 0x0A,
        0x00, 0x0B,
        0x00, 0x03, b'a', b'/', b'#',
        0x00, 0x01, b'b',
    ];
    assert_round_trip(&packet, &bytes);
}

#[test]
fn ping_and_disconnect() {
    assert_round_trip(&Packet::PingReq, &[0xC0, 0x00]);
    assert_round_trip(&Packet::PingResp, &[0xD0, 0x00]);
    assert_round_trip(&Packet::Disconnect, &[0xE0, 0x00]);
}

/// Fed one byte at a time, the decoder says how many more bytes it needs:
/// 1 while the fixed header is incomplete, then exactly the rest.
#[test]
fn incremental_decode_one_byte_at_a_time() {
    let mut buf = BytesMut::new();
    assert_eq!(
        decode(&mut buf, 1024),
        Ok(Decoded::Incomplete { needed: 1 })
    );
    for (index, &byte) in MOSQUITTO_CONNECT.iter().enumerate() {
        buf.extend_from_slice(&[byte]);
        let result = decode(&mut buf, 1024);
        let have = index + 1;
        if have < MOSQUITTO_CONNECT.len() {
            let needed = if have < 2 {
                1
            } else {
                MOSQUITTO_CONNECT.len() - have
            };
            assert_eq!(result, Ok(Decoded::Incomplete { needed }), "after {have}");
            assert_eq!(buf.len(), have);
        } else {
            assert_eq!(result, Ok(Decoded::Packet(minimal_connect())));
            assert!(buf.is_empty());
        }
    }

    // A two-byte remaining length: needed stays 1 until it is complete.
    let publish = Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
        topic: ByteStr::from_static("t"),
        payload: Bytes::from(vec![7u8; 200]),
    });
    let bytes = encode_vec(&publish);
    assert_eq!(bytes.len(), 3 + 203);
    let mut buf = BytesMut::new();
    for (index, &byte) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[byte]);
        let have = index + 1;
        let result = decode(&mut buf, 1024);
        if have < 3 {
            assert_eq!(result, Ok(Decoded::Incomplete { needed: 1 }));
        } else if have < bytes.len() {
            assert_eq!(
                result,
                Ok(Decoded::Incomplete {
                    needed: bytes.len() - have
                })
            );
        } else {
            assert_eq!(result, Ok(Decoded::Packet(publish.clone())));
        }
    }
}

#[test]
fn two_packets_in_one_buffer() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&MOSQUITTO_CONNECT);
    buf.extend_from_slice(&[0x40, 0x02, 0x00, 0x05, 0xC0]);
    assert_eq!(
        decode(&mut buf, 1024),
        Ok(Decoded::Packet(minimal_connect()))
    );
    assert_eq!(
        decode(&mut buf, 1024),
        Ok(Decoded::Packet(Packet::PubAck(pid(5))))
    );
    assert_eq!(
        decode(&mut buf, 1024),
        Ok(Decoded::Incomplete { needed: 1 })
    );
    assert_eq!(&buf[..], [0xC0]);
}

/// Decoded topics and payloads point into the read buffer.
#[test]
fn publish_payload_and_topic_share_the_buffer() {
    let bytes = [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&bytes);
    let start = buf.as_ptr() as usize;
    let end = start + buf.capacity();
    let Ok(Decoded::Packet(Packet::Publish(publish))) = decode(&mut buf, 1024) else {
        panic!("not a PUBLISH");
    };
    let within = |ptr: *const u8| (start..end).contains(&(ptr as usize));
    assert!(within(publish.payload.as_ptr()));
    assert!(within(publish.topic.as_bytes().as_ptr()));
    assert_eq!(publish.payload.as_ptr() as usize, start + 7);
}

#[test]
fn remaining_length_boundaries() {
    for (value, len) in [
        (0, 1),
        (127, 1),
        (128, 2),
        (16_383, 2),
        (16_384, 3),
        (2_097_151, 3),
        (2_097_152, 4),
        (MAX_REMAINING_LENGTH, 4),
    ] {
        let mut buf = BytesMut::new();
        put_remaining_length(&mut buf, value);
        assert_eq!(buf.len(), len, "{value}");
        assert_eq!(remaining_length_len(value), len, "{value}");
        assert_eq!(decode_remaining_length(&buf), Ok(Some((value, len))));
    }
    let mut buf = BytesMut::new();
    put_remaining_length(&mut buf, MAX_REMAINING_LENGTH);
    assert_eq!(&buf[..], [0xFF, 0xFF, 0xFF, 0x7F]);
    assert_eq!(
        decode_remaining_length(&[0xFF, 0xFF, 0xFF, 0xFF]),
        Err(DecodeError::MalformedRemainingLength)
    );
    assert_eq!(decode_remaining_length(&[0x80, 0x80, 0x80]), Ok(None));
}

#[test]
fn publish_header_grows_with_payload() {
    let publish = |len: usize| {
        Packet::Publish(Publish {
            dup: false,
            qos_pid: QosPid::AtLeastOnce(pid(1)),
            retain: false,
            topic: ByteStr::from_static("t"),
            payload: Bytes::from(vec![0u8; len]),
        })
    };
    // Remaining length = 2 + 1 + 2 + payload.
    assert_eq!(encoded_len(&publish(122)), Ok(1 + 1 + 127));
    assert_eq!(encoded_len(&publish(123)), Ok(1 + 2 + 128));
    let bytes = encode_vec(&publish(123));
    assert_eq!(&bytes[..3], [0x32, 0x80, 0x01]);
    assert_eq!(decode_ok(&bytes), publish(123));
}

#[test]
fn encode_appends() {
    let mut buf = BytesMut::from(&b"xy"[..]);
    encode(&Packet::PingResp, &mut buf).expect("encodable");
    encode(&Packet::PubAck(pid(1)), &mut buf).expect("encodable");
    assert_eq!(&buf[..], [b'x', b'y', 0xD0, 0x00, 0x40, 0x02, 0x00, 0x01]);
}

/// Section 1.5.3: strings are at most 65535 bytes.
#[test]
fn encode_string_too_long() {
    let long = ByteStr::from("a".repeat(65_536));
    let packet = Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
        topic: long.clone(),
        payload: Bytes::new(),
    });
    let error = EncodeError::StringTooLong {
        field: "topic name",
        len: 65_536,
    };
    assert_eq!(encoded_len(&packet), Err(error.clone()));
    let mut buf = BytesMut::from(&b"keep"[..]);
    assert_eq!(encode(&packet, &mut buf), Err(error));
    assert_eq!(&buf[..], b"keep");

    let Packet::Connect(mut connect) = minimal_connect() else {
        unreachable!()
    };
    connect.username = Some(ByteStr::from_static("u"));
    connect.password = Some(Bytes::from(vec![0u8; 65_536]));
    assert_eq!(
        encoded_len(&Packet::Connect(connect)),
        Err(EncodeError::StringTooLong {
            field: "password",
            len: 65_536
        })
    );

    // 65535 is fine.
    let packet = Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(1),
        filters: vec![ByteStr::from("a".repeat(65_535))],
    });
    assert_eq!(encoded_len(&packet), Ok(1 + 3 + 2 + 2 + 65_535));
}

/// Section 2.2.3: the remaining length is at most 268 435 455.
#[test]
fn encode_packet_too_large() {
    // 4097 filters of 65535 bytes sharing one allocation: 268 517 377 bytes
    // of remaining length without allocating them.
    let filter = ByteStr::from("a".repeat(65_535));
    let packet = Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(1),
        filters: vec![filter; 4097],
    });
    let remaining_length = 2 + 4097 * (2 + 65_535);
    assert!(remaining_length > MAX_REMAINING_LENGTH);
    assert_eq!(
        encoded_len(&packet),
        Err(EncodeError::PacketTooLarge { remaining_length })
    );
    let mut buf = BytesMut::new();
    assert_eq!(
        encode(&packet, &mut buf),
        Err(EncodeError::PacketTooLarge { remaining_length })
    );
    assert!(buf.is_empty());
}

#[test]
fn encode_refuses_structurally_invalid_packets() {
    assert_eq!(
        encoded_len(&Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![],
        })),
        Err(EncodeError::NoTopicFilters {
            packet: "SUBSCRIBE"
        })
    );
    assert_eq!(
        encoded_len(&Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(1),
            filters: vec![],
        })),
        Err(EncodeError::NoTopicFilters {
            packet: "UNSUBSCRIBE"
        })
    );
    assert_eq!(
        encoded_len(&Packet::Publish(Publish {
            dup: true,
            qos_pid: QosPid::AtMostOnce,
            retain: false,
            topic: ByteStr::from_static("t"),
            payload: Bytes::new(),
        })),
        Err(EncodeError::DupWithQos0)
    );
    let Packet::Connect(mut connect) = minimal_connect() else {
        unreachable!()
    };
    connect.password = Some(Bytes::from_static(b"p"));
    assert_eq!(
        encoded_len(&Packet::Connect(connect)),
        Err(EncodeError::PasswordWithoutUsername)
    );
}
