//! Hibernation (`mqtt.server.hibernate-after`): an idle plain TCP connection
//! gives up its task and reactor registration, and whatever concerns it
//! (bytes from its peer, a message for it, its keep-alive running out, a
//! takeover, a kick, a shutdown) brings it back with nothing lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{MosquittoSub, mosquitto_pub_ok};
use common::{QUIET, RawClient, TestBroker, wait_until, wire};

/// Long enough for a connection idle from the start to hibernate: one to
/// two periods of one second, plus slack for a loaded machine.
const HIBERNATES_WITHIN: Duration = Duration::from_secs(5);

fn hibernating_broker() -> TestBroker {
    TestBroker::with(|c| c.mqtt.server.hibernate_after = 1)
}

fn wait_hibernating(broker: &TestBroker, expected: u64) {
    wait_until(
        HIBERNATES_WITHIN,
        &format!("{expected} hibernating connections"),
        || broker.metric(|m| &m.connections_hibernated) == expected,
    );
}

/// A real client (mosquitto_sub) subscribes and goes quiet; its connection
/// hibernates, yet a message published to it arrives, and afterwards the
/// connection hibernates again.
#[test]
fn a_hibernating_subscriber_still_receives() {
    let broker = hibernating_broker();
    let mut sub = MosquittoSub::spawn(broker.port(), &["-q", "1", "-t", "hib/t", "-k", "60"]);
    sub.wait_subscribed();
    wait_hibernating(&broker, 1);

    mosquitto_pub_ok(broker.port(), &["-q", "1", "-t", "hib/t", "-m", "woken"]);
    assert_eq!(sub.recv().payload, b"woken");
    // The publisher came and went; the subscriber sleeps again.
    broker.wait_connections(1);
    wait_hibernating(&broker, 1);
    mosquitto_pub_ok(broker.port(), &["-q", "0", "-t", "hib/t", "-m", "again"]);
    assert_eq!(sub.recv().payload, b"again");
    assert_eq!(broker.metric(|m| &m.connections_current), 1);
}

/// Bytes from the peer wake a hibernating connection: a PINGREQ gets its
/// PINGRESP, and a QoS 1 PUBLISH its PUBACK and its subscribers.
#[test]
fn a_hibernating_connection_answers_its_peer() {
    let broker = hibernating_broker();
    let mut sub = RawClient::connect(broker.addr(), "hib-sub");
    sub.send(&wire::subscribe(1, &[("hib/p", 1)]));
    assert_eq!(sub.recv().suback(), (1, vec![1]));
    let mut publisher = RawClient::connect(broker.addr(), "hib-pub");
    wait_hibernating(&broker, 2);

    publisher.ping();
    publisher.send(&wire::publish("hib/p", 1, 7, false, b"from a sleeper"));
    let puback = publisher.recv();
    assert_eq!((puback.kind(), puback.packet_id()), (4, 7));
    let delivered = sub.recv_publish();
    assert_eq!(delivered.payload, b"from a sleeper");
    sub.send(&wire::puback(delivered.packet_id.expect("QoS 1")));
    sub.expect_silence(QUIET);
    wait_hibernating(&broker, 2);
}

/// The keep-alive of a hibernating connection still runs: silence past
/// one and a half times it closes the connection, and its will goes out.
#[test]
fn the_keep_alive_of_a_hibernating_connection_runs_out() {
    let broker = TestBroker::with(|c| c.mqtt.server.hibernate_after = 1);
    let mut watcher = RawClient::connect(broker.addr(), "hib-watcher");
    watcher.send(&wire::subscribe(1, &[("hib/will", 0)]));
    assert_eq!(watcher.recv().suback(), (1, vec![0]));
    let connect = wire::Connect::new("hib-silent")
        .keep_alive(3)
        .will("hib/will", b"gone", 0, false);
    let (mut silent, connack) = RawClient::connect_with(broker.addr(), &connect);
    assert_eq!(connack, (false, 0));
    let connected = Instant::now();
    wait_hibernating(&broker, 2);

    silent.expect_closed_within(Duration::from_secs(10));
    let closed = connected.elapsed();
    assert!(
        closed >= Duration::from_millis(4500),
        "closed after {closed:?}, before 1.5 x keep-alive"
    );
    assert_eq!(watcher.recv_publish().payload, b"gone");
    broker.wait_connections(1);
    // The watcher, woken by the will, sleeps again.
    wait_hibernating(&broker, 1);
}

