#![allow(clippy::unwrap_used, clippy::expect_used)]

//! The connection state machine driven from both sides in memory: a scripted
//! client speaks bytes to a broker-side `Connection`, time is a virtual clock,
//! and the link can lose what is in flight and reconnect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use easy_mqtt_core::codec::{self, Decoded};
use easy_mqtt_core::session::{
    CloseReason, Connection, ConnectionConfig, Delivery, Event, Message, ProtocolError,
    SessionLimits, SessionState,
};
use easy_mqtt_core::{
    ByteStr, ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PacketId, ProtocolVersion,
    Publish, QoS, QosPid,
};

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero")
}

/// The broker side of one link plus the client's view of it.
struct Link {
    conn: Connection,
    now: Instant,
    /// Bytes the broker has sent that the client has not read yet.
    to_client: BytesMut,
    events: Vec<Event>,
}

impl Link {
    fn new(config: ConnectionConfig, now: Instant) -> Link {
        Link {
            conn: Connection::new(config, now),
            now,
            to_client: BytesMut::new(),
            events: Vec::new(),
        }
    }

    /// The client sends packets; the broker handles them and we drain its
    /// outputs (events and bytes), as a driver would after every input.
    fn client_sends(&mut self, packets: &[Packet]) {
        let mut wire = BytesMut::new();
        for p in packets {
            codec::encode(p, &mut wire).expect("encodable");
        }
        self.conn.handle_input(&mut wire, self.now);
        assert!(wire.is_empty(), "all input consumed");
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(e) = self.conn.poll_event() {
            self.events.push(e);
        }
        while self.conn.poll_transmit(&mut self.to_client, usize::MAX) > 0 {}
    }

    /// What the client receives, decoded.
    fn client_receives(&mut self) -> Vec<Packet> {
        self.drain();
        let mut out = Vec::new();
        while !self.to_client.is_empty() {
            match codec::decode(&mut self.to_client, usize::MAX).expect("valid output") {
                Decoded::Packet(p) => out.push(p),
                Decoded::Incomplete { .. } => panic!("broker wrote a partial packet"),
            }
        }
        out
    }

    /// The link drops: whatever the broker sent and the client did not read is lost.
    fn lose_link(&mut self) -> Option<SessionState> {
        self.to_client.clear();
        self.conn.close(CloseReason::TransportClosed, self.now);
        self.drain();
        self.conn.take_session()
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.conn.handle_timeout(self.now);
        self.drain();
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

fn connect_packet(client_id: &str, clean: bool, keep_alive: u16, will: Option<LastWill>) -> Packet {
    Packet::Connect(Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_session: clean,
        keep_alive,
        client_id: ByteStr::from(client_id),
        will,
        username: None,
        password: None,
    })
}

fn config(max_inflight: u16) -> ConnectionConfig {
    ConnectionConfig {
        session: SessionLimits {
            max_inflight,
            ..SessionLimits::default()
        },
        ..ConnectionConfig::default()
    }
}

/// Connects and accepts with `session`; returns the link after CONNACK was read.
fn established(
    config: ConnectionConfig,
    now: Instant,
    session: Option<SessionState>,
) -> (Link, Vec<Packet>) {
    let mut link = Link::new(config, now);
    link.client_sends(&[connect_packet("c1", session.is_none(), 0, None)]);
    let events = link.take_events();
    assert!(
        matches!(events.as_slice(), [Event::Connect(_)]),
        "{events:?}"
    );
    let present = session.is_some();
    let session = session.unwrap_or_else(|| SessionState::new(config.session));
    link.conn.accept(session, present, None, now);
    let mut received = link.client_receives();
    assert_eq!(
        received.remove(0),
        Packet::ConnAck(ConnAck {
            session_present: present,
            code: ConnectReturnCode::Accepted
        })
    );
    (link, received)
}

fn message(topic: &str, payload: &'static [u8], qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: ByteStr::from(topic),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
    })
}

