//! Shared harness of the integration tests: an in-process broker on a free
//! port ([`TestBroker`]), a rumqttc client driven by a background task
//! ([`Client`]), a raw TCP client that speaks MQTT byte by byte
//! ([`RawClient`]), and wrappers around Debian's `mosquitto_sub` and
//! `mosquitto_pub` ([`MosquittoSub`], [`mosquitto_pub`]).
//!
//! Every wait has a deadline and fails the test with a message when it
//! passes; nothing sleeps to wait for a condition that can be observed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use easy_mqtt_server::broker::Broker;
use easy_mqtt_server::config::Config;
use easy_mqtt_server::metrics::Metrics;
use easy_mqtt_server::node::Node;
use easy_mqtt_server::runtime::SmolRuntime;

/// How long any expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test watches to prove that something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// Logs of the broker for a failing test: `RUST_LOG=debug cargo test ...`.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

// ---------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------

/// A broker serving on 127.0.0.1 on a free port, on its own two executor
/// threads. Shut down on drop, or with [`TestBroker::shutdown`].
pub struct TestBroker {
    broker: Option<Broker>,
    node: Arc<Node<SmolRuntime>>,
    addr: SocketAddr,
    stop: Option<async_channel::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl TestBroker {
    /// A broker on the default configuration.
    pub fn start() -> TestBroker {
        TestBroker::with(|_| {})
    }

    /// A broker on the default configuration changed by `configure`.
    pub fn with(configure: impl FnOnce(&mut Config)) -> TestBroker {
        TestBroker::try_with(configure).expect("broker starts")
    }

    /// Like [`TestBroker::with`], but returns the start-up error.
    pub fn try_with(
        configure: impl FnOnce(&mut Config),
    ) -> Result<TestBroker, easy_mqtt_server::broker::StartError> {
        init_tracing();
        let mut config = Config::default();
        config.mqtt.server.host = "127.0.0.1".parse().unwrap();
        config.mqtt.server.tcp_port = 0;
        config.mqtt.server.websocket_port = 0;
        config.mqtt.server.api_port = 0;
        config.mqtt.server.node_id = "test".into();
        configure(&mut config);
        config.validate().expect("test configuration is valid");

        let executor = Arc::new(async_executor::Executor::<'static>::new());
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let threads: Vec<std::thread::JoinHandle<()>> = (0..2)
            .map(|i| {
                let executor = executor.clone();
                let stopped = stopped.clone();
                std::thread::Builder::new()
                    .name(format!("test-broker-{i}"))
                    .spawn(move || {
                        futures_lite::future::block_on(executor.run(async {
                            let _ = stopped.recv().await;
                        }))
                    })
                    .unwrap()
            })
            .collect();
        let broker = match futures_lite::future::block_on(Broker::start(&config, executor)) {
            Ok(broker) => broker,
            Err(error) => {
                drop(stop);
                for thread in threads {
                    let _ = thread.join();
                }
                return Err(error);
            }
        };
        Ok(TestBroker {
            node: broker.node().clone(),
            addr: broker.tcp_addr(),
            broker: Some(broker),
            stop: Some(stop),
            threads,
        })
    }

    /// The running broker (its listener addresses, TLS reload).
    pub fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("broker is running")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn node(&self) -> &Arc<Node<SmolRuntime>> {
        &self.node
    }

    /// The current value of one of the node's counters.
    pub fn metric(&self, counter: impl FnOnce(&Metrics) -> &AtomicU64) -> u64 {
        Metrics::get(counter(&self.node.metrics))
    }

    /// Waits until the node counts `expected` open connections. Connection
    /// bookkeeping ends just after the socket is closed, so a test that
    /// saw a close and counts connections waits for the count to follow.
    pub fn wait_connections(&self, expected: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let open = self.metric(|m| &m.connections_current);
            if open == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {expected} open connections; {open} are open"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the broker gracefully (what the binary does on SIGTERM).
    pub async fn shutdown(mut self) {
        if let Some(broker) = self.broker.take() {
            broker.shutdown(Duration::from_secs(2)).await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(broker) = self.broker.take() {
            futures_lite::future::block_on(broker.shutdown(Duration::from_secs(2)));
        }
        drop(self.stop.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Polls `condition` every few milliseconds until it holds; fails the test
/// after `timeout`. Only for state that has no event to wait on (counters).
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A binary payload that is not UTF-8: NUL bytes, 0xFF, a lone continuation
/// byte and a truncated sequence.
pub fn binary_payload() -> Vec<u8> {
    let mut payload = vec![
        0x00, 0xFF, 0xFE, 0x80, 0xC3, 0x28, 0x00, b'm', b'q', b't', b't', 0xE2, 0x82,
    ];
    payload.extend((0..=255u8).rev());
    payload.push(0x00);
    payload
}

// ---------------------------------------------------------------------------
// rumqttc
// ---------------------------------------------------------------------------

#[allow(unused_imports)]
pub use rumqttc::{
    ConnAck, ConnectReturnCode, Event, Incoming, LastWill, MqttOptions, Outgoing, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode,
};

/// A rumqttc client whose event loop runs on a tokio task that stops at the
/// first error, so one `Client` is one network connection (rumqttc would
/// otherwise reconnect). Publishes seen while waiting for something else
/// are kept for [`Client::recv`].
pub struct Client {
    pub client: rumqttc::AsyncClient,
    events: tokio::sync::mpsc::UnboundedReceiver<Result<Event, String>>,
    pump: tokio::task::JoinHandle<()>,
    backlog: VecDeque<Publish>,
    closed: Option<String>,
    name: String,
}

/// rumqttc options for `client_id` on the broker at `addr`: keep-alive 30 s,
/// packets up to 4 MiB.
pub fn options(addr: SocketAddr, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(4 << 20, 4 << 20);
    options
}

impl Client {
    /// Connects with a clean session; fails the test unless accepted.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> Client {
        Client::connect_opts(options(addr, client_id)).await.0
    }

    /// Connects with `clean_session` set as given; returns the CONNACK.
    pub async fn connect_session(
        addr: SocketAddr,
        client_id: &str,
        clean: bool,
    ) -> (Client, ConnAck) {
        let mut options = options(addr, client_id);
        options.set_clean_session(clean);
        Client::connect_opts(options).await
    }

    /// Connects with these options; fails the test unless accepted.
    pub async fn connect_opts(options: MqttOptions) -> (Client, ConnAck) {
        let name = options.client_id();
        match Client::try_connect(options).await {
            Ok(connected) => connected,
            Err(error) => panic!("client {name:?} could not connect: {error}"),
        }
    }

    /// Connects with these options; the error is what rumqttc reported
    /// (a refusal is `ConnectionError::ConnectionRefused(code)`).
    pub async fn try_connect(
        options: MqttOptions,
    ) -> Result<(Client, ConnAck), Box<rumqttc::ConnectionError>> {
        let name = options.client_id();
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 1024);
        let Ok(first) = tokio::time::timeout(WAIT, eventloop.poll()).await else {
            panic!("client {name:?}: no CONNACK within {WAIT:?}");
        };
        let first = first.map_err(Box::new)?;
        let Event::Incoming(Incoming::ConnAck(connack)) = first else {
            panic!("client {name:?}: expected CONNACK first, got {first:?}");
        };
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(event) => {
                        if tx.send(Ok(event)).is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        let _ = tx.send(Err(error.to_string()));
                        return;
                    }
                }
            }
        });
        Ok((
            Client {
                client,
                events,
                pump,
                backlog: VecDeque::new(),
                closed: None,
                name,
            },
            connack,
        ))
    }

    /// The next event within `timeout`; `None` when nothing came. A closed
    /// connection is reported as `Some(Err(..))` once, then `None`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Result<Event, String>> {
        if self.closed.is_some() {
            return None;
        }
        match tokio::time::timeout(timeout, self.events.recv()).await {
            Ok(Some(Err(error))) => {
                self.closed = Some(error.clone());
                Some(Err(error))
            }
            Ok(Some(event)) => Some(event),
            Ok(None) => {
                self.closed = Some("event loop ended".into());
                Some(Err("event loop ended".into()))
            }
            Err(_) => None,
        }
    }

