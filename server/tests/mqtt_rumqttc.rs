//! The broker against rumqttc, a third-party MQTT 3.1.1 client: QoS flows,
//! subscriptions, sessions, takeover, retained messages, wills, `$SYS`
//! topics and the configured limits. Raw TCP clients stand in where a
//! polite client cannot misbehave as needed (wills, silent keep-alive).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    Client, ConnectReturnCode, LastWill, QUIET, QoS, RawClient, SubscribeReasonCode, TestBroker,
    binary_payload, options, wire,
};

fn granted(qos: QoS) -> SubscribeReasonCode {
    SubscribeReasonCode::Success(qos)
}

/// Item 1: QoS 0, 1 and 2 from publisher to subscriber, payload bytes intact
/// (NUL, invalid UTF-8, and a payload larger than one read).
#[tokio::test]
async fn qos_0_1_2_publish_subscribe_keeps_payload_bytes() {
    let broker = TestBroker::start();
    let mut sub = Client::connect(broker.addr(), "qos-sub").await;
    let mut publisher = Client::connect(broker.addr(), "qos-pub").await;
    assert_eq!(
        sub.subscribe("qos/#", QoS::ExactlyOnce).await,
        granted(QoS::ExactlyOnce)
    );

    let payload = binary_payload();
    assert!(std::str::from_utf8(&payload).is_err());
    for (topic, qos) in [
        ("qos/0", QoS::AtMostOnce),
        ("qos/1", QoS::AtLeastOnce),
        ("qos/2", QoS::ExactlyOnce),
    ] {
        publisher.publish(topic, qos, false, payload.clone()).await;
        let message = sub.recv().await;
        assert_eq!(message.topic, topic);
        assert_eq!(message.qos, qos, "{topic}");
        assert!(!message.retain);
        assert!(!message.dup);
        assert_eq!(&message.payload[..], &payload[..], "{topic}");
    }

    // 300 KB: spans many socket reads and the broker's write batches.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    publisher
        .publish("qos/big", QoS::AtLeastOnce, false, big.clone())
        .await;
    let message = sub.recv().await;
    assert_eq!(message.payload.len(), big.len());
    assert!(message.payload[..] == big[..], "large payload changed");

    // An empty payload is a message too.
    publisher
        .publish("qos/empty", QoS::ExactlyOnce, false, Vec::new())
        .await;
    let message = sub.recv().await;
    assert_eq!(message.topic, "qos/empty");
    assert!(message.payload.is_empty());

    sub.expect_no_message(QUIET).await;
}

/// Item 2: a message travels at the lower of its QoS and the granted QoS.
#[tokio::test]
async fn delivery_is_downgraded_to_the_granted_qos() {
    let broker = TestBroker::start();
    let mut low = Client::connect(broker.addr(), "down-low").await;
    let mut high = Client::connect(broker.addr(), "down-high").await;
    let mut publisher = Client::connect(broker.addr(), "down-pub").await;
    assert_eq!(
        low.subscribe("down/low", QoS::AtMostOnce).await,
        granted(QoS::AtMostOnce)
    );
    assert_eq!(
        high.subscribe("down/high", QoS::ExactlyOnce).await,
        granted(QoS::ExactlyOnce)
    );

    publisher
        .publish("down/low", QoS::ExactlyOnce, false, "two-to-zero")
        .await;
    let message = low.recv().await;
    assert_eq!(message.qos, QoS::AtMostOnce);
    assert_eq!(&message.payload[..], b"two-to-zero");

    publisher
        .publish("down/high", QoS::AtLeastOnce, false, "stays-one")
        .await;
    let message = high.recv().await;
    assert_eq!(message.qos, QoS::AtLeastOnce);
    assert_eq!(&message.payload[..], b"stays-one");

    publisher
        .publish("down/high", QoS::AtMostOnce, false, "stays-zero")
        .await;
    assert_eq!(high.recv().await.qos, QoS::AtMostOnce);
}

