//! Byte-level tests: what a polite client never sends, and the exact
//! packets the broker answers with. After each connection the broker closes,
//! another client checks that the broker still serves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{QUIET, RawClient, RawPacket, TestBroker, assert_serves, wire};

/// Connects `client_id`, sends `bytes`, and returns what the broker sent
/// before closing the connection (failing the test if it stays open).
fn after_connect_closes(broker: &TestBroker, client_id: &str, bytes: &[u8]) -> Vec<RawPacket> {
    let mut client = RawClient::connect(broker.addr(), client_id);
    client.send_lossy(bytes);
    client.expect_closed()
}

/// Sends `bytes` as the first thing on a new connection; returns what the
/// broker sent before closing it.
fn first_bytes_close(broker: &TestBroker, bytes: &[u8]) -> Vec<RawPacket> {
    let mut client = RawClient::open(broker.addr());
    client.send_lossy(bytes);
    client.expect_closed()
}

/// [MQTT-3.1.0-1]: the first packet must be CONNECT.
#[test]
fn first_packet_must_be_connect() {
    let broker = TestBroker::start();
    for first in [
        wire::pingreq(),
        wire::subscribe(1, &[("a", 0)]),
        wire::publish("a", 0, 0, false, b"x"),
        wire::disconnect(),
    ] {
        assert_eq!(first_bytes_close(&broker, &first), vec![], "{first:02x?}");
    }
    assert_serves(broker.addr());
    assert_eq!(broker.metric(|m| &m.protocol_errors), 4);
}

/// [MQTT-3.1.0-2]: a second CONNECT is a protocol error (and publishes the will).
#[test]
fn second_connect_closes() {
    let broker = TestBroker::start();
    let mut watcher = RawClient::connect(broker.addr(), "watcher");
    watcher.subscribe(1, &[("second/will", 0)]);
    let (mut client, _) = RawClient::connect_with(
        broker.addr(),
        &wire::Connect::new("twice").will("second/will", b"w", 0, false),
    );
    client.send(&wire::Connect::new("twice").encode());
    assert_eq!(client.expect_closed(), vec![], "no second CONNACK");
    assert_eq!(watcher.recv_publish().payload, b"w");
    assert_serves(broker.addr());
}

/// A protocol name other than `MQTT` (or `MQIsdp` for 3.1) closes the connection.
#[test]
fn bad_protocol_name_closes() {
    let broker = TestBroker::start();
    for name in [&b"MQTX"[..], b"mqtt", b"MQIsdp\0", b""] {
        let mut connect = wire::Connect::new("bad-name");
        connect.protocol_name = name.to_vec();
        assert_eq!(
            first_bytes_close(&broker, &connect.encode()),
            vec![],
            "{name:?}"
        );
    }
    assert_serves(broker.addr());
}

/// [MQTT-3.1.2-2]: an unsupported protocol level gets CONNACK 0x01, then close.
#[test]
fn unsupported_protocol_level_gets_connack_1() {
    let broker = TestBroker::start();
    // A real MQTT 5 CONNECT: level 5 and an (empty) properties section
    // after the keep-alive, which a 3.1.1 decoder would misread.
    let mut body = wire::field(b"MQTT");
    body.extend([5, 0b10, 0, 60, 0]);
    body.extend(wire::field(b"v5-client"));
    let v5 = wire::packet(0x10, &body);
    let connack = RawPacket {
        first: 0x20,
        body: vec![0, 1],
    };
    assert_eq!(first_bytes_close(&broker, &v5), vec![connack.clone()]);

    for (name, level) in [(&b"MQTT"[..], 3u8), (b"MQTT", 6), (b"MQIsdp", 4)] {
        let mut connect = wire::Connect::new("level");
        connect.protocol_name = name.to_vec();
        connect.level = level;
        assert_eq!(
            first_bytes_close(&broker, &connect.encode()),
            vec![connack.clone()],
            "{name:?} level {level}"
        );
    }
    assert_serves(broker.addr());
}