    /// The next event, waiting as long as it takes (cancel-safe, for
    /// `tokio::select!`). A closed connection is `Err`.
    pub async fn next_event_forever(&mut self) -> Result<Event, String> {
        if let Some(reason) = &self.closed {
            return Err(reason.clone());
        }
        match self.events.recv().await {
            Some(Ok(event)) => Ok(event),
            Some(Err(error)) => {
                self.closed = Some(error.clone());
                Err(error)
            }
            None => {
                self.closed = Some("event loop ended".into());
                Err("event loop ended".into())
            }
        }
    }

    /// Waits for the first event that `pick` accepts, keeping the
    /// publishes it passes over. Fails the test on timeout or close.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Ok(event)) => {
                    if let Some(found) = pick(&event) {
                        return found;
                    }
                    if let Event::Incoming(Incoming::Publish(publish)) = event {
                        self.backlog.push_back(publish);
                    }
                }
                Some(Err(error)) => panic!(
                    "{}: connection closed ({error}) while waiting for {what}",
                    self.name
                ),
                None => panic!("{}: timed out waiting for {what}", self.name),
            }
        }
    }

    /// Subscribes to one filter and returns the SUBACK's return code.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubscribeReasonCode {
        let codes = self.subscribe_many(&[(filter, qos)]).await;
        codes[0]
    }

    /// Subscribes to several filters in one SUBSCRIBE; returns the codes.
    pub async fn subscribe_many(&mut self, filters: &[(&str, QoS)]) -> Vec<SubscribeReasonCode> {
        let filters = filters
            .iter()
            .map(|(path, qos)| SubscribeFilter::new((*path).to_owned(), *qos));
        self.client.subscribe_many(filters).await.unwrap();
        self.wait_for("SUBACK", |event| match event {
            Event::Incoming(Incoming::SubAck(suback)) => Some(suback.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes and waits until it is done: written (QoS 0), PUBACK
    /// (QoS 1) or PUBCOMP (QoS 2).
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .unwrap();
        let pkid = self
            .wait_for("our PUBLISH to leave", |event| match event {
                Event::Outgoing(Outgoing::Publish(pkid)) => Some(*pkid),
                _ => None,
            })
            .await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.wait_for("PUBACK", |event| match event {
                    Event::Incoming(Incoming::PubAck(ack)) if ack.pkid == pkid => Some(()),
                    _ => None,
                })
                .await
            }
            QoS::ExactlyOnce => {
                self.wait_for("PUBCOMP", |event| match event {
                    Event::Incoming(Incoming::PubComp(comp)) if comp.pkid == pkid => Some(()),
                    _ => None,
                })
                .await
            }
        }
    }

    /// The next application message; fails the test if none comes.
    pub async fn recv(&mut self) -> Publish {
        if let Some(publish) = self.backlog.pop_front() {
            return publish;
        }
        self.wait_for("a PUBLISH", |event| match event {
            Event::Incoming(Incoming::Publish(publish)) => Some(publish.clone()),
            _ => None,
        })
        .await
    }

    /// Fails the test if a message arrives within `within`.
    pub async fn expect_no_message(&mut self, within: Duration) {
        if let Some(publish) = self.backlog.pop_front() {
            panic!("{}: unexpected message {publish:?}", self.name);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_event(left).await {
                Some(Ok(Event::Incoming(Incoming::Publish(publish)))) => {
                    panic!("{}: unexpected message {publish:?}", self.name)
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => panic!("{}: connection closed ({error})", self.name),
                None => return,
            }
        }
    }

    /// Waits until the broker closes the connection; returns rumqttc's error.
    pub async fn expect_closed(&mut self) -> String {
        if let Some(reason) = &self.closed {
            return reason.clone();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Ok(Event::Incoming(Incoming::Publish(publish)))) => {
                    self.backlog.push_back(publish)
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return error,
                None => panic!("{}: the broker did not close the connection", self.name),
            }
        }
    }

    /// Sends DISCONNECT and waits until the broker has closed the connection,
    /// which it does after detaching the session.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.unwrap();
        self.expect_closed().await;
    }

    /// Drops the connection without DISCONNECT (the socket is closed).
    pub fn kill(self) {
        self.pump.abort();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

// ---------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------

/// Encoders of MQTT 3.1.1 packets, for the raw client.
pub mod wire {
    pub fn remaining_length(mut n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut byte = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                byte |= 0x80;
            }
            out.push(byte);
            if n == 0 {
                return out;
            }
        }
    }

    /// A packet: first byte, remaining length, body.
    pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        out.extend(remaining_length(body.len()));
        out.extend_from_slice(body);
        out
    }

    /// A length-prefixed string or binary field.
    pub fn field(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    #[derive(Debug, Clone)]
    pub struct Will {
        pub topic: String,
        pub payload: Vec<u8>,
        pub qos: u8,
        pub retain: bool,
    }

    #[derive(Debug, Clone)]
    pub struct Connect {
        pub protocol_name: Vec<u8>,
        pub level: u8,
        pub client_id: String,
        pub clean_session: bool,
        pub keep_alive: u16,
        pub will: Option<Will>,
    }

    impl Connect {
        /// MQTT 3.1.1, clean session, keep-alive 60 s, no will.
        pub fn new(client_id: &str) -> Connect {
            Connect {
                protocol_name: b"MQTT".to_vec(),
                level: 4,
                client_id: client_id.to_owned(),
                clean_session: true,
                keep_alive: 60,
                will: None,
            }
        }

        pub fn will(mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Connect {
            self.will = Some(Will {
                topic: topic.to_owned(),
                payload: payload.to_vec(),
                qos,
                retain,
            });
            self
        }

        pub fn keep_alive(mut self, seconds: u16) -> Connect {
            self.keep_alive = seconds;
            self
        }

        pub fn clean(mut self, clean: bool) -> Connect {
            self.clean_session = clean;
            self
        }

        pub fn encode(&self) -> Vec<u8> {
            let mut body = field(&self.protocol_name);
            body.push(self.level);
            let mut flags = 0u8;
            if self.clean_session {
                flags |= 0b10;
            }
            if let Some(will) = &self.will {
                flags |= 0b100 | (will.qos << 3);
                if will.retain {
                    flags |= 0b10_0000;
                }
            }
            body.push(flags);
            body.extend(self.keep_alive.to_be_bytes());
            body.extend(field(self.client_id.as_bytes()));
            if let Some(will) = &self.will {
                body.extend(field(will.topic.as_bytes()));
                body.extend(field(&will.payload));
            }
            packet(0x10, &body)
        }
    }

    pub fn publish(topic: &str, qos: u8, packet_id: u16, retain: bool, payload: &[u8]) -> Vec<u8> {
        let mut body = field(topic.as_bytes());
        if qos > 0 {
            body.extend(packet_id.to_be_bytes());
        }
        body.extend_from_slice(payload);
        packet(0x30 | (qos << 1) | u8::from(retain), &body)
    }

    pub fn subscribe(packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        let mut body = packet_id.to_be_bytes().to_vec();
        for (filter, qos) in filters {
            body.extend(field(filter.as_bytes()));
            body.push(*qos);
        }
        packet(0x82, &body)
    }

    pub fn unsubscribe(packet_id: u16, filters: &[&str]) -> Vec<u8> {
        let mut body = packet_id.to_be_bytes().to_vec();
        for filter in filters {
            body.extend(field(filter.as_bytes()));
        }
        packet(0xA2, &body)
    }

    pub fn puback(packet_id: u16) -> Vec<u8> {
        packet(0x40, &packet_id.to_be_bytes())
    }

    pub fn pubrec(packet_id: u16) -> Vec<u8> {
        packet(0x50, &packet_id.to_be_bytes())
    }

    pub fn pubrel(packet_id: u16) -> Vec<u8> {
        packet(0x62, &packet_id.to_be_bytes())
    }

    pub fn pubcomp(packet_id: u16) -> Vec<u8> {
        packet(0x70, &packet_id.to_be_bytes())
    }

    pub fn pingreq() -> Vec<u8> {
        vec![0xC0, 0x00]
    }

    pub fn disconnect() -> Vec<u8> {
        vec![0xE0, 0x00]
    }
}

/// One packet as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    pub first: u8,
    pub body: Vec<u8>,
}

