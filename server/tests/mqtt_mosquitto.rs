//! The broker against Debian's `mosquitto_sub` and `mosquitto_pub`
//! (package mosquitto-clients). The tests fail, with what to install, when
//! the programs are missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    MosquittoSub, QUIET, SubMessage, TempFile, TestBroker, WAIT, binary_payload, mosquitto_pub,
    mosquitto_pub_ok,
};

/// Item 1 with mosquitto: QoS 0, 1 and 2, a binary payload from a file
/// arrives byte for byte.
#[test]
fn mosquitto_publish_subscribe_qos_0_1_2_binary_payload() {
    let broker = TestBroker::start();
    let port = broker.port();
    let mut sub = MosquittoSub::spawn(port, &["-q", "2", "-t", "mq/#"]);
    assert_eq!(sub.wait_subscribed(), vec![2]);

    let payload = binary_payload();
    let file = TempFile::new("payload.bin", &payload);
    let path = file.path().to_str().unwrap();
    for qos in ["0", "1", "2"] {
        let topic = format!("mq/{qos}");
        mosquitto_pub_ok(port, &["-q", qos, "-t", &topic, "-f", path]);
        let message = sub.recv();
        assert_eq!(
            message,
            SubMessage {
                topic,
                qos: qos.parse().unwrap(),
                retain: false,
                payload: payload.clone(),
            }
        );
    }
    // An empty message.
    mosquitto_pub_ok(port, &["-q", "1", "-t", "mq/empty", "-n"]);
    assert_eq!(sub.recv().payload, b"");
    sub.expect_no_message(QUIET);
}

/// Item 2 with mosquitto: granted QoS 0 turns a QoS 2 publish into QoS 0.
#[test]
fn mosquitto_delivery_is_downgraded_to_the_granted_qos() {
    let broker = TestBroker::start();
    let port = broker.port();
    let mut low = MosquittoSub::spawn(port, &["-q", "0", "-t", "dg/t"]);
    let mut high = MosquittoSub::spawn(port, &["-q", "2", "-t", "dg/t"]);
    assert_eq!(low.wait_subscribed(), vec![0]);
    assert_eq!(high.wait_subscribed(), vec![2]);
    mosquitto_pub_ok(port, &["-q", "2", "-t", "dg/t", "-m", "two"]);
    mosquitto_pub_ok(port, &["-q", "1", "-t", "dg/t", "-m", "one"]);
    assert_eq!((low.recv().qos, low.recv().qos), (0, 0));
    assert_eq!((high.recv().qos, high.recv().qos), (2, 1));
}

/// Item 5 with mosquitto: `mosquitto_sub -c -i id -q 1` gets the messages
/// published while it was away.
#[test]
fn mosquitto_persistent_session_across_reconnect() {
    let broker = TestBroker::start();
    let port = broker.port();
    // Subscribe, and leave (-E: exit once subscribed, with DISCONNECT).
    let mut first = MosquittoSub::spawn(
        port,
        &[
            "-c",
            "-i",
            "mosq-persist",
            "-q",
            "1",
            "-t",
            "persist/#",
            "-E",
        ],
    );
    assert_eq!(first.wait_subscribed(), vec![1]);
    let (status, messages) = first.messages_until_exit(WAIT);
    assert!(
        status.success() && messages.is_empty(),
        "{status:?} {messages:?}"
    );
    broker.wait_connections(0);

    for i in 1..=5 {
        let qos = if i % 2 == 0 { "2" } else { "1" };
        mosquitto_pub_ok(
            port,
            &["-q", qos, "-t", "persist/t", "-m", &format!("queued {i}")],
        );
    }

    let mut again = MosquittoSub::spawn(
        port,
        &[
            "-c",
            "-i",
            "mosq-persist",
            "-q",
            "1",
            "-t",
            "persist/#",
            "-C",
            "5",
            "-W",
            "10",
        ],
    );
    let (status, messages) = again.messages_until_exit(WAIT);
    assert!(status.success(), "{status:?}: {}", again.stderr());
    let payloads: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    assert_eq!(
        payloads,
        (1..=5).map(|i| format!("queued {i}")).collect::<Vec<_>>()
    );
    assert!(
        messages.iter().all(|m| m.qos == 1),
        "granted QoS 1: {messages:?}"
    );
}

/// Item 8 with mosquitto: a retained message reaches a later subscriber with
/// RETAIN set; `-n -r` clears it.
#[test]
fn mosquitto_retained_message() {
    let broker = TestBroker::start();
    let port = broker.port();
    mosquitto_pub_ok(port, &["-r", "-q", "1", "-t", "mret/t", "-m", "kept"]);
    let mut sub = MosquittoSub::spawn(port, &["-q", "1", "-t", "mret/t"]);
    sub.wait_subscribed();
    let message = sub.recv();
    assert_eq!(
        (message.payload.as_slice(), message.retain),
        (&b"kept"[..], true)
    );

    // Forwarded live, RETAIN is cleared.
    mosquitto_pub_ok(port, &["-r", "-q", "1", "-t", "mret/t", "-m", "live"]);
    let message = sub.recv();
    assert_eq!(
        (message.payload.as_slice(), message.retain),
        (&b"live"[..], false)
    );

    mosquitto_pub_ok(port, &["-r", "-q", "1", "-t", "mret/t", "-n"]);
    assert_eq!(sub.recv().payload, b"");
    let mut late = MosquittoSub::spawn(port, &["-q", "1", "-t", "mret/t"]);
    late.wait_subscribed();
    late.expect_no_message(QUIET);
}