fn publishes(packets: &[Packet]) -> Vec<(Option<u16>, bool, QoS, Bytes)> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((
                p.packet_id().map(|id| id.get()),
                p.dup,
                p.qos(),
                p.payload.clone(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn qos1_outbound_is_resent_with_dup_after_loss_and_reconnect() {
    let t0 = Instant::now();
    let (mut link, _) = established(config(10), t0, None);
    for payload in [&b"one"[..], b"two", b"three"] {
        link.conn.deliver(Delivery::routed(
            message("t", payload, QoS::AtLeastOnce),
            QoS::AtLeastOnce,
        ));
    }
    let first = publishes(&link.client_receives());
    assert_eq!(
        first.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
        vec![(Some(1), false), (Some(2), false), (Some(3), false)]
    );
    // The client acknowledges only the first before the link drops.
    link.client_sends(&[Packet::PubAck(pid(1))]);
    let session = link.lose_link().expect("session detaches");
    assert_eq!(session.inflight_len(), 2);

    // [MQTT-4.4.0-1]: on reconnect, unacknowledged PUBLISH packets are resent with DUP.
    let (mut link, resent) = established(config(10), t0 + Duration::from_secs(5), Some(session));
    assert_eq!(
        publishes(&resent),
        vec![
            (Some(2), true, QoS::AtLeastOnce, Bytes::from_static(b"two")),
            (
                Some(3),
                true,
                QoS::AtLeastOnce,
                Bytes::from_static(b"three")
            ),
        ]
    );
    link.client_sends(&[Packet::PubAck(pid(2)), Packet::PubAck(pid(3))]);
    assert_eq!(link.conn.session().map(|s| s.inflight_len()), Some(0));
}

#[test]
fn qos2_outbound_resends_pubrel_not_publish_after_pubrec() {
    let t0 = Instant::now();
    let (mut link, _) = established(config(10), t0, None);
    link.conn.deliver(Delivery::routed(
        message("t", b"a", QoS::ExactlyOnce),
        QoS::ExactlyOnce,
    ));
    link.conn.deliver(Delivery::routed(
        message("t", b"b", QoS::ExactlyOnce),
        QoS::ExactlyOnce,
    ));
    assert_eq!(publishes(&link.client_receives()).len(), 2);
    // PUBREC for the first: the broker answers PUBREL, which is lost.
    link.client_sends(&[Packet::PubRec(pid(1))]);
    let session = link.lose_link().expect("session");

    let (mut link, resent) = established(config(10), t0, Some(session));
    // Message 1 is past PUBREC: only PUBREL is resent [MQTT-4.3.3-1]; message 2 is resent with DUP.
    assert_eq!(resent[0], Packet::PubRel(pid(1)));
    assert_eq!(
        publishes(&resent[1..]),
        vec![(Some(2), true, QoS::ExactlyOnce, Bytes::from_static(b"b"))]
    );
    link.client_sends(&[Packet::PubComp(pid(1)), Packet::PubRec(pid(2))]);
    assert_eq!(link.client_receives(), vec![Packet::PubRel(pid(2))]);
    link.client_sends(&[Packet::PubComp(pid(2))]);
    assert_eq!(link.conn.session().map(|s| s.inflight_len()), Some(0));
}

fn inbound_publish(id: u16, dup: bool, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos_pid: QosPid::ExactlyOnce(pid(id)),
        retain: false,
        topic: ByteStr::from("in"),
        payload: Bytes::from_static(payload),
    })
}

fn routed_count(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Publish(_)))
        .count()
}

#[test]
fn qos2_inbound_is_routed_once_across_retransmission_and_reconnect() {
    let t0 = Instant::now();
    let (mut link, _) = established(config(10), t0, None);
    link.client_sends(&[inbound_publish(7, false, b"x")]);
    assert_eq!(routed_count(&link.take_events()), 1);
    // No PUBREC until the server has routed it.
    assert_eq!(link.client_receives(), vec![]);
    link.conn.complete_publish(pid(7));
    assert_eq!(link.client_receives(), vec![Packet::PubRec(pid(7))]);

    // The PUBREC was lost; the client resends with DUP: acknowledged, not routed [MQTT-4.3.3-2].
    link.client_sends(&[inbound_publish(7, true, b"x")]);
    assert_eq!(routed_count(&link.take_events()), 0);
    assert_eq!(link.client_receives(), vec![Packet::PubRec(pid(7))]);

    // Even across a reconnect of a persistent session.
    let session = link.lose_link().expect("session");
    let (mut link, _) = established(config(10), t0, Some(session));
    link.client_sends(&[inbound_publish(7, true, b"x")]);
    assert_eq!(routed_count(&link.take_events()), 0);
    assert_eq!(link.client_receives(), vec![Packet::PubRec(pid(7))]);

    // PUBREL ends the flow; the id may then carry a new message.
    link.client_sends(&[Packet::PubRel(pid(7))]);
    assert_eq!(link.client_receives(), vec![Packet::PubComp(pid(7))]);
    link.client_sends(&[inbound_publish(7, false, b"new")]);
    assert_eq!(routed_count(&link.take_events()), 1);
}