/// A PUBLISH as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPublish {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: Option<u16>,
    pub payload: Vec<u8>,
}

impl RawPacket {
    /// The control packet type (upper four bits of the first byte).
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }

    /// (session present, return code) of a CONNACK.
    pub fn connack(&self) -> (bool, u8) {
        assert_eq!(self.first, 0x20, "expected CONNACK, got {self:?}");
        assert_eq!(self.body.len(), 2, "CONNACK body: {self:?}");
        (self.body[0] & 1 == 1, self.body[1])
    }

    /// (packet id, return codes) of a SUBACK.
    pub fn suback(&self) -> (u16, Vec<u8>) {
        assert_eq!(self.first, 0x90, "expected SUBACK, got {self:?}");
        (
            u16::from_be_bytes([self.body[0], self.body[1]]),
            self.body[2..].to_vec(),
        )
    }

    /// The packet id of a PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK.
    pub fn packet_id(&self) -> u16 {
        assert_eq!(self.body.len(), 2, "expected a packet id only: {self:?}");
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    pub fn publish(&self) -> RawPublish {
        assert_eq!(self.kind(), 3, "expected PUBLISH, got {self:?}");
        let qos = (self.first >> 1) & 0b11;
        let topic_len = usize::from(u16::from_be_bytes([self.body[0], self.body[1]]));
        let topic = String::from_utf8(self.body[2..2 + topic_len].to_vec()).unwrap();
        let mut at = 2 + topic_len;
        let packet_id = (qos > 0).then(|| {
            at += 2;
            u16::from_be_bytes([self.body[at - 2], self.body[at - 1]])
        });
        RawPublish {
            topic,
            qos,
            retain: self.first & 1 == 1,
            dup: self.first & 0b1000 != 0,
            packet_id,
            payload: self.body[at..].to_vec(),
        }
    }
}