/// MQTT 3.1 (`MQIsdp`, level 3) clients are served.
#[test]
fn mqtt_3_1_connect_is_accepted() {
    let broker = TestBroker::start();
    let mut connect = wire::Connect::new("old-client");
    connect.protocol_name = b"MQIsdp".to_vec();
    connect.level = 3;
    let (mut client, connack) = RawClient::connect_with(broker.addr(), &connect);
    assert_eq!(connack, (false, 0));
    assert_eq!(client.subscribe(1, &[("v31/t", 1)]), vec![1]);
    client.send(&wire::publish("v31/t", 1, 9, false, b"three-one"));
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let packet = client.recv();
        kinds.push(packet.kind());
        if packet.kind() == 3 {
            let publish = packet.publish();
            assert_eq!(
                (publish.payload.as_slice(), publish.qos),
                (&b"three-one"[..], 1)
            );
            client.send(&wire::puback(publish.packet_id.unwrap()));
        }
    }
    kinds.sort();
    assert_eq!(kinds, vec![3, 4], "a PUBLISH and a PUBACK");
    client.send(&wire::disconnect());
    assert_eq!(client.expect_closed(), vec![]);
}

/// Fixed-header flags other than table 2.2's close the connection, as do
/// the reserved packet types.
#[test]
fn wrong_reserved_flags_close() {
    let broker = TestBroker::start();
    let mut subscribe = wire::subscribe(1, &[("a", 0)]);
    subscribe[0] = 0x80; // must be 0x82 [MQTT-3.8.1-1]
    let mut unsubscribe = wire::unsubscribe(1, &["a"]);
    unsubscribe[0] = 0xA0; // must be 0xA2 [MQTT-3.10.1-1]
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("SUBSCRIBE flags 0", subscribe),
        ("UNSUBSCRIBE flags 0", unsubscribe),
        ("PUBREL flags 0", vec![0x60, 0x02, 0x00, 0x01]),
        ("PUBACK flags 2", vec![0x42, 0x02, 0x00, 0x01]),
        ("PINGREQ flags 1", vec![0xC1, 0x00]),
        ("DISCONNECT flags 8", vec![0xE8, 0x00]),
        ("PUBLISH QoS 3", wire::packet(0x36, &[0, 1, b'a', 0, 1])),
        ("PUBLISH QoS 0 with DUP", wire::packet(0x38, &[0, 1, b'a'])),
        ("packet type 0", vec![0x00, 0x00]),
        ("packet type 15", vec![0xF0, 0x00]),
    ];
    for (what, bytes) in &cases {
        assert_eq!(
            after_connect_closes(&broker, "flags", bytes),
            vec![],
            "{what}"
        );
    }
    assert_eq!(broker.metric(|m| &m.protocol_errors), cases.len() as u64);
    assert_serves(broker.addr());
}

/// [MQTT-3.3.2-2]: a PUBLISH topic with a wildcard closes the connection.
#[test]
fn wildcard_in_publish_topic_closes() {
    let broker = TestBroker::start();
    let mut watcher = RawClient::connect(broker.addr(), "wild-watch");
    watcher.subscribe(1, &[("#", 0)]);
    for topic in ["a/+", "a/#", "#", "+", "a+b"] {
        let bytes = wire::publish(topic, 1, 1, false, b"x");
        assert_eq!(
            after_connect_closes(&broker, "wild", &bytes),
            vec![],
            "{topic}"
        );
    }
    watcher.expect_silence(QUIET);
    assert_serves(broker.addr());
}

