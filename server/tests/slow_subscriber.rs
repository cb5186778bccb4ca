//! Item 12: a subscriber that stops reading must cost the broker a bounded
//! amount of memory and must slow down neither the publisher nor the other
//! subscribers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, Event, Incoming, QUIET, QoS, RawClient, TestBroker, options, wire};

const MESSAGES: usize = 20_000;
const PAYLOAD: usize = 1024;
const MAX_INFLIGHT: u16 = 10;
const MAX_QUEUED: usize = 500;
/// The publisher stays at most this many messages ahead of the healthy
/// subscriber, so that the healthy subscriber's queue (bounded by
/// MAX_QUEUED like every other) never overflows: it must lose nothing.
const AHEAD: usize = 200;
/// Everything must be done well within this.
const BUDGET: Duration = Duration::from_secs(60);

fn payload(seq: usize) -> Vec<u8> {
    let mut payload = vec![(seq % 251) as u8; PAYLOAD];
    payload[..4].copy_from_slice(&(seq as u32).to_be_bytes());
    payload
}

fn seq_of(payload: &[u8]) -> usize {
    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize
}

/// One stuck session keeps MAX_INFLIGHT messages in flight and, depending
/// on when its connection last moved messages into its window, between
/// MAX_QUEUED - MAX_INFLIGHT and MAX_QUEUED in its queue; the rest of the
/// messages were dropped for it.
fn assert_dropped_for_one_stuck_session(dropped: usize) {
    let most = MESSAGES - MAX_QUEUED;
    let least = most - usize::from(MAX_INFLIGHT);
    assert!(
        (least..=most).contains(&dropped),
        "dropped {dropped}, expected {least}..={most}"
    );
}

#[tokio::test]
async fn slow_subscriber_does_not_block_publisher_or_healthy_subscriber() {
    let broker = TestBroker::with(|c| {
        c.mqtt.server.max_inflight = MAX_INFLIGHT;
        c.mqtt.server.max_queued_messages = MAX_QUEUED as u32;
    });

    // The slow subscriber: subscribes at QoS 1, then never reads nor acks.
    let mut slow = RawClient::connect(broker.addr(), "slow");
    assert_eq!(slow.subscribe(1, &[("load/t", 1)]), vec![1]);

    let mut healthy = Client::connect(broker.addr(), "healthy").await;
    healthy.subscribe("load/t", QoS::AtLeastOnce).await;
    let mut opts = options(broker.addr(), "load-pub");
    opts.set_inflight(100);
    let (mut publisher, _) = Client::connect_opts(opts).await;

    let started = Instant::now();
    let mut sent = 0usize;
    let mut acked = 0usize;
    let mut received = 0usize;
    let run = async {
        while received < MESSAGES || acked < MESSAGES {
            while sent < MESSAGES && sent - received < AHEAD {
                publisher
                    .client
                    .publish("load/t", QoS::AtLeastOnce, false, payload(sent))
                    .await
                    .unwrap();
                sent += 1;
            }
            tokio::select! {
                event = healthy.next_event_forever() => match event {
                    Ok(Event::Incoming(Incoming::Publish(message))) => {
                        assert_eq!(seq_of(&message.payload), received, "healthy subscriber: lost or reordered");
                        assert_eq!(message.payload.len(), PAYLOAD);
                        received += 1;
                    }
                    Ok(_) => {}
                    Err(error) => panic!("healthy subscriber disconnected: {error}"),
                },
                event = publisher.next_event_forever() => match event {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(error) => panic!("publisher disconnected: {error}"),
                },
            }
        }
    };
    if tokio::time::timeout(BUDGET, run).await.is_err() {
        panic!(
            "stalled after {:?}: sent {sent}, acked {acked}, healthy received {received}",
            started.elapsed()
        );
    }
    let elapsed = started.elapsed();
    assert_eq!((acked, received), (MESSAGES, MESSAGES));
    eprintln!("{MESSAGES} messages of {PAYLOAD} B through a stuck subscriber in {elapsed:?}");

    // The stuck session holds MAX_INFLIGHT messages in flight and up to
    // MAX_QUEUED in its queue; everything else was dropped for it.
    assert_eq!(broker.metric(|m| &m.publishes_received), MESSAGES as u64);
    let dropped = broker.metric(|m| &m.dropped_queue_full) as usize;
    assert_dropped_for_one_stuck_session(dropped);

    // The slow subscriber's socket holds just the in-flight window.
    let mut in_flight = Vec::new();
    for _ in 0..MAX_INFLIGHT {
        let message = slow.recv_publish();
        assert_eq!((message.qos, message.dup), (1, false));
        in_flight.push(message);
    }
    slow.expect_silence(QUIET);
    let seqs: Vec<usize> = in_flight.iter().map(|m| seq_of(&m.payload)).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in-flight order: {seqs:?}"
    );

    // Once it acknowledges, it gets its queue: the newest MAX_QUEUED
    // messages (drop-oldest), in order.
    for message in &in_flight {
        slow.send(&wire::puback(message.packet_id.unwrap()));
    }
    let first = slow.recv_publish();
    slow.send(&wire::puback(first.packet_id.unwrap()));
    let first = seq_of(&first.payload);
    let queued = MESSAGES - first;
    assert!(
        (MAX_QUEUED - usize::from(MAX_INFLIGHT)..=MAX_QUEUED).contains(&queued),
        "{queued} messages were queued"
    );
    assert_eq!(dropped, MESSAGES - usize::from(MAX_INFLIGHT) - queued);
    for expected in first + 1..MESSAGES {
        let message = slow.recv_publish();
        assert_eq!(seq_of(&message.payload), expected);
        slow.send(&wire::puback(message.packet_id.unwrap()));
    }
    slow.expect_silence(QUIET);
    healthy.expect_no_message(Duration::from_millis(50)).await;
}