#[test]
fn qos2_inbound_duplicate_while_routing_is_not_routed_twice() {
    let (mut link, _) = established(config(10), Instant::now(), None);
    link.client_sends(&[
        inbound_publish(3, false, b"x"),
        inbound_publish(3, true, b"x"),
    ]);
    assert_eq!(routed_count(&link.take_events()), 1);
    link.conn.complete_publish(pid(3));
    assert_eq!(link.client_receives(), vec![Packet::PubRec(pid(3))]);
}

#[test]
fn failed_qos2_route_lets_the_retransmission_through() {
    let t0 = Instant::now();
    let (mut link, _) = established(config(10), t0, None);
    link.client_sends(&[inbound_publish(9, false, b"x")]);
    assert_eq!(routed_count(&link.take_events()), 1);
    link.conn.fail_publish(
        pid(9),
        CloseReason::ProtocolError(ProtocolError::UnexpectedPacket("test")),
        t0,
    );
    assert_eq!(link.client_receives(), vec![], "nothing acknowledged");
    link.drain();
    let session = link.conn.take_session().expect("session");
    let (mut link, _) = established(config(10), t0, Some(session));
    link.client_sends(&[inbound_publish(9, true, b"x")]);
    assert_eq!(routed_count(&link.take_events()), 1);
}

#[test]
fn mqtt_4_6_0_2_pubacks_leave_in_arrival_order() {
    let (mut link, _) = established(config(10), Instant::now(), None);
    let qos1 = |id| {
        Packet::Publish(Publish {
            dup: false,
            qos_pid: QosPid::AtLeastOnce(pid(id)),
            retain: false,
            topic: ByteStr::from("in"),
            payload: Bytes::new(),
        })
    };
    link.client_sends(&[qos1(1), qos1(2)]);
    link.conn.complete_publish(pid(2));
    assert_eq!(link.client_receives(), vec![]);
    link.conn.complete_publish(pid(1));
    assert_eq!(
        link.client_receives(),
        vec![Packet::PubAck(pid(1)), Packet::PubAck(pid(2))]
    );
}

#[test]
fn mqtt_3_1_2_24_keep_alive_expires_at_one_and_a_half_times() {
    let t0 = Instant::now();
    let will = LastWill {
        topic: ByteStr::from("will"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
    };
    let mut link = Link::new(ConnectionConfig::default(), t0);
    link.client_sends(&[connect_packet("c1", true, 10, Some(will.clone()))]);
    link.take_events();
    link.conn.accept(
        SessionState::new(SessionLimits::default()),
        false,
        Some(will.clone()),
        t0,
    );
    assert_eq!(link.conn.poll_timeout(), Some(t0 + Duration::from_secs(15)));

    // A PINGREQ at 10 s pushes the deadline to 25 s.
    link.advance(Duration::from_secs(10));
    link.client_sends(&[Packet::PingReq]);
    assert_eq!(link.client_receives().last(), Some(&Packet::PingResp));
    assert_eq!(link.conn.poll_timeout(), Some(t0 + Duration::from_secs(25)));
    link.advance(Duration::from_millis(14_999));
    assert!(!link.conn.is_closed());
    link.advance(Duration::from_millis(1));
    assert!(link.conn.is_closed());
    assert_eq!(
        link.take_events(),
        vec![Event::Closed {
            reason: CloseReason::KeepAliveTimeout,
            will: Some(will)
        }]
    );
}

#[test]
fn keep_alive_bounds_from_config() {
    let t0 = Instant::now();
    let config = ConnectionConfig {
        min_keep_alive: 30,
        max_keep_alive: 600,
        ..ConnectionConfig::default()
    };
    // Below the minimum (here 0 = off) is held to the minimum.
    let mut link = Link::new(config, t0);
    link.client_sends(&[connect_packet("c1", true, 0, None)]);
    link.conn
        .accept(SessionState::new(config.session), false, None, t0);
    assert_eq!(link.conn.keep_alive(), Some(Duration::from_secs(30)));
    // Above the maximum is refused with CONNACK 2.
    let mut link = Link::new(config, t0);
    link.client_sends(&[connect_packet("c1", true, 601, None)]);
    assert_eq!(
        link.client_receives(),
        vec![Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::IdentifierRejected
        })]
    );
    assert!(link.conn.is_closed());
}