/// Malformed packets and forbidden values close the connection.
#[test]
fn malformed_packets_close() {
    let broker = TestBroker::with(|c| c.mqtt.server.max_topic_levels = 4);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "remaining length of 5 bytes",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        ),
        (
            "PUBLISH QoS 1 with packet id 0",
            wire::publish("a", 1, 0, false, b"x"),
        ),
        (
            "PUBLISH topic not UTF-8",
            wire::packet(0x30, &[0, 2, 0xC3, 0x28]),
        ),
        (
            "PUBLISH topic with U+0000",
            wire::publish("a\0b", 0, 0, false, b""),
        ),
        ("PUBLISH empty topic", wire::publish("", 0, 0, false, b"x")),
        (
            "PUBLISH beyond max-topic-levels",
            wire::publish("a/b/c/d/e", 0, 0, false, b"x"),
        ),
        ("SUBSCRIBE without filters", wire::packet(0x82, &[0, 1])),
        ("SUBSCRIBE requested QoS 3", wire::subscribe(1, &[("a", 3)])),
        ("SUBSCRIBE bad filter", wire::subscribe(1, &[("a/#/b", 0)])),
        ("UNSUBSCRIBE without filters", wire::packet(0xA2, &[0, 1])),
        ("PINGREQ with a body", vec![0xC0, 0x01, 0x00]),
        ("CONNACK from a client", vec![0x20, 0x02, 0x00, 0x00]),
        ("SUBACK from a client", vec![0x90, 0x03, 0x00, 0x01, 0x00]),
        ("PINGRESP from a client", vec![0xD0, 0x00]),
    ];
    for (what, bytes) in &cases {
        assert_eq!(
            after_connect_closes(&broker, "malformed", bytes),
            vec![],
            "{what}"
        );
    }
    let connects: Vec<(&str, Vec<u8>)> = vec![
        ("CONNECT reserved flag", {
            let mut c = wire::Connect::new("r").encode();
            c[9] |= 1; // 0x10 len 0 4 M Q T T 4 flags
            c
        }),
        (
            "CONNECT will QoS 3",
            wire::Connect::new("w").will("t", b"x", 3, false).encode(),
        ),
        (
            "CONNECT will topic with wildcard",
            wire::Connect::new("w").will("t/#", b"x", 0, false).encode(),
        ),
        ("CONNECT password without user name", {
            let mut c = wire::Connect::new("p").encode();
            c[9] |= 0x40;
            c.extend(wire::field(b"pw"));
            c[1] += 4;
            c
        }),
        ("CONNECT truncated", wire::packet(0x10, &[0, 4, b'M', b'Q'])),
    ];
    for (what, bytes) in &connects {
        assert_eq!(first_bytes_close(&broker, bytes), vec![], "{what}");
    }
    assert_serves(broker.addr());
}

/// A packet over max-packet-size closes the connection as soon as its
/// length is known, before its body arrives.
#[test]
fn oversized_packet_closes_before_its_body() {
    let broker = TestBroker::with(|c| c.mqtt.server.max_packet_size = 1024);
    let mut client = RawClient::connect(broker.addr(), "too-big");
    // Only the fixed header of a 5000-byte PUBLISH.
    let mut header = vec![0x30];
    header.extend(wire::remaining_length(5000));
    client.send(&header);
    assert_eq!(client.expect_closed(), vec![]);

    // An oversized CONNECT is refused too.
    let mut connect = wire::Connect::new(&"c".repeat(2000)).encode();
    assert_eq!(first_bytes_close(&broker, &connect), vec![]);
    connect.clear();

    // Exactly at the limit is fine: 3 + 2 + 1 + 1018 = 1024.
    let mut client = RawClient::connect(broker.addr(), "just-fits");
    client.subscribe(1, &[("f", 0)]);
    client.send(&wire::publish("f", 0, 0, false, &[9u8; 1018]));
    assert_eq!(client.recv_publish().payload.len(), 1018);
    assert_serves(broker.addr());
}