/// What a read with a deadline found.
#[derive(Debug)]
pub enum Recv {
    Packet(RawPacket),
    /// EOF or reset: the broker closed the connection.
    Closed,
    Timeout,
}

/// A client that writes and reads MQTT packets as bytes on a blocking socket.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Opens a TCP connection and sends nothing.
    pub fn open(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect_timeout(&addr, WAIT).expect("TCP connect to the broker");
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects with a clean session and checks the CONNACK accepts.
    pub fn connect(addr: SocketAddr, client_id: &str) -> RawClient {
        let (client, connack) = RawClient::connect_with(addr, &wire::Connect::new(client_id));
        assert_eq!(connack, (false, 0), "{client_id}: CONNACK");
        client
    }

    /// Sends this CONNECT; returns the CONNACK's (session present, code).
    pub fn connect_with(addr: SocketAddr, connect: &wire::Connect) -> (RawClient, (bool, u8)) {
        let mut client = RawClient::open(addr);
        client.send(&connect.encode());
        let connack = client.recv().connack();
        (client, connack)
    }

    /// Writes bytes; fails the test if the socket is closed.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the broker");
    }

    /// Writes bytes, ignoring errors (the broker may have closed already).
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Reads one packet within `timeout`.
    pub fn read(&mut self, timeout: Duration) -> Recv {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(packet) = self.take_packet() {
                return Recv::Packet(packet);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Recv::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Recv::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Recv::Timeout;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Recv::Closed,
            }
        }
    }

    fn take_packet(&mut self) -> Option<RawPacket> {
        let mut length = 0usize;
        let mut multiplier = 1usize;
        let mut at = 1;
        loop {
            let byte = *self.buf.get(at)?;
            length += usize::from(byte & 0x7F) * multiplier;
            multiplier *= 128;
            at += 1;
            if byte & 0x80 == 0 {
                break;
            }
            assert!(at <= 5, "the broker sent a malformed remaining length");
        }
        if self.buf.len() < at + length {
            return None;
        }
        let first = self.buf[0];
        let body = self.buf[at..at + length].to_vec();
        self.buf.drain(..at + length);
        Some(RawPacket { first, body })
    }

    /// The next packet; fails the test on close or timeout.
    pub fn recv(&mut self) -> RawPacket {
        match self.read(WAIT) {
            Recv::Packet(packet) => packet,
            other => panic!("expected a packet from the broker, got {other:?}"),
        }
    }

    /// The next PUBLISH (acknowledging nothing).
    pub fn recv_publish(&mut self) -> RawPublish {
        self.recv().publish()
    }

    /// Waits until the broker closes the connection; returns the packets it
    /// sent before. Fails the test if it stays open for `timeout`.
    pub fn expect_closed_within(&mut self, timeout: Duration) -> Vec<RawPacket> {
        let deadline = Instant::now() + timeout;
        let mut packets = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left) {
                Recv::Packet(packet) => packets.push(packet),
                Recv::Closed => return packets,
                Recv::Timeout => panic!("the broker kept the connection open; it sent {packets:?}"),
            }
        }
    }

    pub fn expect_closed(&mut self) -> Vec<RawPacket> {
        self.expect_closed_within(WAIT)
    }

    /// Fails the test if a packet arrives or the connection closes within `within`.
    pub fn expect_silence(&mut self, within: Duration) {
        match self.read(within) {
            Recv::Timeout => {}
            other => panic!("expected nothing from the broker, got {other:?}"),
        }
    }

    /// Subscribes and returns the SUBACK's return codes.
    pub fn subscribe(&mut self, packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.send(&wire::subscribe(packet_id, filters));
        let (id, codes) = self.recv().suback();
        assert_eq!(id, packet_id, "SUBACK packet id");
        codes
    }

    /// PINGREQ, then reads (and drops) everything up to the PINGRESP: all
    /// that was sent before has been handled.
    pub fn ping_drain(&mut self) {
        self.send(&wire::pingreq());
        while self.recv().first != 0xD0 {}
    }

    /// PINGREQ → PINGRESP.
    pub fn ping(&mut self) {
        self.send(&wire::pingreq());
        let packet = self.recv();
        assert_eq!(packet.first, 0xD0, "expected PINGRESP, got {packet:?}");
    }
}

