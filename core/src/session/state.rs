//! What a session keeps between network connections: the outbound in-flight
//! window, the queue behind it, the inbound QoS 2 packet ids awaiting PUBREL,
//! and the packet-id allocator.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::packet::{ByteStr, PacketId, QoS};
use crate::storage::MessageId;

/// A published application message as routed: one allocation shared by every
/// session it is delivered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: ByteStr,
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// Whether the publisher asked for it to be retained.
    pub retain: bool,
}

/// One message on its way to one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// The QoS it travels with: the publish QoS downgraded to the granted QoS.
    pub qos: QoS,
    /// The RETAIN flag on the wire: set only for retained messages sent
    /// because of a new subscription ([MQTT-3.3.1-8], [MQTT-3.3.1-9]).
    pub retain: bool,
    /// The stored body's id when this delivery is held by storage (a
    /// persistent session on a durable node); `None` when it lives in
    /// memory only. Only deliveries with an id are journaled.
    pub id: Option<MessageId>,
}

impl Delivery {
    /// A delivery through a subscription granted `granted`; RETAIN cleared.
    pub fn routed(message: Arc<Message>, granted: QoS) -> Delivery {
        let qos = message.qos.min(granted);
        Delivery {
            message,
            qos,
            retain: false,
            id: None,
        }
    }

    /// A retained message sent because of a new subscription; RETAIN set.
    pub fn retained(message: Arc<Message>, granted: QoS) -> Delivery {
        let qos = message.qos.min(granted);
        Delivery {
            message,
            qos,
            retain: true,
            id: None,
        }
    }

    /// The same delivery, marked as held by storage under `id`.
    pub fn stored_as(mut self, id: MessageId) -> Delivery {
        self.id = Some(id);
        self
    }
}

/// A change to a session's stored state, recorded by [`SessionState`] when
/// its journal is on (a persistent session on a durable node) and written
/// to storage by the server. Only messages that storage holds (a delivery
/// with an id) are journaled; enqueues are written by whoever routes the
/// message, before the session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// Dropped from the queue by the overflow policy (or refused).
    Dequeue(MessageId),
    /// Moved from the queue into the window, or its phase changed.
    /// `qos` is the delivery's QoS: a QoS 2 PUBLISH must not leave before
    /// this change is stored (its packet id must survive a crash).
    SetInflight {
        packet_id: PacketId,
        id: MessageId,
        phase: OutboundPhase,
        qos: QoS,
    },
    /// PUBACK or PUBCOMP received.
    CompleteInflight(PacketId),
    /// PUBREL received for an inbound QoS 2 id.
    RemoveInboundQos2(PacketId),
}

/// Where an outbound QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundPhase {
    /// PUBLISH sent (QoS 1 or 2), waiting for PUBACK or PUBREC.
    Published,
    /// PUBREC received, PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InflightMessage {
    pub packet_id: PacketId,
    pub delivery: Delivery,
    pub phase: OutboundPhase,
}

/// What to do when a session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueOverflow {
    /// Drop the oldest queued message to make room for the new one.
    #[default]
    DropOldest,
    /// Refuse the new message.
    DropNewest,
}

/// The limits a session enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Outbound QoS 1/2 messages awaiting acknowledgement (1..=65535).
    pub max_inflight: u16,
    /// Messages waiting behind the in-flight window (at least 1).
    pub max_queued: usize,
    pub overflow: QueueOverflow,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_inflight: 32,
            max_queued: 1000,
            overflow: QueueOverflow::DropOldest,
        }
    }
}

/// The result of offering a message to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Accepted (queued or ready to send).
    Accepted,
    /// Accepted, and the oldest queued message was dropped to make room.
    DroppedOldest(Delivery),
    /// Refused: the queue is full and the policy is drop-newest.
    Refused,
}

/// The state of a session between connections.
#[derive(Debug, Clone)]
pub struct SessionState {
    limits: SessionLimits,
    inflight: VecDeque<InflightMessage>,
    queue: VecDeque<Delivery>,
    /// Client packet ids of QoS 2 messages received and acknowledged with
    /// PUBREC, kept until PUBREL so a resent PUBLISH is not routed twice.
    inbound_qos2: BTreeMap<u16, ()>,
    last_packet_id: u16,
    dropped: u64,
    /// Changes to write to storage, when journaling is on.
    journal: Option<Vec<SessionChange>>,
}