/// Item 3: two matching subscriptions of one client give one delivery, at
/// the highest granted QoS [MQTT-3.3.5-1].
#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let broker = TestBroker::start();
    let mut sub = Client::connect(broker.addr(), "overlap-sub").await;
    let mut publisher = Client::connect(broker.addr(), "overlap-pub").await;
    let codes = sub
        .subscribe_many(&[("a/#", QoS::AtMostOnce), ("a/+", QoS::ExactlyOnce)])
        .await;
    assert_eq!(
        codes,
        vec![granted(QoS::AtMostOnce), granted(QoS::ExactlyOnce)]
    );

    publisher
        .publish("a/b", QoS::ExactlyOnce, false, "both match")
        .await;
    // Only `a/#` matches this one, so it arrives at QoS 0; it also marks the
    // end of whatever the first publish produced.
    publisher
        .publish("a/b/c", QoS::ExactlyOnce, false, "one matches")
        .await;

    let first = sub.recv().await;
    assert_eq!((first.topic.as_str(), first.qos), ("a/b", QoS::ExactlyOnce));
    let second = sub.recv().await;
    assert_eq!(
        (second.topic.as_str(), second.qos),
        ("a/b/c", QoS::AtMostOnce),
        "a/b must be delivered once"
    );
    sub.expect_no_message(QUIET).await;
}

/// Item 4: a clean session starts without a session and leaves nothing behind.
#[tokio::test]
async fn clean_session_has_no_session_present_and_forgets_subscriptions() {
    let broker = TestBroker::start();
    let mut publisher = Client::connect(broker.addr(), "clean-pub").await;

    let (mut first, connack) = Client::connect_session(broker.addr(), "clean-1", true).await;
    assert!(!connack.session_present);
    assert_eq!(
        first.subscribe("clean/t", QoS::AtLeastOnce).await,
        granted(QoS::AtLeastOnce)
    );
    first.disconnect().await;

    let (mut again, connack) = Client::connect_session(broker.addr(), "clean-1", true).await;
    assert!(!connack.session_present, "a clean session never resumes");
    publisher
        .publish("clean/t", QoS::AtLeastOnce, false, "nobody")
        .await;
    again.expect_no_message(QUIET).await;
    again.disconnect().await;

    // A persistent session is discarded by a clean connect too.
    let (mut persistent, connack) = Client::connect_session(broker.addr(), "clean-2", false).await;
    assert!(!connack.session_present);
    persistent.subscribe("clean/p", QoS::AtLeastOnce).await;
    persistent.disconnect().await;
    let (mut clean, connack) = Client::connect_session(broker.addr(), "clean-2", true).await;
    assert!(!connack.session_present);
    publisher
        .publish("clean/p", QoS::AtLeastOnce, false, "nobody")
        .await;
    clean.expect_no_message(QUIET).await;
    clean.disconnect().await;
    // ... and after that clean session, a persistent connect starts afresh.
    let (persistent, connack) = Client::connect_session(broker.addr(), "clean-2", false).await;
    assert!(!connack.session_present);
    persistent.disconnect().await;

    broker.wait_connections(1);
    assert_eq!(
        broker.node().session_count(),
        2,
        "clean-pub and clean-2 (persistent)"
    );
}

/// Item 5: a persistent session keeps its subscriptions and queues QoS 1 and
/// QoS 2 messages while the client is away; they arrive in order, once each.
#[tokio::test]
async fn persistent_session_queues_messages_while_offline() {
    let broker = TestBroker::start();
    let (mut sub, connack) = Client::connect_session(broker.addr(), "persist", false).await;
    assert!(!connack.session_present);
    let codes = sub
        .subscribe_many(&[("p/1", QoS::AtLeastOnce), ("p/2", QoS::ExactlyOnce)])
        .await;
    assert_eq!(
        codes,
        vec![granted(QoS::AtLeastOnce), granted(QoS::ExactlyOnce)]
    );
    sub.disconnect().await;

    let mut publisher = Client::connect(broker.addr(), "persist-pub").await;
    // QoS 0 is not kept for an offline client.
    publisher
        .publish("p/1", QoS::AtMostOnce, false, "dropped")
        .await;
    let sent = [
        ("p/1", QoS::AtLeastOnce, "m1"),
        ("p/2", QoS::ExactlyOnce, "m2"),
        ("p/1", QoS::AtLeastOnce, "m3"),
        ("p/2", QoS::ExactlyOnce, "m4"),
        ("p/2", QoS::AtLeastOnce, "m5"),
    ];
    for (topic, qos, payload) in sent {
        publisher.publish(topic, qos, false, payload).await;
    }
    // Routed before the acknowledged publishes that followed it.
    assert_eq!(broker.metric(|m| &m.dropped_offline_qos0), 1);

    let (mut sub, connack) = Client::connect_session(broker.addr(), "persist", false).await;
    assert!(connack.session_present);
    for (topic, qos, payload) in sent {
        let message = sub.recv().await;
        assert_eq!(
            (message.topic.as_str(), message.qos, &message.payload[..]),
            (topic, qos, payload.as_bytes())
        );
    }
    sub.expect_no_message(QUIET).await;

    // The subscriptions survived as well.
    publisher
        .publish("p/2", QoS::ExactlyOnce, false, "live")
        .await;
    assert_eq!(&sub.recv().await.payload[..], b"live");
}