/// Checks that the broker still serves: a new client connects, subscribes,
/// publishes to itself at QoS 1 and receives its message.
pub fn assert_serves(addr: SocketAddr) {
    let mut client = RawClient::connect(addr, "");
    assert_eq!(client.subscribe(1, &[("health/check", 1)]), vec![1]);
    client.send(&wire::publish("health/check", 1, 1, false, b"ok"));
    let mut got_ack = false;
    let mut got_message = false;
    while !(got_ack && got_message) {
        let packet = client.recv();
        match packet.kind() {
            4 => {
                assert_eq!(packet.packet_id(), 1);
                got_ack = true;
            }
            3 => {
                let publish = packet.publish();
                assert_eq!(publish.payload, b"ok");
                client.send(&wire::puback(publish.packet_id.unwrap()));
                got_message = true;
            }
            _ => panic!("unexpected {packet:?}"),
        }
    }
    client.send(&wire::disconnect());
    client.expect_closed();
}

// ---------------------------------------------------------------------------
// mosquitto_sub / mosquitto_pub
// ---------------------------------------------------------------------------

/// The path of a program on PATH; fails the test with what to install when
/// it is missing.
pub fn require_program(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed (or not on PATH); these tests need it: \
                 install the Debian package `{package}` (sudo apt-get install {package})"
            )
        })
}

