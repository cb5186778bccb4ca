//! Crash tests with third-party clients: the real `easy-mqtt` binary on a
//! real `redis-server`, killed with SIGKILL and started again on the same
//! storage, with rumqttc and Debian's `mosquitto_pub`/`mosquitto_sub` on
//! both sides. Whatever the broker acknowledged must reach the persistent
//! subscriber after the restart, byte for byte, QoS 2 exactly once.
//! (persistence.rs holds the same scenarios with raw MQTT clients, and the
//! kill between PUBREL and PUBCOMP, which no third-party client here can
//! hold still: see `sigkill_mid_qos2_handshake_with_rumqttc`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../storage-kvrocks/tests/common/mod.rs"]
#[allow(unused)]
mod redis_common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    BrokerProcess, Client, Event, Incoming, MosquittoSub, Outgoing, Publish, QoS,
    SubscribeReasonCode, TempFile, WAIT, free_port, kvrocks_binary_config, mosquitto_pub_ok,
    options,
};
use redis_common::Server;

/// A redis-server, and the real binary on it on a free port.
fn broker_on_redis() -> (Server, TempFile, BrokerProcess) {
    let redis = Server::standalone();
    let port = free_port();
    let config = kvrocks_binary_config(&redis.node(), port);
    let broker = BrokerProcess::start(&config, port);
    (redis, config, broker)
}

/// A rumqttc client with a persistent session (clean session = 0).
async fn persistent(addr: SocketAddr, client_id: &str, manual_acks: bool) -> (Client, bool) {
    let mut options = options(addr, client_id);
    options.set_clean_session(false);
    options.set_manual_acks(manual_acks);
    let (client, connack) = Client::connect_opts(options).await;
    (client, connack.session_present)
}

/// Publishes one message with `mosquitto_pub -f` (so any bytes go through);
/// it exits 0 only once the PUBACK (QoS 1) or PUBCOMP (QoS 2) came.
fn mosquitto_publish(port: u16, topic: &str, qos: u8, payload: &[u8]) {
    let file = TempFile::new("payload.bin", payload);
    let qos = qos.to_string();
    mosquitto_pub_ok(
        port,
        &["-t", topic, "-q", &qos, "-f", file.path.to_str().unwrap()],
    );
}

/// Payload number `i`: text, UTF-8 beyond ASCII, NUL and 0xFF bytes, of a
/// length that varies with `i`.
fn payload(tag: &str, i: usize) -> Vec<u8> {
    let mut bytes = format!("{tag}-{i}-é€😀").into_bytes();
    bytes.extend([0x00, 0xFF, 0x80, b'\n', 0xC3]);
    bytes.extend((0..(i * 37) % 300).map(|b| b as u8));
    bytes
}

/// The `HEXISTS` of one packet id in a session's stored window.
fn in_stored_window(redis: &mut redis::Connection, client_id: &str, packet_id: u16) -> bool {
    redis::cmd("HEXISTS")
        .arg(format!("emq:{{c:{client_id}}}:w"))
        .arg(packet_id.to_be_bytes().as_slice())
        .query(redis)
        .unwrap()
}

/// The number of messages a session holds in storage (queued or in flight).
fn stored_messages(redis: &mut redis::Connection, client_id: &str) -> u64 {
    redis::cmd("SCARD")
        .arg(format!("emq:{{c:{client_id}}}:h"))
        .query(redis)
        .unwrap()
}

