//! A small MQTT 3.1.1 client for the simulation, built on the core codec over
//! a turmoil TCP stream.
//!
//! It behaves like a careful real client:
//! * it answers every flow: PUBACK for QoS 1, PUBREC then PUBCOMP for QoS 2,
//!   PUBREL on PUBREC for its own QoS 2 messages, PINGREQ on keep-alive;
//! * it keeps its session across connections when `clean_session` is false:
//!   unacknowledged outbound messages are sent again on reconnect (PUBLISH
//!   with DUP, or PUBREL once PUBREC was received), and inbound QoS 2 packet
//!   ids are remembered until PUBREL so a resent PUBLISH is not delivered to
//!   the application twice;
//! * it notices a dead link on its own: with keep-alive `k` it sends PINGREQ
//!   after `k` without sending or `k / 2` without receiving, and gives the
//!   connection up after `k` without receiving anything. Connecting, the
//!   CONNACK and every write are bounded by `io_timeout` (a partitioned
//!   turmoil link drops segments silently, so a write can block forever
//!   once the stream's flow-control credits are gone).
//!
//! Every application message it receives is recorded, in order, with the
//! connection it arrived on. Nothing here panics: errors are returned, and a
//! failed operation leaves the client disconnected, ready for [`Client::connect`].

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use easy_mqtt_core::codec::{self, Decoded};
use easy_mqtt_core::{
    ByteStr, ConnectReturnCode, LastWill, Packet, PacketId, ProtocolVersion, Publish, QoS, QosPid,
    SubAck, Subscribe, SubscribeFilter, SubscribeReturnCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};
use turmoil::net::TcpStream;

use crate::trace::Log;

/// Largest packet the client accepts.
const MAX_PACKET: usize = 1024 * 1024;
/// Bytes reserved before each read.
const READ_CHUNK: usize = 4096;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub client_id: String,
    pub clean_session: bool,
    /// Seconds; 0 turns keep-alive (and dead-link detection) off.
    pub keep_alive: u16,
    /// Bound on connecting, on waiting for CONNACK, and on each write.
    pub io_timeout: Duration,
    /// Sent in every CONNECT.
    pub will: Option<LastWill>,
}

/// One application message as the client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub dup: bool,
    pub retain: bool,
    /// Which connection of this client it arrived on (1 for the first).
    pub connection: u32,
    /// Virtual time since the simulation started.
    pub at: Duration,
}

