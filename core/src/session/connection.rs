//! The per-connection protocol state machine.
//!
//! It owns no socket and no clock. The driver feeds it bytes (or packets) and
//! `now`, drains [`Connection::poll_event`] and [`Connection::poll_transmit`]
//! after every input, and sleeps until [`Connection::poll_timeout`]. The
//! server answers the events that need a decision ([`Event::Connect`],
//! [`Event::Publish`] with QoS 1/2, [`Event::Subscribe`], [`Event::Unsubscribe`])
//! by calling back into the connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::codec::{self, DecodeError, Decoded};
use crate::packet::{
    ByteStr, ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PacketId, ProtocolVersion,
    Publish, QoS, QosPid, SubAck, Subscribe, SubscribeReturnCode, Unsubscribe,
};
use crate::session::state::{Delivery, Enqueued, OutboundPhase, SessionLimits, SessionState};
use crate::topic::{self, TopicError};

/// Limits and policies of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Largest packet accepted, fixed header included.
    pub max_packet_size: usize,
    /// Time allowed between accepting the connection and its CONNECT.
    pub connect_timeout: Duration,
    /// Keep-alive asked below this (including 0, "off") is held to it.
    pub min_keep_alive: u16,
    /// Keep-alive asked above this is refused with CONNACK 2.
    pub max_keep_alive: u16,
    /// Topic levels allowed in PUBLISH topics (0: no limit).
    pub max_topic_levels: usize,
    pub session: SessionLimits,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_packet_size: 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            min_keep_alive: 0,
            max_keep_alive: u16::MAX,
            max_topic_levels: 128,
            session: SessionLimits::default(),
        }
    }
}

/// Control packets waiting to be written beyond which the connection stops
/// reading, so a peer that never reads its acknowledgements cannot make us
/// buffer without bound.
const CONTROL_BACKLOG: usize = 1024;

/// A violation of the protocol by the peer; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("first packet must be CONNECT, got {0} [MQTT-3.1.0-1]")]
    FirstPacketNotConnect(&'static str),
    #[error("second CONNECT on one connection [MQTT-3.1.0-2]")]
    SecondConnect,
    #[error("a client must not send {0}")]
    UnexpectedPacket(&'static str),
    #[error("PUBLISH topic refused: {0}")]
    Topic(TopicError),
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT: its will is discarded ([MQTT-3.1.2-10]).
    ClientDisconnect,
    /// No CONNECT within the connect timeout.
    ConnectTimeout,
    /// Nothing received for 1.5 × keep-alive ([MQTT-3.1.2-24]).
    KeepAliveTimeout,
    ProtocolError(ProtocolError),
    /// CONNACK with a non-zero code was sent.
    Refused(ConnectReturnCode),
    /// Another connection with the same client id took the session over ([MQTT-3.1.4-2]).
    TakenOver,
    /// The transport ended (EOF or error) without DISCONNECT.
    TransportClosed,
    /// Closed by an administrator.
    Kicked,
    /// The server is shutting down: no will is published, as the client did nothing wrong.
    ServerShutdown,
    /// Storage stayed unavailable: a QoS 1/2 PUBLISH (or a SUBSCRIBE) could
    /// not be stored, so it is not acknowledged and the client sends it
    /// again on its next connection. No will: the client did nothing wrong.
    StorageUnavailable,
}

impl CloseReason {
    /// Whether the will must be published for this reason ([MQTT-3.1.2-8]).
    fn publishes_will(&self) -> bool {
        !matches!(
            self,
            CloseReason::ClientDisconnect
                | CloseReason::ServerShutdown
                | CloseReason::StorageUnavailable
                | CloseReason::Refused(_)
        )
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::ClientDisconnect => f.write_str("client disconnected"),
            CloseReason::ConnectTimeout => f.write_str("no CONNECT in time"),
            CloseReason::KeepAliveTimeout => f.write_str("keep-alive expired"),
            CloseReason::ProtocolError(e) => write!(f, "protocol error: {e}"),
            CloseReason::Refused(code) => write!(f, "connection refused: {code}"),
            CloseReason::TakenOver => f.write_str("taken over by a new connection"),
            CloseReason::TransportClosed => f.write_str("connection lost"),
            CloseReason::Kicked => f.write_str("kicked"),
            CloseReason::ServerShutdown => f.write_str("server shutting down"),
            CloseReason::StorageUnavailable => f.write_str("storage unavailable"),
        }
    }
}

