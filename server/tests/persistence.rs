//! Durable persistence on Kvrocks' protocol (real `redis-server`
//! processes): nothing acknowledged is lost across a restart, a SIGKILL of
//! the real binary, or a storage outage; QoS 2 is delivered exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../storage-kvrocks/tests/common/mod.rs"]
#[allow(unused)]
mod redis_common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::wire::{self, Connect};
use common::{BrokerProcess, RawClient, RawPacket, Recv, TempFile, TestBroker, WAIT, free_port};
use redis_common::{Cluster, Server};

fn broker_on(nodes: Vec<String>) -> TestBroker {
    TestBroker::with(|config| {
        config.mqtt.kvrocks.cluster.nodes = nodes;
    })
}

fn persistent(addr: SocketAddr, client_id: &str) -> (RawClient, bool) {
    let (client, (present, code)) =
        RawClient::connect_with(addr, &Connect::new(client_id).clean(false));
    assert_eq!(code, 0, "CONNACK code");
    (client, present)
}

/// Publishes and completes the QoS 1/2 handshake: the message is acknowledged.
fn publish_acked(client: &mut RawClient, topic: &str, qos: u8, id: u16, payload: &str) {
    client.send(&wire::publish(topic, qos, id, false, payload.as_bytes()));
    let ack = client.recv();
    match qos {
        1 => {
            assert_eq!(ack.first, 0x40, "PUBACK expected: {ack:?}");
            assert_eq!(ack.packet_id(), id);
        }
        2 => {
            assert_eq!(ack.first, 0x50, "PUBREC expected: {ack:?}");
            client.send(&wire::pubrel(id));
            let comp = client.recv();
            assert_eq!(comp.first, 0x70, "PUBCOMP expected: {comp:?}");
        }
        _ => {}
    }
}

/// Receives PUBLISH packets (answering each as its QoS asks) until `count`
/// application messages arrived; returns (topic, qos, payload) in order.
fn receive(client: &mut RawClient, count: usize) -> Vec<(String, u8, String)> {
    let mut got = Vec::new();
    while got.len() < count {
        let packet = client.recv();
        match packet.kind() {
            3 => {
                let p = packet.publish();
                match p.qos {
                    1 => client.send(&wire::puback(p.packet_id.unwrap())),
                    2 => client.send(&wire::pubrec(p.packet_id.unwrap())),
                    _ => {}
                }
                got.push((p.topic, p.qos, String::from_utf8(p.payload).unwrap()));
            }
            6 => client.send(&wire::pubcomp(packet.packet_id())),
            _ => panic!("unexpected {packet:?}"),
        }
    }
    got
}

/// Answers what is still in flight (PUBREL) and proves nothing more comes.
fn drain_silent(client: &mut RawClient) {
    loop {
        match client.read(Duration::from_millis(400)) {
            Recv::Packet(p) if p.kind() == 6 => client.send(&wire::pubcomp(p.packet_id())),
            Recv::Packet(p) => panic!("nothing more expected, got {p:?}"),
            Recv::Timeout => return,
            Recv::Closed => panic!("closed"),
        }
    }
}

fn subscribe_persistent(addr: SocketAddr, client_id: &str, filters: &[(&str, u8)]) {
    let (mut sub, _) = persistent(addr, client_id);
    let granted = sub.subscribe(1, filters);
    assert_eq!(granted, filters.iter().map(|f| f.1).collect::<Vec<_>>());
    sub.send(&wire::disconnect());
    sub.expect_closed();
}