/// Packets split into single bytes, and many packets in one write, are decoded.
#[test]
fn packets_are_reassembled_across_writes() {
    let broker = TestBroker::start();
    let mut client = RawClient::open(broker.addr());
    let mut bytes = wire::Connect::new("bytewise").encode();
    bytes.extend(wire::subscribe(1, &[("bytes/t", 1)]));
    bytes.extend(wire::publish("bytes/t", 1, 2, false, &[0xAB; 300]));
    for byte in &bytes {
        client.send(std::slice::from_ref(byte));
    }
    assert_eq!(client.recv().connack(), (false, 0));
    assert_eq!(client.recv().suback(), (1, vec![1]));
    let mut publish = None;
    let mut puback = None;
    for _ in 0..2 {
        let packet = client.recv();
        match packet.kind() {
            3 => publish = Some(packet.publish()),
            4 => puback = Some(packet.packet_id()),
            _ => panic!("unexpected {packet:?}"),
        }
    }
    assert_eq!(puback, Some(2));
    let publish = publish.unwrap();
    assert_eq!(publish.payload, vec![0xAB; 300]);
    client.send(&wire::puback(publish.packet_id.unwrap()));

    // Ten QoS 1 publishes in one write: ten PUBACKs, in order [MQTT-4.6.0-2].
    let mut burst = Vec::new();
    for id in 10..20u16 {
        burst.extend(wire::publish("bytes/none", 1, id, false, b"x"));
    }
    client.send(&burst);
    let acks: Vec<u16> = (0..10).map(|_| client.recv().packet_id()).collect();
    assert_eq!(acks, (10..20).collect::<Vec<u16>>());
    client.ping();
}

/// QoS 2 inbound: a resent PUBLISH (same id, before PUBREL) is acknowledged
/// again but routed once [MQTT-4.3.3-2]; PUBREL gets PUBCOMP.
#[test]
fn qos2_inbound_is_routed_exactly_once() {
    let broker = TestBroker::start();
    let mut sub = RawClient::connect(broker.addr(), "q2-sub");
    sub.subscribe(1, &[("q2/t", 2)]);
    let mut publisher = RawClient::connect(broker.addr(), "q2-pub");

    publisher.send(&wire::publish("q2/t", 2, 7, false, b"once"));
    let pubrec = publisher.recv();
    assert_eq!((pubrec.first, pubrec.packet_id()), (0x50, 7));
    let mut dup = wire::publish("q2/t", 2, 7, false, b"once");
    dup[0] |= 0b1000;
    publisher.send(&dup);
    let pubrec = publisher.recv();
    assert_eq!((pubrec.first, pubrec.packet_id()), (0x50, 7));
    publisher.send(&wire::pubrel(7));
    let pubcomp = publisher.recv();
    assert_eq!((pubcomp.first, pubcomp.packet_id()), (0x70, 7));

    // The subscriber completes the flow for its single copy.
    let message = sub.recv_publish();
    assert_eq!((message.payload.as_slice(), message.qos), (&b"once"[..], 2));
    let id = message.packet_id.unwrap();
    sub.send(&wire::pubrec(id));
    let pubrel = sub.recv();
    assert_eq!((pubrel.first, pubrel.packet_id()), (0x62, id));
    sub.send(&wire::pubcomp(id));
    sub.expect_silence(QUIET);

    // After PUBREL the id is free: the same id is a new message.
    publisher.send(&wire::publish("q2/t", 2, 7, false, b"again"));
    assert_eq!(publisher.recv().first, 0x50);
    assert_eq!(sub.recv_publish().payload, b"again");

    // PUBREL for an unknown id is still answered [MQTT-4.3.3-2].
    publisher.send(&wire::pubrel(99));
    let pubcomp = publisher.recv();
    assert_eq!((pubcomp.first, pubcomp.packet_id()), (0x70, 99));
}