/// A peer that goes away while its connection hibernates is noticed at
/// once (its socket turns readable): the connection closes and its will
/// goes out, long before its keep-alive would run out.
#[test]
fn a_peer_leaving_a_hibernating_connection_is_noticed() {
    let broker = hibernating_broker();
    let mut watcher = RawClient::connect(broker.addr(), "hib-watcher2");
    watcher.send(&wire::subscribe(1, &[("hib/left", 0)]));
    assert_eq!(watcher.recv().suback(), (1, vec![0]));
    let connect = wire::Connect::new("hib-leaver")
        .keep_alive(600)
        .will("hib/left", b"left", 0, false);
    let (leaver, _) = RawClient::connect_with(broker.addr(), &connect);
    wait_hibernating(&broker, 2);

    drop(leaver);
    assert_eq!(watcher.recv_publish().payload, b"left");
    broker.wait_connections(1);
}

/// A CONNECT with the client id of a hibernating connection takes its
/// session over: the sleeper is woken and closed, the session (and what
/// was queued for it) goes to the new connection.
#[test]
fn a_hibernating_session_is_taken_over() {
    let broker = hibernating_broker();
    let connect = wire::Connect::new("hib-owner").clean(false);
    let (mut first, _) = RawClient::connect_with(broker.addr(), &connect);
    first.send(&wire::subscribe(1, &[("hib/owned", 1)]));
    assert_eq!(first.recv().suback(), (1, vec![1]));
    wait_hibernating(&broker, 1);

    let (mut second, connack) = RawClient::connect_with(broker.addr(), &connect);
    assert_eq!(connack, (true, 0), "the session is present");
    assert_eq!(first.expect_closed_within(Duration::from_secs(5)), vec![]);
    let mut publisher = RawClient::connect(broker.addr(), "hib-owner-pub");
    publisher.send(&wire::publish("hib/owned", 1, 1, false, b"to the new one"));
    assert_eq!(publisher.recv().packet_id(), 1);
    assert_eq!(second.recv_publish().payload, b"to the new one");
}

/// Kicking a hibernating client (what the HTTP API's kick does) closes it.
#[test]
fn a_hibernating_client_can_be_kicked() {
    let broker = hibernating_broker();
    let mut client = RawClient::connect(broker.addr(), "hib-kicked");
    wait_hibernating(&broker, 1);
    let outcome = futures_lite::future::block_on(broker.node().kick_in_cluster("hib-kicked"))
        .expect("a lone node answers");
    assert!(matches!(
        outcome,
        easy_mqtt_server::admin::KickOutcome::Kicked
    ));
    assert_eq!(client.expect_closed_within(Duration::from_secs(5)), vec![]);
    broker.wait_connections(0);
    assert_eq!(broker.metric(|m| &m.connections_hibernated), 0);
}

/// A graceful shutdown wakes and closes hibernating connections too, well
/// within its grace period.
#[test]
fn shutdown_closes_hibernating_connections() {
    let broker = hibernating_broker();
    let mut clients: Vec<RawClient> = (0..3)
        .map(|i| RawClient::connect(broker.addr(), &format!("hib-shut-{i}")))
        .collect();
    wait_hibernating(&broker, 3);
    let started = Instant::now();
    futures_lite::future::block_on(broker.shutdown());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown waited for its grace"
    );
    for client in &mut clients {
        assert_eq!(client.expect_closed_within(Duration::from_secs(2)), vec![]);
    }
}

/// `hibernate-after: 0` keeps every connection awake.
#[test]
fn hibernation_can_be_turned_off() {
    let broker = TestBroker::with(|c| c.mqtt.server.hibernate_after = 0);
    let mut client = RawClient::connect(broker.addr(), "hib-never");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(broker.metric(|m| &m.connections_hibernated), 0);
    client.ping();
}

/// A connection that keeps talking never hibernates: each period with a
/// byte in or out starts another.
#[test]
fn a_busy_connection_stays_awake() {
    let broker = hibernating_broker();
    let mut client = RawClient::connect(broker.addr(), "hib-busy");
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(300));
        client.ping();
        assert_eq!(broker.metric(|m| &m.connections_hibernated), 0);
    }
}