/// Item 6: a second connection with the same client id takes over; the
/// first is closed, the second works, one live connection per id.
#[tokio::test]
async fn takeover_closes_the_older_connection() {
    let broker = TestBroker::start();
    let mut publisher = Client::connect(broker.addr(), "takeover-pub").await;
    let (mut first, _) = Client::connect_session(broker.addr(), "same-id", false).await;
    first.subscribe("take/t", QoS::AtLeastOnce).await;

    let (mut second, connack) = Client::connect_session(broker.addr(), "same-id", false).await;
    assert!(
        connack.session_present,
        "the session moved to the new connection"
    );
    first.expect_closed().await;
    broker.wait_connections(2);
    assert_eq!(broker.node().session_count(), 2);

    // The subscription moved along with the session.
    publisher
        .publish("take/t", QoS::AtLeastOnce, false, "to the second")
        .await;
    assert_eq!(&second.recv().await.payload[..], b"to the second");
    assert_eq!(
        second.subscribe("take/u", QoS::AtMostOnce).await,
        granted(QoS::AtMostOnce)
    );
    publisher
        .publish("take/u", QoS::AtMostOnce, false, "u")
        .await;
    assert_eq!(&second.recv().await.payload[..], b"u");

    // A clean takeover discards the session.
    let (mut third, connack) = Client::connect_session(broker.addr(), "same-id", true).await;
    assert!(!connack.session_present);
    second.expect_closed().await;
    broker.wait_connections(2);
    publisher
        .publish("take/t", QoS::AtLeastOnce, false, "nobody")
        .await;
    third.expect_no_message(QUIET).await;
}

/// Item 7: one SUBACK code per filter, 0x80 for a filter beyond max-topic-levels.
#[tokio::test]
async fn suback_has_one_code_per_filter_and_refuses_deep_filters() {
    let broker = TestBroker::with(|c| c.mqtt.server.max_topic_levels = 3);
    let mut sub = Client::connect(broker.addr(), "suback").await;
    let mut publisher = Client::connect(broker.addr(), "suback-pub").await;
    let codes = sub
        .subscribe_many(&[
            ("s/a", QoS::AtMostOnce),
            ("s/b/c", QoS::AtLeastOnce),
            ("s/+/#", QoS::ExactlyOnce),
            ("s/b/c/d", QoS::AtLeastOnce),
        ])
        .await;
    assert_eq!(
        codes,
        vec![
            granted(QoS::AtMostOnce),
            granted(QoS::AtLeastOnce),
            granted(QoS::ExactlyOnce),
            SubscribeReasonCode::Failure,
        ]
    );
    // The granted filters work; `s/b/c` matches two of them, so QoS 2.
    publisher
        .publish("s/b/c", QoS::ExactlyOnce, false, "x")
        .await;
    let message = sub.recv().await;
    assert_eq!(
        (message.topic.as_str(), message.qos),
        ("s/b/c", QoS::ExactlyOnce)
    );
    sub.expect_no_message(QUIET).await;
}