/// What the connection asks of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A well-formed CONNECT. Answer with [`Connection::accept`] or
    /// [`Connection::refuse`]. An empty client id arrives only with clean
    /// session set: the server assigns one ([MQTT-3.1.3-6]).
    Connect(Box<Connect>),
    /// A PUBLISH to route. For QoS 1 and 2 call
    /// [`Connection::complete_publish`] once it is durably routed; the
    /// acknowledgement is sent then, in order of arrival ([MQTT-4.6.0-2]).
    Publish(Publish),
    /// Answer with [`Connection::complete_subscribe`].
    Subscribe(Subscribe),
    /// Answer with [`Connection::complete_unsubscribe`].
    Unsubscribe(Unsubscribe),
    /// The connection is over. `will` is the will message to publish now, if any.
    Closed {
        reason: CloseReason,
        will: Option<LastWill>,
    },
}

#[derive(Debug)]
enum State {
    /// Until `last_received + connect_timeout` (no packet was received yet,
    /// so `last_received` is when the connection began).
    AwaitingConnect,
    /// CONNECT handed to the server; input paused until it decides.
    AwaitingDecision,
    Connected,
    Closed,
}

/// An inbound QoS 1/2 PUBLISH waiting for the server to finish routing it.
#[derive(Debug)]
struct PendingAck {
    packet_id: PacketId,
    qos: QoS,
    done: bool,
}

/// The packets and events waiting for the driver.
#[derive(Debug, Default)]
struct Queues {
    control: VecDeque<Packet>,
    pending_acks: VecDeque<PendingAck>,
    events: VecDeque<Event>,
}

impl Queues {
    fn is_empty(&self) -> bool {
        self.control.is_empty() && self.pending_acks.is_empty() && self.events.is_empty()
    }
}

#[derive(Debug)]
pub struct Connection {
    /// Shared by every connection of a listener ([`Connection::shared`]):
    /// a copy in each would be 40 bytes of every idle connection.
    config: Arc<ConnectionConfig>,
    state: State,
    protocol: Option<ProtocolVersion>,
    session: Option<SessionState>,
    /// Boxed: most clients have none, and an idle connection should not
    /// pay for one inline.
    will: Option<Box<LastWill>>,
    /// Effective keep-alive in seconds (after the configured bounds); 0: none.
    keep_alive: u16,
    /// When the last packet was received; before the first, when the
    /// connection began (the CONNECT deadline counts from it).
    last_received: Instant,
    /// Boxed, and dropped while all are empty: an idle connection (most
    /// of them, most of the time) should not pay ~100 bytes for them.
    queues: Option<Box<Queues>>,
    /// Boxed: set once, when the connection closes.
    close_reason: Option<Box<CloseReason>>,
    /// PUBLISH packets encoded since [`Connection::take_publishes_sent`].
    publishes_sent: u64,
}

impl Connection {
    pub fn new(config: ConnectionConfig, now: Instant) -> Connection {
        Connection::shared(Arc::new(config), now)
    }

    /// A connection whose limits are shared with others (a server makes
    /// one `Arc` for all its connections).
    pub fn shared(config: Arc<ConnectionConfig>, now: Instant) -> Connection {
        Connection {
            state: State::AwaitingConnect,
            config,
            protocol: None,
            session: None,
            will: None,
            keep_alive: 0,
            last_received: now,
            queues: None,
            close_reason: None,
            publishes_sent: 0,
        }
    }

    /// Decodes and handles every complete packet at the front of `buf`.
    /// Stops early while the server must decide on a CONNECT, when the
    /// connection closes, or when too many control packets wait to be sent.
    pub fn handle_input(&mut self, buf: &mut BytesMut, now: Instant) {
        while self.wants_input() && !buf.is_empty() {
            match codec::decode(buf, self.config.max_packet_size) {
                Ok(Decoded::Packet(packet)) => self.handle_packet(packet, now),
                Ok(Decoded::Incomplete { .. }) => return,
                Err(error) => {
                    self.handle_decode_error(error, now);
                    return;
                }
            }
        }
    }