/// Queued QoS 1 and 2 messages survive a broker restart on the same storage.
fn restart_round_trip(nodes: Vec<String>) {
    let broker = broker_on(nodes.clone());
    subscribe_persistent(broker.addr(), "sub", &[("a/1", 1), ("a/2", 2)]);
    let mut publisher = RawClient::connect(broker.addr(), "pub");
    for i in 0..5u16 {
        publish_acked(&mut publisher, "a/1", 1, 1 + i, &format!("q1-{i}"));
        publish_acked(&mut publisher, "a/2", 2, 100 + i, &format!("q2-{i}"));
    }
    drop(publisher);
    drop(broker);

    let broker = broker_on(nodes.clone());
    let (mut sub, present) = persistent(broker.addr(), "sub");
    assert!(present, "session present after restart");
    let got = receive(&mut sub, 10);
    let expected: Vec<(String, u8, String)> = (0..5)
        .flat_map(|i| {
            [
                ("a/1".to_owned(), 1, format!("q1-{i}")),
                ("a/2".to_owned(), 2, format!("q2-{i}")),
            ]
        })
        .collect();
    assert_eq!(got, expected);
    drain_silent(&mut sub);
    // A message published now is still routed to the recovered subscription.
    sub.send(&wire::disconnect());
    sub.expect_closed();
    let mut publisher = RawClient::connect(broker.addr(), "pub");
    publish_acked(&mut publisher, "a/2", 2, 7, "after");
    drop(publisher);
    drop(broker);

    // Once more: completed messages are not delivered again.
    let broker = broker_on(nodes);
    let (mut sub, present) = persistent(broker.addr(), "sub");
    assert!(present);
    assert_eq!(
        receive(&mut sub, 1),
        vec![("a/2".to_owned(), 2, "after".to_owned())]
    );
    drain_silent(&mut sub);
}

#[test]
fn restart_standalone_keeps_queued_messages_exactly_once() {
    let redis = Server::standalone();
    restart_round_trip(vec![redis.node()]);
}

#[test]
fn restart_cluster_keeps_queued_messages_exactly_once() {
    let cluster = Cluster::start();
    restart_round_trip(cluster.nodes());
}

// ---------------------------------------------------------------------------
// The real binary, killed with SIGKILL
// ---------------------------------------------------------------------------

fn binary_config(redis: &Server, port: u16) -> TempFile {
    let text = format!(
        "mqtt:\n  server:\n    host: 127.0.0.1\n    tcp-port: {port}\n    websocket-port: 0\n    api-port: 0\n    node-id: crash\n  kvrocks:\n    cluster:\n      nodes: {}\n",
        redis.node()
    );
    TempFile::new("persist.yml", text.as_bytes())
}

#[test]
fn sigkill_mid_qos2_handshake_and_with_queued_messages() {
    let redis = Server::standalone();
    let port = free_port();
    let config = binary_config(&redis, port);
    let broker = BrokerProcess::start(&config, port);
    subscribe_persistent(broker.addr, "s", &[("k/#", 2)]);
    let mut publisher = RawClient::connect(broker.addr, "p");
    for i in 0..4u16 {
        publish_acked(&mut publisher, "k/x", 2, 1 + i, &format!("m{i}"));
    }
    drop(publisher);
    // The subscriber takes the first message up to PUBREC/PUBREL, no PUBCOMP.
    let (mut sub, present) = persistent(broker.addr, "s");
    assert!(present);
    let first = sub.recv().publish();
    assert_eq!(first.payload, b"m0");
    let pid = first.packet_id.unwrap();
    sub.send(&wire::pubrec(pid));
    // PUBREL follows (and maybe more PUBLISH packets, not acknowledged).
    let mut seen = vec!["m0".to_owned()];
    loop {
        let packet = sub.recv();
        if packet.first == 0x62 {
            assert_eq!(packet.packet_id(), pid);
            break;
        }
        // Delivered to us (we keep the packet id): not to be delivered again.
        seen.push(String::from_utf8(packet.publish().payload).unwrap());
    }
    // The PUBREL leaves only once its phase is stored: kill at once.
    broker.kill9();
    drop(sub);

    let broker = BrokerProcess::start(&config, port);
    let (mut sub, present) = persistent(broker.addr, "s");
    assert!(present, "session present after SIGKILL");
    // What was received before the kill comes back only as a retransmission
    // of the same packet (DUP, same id) or a PUBREL; every message arrives.
    let mut delivered = seen.clone();
    let mut released = false;
    loop {
        match sub.read(Duration::from_millis(500)) {
            Recv::Packet(p) if p.first == 0x62 => {
                // PUBREL: of m0 (released before the kill), or of a message
                // we just answered with PUBREC.
                released |= p.packet_id() == pid;
                sub.send(&wire::pubcomp(p.packet_id()));
            }
            Recv::Packet(p) if p.kind() == 3 => {
                let publish = p.publish();
                let payload = String::from_utf8(publish.payload).unwrap();
                let id = publish.packet_id.unwrap();
                if seen.contains(&payload) {
                    assert!(publish.dup, "a message already received comes back as DUP");
                } else {
                    delivered.push(payload);
                }
                sub.send(&wire::pubrec(id));
            }
            Recv::Packet(p) => panic!("unexpected {p:?}"),
            Recv::Timeout => break,
            Recv::Closed => panic!("closed"),
        }
    }
    assert!(
        released,
        "the released message is completed with PUBREL, not resent"
    );
    assert_eq!(delivered, vec!["m0", "m1", "m2", "m3"]);
}