#[test]
fn connect_timeout_closes_a_silent_connection() {
    let t0 = Instant::now();
    let mut link = Link::new(ConnectionConfig::default(), t0);
    assert_eq!(link.conn.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    link.advance(Duration::from_secs(10));
    assert_eq!(
        link.take_events(),
        vec![Event::Closed {
            reason: CloseReason::ConnectTimeout,
            will: None
        }]
    );
}

#[test]
fn inflight_window_full_holds_messages_in_order() {
    let (mut link, _) = established(config(2), Instant::now(), None);
    for i in 0..5u8 {
        let payload: &'static [u8] = [b"0", b"1", b"2", b"3", b"4"][usize::from(i)];
        link.conn.deliver(Delivery::routed(
            message("t", payload, QoS::AtLeastOnce),
            QoS::AtLeastOnce,
        ));
    }
    let sent = publishes(&link.client_receives());
    assert_eq!(sent.len(), 2, "only the window leaves");
    assert_eq!(link.conn.session().map(|s| s.queued()), Some(3));
    link.client_sends(&[Packet::PubAck(pid(1))]);
    let next = publishes(&link.client_receives());
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].3, Bytes::from_static(b"2"));
}

#[test]
fn packet_ids_wrap_around_without_zero() {
    let (mut link, _) = established(config(1), Instant::now(), None);
    let mut last = 0u16;
    let mut seen_wrap = false;
    for _ in 0..70_000u32 {
        link.conn.deliver(Delivery::routed(
            message("t", b"", QoS::AtLeastOnce),
            QoS::AtLeastOnce,
        ));
        let sent = publishes(&link.client_receives());
        assert_eq!(sent.len(), 1);
        let id = sent[0].0.expect("QoS 1 has an id");
        assert_ne!(id, 0);
        if id < last {
            seen_wrap = true;
            assert_eq!((last, id), (u16::MAX, 1));
        }
        last = id;
        link.client_sends(&[Packet::PubAck(pid(id))]);
    }
    assert!(seen_wrap);
}

#[test]
fn mqtt_3_3_5_1_qos_is_downgraded_to_the_granted_qos() {
    let (mut link, _) = established(config(10), Instant::now(), None);
    link.conn.deliver(Delivery::routed(
        message("t", b"x", QoS::ExactlyOnce),
        QoS::AtLeastOnce,
    ));
    link.conn.deliver(Delivery::routed(
        message("t", b"y", QoS::AtLeastOnce),
        QoS::AtMostOnce,
    ));
    let sent = publishes(&link.client_receives());
    assert_eq!(sent[0].2, QoS::AtLeastOnce);
    assert_eq!(sent[1].2, QoS::AtMostOnce);
    assert_eq!(sent[1].0, None);
}

#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    let mut link = Link::new(ConnectionConfig::default(), Instant::now());
    link.client_sends(&[Packet::PingReq]);
    assert!(matches!(
        link.take_events().as_slice(),
        [Event::Closed {
            reason: CloseReason::ProtocolError(ProtocolError::FirstPacketNotConnect("PINGREQ")),
            will: None
        }]
    ));
}

#[test]
fn mqtt_3_1_0_2_second_connect_closes_and_publishes_the_will() {
    let t0 = Instant::now();
    let will = LastWill {
        topic: ByteStr::from("w"),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: true,
    };
    let mut link = Link::new(ConnectionConfig::default(), t0);
    link.client_sends(&[connect_packet("c1", true, 0, Some(will.clone()))]);
    link.take_events();
    link.conn.accept(
        SessionState::new(SessionLimits::default()),
        false,
        Some(will.clone()),
        t0,
    );
    link.client_sends(&[connect_packet("c1", true, 0, None)]);
    assert_eq!(
        link.take_events(),
        vec![Event::Closed {
            reason: CloseReason::ProtocolError(ProtocolError::SecondConnect),
            will: Some(will)
        }]
    );
}