impl SessionState {
    pub fn new(limits: SessionLimits) -> SessionState {
        SessionState {
            limits,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            inbound_qos2: BTreeMap::new(),
            last_packet_id: 0,
            dropped: 0,
            journal: None,
        }
    }

    /// Turns the journal of stored-state changes on or off.
    pub fn set_journal(&mut self, on: bool) {
        match (on, self.journal.is_some()) {
            (true, false) => self.journal = Some(Vec::new()),
            (false, true) => self.journal = None,
            _ => {}
        }
    }

    pub fn is_journaled(&self) -> bool {
        self.journal.is_some()
    }

    /// Takes the changes recorded since the last call.
    pub fn take_journal(&mut self) -> Vec<SessionChange> {
        match &mut self.journal {
            Some(journal) => std::mem::take(journal),
            None => Vec::new(),
        }
    }

    fn record(&mut self, change: impl FnOnce() -> Option<SessionChange>) {
        if let Some(journal) = &mut self.journal
            && let Some(change) = change()
        {
            journal.push(change);
        }
    }

    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// Applies new limits (a resumed session takes the current configuration).
    pub fn set_limits(&mut self, limits: SessionLimits) {
        self.limits = limits;
    }

    /// Offers a message to the queue. QoS 0 messages are accepted too: the
    /// caller decides whether an offline session takes them.
    pub fn enqueue(&mut self, delivery: Delivery) -> Enqueued {
        if self.queue.len() >= self.limits.max_queued.max(1) {
            match self.limits.overflow {
                QueueOverflow::DropNewest => {
                    self.dropped += 1;
                    self.record(|| delivery.id.map(SessionChange::Dequeue));
                    return Enqueued::Refused;
                }
                QueueOverflow::DropOldest => {
                    let oldest = self.queue.pop_front();
                    self.queue.push_back(delivery);
                    self.dropped += 1;
                    let dropped = oldest.as_ref().and_then(|d| d.id);
                    self.record(|| dropped.map(SessionChange::Dequeue));
                    return match oldest {
                        Some(oldest) => Enqueued::DroppedOldest(oldest),
                        None => Enqueued::Accepted,
                    };
                }
            }
        }
        self.queue.push_back(delivery);
        Enqueued::Accepted
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    pub fn inflight(&self) -> impl Iterator<Item = &InflightMessage> {
        self.inflight.iter()
    }

    pub fn queue(&self) -> impl Iterator<Item = &Delivery> {
        self.queue.iter()
    }

    /// Messages dropped by the overflow policy since the session began.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn inbound_qos2_pending(&self) -> usize {
        self.inbound_qos2.len()
    }

    /// True when another QoS 1/2 message may be sent now.
    pub(crate) fn window_open(&self) -> bool {
        self.inflight.len() < usize::from(self.limits.max_inflight.max(1))
    }

    /// Takes the next queued message that may be sent now: QoS 0 always,
    /// QoS 1/2 only with room in the window. Keeps queue order, so a QoS 0
    /// message never overtakes an earlier QoS 1 message stuck behind a full
    /// window.
    pub(crate) fn next_sendable(&mut self) -> Option<(Delivery, Option<PacketId>)> {
        let front = self.queue.front()?;
        if front.qos == QoS::AtMostOnce {
            return self.queue.pop_front().map(|d| (d, None));
        }
        if !self.window_open() {
            return None;
        }
        let packet_id = self.allocate_packet_id()?;
        let delivery = self.queue.pop_front()?;
        self.record(|| {
            delivery.id.map(|id| SessionChange::SetInflight {
                packet_id,
                id,
                phase: OutboundPhase::Published,
                qos: delivery.qos,
            })
        });
        self.inflight.push_back(InflightMessage {
            packet_id,
            delivery: delivery.clone(),
            phase: OutboundPhase::Published,
        });
        Some((delivery, Some(packet_id)))
    }

    /// Picks the next packet id after the last one, skipping 0 and every id
    /// still in flight, so an id is never reused before its flow completes.
    fn allocate_packet_id(&mut self) -> Option<PacketId> {
        let mut candidate = self.last_packet_id;
        for _ in 0..u16::MAX {
            candidate = candidate.wrapping_add(1);
            let Some(id) = PacketId::new(candidate) else {
                continue;
            };
            if !self.inflight.iter().any(|m| m.packet_id == id) {
                self.last_packet_id = candidate;
                return Some(id);
            }
        }
        None
    }