/// Waits until `condition` holds on storage (an outcome the broker writes
/// after the packet exchange that the client saw). Sleeps on the runtime,
/// so that the rumqttc event loops keep running.
async fn wait_stored(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// a. Messages acknowledged to mosquitto_pub while the persistent rumqttc
/// subscriber is away survive a SIGKILL: the subscriber, back on a new
/// broker process, finds its session and gets every message, QoS 2 once,
/// QoS 1 at least once, at the QoS of its subscription, byte-exact.
#[tokio::test]
async fn sigkill_keeps_messages_acked_to_mosquitto_pub_for_rumqttc() {
    const N: usize = 6;
    let (_redis, config, broker) = broker_on_redis();
    let port = broker.port();

    let (mut sub, present) = persistent(broker.addr, "cc-a-sub", false).await;
    assert!(!present, "a new session");
    let codes = sub
        .subscribe_many(&[("cc/a/q1", QoS::AtLeastOnce), ("cc/a/q2", QoS::ExactlyOnce)])
        .await;
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Success(QoS::ExactlyOnce)
        ]
    );
    sub.disconnect().await;

    // Both publication QoS to both subscriptions: delivered at the lower
    // of the two (QoS 2 only for QoS 2 to the QoS 2 subscription).
    let mut expected: Vec<(String, u8, Vec<u8>)> = Vec::new();
    for i in 0..N {
        for (topic, pub_qos, sub_qos) in [
            ("cc/a/q1", 1u8, 1u8),
            ("cc/a/q2", 2, 2),
            ("cc/a/q1", 2, 1),
            ("cc/a/q2", 1, 1),
        ] {
            let body = payload(&format!("{topic}@{pub_qos}"), i);
            mosquitto_publish(port, topic, pub_qos, &body);
            expected.push((topic.to_owned(), sub_qos, body));
        }
    }

    broker.kill9();
    let broker = BrokerProcess::start(&config, port);

    let (mut sub, present) = persistent(broker.addr, "cc-a-sub", false).await;
    assert!(present, "session present after SIGKILL and restart");
    let mut got: Vec<Publish> = Vec::new();
    let mut counts: HashMap<Vec<u8>, usize> = HashMap::new();
    while counts.len() < expected.len() {
        let publish = sub.recv().await;
        *counts.entry(publish.payload.to_vec()).or_default() += 1;
        got.push(publish);
    }
    // Nothing more: no QoS 2 duplicate, nothing unexpected.
    loop {
        match sub.next_event(Duration::from_millis(800)).await {
            None => break,
            Some(Ok(Event::Incoming(Incoming::Publish(publish)))) => {
                *counts.entry(publish.payload.to_vec()).or_default() += 1;
                got.push(publish);
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => panic!("subscriber connection closed: {error}"),
        }
    }
    for (topic, qos, body) in &expected {
        let copies: Vec<&Publish> = got.iter().filter(|p| p.payload[..] == body[..]).collect();
        assert!(
            !copies.is_empty(),
            "acknowledged message lost: {topic} {}",
            String::from_utf8_lossy(body)
        );
        for copy in &copies {
            assert_eq!(copy.topic, *topic);
            assert_eq!(copy.qos as u8, *qos, "delivered at the subscription's QoS");
        }
        if *qos == 2 {
            assert_eq!(copies.len(), 1, "QoS 2 exactly once: {topic}");
        }
    }
    assert!(
        got.iter()
            .all(|p| expected.iter().any(|e| e.2[..] == p.payload[..])),
        "only the published messages arrive"
    );
    // Per topic, the first copies arrive in publication order.
    for topic in ["cc/a/q1", "cc/a/q2"] {
        let mut first_seen: Vec<&[u8]> = Vec::new();
        for p in got.iter().filter(|p| p.topic == topic) {
            if !first_seen.contains(&&p.payload[..]) {
                first_seen.push(&p.payload[..]);
            }
        }
        let published: Vec<&[u8]> = expected
            .iter()
            .filter(|e| e.0 == topic)
            .map(|e| &e.2[..])
            .collect();
        assert_eq!(first_seen, published, "order on {topic}");
    }
}