#[derive(Debug)]
pub enum ClientError {
    NotConnected,
    Io(io::Error),
    /// The broker closed the stream.
    Closed,
    Timeout(&'static str),
    /// Nothing received for a whole keep-alive period.
    KeepAlive,
    Refused(ConnectReturnCode),
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NotConnected => f.write_str("not connected"),
            ClientError::Io(e) => write!(f, "i/o error: {e}"),
            ClientError::Closed => f.write_str("closed by the broker"),
            ClientError::Timeout(what) => write!(f, "timed out: {what}"),
            ClientError::KeepAlive => f.write_str("keep-alive: nothing received from the broker"),
            ClientError::Refused(code) => write!(f, "connection refused: {code}"),
            ClientError::Protocol(what) => write!(f, "protocol error: {what}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREC received and PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug)]
struct Outbound {
    packet_id: PacketId,
    publish: Publish,
    phase: Phase,
}

struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    last_sent: Instant,
    last_received: Instant,
    ping_outstanding: bool,
}

pub struct Client {
    name: String,
    broker: String,
    options: ClientOptions,
    log: Log,
    conn: Option<Conn>,
    // Session state, kept across connections unless clean_session.
    last_packet_id: u16,
    outbound: VecDeque<Outbound>,
    inbound_qos2: BTreeSet<u16>,
    // Observations.
    received: Vec<ReceivedMessage>,
    connections: u32,
    completed: u64,
    /// Payloads of QoS 1/2 messages the broker acknowledged (PUBACK, or
    /// the first PUBREC), in that order.
    acknowledged: Vec<Bytes>,
    suback: Option<SubAck>,
}

impl Client {
    /// A disconnected client named `name` in the log, for the broker at
    /// `broker` (a turmoil address such as `"broker:1883"`).
    pub fn new(name: &str, broker: &str, options: ClientOptions, log: Log) -> Client {
        Client {
            name: name.to_owned(),
            broker: broker.to_owned(),
            options,
            log,
            conn: None,
            last_packet_id: 0,
            outbound: VecDeque::new(),
            inbound_qos2: BTreeSet::new(),
            received: Vec::new(),
            connections: 0,
            completed: 0,
            acknowledged: Vec::new(),
            suback: None,
        }
    }

    /// Connects to `broker` from the next [`Client::connect`] on (a load
    /// balancer picking another node).
    pub fn set_broker(&mut self, broker: &str) {
        self.broker = broker.to_owned();
    }

    pub fn broker(&self) -> &str {
        &self.broker
    }

    /// Replaces the will sent with the next CONNECT.
    pub fn set_will(&mut self, will: Option<LastWill>) {
        self.options.will = will;
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Application messages received so far, in order of arrival.
    pub fn received(&self) -> &[ReceivedMessage] {
        &self.received
    }

    /// Outbound QoS 1/2 messages not yet completely acknowledged.
    pub fn outbound_len(&self) -> usize {
        self.outbound.len()
    }

    /// Outbound QoS 1/2 flows completed (PUBACK or PUBCOMP received).
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Payloads of the QoS 1/2 messages the broker acknowledged (PUBACK,
    /// or PUBREC: stored), in order.
    pub fn acknowledged(&self) -> &[Bytes] {
        &self.acknowledged
    }

    /// Connections established so far.
    pub fn connections(&self) -> u32 {
        self.connections
    }

    pub fn log_event(&self, what: impl fmt::Display) {
        self.log.event(&self.name, what);
    }

    /// Opens a new connection (dropping any current one) and waits for the
    /// CONNACK. With a persistent session, unacknowledged outbound messages
    /// are sent again, in their original order. Returns `session_present`.
    pub async fn connect(&mut self) -> Result<bool, ClientError> {
        self.conn = None;
        if self.options.clean_session {
            self.outbound.clear();
            self.inbound_qos2.clear();
        }
        let deadline = Instant::now() + self.options.io_timeout;
        let stream = match timeout_at(deadline, TcpStream::connect(self.broker.as_str())).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(ClientError::Io(e)),
            Err(_) => return Err(ClientError::Timeout("TCP connect")),
        };
        let now = Instant::now();
        self.conn = Some(Conn {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            last_sent: now,
            last_received: now,
            ping_outstanding: false,
        });
        let result = self.handshake(deadline).await;
        self.check(result)
    }

    async fn handshake(&mut self, deadline: Instant) -> Result<bool, ClientError> {
        let connect = Packet::Connect(easy_mqtt_core::Connect {
            protocol: ProtocolVersion::V3_1_1,
            clean_session: self.options.clean_session,
            keep_alive: self.options.keep_alive,
            client_id: ByteStr::from(self.options.client_id.as_str()),
            will: self.options.will.clone(),
            username: None,
            password: None,
        });
        self.send(&connect).await?;
        let ack = match self.read_packet(deadline).await? {
            Some(Packet::ConnAck(ack)) => ack,
            Some(other) => {
                return Err(ClientError::Protocol(format!(
                    "expected CONNACK, got {}",
                    other.name()
                )));
            }
            None => return Err(ClientError::Timeout("CONNACK")),
        };
        if ack.code != ConnectReturnCode::Accepted {
            return Err(ClientError::Refused(ack.code));
        }
        self.connections += 1;
        self.log_event(format_args!(
            "connected #{} session_present={} resending {}",
            self.connections,
            ack.session_present,
            self.outbound.len()
        ));
        // [MQTT-4.4.0-1]: resend in the original order.
        let resend: Vec<Packet> = self
            .outbound
            .iter()
            .map(|o| match o.phase {
                Phase::Published => {
                    let mut publish = o.publish.clone();
                    publish.dup = true;
                    Packet::Publish(publish)
                }
                Phase::Released => Packet::PubRel(o.packet_id),
            })
            .collect();
        for packet in &resend {
            self.send(packet).await?;
        }
        Ok(ack.session_present)
    }

    /// Subscribes and waits for the SUBACK, answering everything else that
    /// arrives meanwhile.
    pub async fn subscribe(
        &mut self,
        filters: &[(&str, QoS)],
    ) -> Result<Vec<SubscribeReturnCode>, ClientError> {
        let result = self.subscribe_inner(filters).await;
        self.check(result)
    }

    async fn subscribe_inner(
        &mut self,
        filters: &[(&str, QoS)],
    ) -> Result<Vec<SubscribeReturnCode>, ClientError> {
        let packet_id = self.allocate_packet_id()?;
        let subscribe = Subscribe {
            packet_id,
            filters: filters
                .iter()
                .map(|(filter, qos)| SubscribeFilter {
                    filter: ByteStr::from(*filter),
                    qos: *qos,
                })
                .collect(),
        };
        self.suback = None;
        self.send(&Packet::Subscribe(subscribe)).await?;
        loop {
            if let Some(ack) = self.suback.take()
                && ack.packet_id == packet_id
            {
                return Ok(ack.return_codes);
            }
            self.poll_inner(None).await?;
        }
    }

    /// Publishes one message. For QoS 1 and 2 the message joins the
    /// outbound window before it is written, so that it is sent again after
    /// a reconnect even when this write fails. Does not wait for the
    /// acknowledgement: see [`Client::outbound_len`].
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
    ) -> Result<Option<PacketId>, ClientError> {
        self.publish_with(topic, payload, qos, false).await
    }

    /// [`Client::publish`] with the RETAIN flag given.
    pub async fn publish_with(
        &mut self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<Option<PacketId>, ClientError> {
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            _ => Some(self.allocate_packet_id()?),
        };
        let qos_pid = QosPid::new(qos, packet_id)
            .ok_or_else(|| ClientError::Protocol("QoS 1/2 publish without packet id".into()))?;
        let publish = Publish {
            dup: false,
            qos_pid,
            retain,
            topic: ByteStr::from(topic),
            payload,
        };
        if let Some(packet_id) = packet_id {
            self.outbound.push_back(Outbound {
                packet_id,
                publish: publish.clone(),
                phase: Phase::Published,
            });
        }
        let result = self.send(&Packet::Publish(publish)).await;
        self.check(result).map(|()| packet_id)
    }

    /// Waits for one packet (and answers it) or one keep-alive event, but
    /// no later than `until`.
    pub async fn poll(&mut self, until: Option<Instant>) -> Result<(), ClientError> {
        let result = self.poll_inner(until).await;
        self.check(result)
    }

    /// Serves the connection until `until`.
    pub async fn run_until(&mut self, until: Instant) -> Result<(), ClientError> {
        while Instant::now() < until {
            self.poll(Some(until)).await?;
        }
        Ok(())
    }

    /// Serves the connection until every outbound flow is complete or
    /// `until` passes; true when complete.
    pub async fn drain_outbound(&mut self, until: Instant) -> Result<bool, ClientError> {
        while !self.outbound.is_empty() && Instant::now() < until {
            self.poll(Some(until)).await?;
        }
        Ok(self.outbound.is_empty())
    }

    /// Sends DISCONNECT and closes the stream.
    pub async fn disconnect(&mut self) -> Result<(), ClientError> {
        let result = self.send(&Packet::Disconnect).await;
        let result = self.check(result);
        if let Some(mut conn) = self.conn.take() {
            let deadline = Instant::now() + self.options.io_timeout;
            let _ = timeout_at(deadline, conn.stream.shutdown()).await;
        }
        self.log_event("disconnected");
        result
    }

    /// Drops the connection after a failure, keeping the session.
    fn check<T>(&mut self, result: Result<T, ClientError>) -> Result<T, ClientError> {
        if let Err(error) = &result
            && self.conn.take().is_some()
        {
            self.log_event(format_args!("connection lost: {error}"));
        }
        result
    }

    async fn poll_inner(&mut self, until: Option<Instant>) -> Result<(), ClientError> {
        let now = Instant::now();
        let keep_alive = Duration::from_secs(u64::from(self.options.keep_alive));
        let conn = self.conn.as_mut().ok_or(ClientError::NotConnected)?;
        let mut deadline = until;
        if !keep_alive.is_zero() {
            let dead_at = conn.last_received + keep_alive;
            if now >= dead_at {
                return Err(ClientError::KeepAlive);
            }
            let ping_at = (conn.last_sent + keep_alive).min(conn.last_received + keep_alive / 2);
            if !conn.ping_outstanding && now >= ping_at {
                conn.ping_outstanding = true;
                self.send(&Packet::PingReq).await?;
                return Ok(());
            }
            let next = if conn.ping_outstanding {
                dead_at
            } else {
                dead_at.min(ping_at)
            };
            deadline = Some(deadline.map_or(next, |d| d.min(next)));
        }
        let deadline = deadline.unwrap_or_else(|| now + Duration::from_secs(3600));
        match self.read_packet(deadline).await? {
            Some(packet) => self.handle(packet).await,
            None => Ok(()),
        }
    }

    /// The next packet, or `None` once `deadline` passes.
    async fn read_packet(&mut self, deadline: Instant) -> Result<Option<Packet>, ClientError> {
        let conn = self.conn.as_mut().ok_or(ClientError::NotConnected)?;
        loop {
            match codec::decode(&mut conn.rbuf, MAX_PACKET) {
                Ok(Decoded::Packet(packet)) => {
                    conn.last_received = Instant::now();
                    return Ok(Some(packet));
                }
                Ok(Decoded::Incomplete { .. }) => {}
                Err(e) => return Err(ClientError::Protocol(format!("undecodable packet: {e}"))),
            }
            conn.rbuf.reserve(READ_CHUNK);
            match timeout_at(deadline, conn.stream.read_buf(&mut conn.rbuf)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => return Err(ClientError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(ClientError::Io(e)),
            }
        }
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        let io_timeout = self.options.io_timeout;
        let conn = self.conn.as_mut().ok_or(ClientError::NotConnected)?;
        conn.wbuf.clear();
        codec::encode(packet, &mut conn.wbuf)
            .map_err(|e| ClientError::Protocol(format!("cannot encode {}: {e}", packet.name())))?;
        let deadline = Instant::now() + io_timeout;
        match timeout_at(deadline, conn.stream.write_all(&conn.wbuf)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ClientError::Io(e)),
            Err(_) => return Err(ClientError::Timeout("write")),
        }
        conn.last_sent = Instant::now();
        Ok(())
    }

    async fn handle(&mut self, packet: Packet) -> Result<(), ClientError> {
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish).await,
            Packet::PubAck(id) => {
                match self.outbound.iter().position(|o| {
                    o.packet_id == id
                        && o.phase == Phase::Published
                        && o.publish.qos() == QoS::AtLeastOnce
                }) {
                    Some(at) => {
                        if let Some(done) = self.outbound.remove(at) {
                            self.acknowledged.push(done.publish.payload);
                        }
                        self.completed += 1;
                        self.log_event(format_args!("PUBACK {id}"));
                    }
                    None => self.log_event(format_args!("PUBACK {id} (unknown id, ignored)")),
                }
                Ok(())
            }
            Packet::PubRec(id) => {
                let known = self
                    .outbound
                    .iter_mut()
                    .find(|o| o.packet_id == id && o.publish.qos() == QoS::ExactlyOnce);
                match known {
                    Some(o) => {
                        if o.phase == Phase::Published {
                            self.acknowledged.push(o.publish.payload.clone());
                        }
                        o.phase = Phase::Released;
                        self.log_event(format_args!("PUBREC {id}"));
                        self.send(&Packet::PubRel(id)).await
                    }
                    None => {
                        self.log_event(format_args!("PUBREC {id} (unknown id, ignored)"));
                        Ok(())
                    }
                }
            }
            Packet::PubComp(id) => {
                match self
                    .outbound
                    .iter()
                    .position(|o| o.packet_id == id && o.phase == Phase::Released)
                {
                    Some(at) => {
                        self.outbound.remove(at);
                        self.completed += 1;
                        self.log_event(format_args!("PUBCOMP {id}"));
                    }
                    None => self.log_event(format_args!("PUBCOMP {id} (unknown id, ignored)")),
                }
                Ok(())
            }
            Packet::PubRel(id) => {
                let known = self.inbound_qos2.remove(&id.get());
                self.log_event(format_args!("PUBREL {id} known={known}"));
                // Answered even for an unknown id: our PUBCOMP may have been lost.
                self.send(&Packet::PubComp(id)).await
            }
            Packet::SubAck(ack) => {
                self.log_event(format_args!(
                    "SUBACK {} {:?}",
                    ack.packet_id, ack.return_codes
                ));
                self.suback = Some(ack);
                Ok(())
            }
            Packet::UnsubAck(id) => {
                self.log_event(format_args!("UNSUBACK {id}"));
                Ok(())
            }
            Packet::PingResp => {
                if let Some(conn) = &mut self.conn {
                    conn.ping_outstanding = false;
                }
                Ok(())
            }
            other @ (Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq
            | Packet::Disconnect) => Err(ClientError::Protocol(format!(
                "a server must not send {}",
                other.name()
            ))),
        }
    }

