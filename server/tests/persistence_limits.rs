//! Durable persistence on Kvrocks' protocol (real `redis-server`
//! processes), continued: the queue bound of sessions recovered from
//! storage, the storage counters of the API, settings that cannot work,
//! and the QoS 2 Released phase across a SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../storage-kvrocks/tests/common/mod.rs"]
#[allow(unused)]
mod redis_common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::wire::{self, Connect};
use common::{BrokerProcess, RawClient, Recv, TempFile, TestBroker, WAIT, free_port};
use easy_mqtt_server::config::QueueOverflow;
use redis_common::Server;

const BINARY: &str = env!("CARGO_BIN_EXE_easy-mqtt");

fn persistent(addr: SocketAddr, client_id: &str) -> (RawClient, bool) {
    let (client, (present, code)) =
        RawClient::connect_with(addr, &Connect::new(client_id).clean(false));
    assert_eq!(code, 0, "CONNACK code");
    (client, present)
}

fn publish_qos1(client: &mut RawClient, topic: &str, id: u16, payload: &str) {
    client.send(&wire::publish(topic, 1, id, false, payload.as_bytes()));
    let ack = client.recv();
    assert_eq!((ack.first, ack.packet_id()), (0x40, id), "PUBACK");
}

/// Receives QoS 1 messages (acknowledging them) until nothing more comes.
fn receive_all(client: &mut RawClient) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        match client.read(Duration::from_millis(500)) {
            Recv::Packet(p) if p.kind() == 3 => {
                let publish = p.publish();
                client.send(&wire::puback(publish.packet_id.unwrap()));
                got.push(String::from_utf8(publish.payload).unwrap());
            }
            Recv::Packet(p) => panic!("unexpected {p:?}"),
            Recv::Timeout => return got,
            Recv::Closed => panic!("closed"),
        }
    }
}

// ---------------------------------------------------------------------------
// (a) max-queued-messages for sessions recovered from storage
// ---------------------------------------------------------------------------

/// A persistent session recovered at start (in storage only) is bounded by
/// `max-queued-messages` like a loaded one, counting what storage already
/// holds, with the configured overflow policy and `dropped_queue_full`.
fn recovered_queue_is_bounded(overflow: QueueOverflow) -> Vec<String> {
    let redis = Server::standalone();
    let start = || {
        TestBroker::with(|config| {
            config.mqtt.kvrocks.cluster.nodes = vec![redis.node()];
            config.mqtt.server.max_queued_messages = 3;
            config.mqtt.server.queue_overflow = overflow;
        })
    };
    let broker = start();
    let (mut sub, _) = persistent(broker.addr(), "bound-sub");
    assert_eq!(sub.subscribe(1, &[("b/#", 1)]), vec![1]);
    sub.send(&wire::disconnect());
    sub.expect_closed();
    let mut publisher = RawClient::connect(broker.addr(), "bound-pub");
    for i in 0..2u16 {
        publish_qos1(&mut publisher, "b/1", 1 + i, &format!("m{i}"));
    }
    drop(publisher);
    drop(broker);

    // Restarted: the session is in storage only, with 2 queued.
    let broker = start();
    let mut publisher = RawClient::connect(broker.addr(), "bound-pub");
    for i in 2..6u16 {
        publish_qos1(&mut publisher, "b/1", 1 + i, &format!("m{i}"));
    }
    drop(publisher);
    assert_eq!(
        broker.metric(|m| &m.dropped_queue_full),
        3,
        "6 messages for a queue of 3"
    );
    drop(broker);

    // Storage itself holds 3: a new broker loads them.
    let broker = start();
    let (mut sub, present) = persistent(broker.addr(), "bound-sub");
    assert!(present);
    receive_all(&mut sub)
}

#[test]
fn recovered_session_drop_oldest_keeps_the_newest() {
    assert_eq!(
        recovered_queue_is_bounded(QueueOverflow::DropOldest),
        vec!["m3", "m4", "m5"]
    );
}

#[test]
fn recovered_session_drop_newest_keeps_the_oldest() {
    assert_eq!(
        recovered_queue_is_bounded(QueueOverflow::DropNewest),
        vec!["m0", "m1", "m2"]
    );
}

// ---------------------------------------------------------------------------
// (b) storage counters in /api/v1/stats and /metrics
// ---------------------------------------------------------------------------

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
        _ => agent.get(&url).call(),
    };
    let mut response = response.expect("HTTP exchange");
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