/// A resumed session resends unacknowledged PUBLISH with DUP set and the
/// same id, and a PUBREL for a QoS 2 message already received [MQTT-4.4.0-1].
#[test]
fn resumed_session_resends_unacknowledged_messages() {
    let broker = TestBroker::start();
    let connect = wire::Connect::new("resend").clean(false);
    let (mut sub, connack) = RawClient::connect_with(broker.addr(), &connect);
    assert_eq!(connack, (false, 0));
    sub.subscribe(1, &[("resend/1", 1), ("resend/2", 2)]);
    let mut publisher = RawClient::connect(broker.addr(), "resend-pub");
    publisher.send(&wire::publish("resend/1", 1, 1, false, b"one"));
    publisher.send(&wire::publish("resend/2", 2, 2, false, b"two"));

    let first = sub.recv_publish();
    let second = sub.recv_publish();
    assert_eq!((first.payload.as_slice(), first.dup), (&b"one"[..], false));
    assert_eq!((second.payload.as_slice(), second.qos), (&b"two"[..], 2));
    // Receive the QoS 2 message (PUBREC) but ack nothing else, then vanish.
    sub.send(&wire::pubrec(second.packet_id.unwrap()));
    let pubrel = sub.recv();
    assert_eq!(pubrel.first, 0x62);
    drop(sub);
    broker.wait_connections(1);

    let (mut sub, connack) = RawClient::connect_with(broker.addr(), &connect);
    assert_eq!(connack, (true, 0));
    let again = sub.recv_publish();
    assert_eq!(
        (again.payload.as_slice(), again.dup, again.packet_id),
        (&b"one"[..], true, first.packet_id)
    );
    let pubrel = sub.recv();
    assert_eq!(
        (pubrel.first, pubrel.packet_id()),
        (0x62, second.packet_id.unwrap())
    );
    sub.send(&wire::puback(first.packet_id.unwrap()));
    sub.send(&wire::pubcomp(second.packet_id.unwrap()));
    sub.expect_silence(QUIET);
}

/// max-inflight: at most that many QoS 1 messages await a PUBACK; each
/// PUBACK lets the next one go.
#[test]
fn max_inflight_limits_unacknowledged_messages() {
    let broker = TestBroker::with(|c| c.mqtt.server.max_inflight = 2);
    let mut sub = RawClient::connect(broker.addr(), "window");
    sub.subscribe(1, &[("window/t", 1)]);
    let mut publisher = RawClient::connect(broker.addr(), "window-pub");
    for i in 0..5u8 {
        publisher.send(&wire::publish("window/t", 1, u16::from(i) + 1, false, &[i]));
        assert_eq!(publisher.recv().kind(), 4, "PUBACK");
    }
    let mut in_flight: std::collections::VecDeque<u16> = std::collections::VecDeque::new();
    for expected in 0..2u8 {
        let message = sub.recv_publish();
        assert_eq!(message.payload, vec![expected]);
        in_flight.push_back(message.packet_id.unwrap());
    }
    sub.expect_silence(QUIET);
    for expected in 2..5u8 {
        sub.send(&wire::puback(in_flight.pop_front().unwrap()));
        let message = sub.recv_publish();
        assert_eq!(message.payload, vec![expected]);
        in_flight.push_back(message.packet_id.unwrap());
        sub.expect_silence(Duration::from_millis(50));
    }
    assert_eq!(in_flight.len(), 2);
}

/// UNSUBSCRIBE gets UNSUBACK and stops the messages.
#[test]
fn unsubscribe_stops_delivery() {
    let broker = TestBroker::start();
    let mut client = RawClient::connect(broker.addr(), "unsub");
    client.subscribe(1, &[("unsub/a", 0), ("unsub/b", 0)]);
    client.send(&wire::unsubscribe(2, &["unsub/a", "not/subscribed"]));
    let unsuback = client.recv();
    assert_eq!((unsuback.first, unsuback.packet_id()), (0xB0, 2));
    client.send(&wire::publish("unsub/a", 0, 0, false, b"gone"));
    client.send(&wire::publish("unsub/b", 0, 0, false, b"kept"));
    assert_eq!(client.recv_publish().topic, "unsub/b");
    client.expect_silence(QUIET);
}