/// b. A rumqttc publisher streams QoS 1 messages; the broker is killed in
/// the middle of the stream. Every payload that got its PUBACK reaches the
/// persistent mosquitto_sub subscriber after the restart.
#[tokio::test]
async fn sigkill_mid_burst_from_rumqttc_loses_nothing_acked() {
    /// More than the stream can send before the kill.
    const MAX: usize = 100_000;
    /// PUBACKs to see before the kill.
    const KILL_AFTER: usize = 300;
    let (_redis, config, broker) = broker_on_redis();
    let port = broker.port();

    let mut sub = MosquittoSub::spawn(port, &["-c", "-i", "cc-b-sub", "-q", "1", "-t", "cc/b"]);
    assert_eq!(sub.wait_subscribed(), vec![1]);
    sub.kill();

    let (mut publisher, _) = Client::connect_session(broker.addr, "cc-b-pub", true).await;
    let sender = publisher.client.clone();
    let body = |i: usize| format!("burst-{i}").into_bytes();
    let feeder = tokio::spawn(async move {
        for i in 0..MAX {
            if sender
                .publish("cc/b", QoS::AtLeastOnce, false, body(i))
                .await
                .is_err()
            {
                return i;
            }
        }
        MAX
    });
    // rumqttc sends the requests in order: the n-th Outgoing::Publish is
    // message n; its packet id maps the PUBACK back to the payload.
    let mut sent = 0usize;
    let mut in_flight: HashMap<u16, usize> = HashMap::new();
    let mut acked: Vec<usize> = Vec::new();
    let mut broker = Some(broker);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(Instant::now() < deadline, "the stream did not end");
        match publisher.next_event(Duration::from_secs(3)).await {
            Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                assert!(in_flight.insert(pkid, sent).is_none(), "packet id reused");
                sent += 1;
            }
            Some(Ok(Event::Incoming(Incoming::PubAck(ack)))) => {
                let i = in_flight.remove(&ack.pkid).expect("a PUBACK for a PUBLISH");
                acked.push(i);
                if acked.len() == KILL_AFTER {
                    // Mid-stream: more requests are queued behind the window.
                    broker.take().unwrap().kill9();
                }
            }
            Some(Ok(_)) => {}
            // The connection ended (killed broker): the stream is over.
            Some(Err(_)) | None => break,
        }
    }
    assert!(broker.is_none(), "killed after {KILL_AFTER} PUBACKs");
    let requested = feeder.await.unwrap();
    assert!(
        sent < MAX && requested < MAX,
        "killed in the middle of the stream (sent {sent}, requested {requested})"
    );
    assert!(acked.len() >= KILL_AFTER);

    let _broker = BrokerProcess::start(&config, port);
    let mut sub = MosquittoSub::spawn(port, &["-c", "-i", "cc-b-sub", "-q", "1", "-t", "cc/b"]);
    let received = sub.messages_until_quiet(Duration::from_millis(1500), Duration::from_secs(15));
    let mut got: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for message in &received {
        assert_eq!((message.topic.as_str(), message.qos), ("cc/b", 1));
        *got.entry(message.payload.clone()).or_default() += 1;
    }
    let lost: Vec<usize> = acked
        .iter()
        .copied()
        .filter(|&i| !got.contains_key(&body(i)))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost (of {}), first: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    // Nothing that was never published.
    assert!(
        got.keys().all(|p| (0..sent).any(|i| body(i) == *p)),
        "only published payloads arrive"
    );
}