/// Item 8: retained messages are stored, replaced and cleared; sent with
/// RETAIN on subscription; forwarded with RETAIN cleared to existing subscribers.
#[tokio::test]
async fn retained_messages_store_replace_clear() {
    let broker = TestBroker::start();
    let mut publisher = Client::connect(broker.addr(), "ret-pub").await;
    let mut existing = Client::connect(broker.addr(), "ret-existing").await;
    existing.subscribe("ret/#", QoS::AtLeastOnce).await;

    publisher
        .publish("ret/a", QoS::AtLeastOnce, true, "one")
        .await;
    publisher
        .publish("ret/a", QoS::AtLeastOnce, true, "two")
        .await;
    publisher
        .publish("ret/b", QoS::AtMostOnce, true, "bee")
        .await;
    for payload in ["one", "two", "bee"] {
        let message = existing.recv().await;
        assert_eq!(&message.payload[..], payload.as_bytes());
        assert!(
            !message.retain,
            "a normal forward clears RETAIN [MQTT-3.3.1-9]"
        );
    }

    // A new subscriber gets the latest retained message per topic, RETAIN set.
    let mut late = Client::connect(broker.addr(), "ret-late").await;
    late.subscribe("ret/a", QoS::ExactlyOnce).await;
    let message = late.recv().await;
    assert_eq!((&message.payload[..], message.retain), (&b"two"[..], true));
    assert_eq!(
        message.qos,
        QoS::AtLeastOnce,
        "min(publish QoS, granted QoS)"
    );
    late.expect_no_message(QUIET).await;

    // Subscribing with a wildcard gets both topics.
    let mut wild = Client::connect(broker.addr(), "ret-wild").await;
    wild.subscribe("ret/+", QoS::AtMostOnce).await;
    let mut got: Vec<(String, Vec<u8>, bool)> = Vec::new();
    for _ in 0..2 {
        let m = wild.recv().await;
        got.push((m.topic.clone(), m.payload.to_vec(), m.retain));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("ret/a".into(), b"two".to_vec(), true),
            ("ret/b".into(), b"bee".to_vec(), true)
        ]
    );

    // An empty retained payload clears the topic; it is forwarded as usual.
    publisher
        .publish("ret/a", QoS::AtLeastOnce, true, Vec::new())
        .await;
    let message = existing.recv().await;
    assert!(message.payload.is_empty() && !message.retain);
    let mut after = Client::connect(broker.addr(), "ret-after").await;
    after.subscribe("ret/a", QoS::AtLeastOnce).await;
    after.expect_no_message(QUIET).await;

    // A non-retained publish does not touch the stored message.
    publisher
        .publish("ret/b", QoS::AtMostOnce, false, "not kept")
        .await;
    let mut again = Client::connect(broker.addr(), "ret-again").await;
    again.subscribe("ret/b", QoS::AtMostOnce).await;
    let message = again.recv().await;
    assert_eq!((&message.payload[..], message.retain), (&b"bee"[..], true));
}

/// Item 9: the will is published when the socket closes without DISCONNECT.
#[tokio::test]
async fn will_is_published_on_abrupt_close() {
    let broker = TestBroker::start();
    let mut watcher = Client::connect(broker.addr(), "will-watch").await;
    watcher.subscribe("will/#", QoS::ExactlyOnce).await;

    let (raw, _) = RawClient::connect_with(
        broker.addr(),
        &wire::Connect::new("will-raw").will("will/raw", b"raw gone", 1, false),
    );
    drop(raw);
    let will = watcher.recv().await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("will/raw", &b"raw gone"[..])
    );
    assert_eq!(will.qos, QoS::AtLeastOnce);
    assert!(!will.retain);

    // rumqttc's own will, when its connection is dropped.
    let mut opts = options(broker.addr(), "will-rumqttc");
    opts.set_last_will(LastWill::new(
        "will/rumqttc",
        "bye",
        QoS::ExactlyOnce,
        false,
    ));
    let (client, _) = Client::connect_opts(opts).await;
    client.kill();
    let will = watcher.recv().await;
    assert_eq!(
        (will.topic.as_str(), will.qos),
        ("will/rumqttc", QoS::ExactlyOnce)
    );
    assert_eq!(broker.metric(|m| &m.wills_published), 2);
}