    /// Whether the driver should read and feed more input now.
    pub fn wants_input(&self) -> bool {
        matches!(self.state, State::AwaitingConnect | State::Connected)
            && self
                .queues
                .as_ref()
                .is_none_or(|q| q.control.len() + q.pending_acks.len() < CONTROL_BACKLOG)
    }

    /// A packet the decoder refused. An unsupported protocol level in CONNECT
    /// is answered with CONNACK 1 ([MQTT-3.1.2-2]); anything else closes.
    pub fn handle_decode_error(&mut self, error: DecodeError, now: Instant) {
        if let (DecodeError::UnsupportedProtocolLevel(_), State::AwaitingConnect) =
            (&error, &self.state)
        {
            self.refuse(ConnectReturnCode::UnacceptableProtocolVersion, now);
            return;
        }
        self.close(
            CloseReason::ProtocolError(ProtocolError::Decode(error)),
            now,
        );
    }

    pub fn handle_packet(&mut self, packet: Packet, now: Instant) {
        self.last_received = now;
        match self.state {
            State::AwaitingConnect => match packet {
                Packet::Connect(connect) => self.handle_connect(connect, now),
                other => self.close(
                    CloseReason::ProtocolError(ProtocolError::FirstPacketNotConnect(other.name())),
                    now,
                ),
            },
            State::Connected => self.handle_connected(packet, now),
            // Input is paused in these states; anything that still arrives is ignored.
            State::AwaitingDecision | State::Closed => {}
        }
    }

    fn handle_connect(&mut self, mut connect: Connect, now: Instant) {
        // Decoded fields are slices of the read buffer; what outlives the
        // packet (the client id, the will) is copied, or those few bytes
        // would keep the whole buffer allocated for the session's lifetime.
        connect.client_id = ByteStr::from(connect.client_id.as_str());
        if let Some(will) = &mut connect.will {
            will.topic = ByteStr::from(will.topic.as_str());
            will.payload = Bytes::copy_from_slice(&will.payload);
        }
        connect.username = connect.username.map(|name| ByteStr::from(name.as_str()));
        connect.password = connect.password.map(|word| Bytes::copy_from_slice(&word));
        self.protocol = Some(connect.protocol);
        if connect.client_id.is_empty() && !connect.clean_session {
            // [MQTT-3.1.3-8]
            self.refuse(ConnectReturnCode::IdentifierRejected, now);
            return;
        }
        if connect.keep_alive > self.config.max_keep_alive {
            // 3.1.1 cannot tell the client another keep-alive, so refuse, as Mosquitto does.
            self.refuse(ConnectReturnCode::IdentifierRejected, now);
            return;
        }
        self.keep_alive = connect.keep_alive.max(self.config.min_keep_alive);
        self.state = State::AwaitingDecision;
        self.queues_mut()
            .events
            .push_back(Event::Connect(Box::new(connect)));
    }

    /// Accepts the pending CONNECT with the session to use (a fresh one, or
    /// the stored one of a persistent session). Messages left in flight are
    /// sent again, PUBLISH with DUP set and PUBREL as they were ([MQTT-4.4.0-1]).
    pub fn accept(
        &mut self,
        mut session: SessionState,
        session_present: bool,
        will: Option<LastWill>,
        now: Instant,
    ) {
        if !matches!(self.state, State::AwaitingDecision) {
            return;
        }
        session.set_limits(self.config.session);
        self.queues_mut()
            .control
            .push_back(Packet::ConnAck(ConnAck {
                session_present,
                code: ConnectReturnCode::Accepted,
            }));
        for inflight in session.inflight() {
            let packet = match inflight.phase {
                OutboundPhase::Published => {
                    publish_packet(&inflight.delivery, Some(inflight.packet_id), true)
                }
                OutboundPhase::Released => Packet::PubRel(inflight.packet_id),
            };
            self.queues_mut().control.push_back(packet);
        }
        self.session = Some(session);
        self.will = will.map(Box::new);
        self.state = State::Connected;
        self.last_received = now;
    }

    /// Refuses the pending CONNECT with a non-zero return code; the CONNACK
    /// is sent and the connection closes ([MQTT-3.2.2-5]).
    pub fn refuse(&mut self, code: ConnectReturnCode, now: Instant) {
        if !matches!(self.state, State::AwaitingConnect | State::AwaitingDecision) {
            return;
        }
        self.queues_mut()
            .control
            .push_back(Packet::ConnAck(ConnAck {
                session_present: false,
                code,
            }));
        self.close(CloseReason::Refused(code), now);
    }