#[test]
fn mqtt_3_1_2_10_disconnect_discards_the_will() {
    let t0 = Instant::now();
    let will = LastWill {
        topic: ByteStr::from("w"),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: false,
    };
    let mut link = Link::new(ConnectionConfig::default(), t0);
    link.client_sends(&[connect_packet("c1", true, 0, Some(will.clone()))]);
    link.conn.accept(
        SessionState::new(SessionLimits::default()),
        false,
        Some(will),
        t0,
    );
    link.take_events();
    link.client_sends(&[Packet::Disconnect]);
    assert_eq!(
        link.take_events(),
        vec![Event::Closed {
            reason: CloseReason::ClientDisconnect,
            will: None
        }]
    );
}

#[test]
fn mqtt_3_1_3_8_empty_client_id_needs_clean_session() {
    let mut link = Link::new(ConnectionConfig::default(), Instant::now());
    link.client_sends(&[connect_packet("", false, 0, None)]);
    assert_eq!(
        link.client_receives(),
        vec![Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::IdentifierRejected
        })]
    );
    assert!(link.conn.is_closed());
    // With clean session it goes to the server, which assigns an id.
    let mut link = Link::new(ConnectionConfig::default(), Instant::now());
    link.client_sends(&[connect_packet("", true, 0, None)]);
    assert!(matches!(link.take_events().as_slice(), [Event::Connect(_)]));
}

#[test]
fn mqtt_3_1_2_2_unsupported_protocol_level_gets_connack_1() {
    let mut link = Link::new(ConnectionConfig::default(), Instant::now());
    // CONNECT, protocol "MQTT", level 5, clean session, keep-alive 60, client id "c".
    let mut wire = BytesMut::from(
        &[
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 1, b'c',
        ][..],
    );
    link.conn.handle_input(&mut wire, link.now);
    assert_eq!(
        link.client_receives(),
        vec![Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::UnacceptableProtocolVersion
        })]
    );
    assert!(link.conn.is_closed());
}

#[test]
fn input_pauses_while_the_server_decides_on_connect() {
    let t0 = Instant::now();
    let mut link = Link::new(ConnectionConfig::default(), t0);
    let mut wire = BytesMut::new();
    codec::encode(&connect_packet("c1", true, 0, None), &mut wire).expect("encode");
    codec::encode(&Packet::PingReq, &mut wire).expect("encode");
    link.conn.handle_input(&mut wire, t0);
    assert!(!link.conn.wants_input());
    assert!(!wire.is_empty(), "the PINGREQ waits for the decision");
    link.conn
        .accept(SessionState::new(SessionLimits::default()), false, None, t0);
    link.conn.handle_input(&mut wire, t0);
    assert_eq!(
        link.client_receives(),
        vec![
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::Accepted
            }),
            Packet::PingResp
        ]
    );
}

#[test]
fn malformed_packet_after_connect_closes_with_will() {
    let t0 = Instant::now();
    let will = LastWill {
        topic: ByteStr::from("w"),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: false,
    };
    let mut link = Link::new(ConnectionConfig::default(), t0);
    link.client_sends(&[connect_packet("c1", true, 0, Some(will.clone()))]);
    link.conn.accept(
        SessionState::new(SessionLimits::default()),
        false,
        Some(will.clone()),
        t0,
    );
    link.take_events();
    // PUBLISH with a wildcard in its topic [MQTT-3.3.2-2].
    let mut wire = BytesMut::from(&[0x30, 5, 0, 3, b'a', b'/', b'#'][..]);
    link.conn.handle_input(&mut wire, t0);
    link.drain();
    let events = link.take_events();
    assert!(
        matches!(
            events.as_slice(),
            [Event::Closed {
                reason: CloseReason::ProtocolError(ProtocolError::Decode(_)),
                will: Some(_)
            }]
        ),
        "{events:?}"
    );
}