#[test]
fn sigkill_mid_burst_loses_no_acknowledged_message() {
    let redis = Server::standalone();
    let port = free_port();
    let config = binary_config(&redis, port);
    let broker = BrokerProcess::start(&config, port);
    subscribe_persistent(broker.addr, "burst-sub", &[("b/#", 1)]);
    let addr = broker.addr;
    // A publisher pipelines QoS 1 messages and counts the PUBACKs it gets.
    let publisher = std::thread::spawn(move || {
        let mut client = RawClient::connect(addr, "burst-pub");
        let mut acked = Vec::new();
        let mut sent = 0u16;
        loop {
            if sent < 2000 {
                for _ in 0..20 {
                    sent += 1;
                    client.send_lossy(&wire::publish(
                        "b/1",
                        1,
                        sent,
                        false,
                        format!("{sent}").as_bytes(),
                    ));
                }
            }
            match client.read(Duration::from_secs(3)) {
                Recv::Packet(p) if p.first == 0x40 => acked.push(p.packet_id()),
                Recv::Packet(p) => panic!("unexpected {p:?}"),
                Recv::Closed | Recv::Timeout => return acked,
            }
        }
    });
    // Kill once some messages were acknowledged.
    let deadline = Instant::now() + WAIT;
    let mut redis_conn = redis.connection();
    loop {
        let held: u64 = redis::cmd("SCARD")
            .arg("emq:{c:burst-sub}:h")
            .query(&mut redis_conn)
            .unwrap();
        if held >= 50 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    broker.kill9();
    let acked = publisher.join().unwrap();
    assert!(!acked.is_empty());

    let broker = BrokerProcess::start(&config, port);
    let (mut sub, present) = persistent(broker.addr, "burst-sub");
    assert!(present);
    let mut got = BTreeMap::new();
    loop {
        match sub.read(Duration::from_millis(700)) {
            Recv::Packet(p) if p.kind() == 3 => {
                let publish = p.publish();
                sub.send(&wire::puback(publish.packet_id.unwrap()));
                let n: u16 = String::from_utf8(publish.payload).unwrap().parse().unwrap();
                *got.entry(n).or_insert(0) += 1;
            }
            Recv::Packet(p) => panic!("unexpected {p:?}"),
            Recv::Timeout => break,
            Recv::Closed => panic!("closed"),
        }
    }
    for id in &acked {
        assert!(got.contains_key(id), "acknowledged message {id} lost");
    }
}

// ---------------------------------------------------------------------------
// Storage outage
// ---------------------------------------------------------------------------

#[test]
fn storage_outage_holds_acks_and_recovers() {
    let redis = Server::standalone();
    let broker = broker_on(vec![redis.node()]);
    subscribe_persistent(broker.addr(), "o-sub", &[("o/#", 1)]);
    // Two online clean clients exchange QoS 0 during the outage.
    let mut live = RawClient::connect(broker.addr(), "live-sub");
    assert_eq!(live.subscribe(1, &[("live", 0)]), vec![0]);
    let mut live_pub = RawClient::connect(broker.addr(), "live-pub");
    let mut publisher = RawClient::connect(broker.addr(), "o-pub");
    publish_acked(&mut publisher, "o/1", 1, 1, "before");

    redis.freeze(true);
    publisher.send(&wire::publish("o/1", 1, 2, false, b"during"));
    live_pub.send(&wire::publish("live", 0, 0, false, b"q0"));
    let p = live.recv().publish();
    assert_eq!(p.payload, b"q0", "QoS 0 flows while storage is down");
    // Not acknowledged while storage is down.
    match publisher.read(Duration::from_millis(500)) {
        Recv::Timeout => {}
        other => panic!("no PUBACK while storage is down: {other:?}"),
    }
    redis.freeze(false);
    let ack = publisher.recv();
    assert_eq!(ack.first, 0x40);
    assert_eq!(ack.packet_id(), 2);
    publish_acked(&mut publisher, "o/1", 1, 3, "after");
    assert!(broker.metric(|m| &m.storage_errors) <= 10);

    let (mut sub, present) = persistent(broker.addr(), "o-sub");
    assert!(present);
    let got: Vec<String> = receive(&mut sub, 3).into_iter().map(|m| m.2).collect();
    assert_eq!(got, vec!["before", "during", "after"]);
}

#[test]
fn storage_down_then_back_recovers_without_restart() {
    let mut redis = Server::standalone();
    let broker = broker_on(vec![redis.node()]);
    subscribe_persistent(broker.addr(), "d-sub", &[("d/#", 1)]);
    // Kill storage: a QoS 1 PUBLISH is not acknowledged; the connection
    // closes after the retry budget (connect timeout, 10 s, counted from
    // the first failed attempt; the margin is for a loaded CI machine).
    let mut publisher = RawClient::connect(broker.addr(), "d-pub");
    redis.stop();
    publisher.send(&wire::publish("d/1", 1, 1, false, b"lost?"));
    let packets = publisher.expect_closed_within(Duration::from_secs(30));
    assert!(
        packets.iter().all(|p: &RawPacket| p.first != 0x40),
        "never acknowledged: {packets:?}"
    );
    assert!(broker.metric(|m| &m.storage_errors) > 0);
    // A node that cannot reach storage accepts no new connection: it could
    // not make sure the client id is not connected to another node.
    let (_, connack) = RawClient::connect_with(broker.addr(), &Connect::new("d-new"));
    assert_eq!(connack, (false, 3), "CONNACK during the outage");
    // Storage back (empty: redis-server without persistence here): the
    // broker serves persistent clients again by itself.
    redis.restart();
    let (mut sub, _) = persistent(broker.addr(), "d-sub2");
    assert_eq!(sub.subscribe(1, &[("d/#", 1)]), vec![1]);
    sub.send(&wire::disconnect());
    sub.expect_closed();
    let mut publisher = RawClient::connect(broker.addr(), "d-pub");
    publish_acked(&mut publisher, "d/1", 1, 2, "back");
    let (mut sub, present) = persistent(broker.addr(), "d-sub2");
    assert!(present);
    assert_eq!(receive(&mut sub, 1)[0].2, "back");
}

/// A node alone on `redis` (no cluster lease to lose while storage hangs,
/// which would close every connection), whose failing batches are retried
/// for `connect_timeout` seconds.
fn broker_without_lease(redis: &Server, connect_timeout: u32) -> TestBroker {
    TestBroker::with(|config| {
        config.mqtt.kvrocks.cluster.nodes = vec![redis.node()];
        config.mqtt.server.connect_timeout = connect_timeout;
        config.mqtt.cluster.enabled = false;
    })
}

/// A persistent CONNECT, retried while the node cannot reach storage yet
/// (CONNACK 3).
fn persistent_when_back(addr: SocketAddr, client_id: &str) -> (RawClient, bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (client, (present, code)) =
            RawClient::connect_with(addr, &Connect::new(client_id).clean(false));
        match code {
            0 => return (client, present),
            3 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => panic!("CONNACK {code} for {client_id}"),
        }
    }
}