/// Item 9: the will of a silent client is published once 1.5 × keep-alive passed.
#[tokio::test]
async fn will_is_published_on_keep_alive_expiry() {
    let broker = TestBroker::start();
    let mut watcher = Client::connect(broker.addr(), "ka-watch").await;
    watcher.subscribe("ka/will", QoS::AtLeastOnce).await;

    let started = Instant::now();
    let (mut silent, _) = RawClient::connect_with(
        broker.addr(),
        &wire::Connect::new("ka-silent")
            .keep_alive(1)
            .will("ka/will", b"timed out", 1, false),
    );
    let will = watcher.recv().await;
    let elapsed = started.elapsed();
    assert_eq!(&will.payload[..], b"timed out");
    assert!(
        elapsed >= Duration::from_millis(1400) && elapsed < Duration::from_secs(5),
        "will after {elapsed:?}, expected about 1.5 s"
    );
    assert!(silent.expect_closed().is_empty());
}

/// Item 9: a protocol error ends the connection and publishes the will.
#[tokio::test]
async fn will_is_published_on_protocol_error() {
    let broker = TestBroker::start();
    let mut watcher = Client::connect(broker.addr(), "perr-watch").await;
    watcher.subscribe("perr/will", QoS::AtLeastOnce).await;
    let (mut bad, _) = RawClient::connect_with(
        broker.addr(),
        &wire::Connect::new("perr").will("perr/will", b"broke the rules", 0, false),
    );
    // SUBSCRIBE with reserved flags 0000 instead of 0010 [MQTT-3.8.1-1].
    let mut subscribe = wire::subscribe(1, &[("x", 0)]);
    subscribe[0] = 0x80;
    bad.send(&subscribe);
    assert!(bad.expect_closed().is_empty());
    let will = watcher.recv().await;
    assert_eq!(
        (&will.payload[..], will.qos),
        (&b"broke the rules"[..], QoS::AtMostOnce)
    );
    assert_eq!(broker.metric(|m| &m.protocol_errors), 1);
}

/// Item 9: DISCONNECT discards the will [MQTT-3.1.2-10].
#[tokio::test]
async fn will_is_not_published_after_disconnect() {
    let broker = TestBroker::start();
    let mut watcher = Client::connect(broker.addr(), "nowill-watch").await;
    watcher.subscribe("nowill/#", QoS::AtLeastOnce).await;

    let (mut polite, _) = RawClient::connect_with(
        broker.addr(),
        &wire::Connect::new("nowill-raw").will("nowill/raw", b"must not", 1, true),
    );
    polite.send(&wire::disconnect());
    assert!(polite.expect_closed().is_empty());

    let mut opts = options(broker.addr(), "nowill-rumqttc");
    opts.set_last_will(LastWill::new(
        "nowill/rumqttc",
        "must not",
        QoS::AtLeastOnce,
        false,
    ));
    let (client, _) = Client::connect_opts(opts).await;
    client.disconnect().await;

    watcher.expect_no_message(QUIET).await;
    assert_eq!(broker.metric(|m| &m.wills_published), 0);
    // Nor was it retained.
    let mut late = Client::connect(broker.addr(), "nowill-late").await;
    late.subscribe("nowill/#", QoS::AtLeastOnce).await;
    late.expect_no_message(QUIET).await;
}

/// Item 9: the will's QoS and RETAIN are honoured; a retained will reaches a
/// later subscriber with RETAIN set.
#[tokio::test]
async fn will_qos_and_retain_are_honoured() {
    let broker = TestBroker::start();
    let mut watcher = Client::connect(broker.addr(), "wr-watch").await;
    watcher.subscribe("wr/#", QoS::ExactlyOnce).await;

    let (raw, _) = RawClient::connect_with(
        broker.addr(),
        &wire::Connect::new("wr-raw").will("wr/status", b"offline", 2, true),
    );
    drop(raw);
    let will = watcher.recv().await;
    assert_eq!(
        (&will.payload[..], will.qos, will.retain),
        (&b"offline"[..], QoS::ExactlyOnce, false)
    );

    let mut late = Client::connect(broker.addr(), "wr-late").await;
    late.subscribe("wr/status", QoS::AtLeastOnce).await;
    let will = late.recv().await;
    assert_eq!(
        (&will.payload[..], will.qos, will.retain),
        (&b"offline"[..], QoS::AtLeastOnce, true)
    );
}