/// A client may send packets right after CONNECT without waiting for the
/// CONNACK; they are handled once the connection is accepted.
#[test]
fn packets_pipelined_after_connect_are_handled() {
    let broker = TestBroker::start();
    let mut client = RawClient::open(broker.addr());
    let mut bytes = wire::Connect::new("pipelined").encode();
    bytes.extend(wire::subscribe(1, &[("pipe/t", 1)]));
    bytes.extend(wire::publish("pipe/t", 1, 2, false, b"self"));
    bytes.extend(wire::pingreq());
    client.send(&bytes);
    assert_eq!(client.recv().connack(), (false, 0));
    // SUBSCRIBE was handled before the PUBLISH that followed it, so the
    // client gets its own message.
    let mut kinds = Vec::new();
    for _ in 0..4 {
        let packet = client.recv();
        match packet.kind() {
            9 => assert_eq!(packet.suback(), (1, vec![1])),
            3 => assert_eq!(packet.publish().payload, b"self"),
            4 => assert_eq!(packet.packet_id(), 2),
            _ => {}
        }
        kinds.push(packet.kind());
    }
    kinds.sort();
    assert_eq!(
        kinds,
        vec![3, 4, 9, 13],
        "SUBACK, PUBLISH, PUBACK and PINGRESP"
    );
    client.expect_silence(QUIET);
}

/// The QoS 2 packet ids a persistent session has acknowledged with PUBREC
/// survive a reconnect: the resent PUBLISH is not routed twice.
#[test]
fn qos2_inbound_state_survives_a_reconnect() {
    let broker = TestBroker::start();
    let mut sub = RawClient::connect(broker.addr(), "q2r-sub");
    sub.subscribe(1, &[("q2r/t", 0)]);
    let connect = wire::Connect::new("q2r-pub").clean(false);
    let (mut publisher, _) = RawClient::connect_with(broker.addr(), &connect);
    publisher.send(&wire::publish("q2r/t", 2, 5, false, b"exactly once"));
    assert_eq!(publisher.recv().first, 0x50, "PUBREC");
    drop(publisher);
    broker.wait_connections(1);

    let (mut publisher, connack) = RawClient::connect_with(broker.addr(), &connect);
    assert_eq!(connack, (true, 0));
    let mut dup = wire::publish("q2r/t", 2, 5, false, b"exactly once");
    dup[0] |= 0b1000;
    publisher.send(&dup);
    let pubrec = publisher.recv();
    assert_eq!((pubrec.first, pubrec.packet_id()), (0x50, 5));
    publisher.send(&wire::pubrel(5));
    assert_eq!(publisher.recv().first, 0x70, "PUBCOMP");
    assert_eq!(sub.recv_publish().payload, b"exactly once");
    sub.expect_silence(QUIET);
}

/// Any packet from the client restarts its keep-alive timer: a client with
/// keep-alive 1 s that pings every 400 ms stays connected past 1.5 s.
#[test]
fn keep_alive_is_kept_by_traffic() {
    let broker = TestBroker::start();
    let (mut client, _) =
        RawClient::connect_with(broker.addr(), &wire::Connect::new("pinger").keep_alive(1));
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(400));
        client.ping();
    }
    // Then silence ends it.
    assert_eq!(client.expect_closed_within(Duration::from_secs(4)), vec![]);
}

/// The queue of an offline persistent session is bounded by
/// max-queued-messages: drop-oldest keeps the newest messages.
#[test]
fn offline_queue_overflow_drops_the_oldest() {
    let broker = TestBroker::with(|c| c.mqtt.server.max_queued_messages = 3);
    assert_eq!(offline_overflow(&broker), vec![*b"3", *b"4", *b"5"]);
    assert_eq!(broker.metric(|m| &m.dropped_queue_full), 2);
}

/// ... and drop-newest keeps the oldest.
#[test]
fn offline_queue_overflow_drops_the_newest() {
    let broker = TestBroker::with(|c| {
        c.mqtt.server.max_queued_messages = 3;
        c.mqtt.server.queue_overflow = easy_mqtt_server::config::QueueOverflow::DropNewest;
    });
    assert_eq!(offline_overflow(&broker), vec![*b"1", *b"2", *b"3"]);
    assert_eq!(broker.metric(|m| &m.dropped_queue_full), 2);
}