    /// PUBACK: completes a QoS 1 message. Returns whether it was in flight.
    pub(crate) fn acknowledge(&mut self, packet_id: PacketId) -> Option<InflightMessage> {
        let index = self.inflight.iter().position(|m| {
            m.packet_id == packet_id
                && m.phase == OutboundPhase::Published
                && m.delivery.qos == QoS::AtLeastOnce
        })?;
        let removed = self.inflight.remove(index)?;
        self.record(|| {
            removed
                .delivery
                .id
                .map(|_| SessionChange::CompleteInflight(packet_id))
        });
        Some(removed)
    }

    /// PUBREC: moves a QoS 2 message to the released phase. Returns whether
    /// the id belongs to a QoS 2 message in flight (in either phase, since a
    /// PUBREC may be repeated).
    pub(crate) fn received(&mut self, packet_id: PacketId) -> bool {
        match self
            .inflight
            .iter_mut()
            .find(|m| m.packet_id == packet_id && m.delivery.qos == QoS::ExactlyOnce)
        {
            Some(m) => {
                let change = (m.phase == OutboundPhase::Published)
                    .then_some(m.delivery.id)
                    .flatten()
                    .map(|id| SessionChange::SetInflight {
                        packet_id,
                        id,
                        phase: OutboundPhase::Released,
                        qos: QoS::ExactlyOnce,
                    });
                m.phase = OutboundPhase::Released;
                self.record(|| change);
                true
            }
            None => false,
        }
    }

    /// PUBCOMP: completes a QoS 2 message.
    pub(crate) fn complete(&mut self, packet_id: PacketId) -> Option<InflightMessage> {
        let index = self
            .inflight
            .iter()
            .position(|m| m.packet_id == packet_id && m.phase == OutboundPhase::Released)?;
        let removed = self.inflight.remove(index)?;
        self.record(|| {
            removed
                .delivery
                .id
                .map(|_| SessionChange::CompleteInflight(packet_id))
        });
        Some(removed)
    }

    /// Records an inbound QoS 2 packet id; false if it was already recorded
    /// (a retransmission that must not be routed again).
    pub(crate) fn record_inbound_qos2(&mut self, packet_id: PacketId) -> bool {
        self.inbound_qos2.insert(packet_id.get(), ()).is_none()
    }

    /// PUBREL: forgets an inbound QoS 2 packet id.
    pub(crate) fn release_inbound_qos2(&mut self, packet_id: PacketId) -> bool {
        let known = self.inbound_qos2.remove(&packet_id.get()).is_some();
        if known {
            self.record(|| Some(SessionChange::RemoveInboundQos2(packet_id)));
        }
        known
    }

    /// Forgets an inbound QoS 2 id whose PUBLISH could not be routed, so
    /// that its retransmission is routed; nothing is journaled (storage
    /// never got the id).
    pub(crate) fn forget_inbound_qos2(&mut self, packet_id: PacketId) {
        self.inbound_qos2.remove(&packet_id.get());
    }

    /// Drops every queued message and in-flight state (clean session).
    pub fn clear(&mut self) {
        self.inflight.clear();
        self.queue.clear();
        self.inbound_qos2.clear();
    }