/// A QoS 2 publish whose storage write got no answer (storage hung) is
/// failed unacknowledged; whether storage applied it is unknown, so the
/// state in memory of its connected subscriber is not trusted after that:
/// the subscriber is closed and loads its session again. Storage that
/// applied the write gives it the message then, and the publisher's retry
/// finds the QoS 2 packet id received; storage that did not (here: the
/// backend's read phase timed out, its writes were never sent) gets it
/// from the retry. Either way the message arrives once.
#[test]
fn a_publish_failed_while_storage_hung_reaches_its_subscriber_once() {
    let redis = Server::standalone();
    let broker = broker_without_lease(&redis, 2);
    subscribe_persistent(broker.addr(), "h-sub", &[("h/#", 2)]);
    let (mut sub, present) = persistent(broker.addr(), "h-sub");
    assert!(present);
    let (mut publisher, _) = persistent(broker.addr(), "h-pub");
    publish_acked(&mut publisher, "h/1", 2, 1, "before");
    assert_eq!(receive(&mut sub, 1)[0].2, "before");
    drain_silent(&mut sub);

    redis.freeze(true);
    publisher.send(&wire::publish("h/1", 2, 2, false, b"during"));
    let packets = publisher.expect_closed_within(Duration::from_secs(40));
    assert!(
        packets.iter().all(|p: &RawPacket| p.first != 0x50),
        "no PUBREC without storage: {packets:?}"
    );
    // Its state in memory may lack what storage holds: closed.
    let packets = sub.expect_closed_within(Duration::from_secs(10));
    assert!(
        packets.iter().all(|p: &RawPacket| p.kind() != 3),
        "nothing delivered from a batch that failed: {packets:?}"
    );
    redis.freeze(false);

    let (mut sub, present) = persistent_when_back(broker.addr(), "h-sub");
    assert!(present);
    let (mut publisher, present) = persistent_when_back(broker.addr(), "h-pub");
    assert!(present);
    // The publisher sends it again (then one more).
    publish_acked(&mut publisher, "h/1", 2, 2, "during");
    publish_acked(&mut publisher, "h/1", 2, 3, "after");
    let got: Vec<String> = receive(&mut sub, 2).into_iter().map(|m| m.2).collect();
    assert_eq!(got, vec!["during", "after"], "each once, in order");
    drain_silent(&mut sub);
}