/// Five QoS 1 messages for an offline session; returns what it gets back.
fn offline_overflow(broker: &TestBroker) -> Vec<[u8; 1]> {
    let connect = wire::Connect::new("overflow").clean(false);
    let (mut sub, _) = RawClient::connect_with(broker.addr(), &connect);
    sub.subscribe(1, &[("overflow/t", 1)]);
    sub.send(&wire::disconnect());
    sub.expect_closed();
    let mut publisher = RawClient::connect(broker.addr(), "overflow-pub");
    for i in 1..=5u8 {
        publisher.send(&wire::publish(
            "overflow/t",
            1,
            u16::from(i),
            false,
            &[b'0' + i],
        ));
        assert_eq!(publisher.recv().packet_id(), u16::from(i));
    }
    let (mut sub, connack) = RawClient::connect_with(broker.addr(), &connect);
    assert_eq!(connack, (true, 0));
    let mut got = Vec::new();
    for _ in 0..3 {
        let message = sub.recv_publish();
        sub.send(&wire::puback(message.packet_id.unwrap()));
        got.push([message.payload[0]]);
    }
    sub.expect_silence(QUIET);
    got
}

/// QoS 1 messages for a persistent session are never lost, even when they
/// arrive while its connection is ending: a subscriber drops its connection
/// over and over while a publisher keeps publishing; in the end it has
/// every message at least once.
#[test]
fn persistent_session_loses_nothing_while_its_connection_drops() {
    const TOTAL: u32 = 10_000;
    let broker = TestBroker::with(|c| {
        c.mqtt.server.max_queued_messages = 100_000;
        c.mqtt.server.max_inflight = 1000;
    });
    let connect = wire::Connect::new("flaky").clean(false);
    let (mut sub, _) = RawClient::connect_with(broker.addr(), &connect);
    sub.subscribe(1, &[("flaky/t", 1)]);
    drop(sub);

    let addr = broker.addr();
    let publisher = std::thread::spawn(move || {
        let mut publisher = RawClient::connect(addr, "flaky-pub");
        for seq in 1..=TOTAL {
            publisher.send(&wire::publish(
                "flaky/t",
                1,
                (seq % 60000 + 1) as u16,
                false,
                &seq.to_be_bytes(),
            ));
            if seq % 64 == 0 {
                // Stay close to the broker's pace.
                publisher.ping_drain();
            }
        }
        publisher.ping_drain();
    });
    let mut seen = std::collections::BTreeSet::new();
    let mut cycles = 0;
    while !publisher.is_finished() {
        let (mut sub, connack) = RawClient::connect_with(broker.addr(), &connect);
        assert_eq!(connack.1, 0);
        // Take a few messages, ack them, and vanish without DISCONNECT.
        for _ in 0..20 {
            match sub.read(Duration::from_millis(50)) {
                common::Recv::Packet(p) if p.kind() == 3 => {
                    let m = p.publish();
                    seen.insert(u32::from_be_bytes(m.payload[..4].try_into().unwrap()));
                    sub.send(&wire::puback(m.packet_id.unwrap()));
                }
                _ => break,
            }
        }
        drop(sub);
        cycles += 1;
    }
    publisher.join().unwrap();
    let (mut sub, _) = RawClient::connect_with(broker.addr(), &connect);
    while seen.len() < TOTAL as usize {
        match sub.read(common::WAIT) {
            common::Recv::Packet(p) if p.kind() == 3 => {
                let m = p.publish();
                seen.insert(u32::from_be_bytes(m.payload[..4].try_into().unwrap()));
                sub.send(&wire::puback(m.packet_id.unwrap()));
            }
            common::Recv::Packet(_) => {}
            _ => break,
        }
    }
    let missing: Vec<u32> = (1..=TOTAL).filter(|s| !seen.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "{} cycles; lost {} messages: {:?}",
        cycles,
        missing.len(),
        &missing[..missing.len().min(20)]
    );
}