    fn handle_connected(&mut self, packet: Packet, now: Instant) {
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish, now),
            Packet::PubAck(id) => {
                if let Some(session) = &mut self.session {
                    session.acknowledge(id);
                }
            }
            Packet::PubRec(id) => {
                let known = self.session.as_mut().is_some_and(|s| s.received(id));
                if known {
                    self.queues_mut().control.push_back(Packet::PubRel(id));
                }
            }
            Packet::PubComp(id) => {
                if let Some(session) = &mut self.session {
                    session.complete(id);
                }
            }
            Packet::PubRel(id) => {
                // Answered even for an unknown id: the PUBCOMP may have been lost ([MQTT-4.3.3-2]).
                if let Some(session) = &mut self.session {
                    session.release_inbound_qos2(id);
                }
                self.queues_mut().control.push_back(Packet::PubComp(id));
            }
            Packet::Subscribe(mut subscribe) => {
                // Filters stay in the subscription index: copied out of the
                // read buffer (see `handle_connect`).
                for filter in &mut subscribe.filters {
                    filter.filter = ByteStr::from(filter.filter.as_str());
                }
                self.queues_mut()
                    .events
                    .push_back(Event::Subscribe(subscribe))
            }
            Packet::Unsubscribe(unsubscribe) => self
                .queues_mut()
                .events
                .push_back(Event::Unsubscribe(unsubscribe)),
            Packet::PingReq => self.queues_mut().control.push_back(Packet::PingResp),
            Packet::Disconnect => {
                self.will = None;
                self.close(CloseReason::ClientDisconnect, now);
            }
            Packet::Connect(_) => self.close(
                CloseReason::ProtocolError(ProtocolError::SecondConnect),
                now,
            ),
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => self.close(
                CloseReason::ProtocolError(ProtocolError::UnexpectedPacket(other.name())),
                now,
            ),
        }
    }

    fn handle_publish(&mut self, publish: Publish, now: Instant) {
        if let Err(error) = topic::check_levels(&publish.topic, self.config.max_topic_levels) {
            self.close(CloseReason::ProtocolError(ProtocolError::Topic(error)), now);
            return;
        }
        match publish.qos_pid {
            QosPid::AtMostOnce => self.queues_mut().events.push_back(Event::Publish(publish)),
            QosPid::AtLeastOnce(packet_id) => {
                self.queues_mut().pending_acks.push_back(PendingAck {
                    packet_id,
                    qos: QoS::AtLeastOnce,
                    done: false,
                });
                self.queues_mut().events.push_back(Event::Publish(publish));
            }
            QosPid::ExactlyOnce(packet_id) => {
                let Some(session) = &mut self.session else {
                    return;
                };
                if session.record_inbound_qos2(packet_id) {
                    self.queues_mut().pending_acks.push_back(PendingAck {
                        packet_id,
                        qos: QoS::ExactlyOnce,
                        done: false,
                    });
                    self.queues_mut().events.push_back(Event::Publish(publish));
                } else if !self.qos2_being_routed(packet_id, false) {
                    // Already routed and acknowledged: acknowledge again, route
                    // nothing ([MQTT-4.3.3-2]). While still being routed, the
                    // PUBREC will follow on completion.
                    self.queues_mut()
                        .control
                        .push_back(Packet::PubRec(packet_id));
                }
            }
        }
    }

    /// Whether the QoS 2 PUBLISH with this id waits for its PUBREC
    /// (`unfinished`: only while its routing has not completed).
    fn qos2_being_routed(&self, packet_id: PacketId, unfinished: bool) -> bool {
        self.queues.as_ref().is_some_and(|q| {
            q.pending_acks.iter().any(|p| {
                p.packet_id == packet_id && p.qos == QoS::ExactlyOnce && !(unfinished && p.done)
            })
        })
    }

    /// The server has durably routed the QoS 1/2 PUBLISH with this id.
    /// Acknowledgements leave in the order the PUBLISH packets arrived.
    pub fn complete_publish(&mut self, packet_id: PacketId) {
        let Some(queues) = self.queues.as_deref_mut() else {
            return;
        };
        if let Some(pending) = queues
            .pending_acks
            .iter_mut()
            .find(|p| p.packet_id == packet_id && !p.done)
        {
            pending.done = true;
        }
        while queues.pending_acks.front().is_some_and(|p| p.done) {
            if let Some(done) = queues.pending_acks.pop_front() {
                queues.control.push_back(match done.qos {
                    QoS::ExactlyOnce => Packet::PubRec(done.packet_id),
                    _ => Packet::PubAck(done.packet_id),
                });
            }
        }
    }

    /// The server could not route the QoS 1/2 PUBLISH with this id (for
    /// example, storage is down): nothing is acknowledged and the connection
    /// closes, so the client sends it again on its next connection.
    pub fn fail_publish(&mut self, packet_id: PacketId, reason: CloseReason, now: Instant) {
        if self.qos2_being_routed(packet_id, true) {
            // Not routed, so the client's retransmission must be routed then.
            if let Some(session) = &mut self.session {
                session.forget_inbound_qos2(packet_id);
            }
        }
        self.close(reason, now);
    }

    /// Answers a SUBSCRIBE with one return code per filter, in order ([MQTT-3.8.4-5]).
    pub fn complete_subscribe(&mut self, packet_id: PacketId, codes: Vec<SubscribeReturnCode>) {
        self.queues_mut().control.push_back(Packet::SubAck(SubAck {
            packet_id,
            return_codes: codes,
        }));
    }

    pub fn complete_unsubscribe(&mut self, packet_id: PacketId) {
        self.queues_mut()
            .control
            .push_back(Packet::UnsubAck(packet_id));
    }

    /// Offers a message for delivery. `None` when no session is attached
    /// (the CONNECT is not accepted yet, or the session was taken away).
    /// A closed connection still holding its session keeps what it is
    /// given, so nothing routed between the close and the server taking the
    /// session back is lost.
    pub fn deliver(&mut self, delivery: Delivery) -> Option<Enqueued> {
        self.session.as_mut().map(|s| s.enqueue(delivery))
    }

    /// Closes the connection. The will (unless discarded) is handed to the
    /// server in the [`Event::Closed`] event.
    pub fn close(&mut self, reason: CloseReason, _now: Instant) {
        if matches!(self.state, State::Closed) {
            return;
        }
        let will = if reason.publishes_will() {
            self.will.take().map(|will| *will)
        } else {
            None
        };
        self.will = None;
        self.state = State::Closed;
        self.close_reason = Some(Box::new(reason.clone()));
        self.queues_mut()
            .events
            .push_back(Event::Closed { reason, will });
    }

    /// Checks the deadlines against `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::AwaitingConnect if now >= self.connect_deadline() => {
                self.close(CloseReason::ConnectTimeout, now)
            }
            State::Connected if self.keep_alive_deadline().is_some_and(|d| now >= d) => {
                self.close(CloseReason::KeepAliveTimeout, now)
            }
            _ => {}
        }
    }

    /// When [`Connection::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitingConnect => Some(self.connect_deadline()),
            State::Connected => self.keep_alive_deadline(),
            State::AwaitingDecision | State::Closed => None,
        }
    }

    fn connect_deadline(&self) -> Instant {
        self.last_received + self.config.connect_timeout
    }

    fn keep_alive_deadline(&self) -> Option<Instant> {
        // One and a half times the keep-alive ([MQTT-3.1.2-24]).
        self.keep_alive().map(|ka| self.last_received + ka + ka / 2)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.queues.as_mut()?.events.pop_front()
    }

    /// Frees the memory of the queues that are empty now (the CONNACK's
    /// and the CONNECT event's, the session's outbound window and queue
    /// would otherwise stay allocated for the whole life of an idle
    /// connection). For the driver, once it has nothing to
    /// do; a queue used again allocates again.
    pub fn release_idle(&mut self) {
        if self.queues.as_ref().is_some_and(|q| q.is_empty()) {
            self.queues = None;
        }
        if let Some(session) = &mut self.session {
            session.release_idle();
        }
    }

    fn queues_mut(&mut self) -> &mut Queues {
        self.queues.get_or_insert_with(Box::default)
    }

    /// Encodes what is ready to send into `buf`, stopping once it holds at
    /// least `max_bytes`. Returns the number of packets written.
    pub fn poll_transmit(&mut self, buf: &mut BytesMut, max_bytes: usize) -> usize {
        let mut written = 0;
        while buf.len() < max_bytes {
            if let Some(packet) = self.queues.as_mut().and_then(|q| q.control.pop_front()) {
                if matches!(packet, Packet::Publish(_)) {
                    self.publishes_sent += 1;
                }
                encode_into(&packet, buf);
                written += 1;
                continue;
            }
            if !matches!(self.state, State::Connected) {
                break;
            }
            let Some(session) = &mut self.session else {
                break;
            };
            let sent = session.send_next(|delivery, packet_id| {
                let qos_pid = QosPid::new(delivery.qos, packet_id).unwrap_or(QosPid::AtMostOnce);
                let message = &delivery.message;
                let encoded = codec::encode_publish(
                    buf,
                    false,
                    qos_pid,
                    delivery.retain,
                    message.topic.as_bytes(),
                    &message.payload,
                );
                if let Err(error) = encoded {
                    // As in `encode_into`.
                    tracing::error!(%error, packet = "PUBLISH", "dropping a packet that cannot be encoded");
                }
            });
            if sent.is_none() {
                break;
            }
            self.publishes_sent += 1;
            written += 1;
        }
        written
    }

    /// PUBLISH packets (retransmissions included) that
    /// [`Connection::poll_transmit`] wrote since the last call; resets the count.
    pub fn take_publishes_sent(&mut self) -> u64 {
        std::mem::take(&mut self.publishes_sent)
    }

    /// Whether [`Connection::poll_transmit`] would write something.
    pub fn has_transmit(&self) -> bool {
        if self.queues.as_ref().is_some_and(|q| !q.control.is_empty()) {
            return true;
        }
        matches!(self.state, State::Connected)
            && self.session.as_ref().is_some_and(|s| {
                s.queue()
                    .next()
                    .is_some_and(|d| d.qos == QoS::AtMostOnce || s.window_open())
            })
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Connected, with nothing to do until the peer sends something, a
    /// deadline passes or a delivery comes: no event, packet or journaled
    /// change waiting. A driver may then let go of what it holds for the
    /// connection (hibernate it) without losing anything.
    pub fn is_quiet(&self) -> bool {
        self.is_connected()
            && self.queues.as_ref().is_none_or(|q| q.is_empty())
            && !self.has_transmit()
            && self
                .session
                .as_ref()
                .is_none_or(|s| !s.has_journal_changes())
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected)
    }

    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.as_deref()
    }

    pub fn protocol(&self) -> Option<ProtocolVersion> {
        self.protocol
    }

    pub fn keep_alive(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_secs(u64::from(self.keep_alive)))
    }

    pub fn session(&self) -> Option<&SessionState> {
        self.session.as_ref()
    }

    /// The attached session, to drain its journal.
    pub fn session_mut(&mut self) -> Option<&mut SessionState> {
        self.session.as_mut()
    }

    /// Detaches the session, for the server to keep (persistent session) or
    /// drop. Only after the connection is closed or taken over.
    pub fn take_session(&mut self) -> Option<SessionState> {
        if !matches!(self.state, State::Closed) {
            return None;
        }
        let mut session = self.session.take()?;
        // A persistent session may wait long for its client: without the
        // window's and queue's empty allocations.
        session.release_idle();
        Some(session)
    }
}