/// Item 10: `#` and `+` do not match `$SYS/...` topics [MQTT-4.7.2-1];
/// `$SYS/#` does.
#[tokio::test]
async fn sys_topics_are_not_matched_by_leading_wildcards() {
    let broker = TestBroker::start();
    let mut all = Client::connect(broker.addr(), "sys-all").await;
    let mut plus = Client::connect(broker.addr(), "sys-plus").await;
    let mut sys = Client::connect(broker.addr(), "sys-sys").await;
    let mut publisher = Client::connect(broker.addr(), "sys-pub").await;
    all.subscribe("#", QoS::AtLeastOnce).await;
    plus.subscribe("+/test", QoS::AtLeastOnce).await;
    sys.subscribe("$SYS/#", QoS::AtLeastOnce).await;

    publisher
        .publish("$SYS/test", QoS::AtLeastOnce, false, "sys")
        .await;
    publisher
        .publish("other/test", QoS::AtLeastOnce, false, "marker")
        .await;

    let message = sys.recv().await;
    assert_eq!(
        (message.topic.as_str(), &message.payload[..]),
        ("$SYS/test", &b"sys"[..])
    );
    // Messages to one subscriber keep their order: had `$SYS/test` been
    // delivered to `#` or `+/test`, it would come before the marker.
    assert_eq!(all.recv().await.topic, "other/test");
    assert_eq!(plus.recv().await.topic, "other/test");
    sys.expect_no_message(QUIET).await;
}

/// Item 11: an empty client id is accepted with a clean session (an id is
/// assigned) and refused with CONNACK 2 otherwise [MQTT-3.1.3-8].
#[tokio::test]
async fn empty_client_id_needs_a_clean_session() {
    let broker = TestBroker::start();
    let (mut anonymous, connack) = Client::connect_session(broker.addr(), "", true).await;
    assert!(!connack.session_present);
    let (mut second, _) = Client::connect_session(broker.addr(), "", true).await;
    // Two anonymous clients are two sessions, not a takeover.
    anonymous.subscribe("anon/t", QoS::AtLeastOnce).await;
    second
        .publish("anon/t", QoS::AtLeastOnce, false, "hi")
        .await;
    assert_eq!(&anonymous.recv().await.payload[..], b"hi");
    assert_eq!(broker.node().session_count(), 2);

    // rumqttc refuses to send this, so raw bytes.
    let (mut raw, connack) =
        RawClient::connect_with(broker.addr(), &wire::Connect::new("").clean(false));
    assert_eq!(connack, (false, 2));
    assert!(raw.expect_closed().is_empty());
}

/// Item 13: max-connections. The connection over the limit is closed
/// without CONNACK; a slot freed is usable again.
#[tokio::test]
async fn max_connections_closes_the_extra_connection() {
    let broker = TestBroker::with(|c| c.mqtt.server.max_connections = 2);
    let first = Client::connect(broker.addr(), "limit-1").await;
    let _second = Client::connect(broker.addr(), "limit-2").await;

    let mut third = RawClient::open(broker.addr());
    third.send_lossy(&wire::Connect::new("limit-3").encode());
    assert!(
        third.expect_closed().is_empty(),
        "no CONNACK over the limit"
    );
    let refused = rumqttc_refused(broker.addr(), "limit-4").await;
    assert!(refused.is_some(), "rumqttc got a CONNACK over the limit");
    assert_eq!(broker.metric(|m| &m.connections_refused_limit), 2);

    first.disconnect().await;
    broker.wait_connections(1);
    let mut again = Client::connect(broker.addr(), "limit-5").await;
    again.subscribe("x", QoS::AtMostOnce).await;
}

/// Connects with rumqttc; `Some(error)` when it failed.
async fn rumqttc_refused(addr: std::net::SocketAddr, id: &str) -> Option<String> {
    match Client::try_connect(options(addr, id)).await {
        Ok(_) => None,
        Err(error) => Some(error.to_string()),
    }
}