/// c. The broker is killed while QoS 2 deliveries to a rumqttc subscriber
/// (manual acknowledgements) are in the middle of their handshake: the
/// first completed (PUBREC, PUBREL, PUBCOMP, and the completion stored),
/// the next ones sent but not answered with PUBREC. After the restart the
/// completed one never comes again; the others come again as
/// retransmissions (DUP, same packet id) and complete; after one more
/// SIGKILL nothing comes again.
///
/// rumqttc cannot hold the handshake between PUBREL and PUBCOMP (it answers
/// PUBREL by itself) and, reconnecting, forgets the packet ids of the
/// QoS 2 messages it PUBREC'd, so a PUBREL the broker resends after a
/// restart closes its connection ("unsolicited pubrel"): that stage is
/// covered with a raw client in persistence.rs
/// (`sigkill_mid_qos2_handshake_and_with_queued_messages`).
#[tokio::test]
async fn sigkill_mid_qos2_handshake_with_rumqttc() {
    const ID: &str = "cc-c-sub";
    let (redis, config, broker) = broker_on_redis();
    let port = broker.port();
    let mut storage = redis.connection();

    let (mut sub, _) = persistent(broker.addr, ID, true).await;
    assert_eq!(
        sub.subscribe("cc/c/#", QoS::ExactlyOnce).await,
        SubscribeReasonCode::Success(QoS::ExactlyOnce)
    );
    sub.disconnect().await;
    let bodies: Vec<Vec<u8>> = (0..3).map(|i| payload("cc/c", i)).collect();
    for body in &bodies {
        mosquitto_publish(port, "cc/c/x", 2, body);
    }

    let (mut sub, present) = persistent(broker.addr, ID, true).await;
    assert!(present);
    let mut first: Vec<Publish> = Vec::new();
    for _ in 0..bodies.len() {
        first.push(sub.recv().await);
    }
    let got: Vec<&[u8]> = first.iter().map(|p| &p.payload[..]).collect();
    let want: Vec<&[u8]> = bodies.iter().map(|b| &b[..]).collect();
    assert_eq!(got, want, "the three messages, in order");
    assert!(first.iter().all(|p| p.qos == QoS::ExactlyOnce && !p.dup));
    // The first: PUBREC; the broker's PUBREL; rumqttc's PUBCOMP.
    sub.client.ack(&first[0]).await.unwrap();
    let pk0 = first[0].pkid;
    sub.wait_for("PUBREL of the first", |event| match event {
        Event::Incoming(Incoming::PubRel(rel)) if rel.pkid == pk0 => Some(()),
        _ => None,
    })
    .await;
    wait_stored("the completion of the first message", || {
        !in_stored_window(&mut storage, ID, pk0)
    })
    .await;
    // The others: sent to us, no PUBREC.
    for p in &first[1..] {
        assert!(in_stored_window(&mut storage, ID, p.pkid));
    }
    broker.kill9();
    drop(sub);

    let broker = BrokerProcess::start(&config, port);
    let (mut sub, present) = persistent(broker.addr, ID, false).await;
    assert!(present, "session present after SIGKILL");
    let mut again: VecDeque<Publish> = VecDeque::new();
    let mut completed = Vec::new();
    let deadline = Instant::now() + WAIT;
    while completed.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "retransmissions did not complete"
        );
        match sub.next_event(WAIT).await {
            Some(Ok(Event::Incoming(Incoming::Publish(p)))) => again.push_back(p),
            Some(Ok(Event::Incoming(Incoming::PubRel(rel)))) => completed.push(rel.pkid),
            Some(Ok(_)) => {}
            Some(Err(error)) => panic!("closed: {error}"),
            None => panic!("timed out; got {again:?}"),
        }
    }
    // Anything else would come now.
    sub.expect_no_message(Duration::from_millis(600)).await;
    assert_eq!(
        again.len(),
        2,
        "only the two unanswered messages: {again:?}"
    );
    for (p, before) in again.iter().zip(&first[1..]) {
        assert_eq!(p.payload, before.payload);
        assert_eq!(p.pkid, before.pkid, "the same packet id");
        assert!(p.dup, "a retransmission carries DUP");
        assert_eq!(p.qos, QoS::ExactlyOnce);
    }
    assert_eq!(
        completed,
        vec![first[1].pkid, first[2].pkid],
        "PUBREL for the retransmissions"
    );
    wait_stored("the session's messages completed in storage", || {
        stored_messages(&mut storage, ID) == 0
    })
    .await;
    broker.kill9();
    drop(sub);

    // Completed is completed: nothing comes after one more SIGKILL.
    let broker = BrokerProcess::start(&config, port);
    let (mut sub, present) = persistent(broker.addr, ID, false).await;
    assert!(present);
    sub.expect_no_message(Duration::from_millis(800)).await;
    // And the session still routes: one more message, once.
    mosquitto_publish(port, "cc/c/y", 2, b"after");
    let p = sub.recv().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("cc/c/y", &b"after"[..])
    );
    sub.expect_no_message(Duration::from_millis(400)).await;
}
