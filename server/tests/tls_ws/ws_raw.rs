//! WebSocket with a raw client (async-tungstenite's client side): the
//! upgrade rules, the framing, and flushing and closing under backpressure.

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::{Bytes, Message};

use crate::certs::Certs;
use crate::common::{self, MosquittoSub, TestBroker, wire};
use crate::support::{Logs, ws_connect, ws_next, ws_read_bytes, ws_refusal, ws_send};
use crate::{path, pem_a, start_with_ports};

// ---------------------------------------------------------------------------
// WebSocket: the upgrade and the framing, with a raw client
// ---------------------------------------------------------------------------

/// Wrong path → 404; no or unknown subprotocol → 400; each MQTT
/// subprotocol is accepted and echoed, the first acceptable of a list.
#[test]
fn websocket_upgrade_checks_path_and_subprotocol() {
    Logs::get();
    let broker = TestBroker::start();
    let addr = broker.broker().listener_addrs().websocket;
    futures_lite::future::block_on(async {
        assert_eq!(ws_refusal(addr, "/other", &["mqtt"]).await, 404);
        assert_eq!(ws_refusal(addr, "/", &["mqtt"]).await, 404);
        assert_eq!(ws_refusal(addr, "/websocket", &[]).await, 400);
        assert_eq!(ws_refusal(addr, "/websocket", &["chat"]).await, 400);
        for protocol in ["mqtt", "mqttv3.1", "mqttv3.1.1"] {
            let (_, chosen) = ws_connect(addr, "/websocket", &[protocol]).await.unwrap();
            assert_eq!(chosen.as_deref(), Some(protocol));
        }
        let (_, chosen) = ws_connect(addr, "/websocket", &["chat", "mqttv3.1.1", "mqtt"])
            .await
            .unwrap();
        assert_eq!(chosen.as_deref(), Some("mqttv3.1.1"));
        // A query string is not part of the path.
        ws_connect(addr, "/websocket?x=1", &["mqtt"]).await.unwrap();
    });
}

/// A packet split across two frames, two packets in one frame, a ping
/// answered with its payload, and a close frame that ends the connection.
#[test]
fn websocket_frames_carry_a_byte_stream() {
    Logs::get();
    let broker = TestBroker::start();
    let addr = broker.broker().listener_addrs().websocket;
    futures_lite::future::block_on(async {
        let (mut ws, _) = ws_connect(addr, "/websocket", &["mqtt"]).await.unwrap();
        let connect = wire::Connect::new("ws-frames").encode();
        let (head, tail) = connect.split_at(5);
        ws_send(&mut ws, head).await;
        ws_send(&mut ws, tail).await;
        assert_eq!(ws_read_bytes(&mut ws, 4).await, [0x20, 0x02, 0x00, 0x00]);

        let mut two = wire::subscribe(1, &[("ws/a", 1)]);
        two.extend(wire::publish("ws/a", 1, 7, false, b"one frame"));
        ws_send(&mut ws, &two).await;
        // SUBACK, then PUBACK and our own message (in either order), in
        // whatever framing: the broker may batch packets into one message.
        let publish_len = 2 + 2 + 4 + 2 + 9;
        let bytes = ws_read_bytes(&mut ws, 5 + 4 + publish_len).await;
        assert_eq!(bytes[..5], [0x90, 0x03, 0x00, 0x01, 0x01], "{bytes:02x?}");
        let (puback, rest) = if bytes[5] == 0x40 {
            (&bytes[5..9], &bytes[9..])
        } else {
            (&bytes[5 + publish_len..], &bytes[5..5 + publish_len])
        };
        assert_eq!(puback, [0x40, 0x02, 0x00, 0x07], "{bytes:02x?}");
        assert_eq!(rest[0] & 0xF0, 0x30, "a PUBLISH: {rest:02x?}");
        assert!(rest.ends_with(b"one frame"), "{rest:02x?}");

        ws.send(Message::Ping(Bytes::from_static(b"are you there")))
            .await
            .unwrap();
        match ws_next(&mut ws).await {
            Some(Message::Pong(payload)) => assert_eq!(&payload[..], b"are you there"),
            other => panic!("expected a pong, got {other:?}"),
        }
        // MQTT still flows after the ping.
        ws_send(&mut ws, &wire::pingreq()).await;
        assert_eq!(ws_read_bytes(&mut ws, 2).await, [0xD0, 0x00]);

        ws.close(None).await.unwrap();
        match ws_next(&mut ws).await {
            Some(Message::Close(_)) | None => {}
            Some(other) => panic!("unexpected {other:?} after close"),
        }
    });
    broker.wait_connections(0);
}