/// `mosquitto_sub` with line-buffered output (through coreutils' `stdbuf`,
/// so that its debug lines arrive as they happen), `-d` and a parseable
/// format. Killed on drop.
pub struct MosquittoSub {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    seen: Vec<String>,
    backlog: VecDeque<SubMessage>,
}

/// A message printed by mosquitto_sub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubMessage {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: Vec<u8>,
}

impl MosquittoSub {
    /// Starts `mosquitto_sub -h 127.0.0.1 -p <port> <args>`.
    pub fn spawn(port: u16, args: &[&str]) -> MosquittoSub {
        let mosquitto_sub = require_program("mosquitto_sub", "mosquitto-clients");
        let stdbuf = require_program("stdbuf", "coreutils");
        let mut child = Command::new(stdbuf)
            .arg("-oL")
            .arg(mosquitto_sub)
            .args(["-d", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-F", "M|%t|%q|%r|%x"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mosquitto_sub");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        MosquittoSub {
            child,
            lines,
            stderr,
            seen: Vec::new(),
            backlog: VecDeque::new(),
        }
    }

    fn context(&self) -> String {
        format!(
            "mosquitto_sub output:\n{}\nstderr: {}",
            self.seen.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// The next line within `timeout`, `None` at timeout or exit.
    fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    fn parse_message(line: &str) -> Option<SubMessage> {
        let rest = line.strip_prefix("M|")?;
        let mut parts = rest.rsplitn(4, '|');
        let hex = parts.next()?;
        let retain = parts.next()? == "1";
        let qos = parts.next()?.parse().ok()?;
        let topic = parts.next()?.to_owned();
        let payload = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .ok()?;
        Some(SubMessage {
            topic,
            qos,
            retain,
            payload,
        })
    }

    /// Waits for the SUBACK; returns the granted QoS (or 128) per filter.
    pub fn wait_subscribed(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = self.next_line(left) else {
                panic!("mosquitto_sub did not subscribe; {}", self.context());
            };
            if let Some(message) = MosquittoSub::parse_message(&line) {
                self.backlog.push_back(message);
            } else if let Some(codes) = line.strip_prefix("Subscribed (mid: ") {
                let codes = codes.split_once(": ").map_or("", |(_, c)| c);
                return codes
                    .split(", ")
                    .map(|c| c.trim().parse().unwrap())
                    .collect();
            }
        }
    }

    /// The next message; fails the test if none comes within [`WAIT`].
    pub fn recv(&mut self) -> SubMessage {
        if let Some(message) = self.backlog.pop_front() {
            return message;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = self.next_line(left) else {
                panic!("mosquitto_sub received no message; {}", self.context());
            };
            if let Some(message) = MosquittoSub::parse_message(&line) {
                return message;
            }
        }
    }

    /// Fails the test if a message is printed within `within`.
    pub fn expect_no_message(&mut self, within: Duration) {
        if let Some(message) = self.backlog.pop_front() {
            panic!("unexpected message {message:?}");
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let Some(line) = self.next_line(left) else {
                return;
            };
            if let Some(message) = MosquittoSub::parse_message(&line) {
                panic!("unexpected message {message:?}; {}", self.context());
            }
        }
    }

    /// Every message printed from now until the process exits on its own
    /// (within `timeout`), and its exit status.
    pub fn messages_until_exit(&mut self, timeout: Duration) -> (ExitStatus, Vec<SubMessage>) {
        let mut messages: Vec<SubMessage> = self.backlog.drain(..).collect();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(message) = MosquittoSub::parse_message(&line) {
                        messages.push(message);
                    }
                    self.seen.push(line);
                }
                // Its stdout closed: it exited.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("mosquitto_sub did not exit; {}", self.context())
                }
            }
        }
        (self.child.wait().unwrap(), messages)
    }

    /// Every message printed until none came for `quiet` (the backlog
    /// first); fails the test if messages keep coming for `limit`.
    pub fn messages_until_quiet(&mut self, quiet: Duration, limit: Duration) -> Vec<SubMessage> {
        let mut messages: Vec<SubMessage> = self.backlog.drain(..).collect();
        let deadline = Instant::now() + limit;
        loop {
            assert!(
                Instant::now() < deadline,
                "mosquitto_sub still receiving after {limit:?}; {}",
                self.context()
            );
            let Some(line) = self.next_line(quiet) else {
                return messages;
            };
            if let Some(message) = MosquittoSub::parse_message(&line) {
                messages.push(message);
            }
        }
    }

    /// Kills the process (SIGKILL: its connection ends without DISCONNECT).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The result of a `mosquitto_pub` run.