fn stats(broker: &TestBroker) -> serde_json::Value {
    let (status, body) = api_call(broker, "GET", "/api/v1/stats", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn prometheus_value(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn storage_counters_move_when_storage_stops_during_a_publish() {
    let mut redis = Server::standalone();
    let broker = TestBroker::with(|config| {
        config.mqtt.kvrocks.cluster.nodes = vec![redis.node()];
        config.mqtt.server.connect_timeout = 2;
    });
    let (mut sub, _) = persistent(broker.addr(), "c-sub");
    assert_eq!(sub.subscribe(1, &[("c/#", 1)]), vec![1]);
    sub.send(&wire::disconnect());
    sub.expect_closed();
    let before = stats(&broker);
    assert_eq!(before["storageErrors"], 0);
    assert_eq!(before["storagePublishesFailed"], 0);

    // Connected first: a node that cannot reach storage refuses new
    // connections (CONNACK 3).
    let mut publisher = RawClient::connect(broker.addr(), "c-pub");
    redis.stop();
    publisher.send(&wire::publish("c/1", 1, 1, false, b"lost"));
    let packets = publisher.expect_closed_within(Duration::from_secs(10));
    assert!(packets.iter().all(|p| p.first != 0x40), "no PUBACK");
    let (status, body) = api_call(
        &broker,
        "POST",
        "/api/v1/publish",
        Some(r#"{"topic":"c/2","payload":"x","qos":1}"#),
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("storage-unavailable"), "{body}");

    let after = stats(&broker);
    let errors = after["storageErrors"].as_u64().unwrap();
    assert!(errors > 0, "{after}");
    assert_eq!(after["storagePublishesFailed"], 1, "{after}");
    let (status, text) = api_call(&broker, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(prometheus_value(&text, "easy_mqtt_storage_errors_total") >= errors);
    assert_eq!(
        prometheus_value(&text, "easy_mqtt_storage_publishes_failed_total"),
        1
    );
    assert!(text.contains("# TYPE easy_mqtt_storage_errors_total counter"));
    redis.restart();
}

// ---------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------

fn config(port: u16, kvrocks: &str) -> TempFile {
    let text = format!(
        "mqtt:\n  server:\n    host: 127.0.0.1\n    tcp-port: {port}\n    websocket-port: 0\n    api-port: 0\n    node-id: crash\n  kvrocks:\n{kvrocks}"
    );
    TempFile::new("limits.yml", text.as_bytes())
}

/// Runs the binary until it exits (it must, within a few seconds): its
/// status and standard error.
fn run_to_exit(config: &TempFile) -> (std::process::ExitStatus, String) {
    let started = Instant::now();
    let output = Command::new(BINARY)
        .args(["-c", config.path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run the binary");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused at once, not after the start-up retries: {:?}",
        started.elapsed()
    );
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// (c) Settings that cannot work stop the binary at start, at once, with a
/// message naming the key: a refused password, and standalone servers
/// listed as a cluster.
#[test]
fn binary_refuses_kvrocks_settings_that_cannot_work() {
    let locked = Server::standalone_with(&["--requirepass", "s3cret"]);
    let port = free_port();
    for password in ["", "    password: wrong\n"] {
        let file = config(
            port,
            &format!("    cluster:\n      nodes: {}\n{password}", locked.node()),
        );
        let (status, stderr) = run_to_exit(&file);
        assert!(!status.success());
        assert!(
            stderr.contains("mqtt.kvrocks.password") && stderr.contains("invalid Kvrocks settings"),
            "{password:?}: {stderr}"
        );
    }
    let (a, b) = (Server::standalone(), Server::standalone());
    let file = config(
        port,
        &format!("    cluster:\n      nodes: {},{}\n", a.node(), b.node()),
    );
    let (status, stderr) = run_to_exit(&file);
    assert!(!status.success());
    assert!(
        stderr.contains("mqtt.kvrocks.cluster.nodes") && stderr.contains("not a cluster node"),
        "{stderr}"
    );
}

/// (d) The Released phase of an outbound QoS 2 message is stored before its
/// PUBREL leaves: while storage hangs, no PUBREL; once the client saw it,
/// a SIGKILL and a restart resume with PUBREL, never with the PUBLISH
/// again (which the client, having forgotten the packet id, would take as
/// a new message).
#[test]
fn sigkill_after_pubrel_resumes_with_pubrel() {
    let redis = Server::standalone();
    let port = free_port();
    let file = config(
        port,
        &format!("    cluster:\n      nodes: {}\n", redis.node()),
    );
    let broker = BrokerProcess::start(&file, port);
    let (mut sub, _) = persistent(broker.addr, "rel-sub");
    assert_eq!(sub.subscribe(1, &[("rel/#", 2)]), vec![2]);
    sub.send(&wire::disconnect());
    sub.expect_closed();
    let mut publisher = RawClient::connect(broker.addr, "rel-pub");
    publisher.send(&wire::publish("rel/1", 2, 1, false, b"once"));
    assert_eq!(publisher.recv().first, 0x50, "PUBREC");
    publisher.send(&wire::pubrel(1));
    assert_eq!(publisher.recv().first, 0x70, "PUBCOMP");
    drop(publisher);

    let (mut sub, present) = persistent(broker.addr, "rel-sub");
    assert!(present);
    let first = sub.recv().publish();
    assert_eq!((first.payload.as_slice(), first.qos), (&b"once"[..], 2));
    let pid = first.packet_id.unwrap();
    // Storage hangs: the PUBREL waits for the Released phase to be stored.
    redis.freeze(true);
    sub.send(&wire::pubrec(pid));
    let held = sub.read(Duration::from_millis(600));
    redis.freeze(false);
    assert!(
        matches!(held, Recv::Timeout),
        "no PUBREL before its phase is stored: {held:?}"
    );
    let rel = sub.recv();
    assert_eq!((rel.first, rel.packet_id()), (0x62, pid), "PUBREL");
    // Killed right after the client saw the PUBREL, before its PUBCOMP.
    broker.kill9();
    drop(sub);

    let broker = BrokerProcess::start(&file, port);
    let (mut sub, present) = persistent(broker.addr, "rel-sub");
    assert!(present, "session present after SIGKILL");
    let again = sub.recv();
    assert_eq!(
        (again.first, again.packet_id()),
        (0x62, pid),
        "PUBREL again, not the PUBLISH: {again:?}"
    );
    sub.send(&wire::pubcomp(pid));
    match sub.read(Duration::from_millis(500)) {
        Recv::Timeout => {}
        other => panic!("nothing more: {other:?}"),
    }
    sub.send(&wire::disconnect());
    sub.expect_closed();
    // Completed: not sent again on the next connection.
    let (mut sub, present) = persistent(broker.addr, "rel-sub");
    assert!(present);
    match sub.read(Duration::from_millis(500)) {
        Recv::Timeout => {}
        other => panic!("completed, nothing more: {other:?}"),
    }
}