/// Item 13: a packet over max-packet-size closes that connection only.
#[tokio::test]
async fn oversized_publish_closes_only_that_connection() {
    let broker = TestBroker::with(|c| c.mqtt.server.max_packet_size = 1024);
    let mut sub = Client::connect(broker.addr(), "size-sub").await;
    sub.subscribe("size/#", QoS::AtLeastOnce).await;
    let mut big = Client::connect(broker.addr(), "size-big").await;
    let mut small = Client::connect(broker.addr(), "size-small").await;

    big.client
        .publish("size/big", QoS::AtLeastOnce, false, vec![7u8; 2000])
        .await
        .unwrap();
    big.expect_closed().await;

    // Right at the limit: 3 (fixed header) + 2 + 6 ("size/x") + 2 (id) + 1011 = 1024.
    small
        .publish("size/x", QoS::AtLeastOnce, false, vec![1u8; 1011])
        .await;
    let message = sub.recv().await;
    assert_eq!(message.payload.len(), 1011);
    sub.expect_no_message(QUIET).await;
}

/// Item 13: keep-alive above max-keep-alive is refused with CONNACK 2; below
/// min-keep-alive (0 included) it is raised to the minimum.
#[tokio::test]
async fn keep_alive_bounds() {
    let broker = TestBroker::with(|c| {
        c.mqtt.server.min_keep_alive = 1;
        c.mqtt.server.max_keep_alive = 30;
    });
    let mut opts = options(broker.addr(), "ka-high");
    opts.set_keep_alive(Duration::from_secs(31));
    match Client::try_connect(opts).await.map_err(|e| *e) {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::BadClientId)
        }
        Err(other) => panic!("expected CONNACK 2, got {other}"),
        Ok(_) => panic!("keep-alive 31 accepted with max-keep-alive 30"),
    }
    let mut opts = options(broker.addr(), "ka-max");
    opts.set_keep_alive(Duration::from_secs(30));
    let (_ok, _) = Client::connect_opts(opts).await;

    // Asking for no keep-alive is held to 1 s: silence ends it after 1.5 s.
    let started = Instant::now();
    let (mut silent, _) =
        RawClient::connect_with(broker.addr(), &wire::Connect::new("ka-zero").keep_alive(0));
    assert!(silent.expect_closed().is_empty());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1400) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
}

/// Item 13: a TCP connection that sends nothing is closed after connect-timeout.
#[tokio::test]
async fn connect_timeout_closes_a_silent_socket() {
    let broker = TestBroker::with(|c| c.mqtt.server.connect_timeout = 1);
    let started = Instant::now();
    let mut idle = RawClient::open(broker.addr());
    assert!(idle.expect_closed().is_empty());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
    broker.wait_connections(0);
    let _ok = Client::connect(broker.addr(), "after-timeout").await;
}

/// Shutdown closes every client's connection and publishes no will.
#[tokio::test]
async fn shutdown_closes_connections_without_wills() {
    let broker = TestBroker::start();
    let mut watcher = Client::connect(broker.addr(), "sd-watch").await;
    watcher.subscribe("sd/#", QoS::AtLeastOnce).await;
    let mut opts = options(broker.addr(), "sd-will");
    opts.set_last_will(LastWill::new("sd/will", "no", QoS::AtLeastOnce, false));
    let (mut with_will, _) = Client::connect_opts(opts).await;
    let node = broker.node().clone();
    broker.shutdown().await;
    watcher.expect_closed().await;
    with_will.expect_closed().await;
    assert_eq!(
        easy_mqtt_server::metrics::Metrics::get(&node.metrics.wills_published),
        0
    );
    assert_eq!(
        easy_mqtt_server::metrics::Metrics::get(&node.metrics.connections_current),
        0
    );
}