// ---------------------------------------------------------------------------
// The HTTP API on a durable node
// ---------------------------------------------------------------------------

/// One HTTP exchange with the broker's API: (status, JSON body).
fn api_call(broker: &TestBroker, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT))
        .build()
        .new_agent();
    let url = format!("http://{}{path}", broker.broker().api_addr().unwrap());
    let response = match (method, body) {
        ("POST", Some(body)) => agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(body.as_bytes()),
        ("DELETE", _) => agent.delete(&url).call(),
        _ => agent.get(&url).call(),
    };
    let mut response = response.expect("HTTP exchange");
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

/// Messages published through the API to an offline persistent session (to
/// the client, and to a topic it subscribed to) are stored before the API
/// answers: a new broker on the same storage delivers them. A retained
/// message deleted through the API stays deleted after the restart.
/// A CONNECT that takes over a session another connection of the same
/// node still holds waits until that connection's writes are stored (here:
/// a QoS 2 PUBREC's phase change, while storage hangs): the new
/// connection's own writes then come after them, never before (a phase
/// written back to an older one would send the message again on the
/// next load).
#[test]
fn a_takeover_waits_for_the_old_connections_writes() {
    let redis = Server::standalone();
    let broker = broker_without_lease(&redis, 10);
    subscribe_persistent(broker.addr(), "tw-sub", &[("tw/#", 2)]);
    let (mut old, present) = persistent(broker.addr(), "tw-sub");
    assert!(present);
    let (mut publisher, _) = persistent(broker.addr(), "tw-pub");
    publish_acked(&mut publisher, "tw/1", 2, 1, "one");
    let p = old.recv_publish();
    assert_eq!(p.payload, b"one");
    let packet_id = p.packet_id.unwrap();

    redis.freeze(true);
    old.send(&wire::pubrec(packet_id));
    // Time for the broker to handle the PUBREC (its write then waits for
    // storage) before the new CONNECT arrives: on a busy machine it once
    // took the CONNECT first, with nothing to wait for, and rightly
    // answered at once. Nothing the client sees tells when it is handled:
    // every answer on that connection waits for the write.
    std::thread::sleep(Duration::from_millis(300));
    let mut new = RawClient::open(broker.addr());
    new.send(&Connect::new("tw-sub").clean(false).encode());
    match new.read(Duration::from_millis(1500)) {
        Recv::Timeout => {}
        other => panic!("no CONNACK before the old connection's writes: {other:?}"),
    }
    redis.freeze(false);
    let connack = new.recv().connack();
    assert_eq!(connack, (true, 0));
    old.expect_closed_within(Duration::from_secs(10));
    // The phase the PUBREC stored: PUBREL, not the PUBLISH again.
    let rel = new.recv();
    assert_eq!((rel.kind(), rel.packet_id()), (6, packet_id), "{rel:?}");
    new.send(&wire::pubcomp(packet_id));
    new.send(&wire::disconnect());
    new.expect_closed();
    let (mut again, present) = persistent(broker.addr(), "tw-sub");
    assert!(present);
    again.expect_silence(Duration::from_millis(500));
}