/// The publisher, unpaced, gets every PUBACK while the only subscriber is stuck.
#[tokio::test]
async fn publisher_is_not_throttled_by_a_stuck_subscriber() {
    let broker = TestBroker::with(|c| {
        c.mqtt.server.max_inflight = MAX_INFLIGHT;
        c.mqtt.server.max_queued_messages = MAX_QUEUED as u32;
    });
    let mut slow = RawClient::connect(broker.addr(), "stuck");
    assert_eq!(slow.subscribe(1, &[("burst/t", 1)]), vec![1]);
    let mut opts = options(broker.addr(), "burst-pub");
    opts.set_inflight(500);
    let (mut publisher, _) = Client::connect_opts(opts).await;

    let started = Instant::now();
    let mut sent = 0usize;
    let mut acked = 0usize;
    let run = async {
        while acked < MESSAGES {
            // As many as the request channel takes; never a cancelled send.
            while sent < MESSAGES
                && publisher
                    .client
                    .try_publish("burst/t", QoS::AtLeastOnce, false, payload(sent))
                    .is_ok()
            {
                sent += 1;
            }
            match publisher.next_event_forever().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(error) => panic!("publisher disconnected: {error}"),
            }
        }
    };
    if tokio::time::timeout(BUDGET, run).await.is_err() {
        panic!(
            "stalled after {:?}: sent {sent}, acked {acked}",
            started.elapsed()
        );
    }
    eprintln!(
        "{MESSAGES} unpaced publishes acknowledged in {:?}",
        started.elapsed()
    );
    assert_eq!(broker.metric(|m| &m.publishes_received), MESSAGES as u64);
    assert_dropped_for_one_stuck_session(broker.metric(|m| &m.dropped_queue_full) as usize);
    for _ in 0..MAX_INFLIGHT {
        slow.recv_publish();
    }
    slow.expect_silence(QUIET);
}

/// Publishes `messages` QoS 0 messages of 1 KB from a raw client, in large
/// writes; returns once the broker has routed them all.
fn flood_qos0(addr: std::net::SocketAddr, topic: &str, messages: usize, mut between: impl FnMut()) {
    let mut publisher = RawClient::connect(addr, "");
    let mut burst = Vec::new();
    for seq in 0..messages {
        burst.extend(wire::publish(topic, 0, 0, false, &payload(seq)));
        if burst.len() > 256 * 1024 {
            publisher.send(&burst);
            burst.clear();
            between();
        }
    }
    publisher.send(&burst);
    // Everything before the PINGRESP has been routed.
    publisher.ping();
}

/// What a client that stopped reading still finds in its socket: the
/// number of messages, up to the end of the stream.
fn drain(client: &mut RawClient) -> usize {
    let mut messages = 0;
    loop {
        match client.read(Duration::from_secs(5)) {
            common::Recv::Packet(packet) if packet.kind() == 3 => messages += 1,
            common::Recv::Packet(_) => {}
            common::Recv::Closed => return messages,
            common::Recv::Timeout => panic!("the stream did not end"),
        }
    }
}

/// 20 MB for a subscriber that reads nothing: far more than the socket
/// buffers of both ends hold, so the broker's writes to it block. The
/// queue is large enough that nothing is dropped before that.
const FLOOD: usize = 20_000;

/// A connection closed by keep-alive while its peer reads nothing and its
/// socket is full still ends: the bytes left for it are given up, and the
/// connection's slot is released.
#[test]
fn keep_alive_expiry_releases_a_connection_whose_peer_does_not_read() {
    let broker = TestBroker::with(|c| c.mqtt.server.max_queued_messages = 100_000);
    let (mut stuck, _) = RawClient::connect_with(
        broker.addr(),
        &wire::Connect::new("stuck-ka")
            .keep_alive(1)
            .will("flood/will", b"gone", 0, false),
    );
    assert_eq!(stuck.subscribe(1, &[("flood/t", 0)]), vec![0]);
    let mut watcher = RawClient::connect(broker.addr(), "flood-watch");
    watcher.subscribe(1, &[("flood/will", 0)]);
    // It keeps itself alive (it writes, it just does not read) until the
    // flood is routed; then it goes silent and expires 1.5 s later, with
    // its socket long full.
    flood_qos0(broker.addr(), "flood/t", FLOOD, || {
        stuck.send_lossy(&wire::pingreq())
    });
    assert_eq!(watcher.recv_publish().payload, b"gone");
    broker.wait_connections(1);
    let delivered = drain(&mut stuck);
    assert!(
        delivered < FLOOD,
        "the socket never filled: {delivered} delivered"
    );
}

/// The same for a connection closed because its client id connected again.
#[test]
fn takeover_releases_a_connection_whose_peer_does_not_read() {
    let broker = TestBroker::with(|c| c.mqtt.server.max_queued_messages = 100_000);
    let mut stuck = RawClient::connect(broker.addr(), "stuck-id");
    assert_eq!(stuck.subscribe(1, &[("flood/t", 0)]), vec![0]);
    flood_qos0(broker.addr(), "flood/t", FLOOD, || {});
    // Not a wait for a condition: the broker gets time to fill the socket,
    // which nothing outside the broker can observe.
    std::thread::sleep(QUIET);
    let mut second = RawClient::connect(broker.addr(), "stuck-id");
    second.ping();
    broker.wait_connections(1);
    let delivered = drain(&mut stuck);
    assert!(
        delivered < FLOOD,
        "the socket never filled: {delivered} delivered"
    );
}