fn publish_packet(delivery: &Delivery, packet_id: Option<PacketId>, dup: bool) -> Packet {
    let qos_pid = QosPid::new(delivery.qos, packet_id).unwrap_or(QosPid::AtMostOnce);
    Packet::Publish(Publish {
        dup: dup && qos_pid != QosPid::AtMostOnce,
        qos_pid,
        retain: delivery.retain,
        topic: delivery.message.topic.clone(),
        payload: delivery.message.payload.clone(),
    })
}

fn encode_into(packet: &Packet, buf: &mut BytesMut) {
    if let Err(error) = codec::encode(packet, buf) {
        // Only a message too large for MQTT's length fields can fail, and
        // such a message could not have been received in the first place.
        tracing::error!(%error, packet = packet.name(), "dropping a packet that cannot be encoded");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn connect() -> Packet {
        Packet::Connect(Connect {
            protocol: ProtocolVersion::V3_1_1,
            clean_session: true,
            keep_alive: 60,
            client_id: ByteStr::from("idle"),
            will: None,
            username: None,
            password: None,
        })
    }

    fn send(conn: &mut Connection, packet: &Packet, now: Instant) {
        let mut wire = BytesMut::new();
        codec::encode(packet, &mut wire).unwrap();
        conn.handle_input(&mut wire, now);
        assert!(wire.is_empty());
    }

    fn received(conn: &mut Connection) -> Vec<Packet> {
        let mut wire = BytesMut::new();
        conn.poll_transmit(&mut wire, usize::MAX);
        let mut packets = Vec::new();
        while let Decoded::Packet(packet) = codec::decode(&mut wire, usize::MAX).unwrap() {
            packets.push(packet);
        }
        assert!(wire.is_empty());
        packets
    }

    /// An idle connection keeps no queue memory from its CONNECT, and its
    /// queues work again afterwards.
    #[test]
    fn release_idle_frees_the_empty_queues() {
        let config = ConnectionConfig::default();
        let now = Instant::now();
        let mut conn = Connection::new(config, now);
        send(&mut conn, &connect(), now);
        assert!(matches!(conn.poll_event(), Some(Event::Connect(_))));
        conn.accept(SessionState::new(config.session), false, None, now);
        assert!(matches!(
            received(&mut conn).as_slice(),
            [Packet::ConnAck(_)]
        ));
        assert!(conn.queues.is_some());

        conn.release_idle();
        assert!(conn.queues.is_none());

        send(&mut conn, &Packet::PingReq, now);
        assert_eq!(received(&mut conn), vec![Packet::PingResp]);
        // Nothing is freed while it is still to be sent.
        send(&mut conn, &Packet::PingReq, now);
        conn.release_idle();
        assert_eq!(received(&mut conn), vec![Packet::PingResp]);
    }

    /// Quiet only while connected with nothing waiting: no event for the
    /// driver, no packet to send, no message queued (what a driver checks
    /// before it lets go of the connection's resources).
    #[test]
    fn quiet_only_while_nothing_waits() {
        let config = ConnectionConfig::default();
        let now = Instant::now();
        let mut conn = Connection::new(config, now);
        assert!(!conn.is_quiet(), "awaiting CONNECT");
        send(&mut conn, &connect(), now);
        assert!(!conn.is_quiet(), "the CONNECT event waits");
        assert!(matches!(conn.poll_event(), Some(Event::Connect(_))));
        conn.accept(SessionState::new(config.session), false, None, now);
        assert!(!conn.is_quiet(), "the CONNACK waits");
        received(&mut conn);
        assert!(conn.is_quiet());

        send(&mut conn, &Packet::PingReq, now);
        assert!(!conn.is_quiet(), "the PINGRESP waits");
        received(&mut conn);
        assert!(conn.is_quiet());

        let message = Arc::new(crate::session::Message {
            topic: ByteStr::from("t"),
            payload: Bytes::from_static(b"m"),
            qos: QoS::AtMostOnce,
            retain: false,
        });
        conn.deliver(Delivery {
            message,
            qos: QoS::AtMostOnce,
            retain: false,
            id: None,
        });
        assert!(!conn.is_quiet(), "a message waits");
        assert_eq!(received(&mut conn).len(), 1);
        assert!(conn.is_quiet());

        conn.close(CloseReason::TransportClosed, now);
        assert!(!conn.is_quiet(), "closed");
    }

    /// A will is kept (boxed) until the connection closes without DISCONNECT.
    #[test]
    fn the_will_survives_until_an_unclean_close() {
        let config = ConnectionConfig::default();
        let now = Instant::now();
        let mut conn = Connection::new(config, now);
        send(&mut conn, &connect(), now);
        assert!(matches!(conn.poll_event(), Some(Event::Connect(_))));
        let will = LastWill {
            topic: ByteStr::from("w"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
        };
        conn.accept(
            SessionState::new(config.session),
            false,
            Some(will.clone()),
            now,
        );
        conn.release_idle();
        conn.close(CloseReason::TransportClosed, now);
        assert_eq!(
            conn.poll_event(),
            Some(Event::Closed {
                reason: CloseReason::TransportClosed,
                will: Some(will)
            })
        );
        assert_eq!(conn.close_reason(), Some(&CloseReason::TransportClosed));
    }
}