/// An API publish whose storage write got no answer (storage hung) gets
/// 503, and the connected persistent subscriber it was for is closed to
/// load its session again (storage may hold the message); published again,
/// it arrives once.
#[test]
fn an_api_publish_failed_while_storage_hung_resyncs_its_subscriber() {
    let redis = Server::standalone();
    let broker = broker_without_lease(&redis, 2);
    subscribe_persistent(broker.addr(), "ah-sub", &[("ah/#", 1)]);
    let (mut sub, present) = persistent(broker.addr(), "ah-sub");
    assert!(present);
    let publish = |payload: &str| {
        api_call(
            &broker,
            "POST",
            "/api/v1/publish",
            Some(&format!(
                r#"{{"topic":"ah/1","payload":"{payload}","qos":1}}"#
            )),
        )
    };

    redis.freeze(true);
    let (status, body) = publish("during");
    assert_eq!(status, 503, "{body}");
    let packets = sub.expect_closed_within(Duration::from_secs(10));
    assert!(
        packets.iter().all(|p: &RawPacket| p.kind() != 3),
        "nothing delivered from a write that failed: {packets:?}"
    );
    redis.freeze(false);

    let (mut sub, present) = persistent_when_back(broker.addr(), "ah-sub");
    assert!(present);
    let (status, body) = publish("again");
    assert_eq!((status, body.as_str()), (200, r#"{"delivered":1}"#));
    // "during" first if storage applied the write it got no answer to.
    let mut got: Vec<String> = receive(&mut sub, 1).into_iter().map(|m| m.2).collect();
    if got[0] == "during" {
        got.extend(receive(&mut sub, 1).into_iter().map(|m| m.2));
    }
    assert_eq!(got.last().map(String::as_str), Some("again"), "{got:?}");
    drain_silent(&mut sub);
}

#[test]
fn api_writes_are_stored_before_the_answer() {
    let redis = Server::standalone();
    let broker = broker_on(vec![redis.node()]);
    subscribe_persistent(broker.addr(), "api-sub", &[("t/#", 1)]);
    let (status, body) = api_call(
        &broker,
        "POST",
        "/api/v1/clients/api-sub/publish",
        Some(r#"{"topic":"direct/1","payload":"one","qos":1}"#),
    );
    assert_eq!((status, body.as_str()), (200, r#"{"delivered":1}"#));
    let (status, body) = api_call(
        &broker,
        "POST",
        "/api/v1/publish",
        Some(r#"{"topic":"t/2","payload":"two","qos":1}"#),
    );
    assert_eq!((status, body.as_str()), (200, r#"{"delivered":1}"#));
    let (status, _) = api_call(
        &broker,
        "POST",
        "/api/v1/publish",
        Some(r#"{"topic":"r/1","payload":"kept","qos":1,"retain":true}"#),
    );
    assert_eq!(status, 200);
    let (status, body) = api_call(
        &broker,
        "DELETE",
        "/api/v1/retained/message?topic=r/1",
        None,
    );
    assert_eq!(status, 200, "{body}");
    drop(broker);

    let broker = broker_on(vec![redis.node()]);
    let (status, body) = api_call(&broker, "GET", "/api/v1/retained/message?topic=r/1", None);
    assert_eq!(
        status, 404,
        "a retained message deleted through the API: {body}"
    );
    let (mut sub, present) = persistent(broker.addr(), "api-sub");
    assert!(present);
    assert_eq!(
        receive(&mut sub, 2),
        vec![
            ("direct/1".to_owned(), 1, "one".to_owned()),
            ("t/2".to_owned(), 1, "two".to_owned()),
        ]
    );
    drain_silent(&mut sub);
}

/// A retained QoS 2 message sent to a persistent session because of its
/// SUBSCRIBE is stored and journaled like any delivery: after a SIGKILL with
/// it in flight (no PUBREC), it comes again with DUP under the same packet
/// id, and a new message meanwhile gets another packet id.
#[test]
fn sigkill_with_a_retained_qos2_delivery_in_flight() {
    let redis = Server::standalone();
    let port = free_port();
    let config = binary_config(&redis, port);
    let broker = BrokerProcess::start(&config, port);
    let mut publisher = RawClient::connect(broker.addr, "retainer");
    publisher.send(&wire::publish("ret/x", 2, 1, true, b"kept"));
    assert_eq!(publisher.recv().first, 0x50, "PUBREC");
    publisher.send(&wire::pubrel(1));
    assert_eq!(publisher.recv().first, 0x70, "PUBCOMP");
    drop(publisher);

    let (mut sub, present) = persistent(broker.addr, "ret-sub");
    assert!(!present);
    assert_eq!(sub.subscribe(1, &[("ret/#", 2)]), vec![2]);
    let first = sub.recv().publish();
    assert_eq!((first.topic.as_str(), first.qos), ("ret/x", 2));
    assert!(first.retain);
    assert_eq!(first.payload, b"kept");
    let pid = first.packet_id.unwrap();
    // No PUBREC: the message stays in flight. A QoS 2 PUBLISH leaves only
    // once its packet id is stored.
    broker.kill9();
    drop(sub);

    let broker = BrokerProcess::start(&config, port);
    let (mut sub, present) = persistent(broker.addr, "ret-sub");
    assert!(present, "session present after SIGKILL");
    let again = sub.recv().publish();
    assert_eq!(again.payload, b"kept");
    assert_eq!(again.packet_id, Some(pid), "the same packet id");
    assert!(again.dup, "a retransmission");
    assert_eq!(again.qos, 2);
    // A new message while `pid` is still held gets another packet id.
    let mut publisher = RawClient::connect(broker.addr, "p2");
    publish_acked(&mut publisher, "ret/y", 2, 1, "new");
    drop(publisher);
    let next = sub.recv().publish();
    assert_eq!(next.payload, b"new");
    assert_ne!(
        next.packet_id,
        Some(pid),
        "a packet id the client holds is not reused"
    );
    for id in [pid, next.packet_id.unwrap()] {
        sub.send(&wire::pubrec(id));
        let rel = sub.recv();
        assert_eq!((rel.first, rel.packet_id()), (0x62, id), "PUBREL");
        sub.send(&wire::pubcomp(id));
    }
    drain_silent(&mut sub);
}