/// A text message closes the connection with status 1003.
#[test]
fn websocket_text_frame_closes_the_connection() {
    Logs::get();
    let broker = TestBroker::start();
    let addr = broker.broker().listener_addrs().websocket;
    futures_lite::future::block_on(async {
        let (mut ws, _) = ws_connect(addr, "/websocket", &["mqtt"]).await.unwrap();
        ws_send(&mut ws, &wire::Connect::new("ws-text").encode()).await;
        assert_eq!(ws_read_bytes(&mut ws, 4).await, [0x20, 0x02, 0x00, 0x00]);
        ws.send(Message::text("not binary")).await.unwrap();
        match ws_next(&mut ws).await {
            Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Unsupported),
            other => panic!("expected a close frame with 1003, got {other:?}"),
        }
    });
    broker.wait_connections(0);
}

/// A message beyond the limit (`max-packet-size`, at least 64 KiB) closes
/// the connection with status 1009 before it is buffered whole.
#[test]
fn websocket_oversized_message_closes_the_connection() {
    Logs::get();
    let broker = TestBroker::with(|config| config.mqtt.server.max_packet_size = 1000);
    let addr = broker.broker().listener_addrs().websocket;
    futures_lite::future::block_on(async {
        let (mut ws, _) = ws_connect(addr, "/websocket", &["mqtt"]).await.unwrap();
        ws_send(&mut ws, &wire::Connect::new("ws-big").encode()).await;
        assert_eq!(ws_read_bytes(&mut ws, 4).await, [0x20, 0x02, 0x00, 0x00]);
        // The broker may close while this is still being written.
        let _ = ws.send(Message::binary(vec![0u8; 100 * 1024])).await;
        match ws_next(&mut ws).await {
            Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Size),
            other => panic!("expected a close frame with 1009, got {other:?}"),
        }
    });
    broker.wait_connections(0);
}

/// A message far larger than the socket buffers reaches a WebSocket
/// subscriber whole, even though nothing follows it: what the stream still
/// holds when the socket is full is flushed once the socket drains. Over
/// TLS too, whose stream buffers records the same way.
#[test]
fn large_message_is_flushed_to_websocket_and_tls_subscribers() {
    Logs::get();
    let broker = start_with_ports(|config, tls_port, _| {
        pem_a(config);
        config.mqtt.server.is_open_ssl = false;
        config.mqtt.server.tls_port = tls_port;
        config.mqtt.server.max_packet_size = 16 << 20;
    });
    let addrs = broker.broker().listener_addrs();
    let payload: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut tls_sub = MosquittoSub::spawn(
        addrs.tls.unwrap().port(),
        &[
            "--cafile",
            &path(&Certs::get().ca_a),
            "-q",
            "0",
            "-t",
            "big/t",
            "-C",
            "1",
        ],
    );
    assert_eq!(tls_sub.wait_subscribed(), vec![0]);
    futures_lite::future::block_on(async {
        let (mut ws, _) = ws_connect(addrs.websocket, "/websocket", &["mqtt"])
            .await
            .unwrap();
        ws_send(&mut ws, &wire::Connect::new("ws-big-sub").encode()).await;
        assert_eq!(ws_read_bytes(&mut ws, 4).await, [0x20, 0x02, 0x00, 0x00]);
        ws_send(&mut ws, &wire::subscribe(1, &[("big/t", 0)])).await;
        assert_eq!(
            ws_read_bytes(&mut ws, 5).await,
            [0x90, 0x03, 0x00, 0x01, 0x00]
        );

        let mut publisher = common::RawClient::connect(broker.addr(), "big-pub");
        let packet = wire::publish("big/t", 0, 0, false, &payload);
        publisher.send(&packet);
        let got = ws_read_bytes(&mut ws, packet.len()).await;
        assert!(got == packet, "the message arrived changed");
    });
    let message = tls_sub.recv();
    assert!(
        message.payload == payload,
        "the message arrived changed over TLS"
    );
}

/// A WebSocket client that stops reading with a large message on its way
/// and is then taken over: its connection is closed, and released, even
/// though the bytes the stream holds can never be sent.
#[test]
fn closing_a_stalled_websocket_connection_releases_it() {
    Logs::get();
    let broker = TestBroker::with(|config| config.mqtt.server.max_packet_size = 16 << 20);
    let addr = broker.broker().listener_addrs().websocket;
    futures_lite::future::block_on(async {
        let (mut ws, _) = ws_connect(addr, "/websocket", &["mqtt"]).await.unwrap();
        ws_send(&mut ws, &wire::Connect::new("ws-stalled").encode()).await;
        assert_eq!(ws_read_bytes(&mut ws, 4).await, [0x20, 0x02, 0x00, 0x00]);
        ws_send(&mut ws, &wire::subscribe(1, &[("stall/t", 0)])).await;
        assert_eq!(
            ws_read_bytes(&mut ws, 5).await,
            [0x90, 0x03, 0x00, 0x01, 0x00]
        );
        let mut publisher = common::RawClient::connect(broker.addr(), "stall-pub");
        publisher.send(&wire::publish("stall/t", 0, 0, false, &vec![7u8; 8 << 20]));
        publisher.send(&wire::disconnect());
        publisher.expect_closed();
        // `ws` reads nothing more; a new connection takes its client id.
        let _usurper = common::RawClient::connect(broker.addr(), "ws-stalled");
        broker.wait_connections(1);
        drop(ws);
    });
}