/// Topic filter matching (section 4.7), end to end.
#[tokio::test]
async fn topic_filters_match_as_specified() {
    let broker = TestBroker::start();
    let mut publisher = Client::connect(broker.addr(), "match-pub").await;
    let cases: &[(&str, &[&str], &[&str])] = &[
        // filter, topics that match, topics that do not
        (
            "sport/tennis/player1/#",
            &[
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon",
            ],
            &["sport/tennis/player2", "sport/tennis"],
        ),
        ("sport/#", &["sport"], &["sports", "other/sport"]),
        (
            "sport/tennis/+",
            &["sport/tennis/player1"],
            &["sport/tennis/player1/ranking", "sport/tennis"],
        ),
        ("sport/+", &["sport/"], &["sport"]),
        ("+/+", &["/finance", "a/b"], &["a", "a/b/c"]),
        ("/+", &["/finance"], &["finance", "a/b"]),
        ("+", &["finance"], &["/finance", "$SYS"]),
        ("a/+/c", &["a/b/c", "a//c"], &["a/c", "a/b/b/c"]),
        ("A/b", &["A/b"], &["a/b", "A/b/"]),
    ];
    for (i, (filter, yes, no)) in cases.iter().enumerate() {
        let mut sub = Client::connect(broker.addr(), &format!("match-{i}")).await;
        sub.subscribe(filter, QoS::AtLeastOnce).await;
        // The topics that must not match go first: in a subscriber's
        // ordered stream, any of them would show up before the first match.
        for topic in no.iter().chain(yes.iter()) {
            publisher
                .publish(topic, QoS::AtLeastOnce, false, topic.as_bytes())
                .await;
        }
        for topic in *yes {
            assert_eq!(sub.recv().await.topic, *topic, "filter {filter}");
        }
        sub.disconnect().await;
    }
}

/// A SUBSCRIBE to a filter already subscribed replaces its QoS and sends the
/// retained messages again [MQTT-3.8.4-3]; UNSUBSCRIBE of one filter keeps
/// the others.
#[tokio::test]
async fn resubscribe_replaces_the_subscription() {
    let broker = TestBroker::start();
    let mut publisher = Client::connect(broker.addr(), "resub-pub").await;
    publisher
        .publish("resub/t", QoS::ExactlyOnce, true, "retained")
        .await;
    let mut sub = Client::connect(broker.addr(), "resub").await;
    sub.subscribe("resub/t", QoS::ExactlyOnce).await;
    let message = sub.recv().await;
    assert_eq!((message.qos, message.retain), (QoS::ExactlyOnce, true));

    assert_eq!(
        sub.subscribe("resub/t", QoS::AtMostOnce).await,
        granted(QoS::AtMostOnce)
    );
    let message = sub.recv().await;
    assert_eq!(
        (message.qos, message.retain),
        (QoS::AtMostOnce, true),
        "retained sent again"
    );
    publisher
        .publish("resub/t", QoS::ExactlyOnce, false, "live")
        .await;
    let message = sub.recv().await;
    assert_eq!(
        (&message.payload[..], message.qos),
        (&b"live"[..], QoS::AtMostOnce),
        "QoS replaced"
    );
    sub.expect_no_message(QUIET).await;

    sub.subscribe("resub/#", QoS::AtLeastOnce).await;
    let _retained = sub.recv().await;
    sub.client.unsubscribe("resub/t").await.unwrap();
    sub.wait_for("UNSUBACK", |e| {
        matches!(e, common::Event::Incoming(common::Incoming::UnsubAck(_))).then_some(())
    })
    .await;
    publisher
        .publish("resub/t", QoS::ExactlyOnce, false, "via #")
        .await;
    let message = sub.recv().await;
    assert_eq!(
        (&message.payload[..], message.qos),
        (&b"via #"[..], QoS::AtLeastOnce)
    );
    sub.expect_no_message(QUIET).await;
}

/// Retained `$SYS/...` messages are not sent for `#` or `+/...` subscriptions.
#[tokio::test]
async fn retained_sys_topics_are_not_matched_by_leading_wildcards() {
    let broker = TestBroker::start();
    let mut publisher = Client::connect(broker.addr(), "rsys-pub").await;
    publisher
        .publish("$SYS/retained", QoS::AtLeastOnce, true, "sys")
        .await;
    publisher
        .publish("plain/retained", QoS::AtLeastOnce, true, "plain")
        .await;
    for filter in ["#", "+/retained"] {
        let mut sub = Client::connect(broker.addr(), "rsys-wild").await;
        sub.subscribe(filter, QoS::AtLeastOnce).await;
        assert_eq!(sub.recv().await.topic, "plain/retained", "{filter}");
        sub.expect_no_message(QUIET).await;
        sub.disconnect().await;
    }
    let mut sys = Client::connect(broker.addr(), "rsys-sys").await;
    sys.subscribe("$SYS/#", QoS::AtLeastOnce).await;
    assert_eq!(sys.recv().await.topic, "$SYS/retained");
}