#[derive(Debug)]
pub struct PubOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `mosquitto_pub -h 127.0.0.1 -p <port> <args>` to completion (killed
/// after [`WAIT`]).
pub fn mosquitto_pub(port: u16, args: &[&str]) -> PubOutput {
    let program = require_program("mosquitto_pub", "mosquitto-clients");
    let mut command = Command::new(program);
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    run_with_timeout(command, WAIT)
}

/// Runs `mosquitto_pub` and fails the test unless it succeeds.
pub fn mosquitto_pub_ok(port: u16, args: &[&str]) {
    let output = mosquitto_pub(port, args);
    assert!(
        output.status.success(),
        "mosquitto_pub {args:?} failed: {output:?}"
    );
}

/// Runs a command with piped output; kills it after `timeout`.
pub fn run_with_timeout(mut command: Command, timeout: Duration) -> PubOutput {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout_pipe.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    PubOutput {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A file in a fresh temporary directory, removed with the directory on drop.
pub struct TempFile {
    dir: PathBuf,
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(name: &str, contents: &[u8]) -> TempFile {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("easy-mqtt-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        TempFile { dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// The real `easy-mqtt` binary
// ---------------------------------------------------------------------------

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Cluster timings for tests: a node is dead after one second of silence.
pub fn fast_cluster(config: &mut Config) {
    config.mqtt.cluster.heartbeat_interval = 100;
    config.mqtt.cluster.node_timeout = 1000;
    config.mqtt.cluster.takeover_timeout = 3000;
}

/// A cluster node named `node_id` on the Kvrocks (or Redis) `nodes`, with
/// [`fast_cluster`] timings.
pub fn cluster_node(nodes: &[String], node_id: &str) -> TestBroker {
    let nodes = nodes.to_vec();
    let node_id = node_id.to_owned();
    TestBroker::with(move |config| {
        config.mqtt.kvrocks.cluster.nodes = nodes;
        config.mqtt.server.node_id = node_id;
        fast_cluster(config);
    })
}

/// A configuration file for the real binary: MQTT over TCP on
/// 127.0.0.1:`port`, WebSocket and API on free ports, storage on the
/// Kvrocks (or Redis) `nodes` (`host:port[,host:port...]`).
pub fn kvrocks_binary_config(nodes: &str, port: u16) -> TempFile {
    let text = format!(
        "mqtt:\n  server:\n    host: 127.0.0.1\n    tcp-port: {port}\n    websocket-port: 0\n    api-port: 0\n    node-id: crash\n  kvrocks:\n    cluster:\n      nodes: {nodes}\n"
    );
    TempFile::new("broker.yml", text.as_bytes())
}

/// The `easy-mqtt` binary of this build, started with `-c <config>`;
/// killed (SIGKILL) on drop.
pub struct BrokerProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl BrokerProcess {
    /// Starts the binary and waits until it accepts TCP connections on
    /// 127.0.0.1:`port` (the port of the configuration).
    pub fn start(config: &TempFile, port: u16) -> BrokerProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_easy-mqtt"))
            .args(["-c", config.path.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the easy-mqtt binary");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut process = BrokerProcess { child, addr };
        process.wait_listening(port);
        process
    }

    /// Waits until the binary accepts TCP connections on 127.0.0.1:`port`
    /// (another of its listeners, e.g. the API).
    pub fn wait_listening(&mut self, port: u16) {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the binary exited before listening: {status}");
            }
            assert!(Instant::now() < deadline, "the binary never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// SIGKILL: no shutdown, nothing flushed; waits until it is gone.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