    /// Restores a session from storage: in-flight messages in send order,
    /// queued messages in order, inbound QoS 2 ids awaiting PUBREL.
    pub fn restore(
        limits: SessionLimits,
        inflight: Vec<InflightMessage>,
        queue: Vec<Delivery>,
        inbound_qos2: Vec<PacketId>,
    ) -> SessionState {
        let last_packet_id = inflight.last().map(|m| m.packet_id.get()).unwrap_or(0);
        SessionState {
            limits,
            inflight: inflight.into(),
            queue: queue.into(),
            inbound_qos2: inbound_qos2.into_iter().map(|id| (id.get(), ())).collect(),
            last_packet_id,
            dropped: 0,
            journal: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(qos: QoS) -> Arc<Message> {
        Arc::new(Message {
            topic: ByteStr::from("t"),
            payload: Bytes::from_static(b"x"),
            qos,
            retain: false,
        })
    }

    #[test]
    fn queue_overflow_drop_oldest_keeps_the_newest() {
        let mut s = SessionState::new(SessionLimits {
            max_inflight: 1,
            max_queued: 2,
            overflow: QueueOverflow::DropOldest,
        });
        for _ in 0..2 {
            assert_eq!(
                s.enqueue(Delivery::routed(
                    message(QoS::AtLeastOnce),
                    QoS::AtLeastOnce
                )),
                Enqueued::Accepted
            );
        }
        let newest = Delivery::routed(message(QoS::ExactlyOnce), QoS::ExactlyOnce);
        assert!(matches!(
            s.enqueue(newest.clone()),
            Enqueued::DroppedOldest(_)
        ));
        assert_eq!(s.queued(), 2);
        assert_eq!(s.dropped(), 1);
        assert_eq!(s.queue().last(), Some(&newest));
    }

    #[test]
    fn queue_overflow_drop_newest_refuses() {
        let mut s = SessionState::new(SessionLimits {
            max_inflight: 1,
            max_queued: 1,
            overflow: QueueOverflow::DropNewest,
        });
        let first = Delivery::routed(message(QoS::AtLeastOnce), QoS::AtLeastOnce);
        assert_eq!(s.enqueue(first.clone()), Enqueued::Accepted);
        assert_eq!(
            s.enqueue(Delivery::routed(
                message(QoS::AtLeastOnce),
                QoS::AtLeastOnce
            )),
            Enqueued::Refused
        );
        assert_eq!(s.queue().next(), Some(&first));
        assert_eq!(s.dropped(), 1);
    }

    #[test]
    fn mqtt_2_3_1_2_packet_ids_wrap_and_skip_ids_in_flight() {
        let mut s = SessionState::new(SessionLimits {
            max_inflight: 3,
            max_queued: 10,
            overflow: QueueOverflow::DropOldest,
        });
        s.last_packet_id = u16::MAX - 1;
        for _ in 0..3 {
            s.enqueue(Delivery::routed(
                message(QoS::AtLeastOnce),
                QoS::AtLeastOnce,
            ));
        }
        let ids: Vec<u16> = std::iter::from_fn(|| s.next_sendable())
            .map(|(_, id)| id.map_or(0, |id| id.get()))
            .collect();
        // 65535, then 0 is skipped, then 1 and 2.
        assert_eq!(ids, vec![65535, 1, 2]);
        // Window full: nothing more leaves the queue.
        s.enqueue(Delivery::routed(
            message(QoS::AtLeastOnce),
            QoS::AtLeastOnce,
        ));
        assert!(s.next_sendable().is_none());
        // Free id 1 only; the allocator moves on to 3, never a live id.
        assert!(s.acknowledge(PacketId::new(1).expect("nonzero")).is_some());
        let (_, id) = s.next_sendable().expect("window has room");
        assert_eq!(id.map(|id| id.get()), Some(3));
    }

    #[test]
    fn allocator_skips_live_ids_after_wrap() {
        let mut s = SessionState::new(SessionLimits {
            max_inflight: 3,
            max_queued: 10,
            overflow: QueueOverflow::DropOldest,
        });
        for _ in 0..2 {
            s.enqueue(Delivery::routed(
                message(QoS::AtLeastOnce),
                QoS::AtLeastOnce,
            ));
        }
        let _ = s.next_sendable(); // id 1, stays in flight
        let _ = s.next_sendable(); // id 2, stays in flight
        s.last_packet_id = u16::MAX; // as if we had gone all the way round
        s.enqueue(Delivery::routed(
            message(QoS::AtLeastOnce),
            QoS::AtLeastOnce,
        ));
        let (_, id) = s.next_sendable().expect("room");
        assert_eq!(id.map(|id| id.get()), Some(3));
    }

    #[test]
    fn qos0_does_not_overtake_a_blocked_qos1() {
        let mut s = SessionState::new(SessionLimits {
            max_inflight: 1,
            max_queued: 10,
            overflow: QueueOverflow::DropOldest,
        });
        s.enqueue(Delivery::routed(
            message(QoS::AtLeastOnce),
            QoS::AtLeastOnce,
        ));
        s.enqueue(Delivery::routed(
            message(QoS::AtLeastOnce),
            QoS::AtLeastOnce,
        ));
        s.enqueue(Delivery::routed(message(QoS::AtMostOnce), QoS::AtLeastOnce));
        assert!(s.next_sendable().is_some());
        assert!(
            s.next_sendable().is_none(),
            "window full, QoS 0 waits its turn"
        );
        assert_eq!(s.queued(), 2);
    }
}