/// Item 9 with mosquitto: killing a mosquitto_sub started with a will
/// publishes it, with its QoS and RETAIN.
#[test]
fn mosquitto_will_on_kill() {
    let broker = TestBroker::start();
    let port = broker.port();
    let mut watcher = MosquittoSub::spawn(port, &["-q", "2", "-t", "mwill/#"]);
    watcher.wait_subscribed();
    let mut doomed = MosquittoSub::spawn(
        port,
        &[
            "-t",
            "other",
            "--will-topic",
            "mwill/gone",
            "--will-payload",
            "killed",
            "--will-qos",
            "1",
            "--will-retain",
        ],
    );
    doomed.wait_subscribed();
    doomed.kill();
    let will = watcher.recv();
    assert_eq!(
        (
            will.topic.as_str(),
            will.payload.as_slice(),
            will.qos,
            will.retain
        ),
        ("mwill/gone", &b"killed"[..], 1, false)
    );
    let mut late = MosquittoSub::spawn(port, &["-q", "2", "-t", "mwill/gone"]);
    late.wait_subscribed();
    let will = late.recv();
    assert_eq!(
        (will.payload.as_slice(), will.retain),
        (&b"killed"[..], true)
    );

    // A mosquitto_sub that exits normally (-E sends DISCONNECT) leaves no will.
    let mut polite = MosquittoSub::spawn(
        port,
        &[
            "-t",
            "other",
            "--will-topic",
            "mwill/polite",
            "--will-payload",
            "no",
            "-E",
        ],
    );
    polite.wait_subscribed();
    assert!(polite.messages_until_exit(WAIT).0.success());
    watcher.expect_no_message(QUIET);
}

/// Item 10 with mosquitto: `#` does not see `$SYS/...`; `$SYS/#` does.
#[test]
fn mosquitto_sys_topic_not_matched_by_hash() {
    let broker = TestBroker::start();
    let port = broker.port();
    let mut all = MosquittoSub::spawn(port, &["-t", "#"]);
    let mut sys = MosquittoSub::spawn(port, &["-t", "$SYS/#"]);
    all.wait_subscribed();
    sys.wait_subscribed();
    mosquitto_pub_ok(port, &["-q", "1", "-t", "$SYS/test", "-m", "sys"]);
    mosquitto_pub_ok(port, &["-q", "1", "-t", "plain", "-m", "marker"]);
    assert_eq!(sys.recv().topic, "$SYS/test");
    // In order per subscriber: the marker comes first if `$SYS/test` never came.
    assert_eq!(all.recv().topic, "plain");
    all.expect_no_message(QUIET);
}

/// Item 7 with mosquitto: a filter beyond max-topic-levels gets 0x80.
#[test]
fn mosquitto_suback_failure_code() {
    let broker = TestBroker::with(|c| c.mqtt.server.max_topic_levels = 2);
    let mut sub = MosquittoSub::spawn(
        broker.port(),
        &["-q", "1", "-t", "l/one", "-t", "l/two/three"],
    );
    assert_eq!(sub.wait_subscribed(), vec![1, 128]);
}

/// MQTT 3.1 (`-V mqttv31`) is served; MQTT 5 (`-V mqttv5`) is refused with
/// "unacceptable protocol version".
#[test]
fn mosquitto_protocol_versions() {
    let broker = TestBroker::start();
    let port = broker.port();
    let mut sub = MosquittoSub::spawn(port, &["-V", "mqttv31", "-q", "1", "-t", "ver/t"]);
    assert_eq!(sub.wait_subscribed(), vec![1]);
    mosquitto_pub_ok(
        port,
        &["-V", "mqttv31", "-q", "2", "-t", "ver/t", "-m", "v31"],
    );
    assert_eq!(sub.recv().payload, b"v31");

    let output = mosquitto_pub(port, &["-V", "mqttv5", "-t", "ver/t", "-m", "v5"]);
    assert!(!output.status.success(), "MQTT 5 accepted: {output:?}");
    let text = format!("{}{}", output.stdout, output.stderr).to_lowercase();
    assert!(text.contains("protocol version"), "{output:?}");
    sub.expect_no_message(QUIET);
}

/// Item 13 with mosquitto: keep-alive above max-keep-alive is refused (CONNACK 2).
#[test]
fn mosquitto_keep_alive_above_maximum_is_refused() {
    let broker = TestBroker::with(|c| c.mqtt.server.max_keep_alive = 20);
    let output = mosquitto_pub(broker.port(), &["-k", "60", "-t", "ka", "-m", "x"]);
    assert!(!output.status.success(), "{output:?}");
    let text = format!("{}{}", output.stdout, output.stderr).to_lowercase();
    assert!(text.contains("identifier rejected"), "{output:?}");
    mosquitto_pub_ok(broker.port(), &["-k", "20", "-t", "ka", "-m", "x"]);
}