    async fn handle_publish(&mut self, publish: Publish) -> Result<(), ClientError> {
        let deliver = match publish.qos_pid {
            QosPid::AtMostOnce | QosPid::AtLeastOnce(_) => true,
            // Delivered once per packet id until PUBREL ([MQTT-4.3.3-2], method B).
            QosPid::ExactlyOnce(id) => self.inbound_qos2.insert(id.get()),
        };
        let id = publish
            .packet_id()
            .map_or_else(|| "-".to_owned(), |id| id.to_string());
        self.log_event(format_args!(
            "PUBLISH {} q{} id={id} dup={} {:?}{}",
            publish.topic,
            publish.qos() as u8,
            u8::from(publish.dup),
            String::from_utf8_lossy(&publish.payload),
            if deliver {
                ""
            } else {
                " (duplicate QoS 2 id, not delivered)"
            }
        ));
        if deliver {
            self.received.push(ReceivedMessage {
                topic: publish.topic.to_string(),
                payload: publish.payload.clone(),
                qos: publish.qos(),
                dup: publish.dup,
                retain: publish.retain,
                connection: self.connections,
                at: turmoil::sim_elapsed().unwrap_or_default(),
            });
        }
        match publish.qos_pid {
            QosPid::AtMostOnce => Ok(()),
            QosPid::AtLeastOnce(id) => self.send(&Packet::PubAck(id)).await,
            QosPid::ExactlyOnce(id) => self.send(&Packet::PubRec(id)).await,
        }
    }

    /// The next packet id after the last one that no outbound flow uses.
    fn allocate_packet_id(&mut self) -> Result<PacketId, ClientError> {
        let mut candidate = self.last_packet_id;
        for _ in 0..u16::MAX {
            candidate = candidate.wrapping_add(1);
            let Some(id) = PacketId::new(candidate) else {
                continue;
            };
            if !self.outbound.iter().any(|o| o.packet_id == id) {
                self.last_packet_id = candidate;
                return Ok(id);
            }
        }
        Err(ClientError::Protocol("no free packet id".into()))
    }
}
