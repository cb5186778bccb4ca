//! What a session keeps between network connections: the outbound in-flight
//! window, the queue behind it, the inbound QoS 2 packet ids awaiting PUBREL,
//! and the packet-id allocator.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use super::queue::BlockQueue;
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
    /// this change is stored (its packet id must survive a crash). `qos`
    /// and `retain` are the flags it is sent with.
    SetInflight {
        packet_id: PacketId,
        id: MessageId,
        phase: OutboundPhase,
        qos: QoS,
        retain: bool,
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
    pub max_queued: u32,
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

/// The messages on their way out: the in-flight window and the queue
/// behind it.
#[derive(Debug, Clone, Default)]
struct Outbound {
    /// The window in send order (the order of a resend).
    inflight: VecDeque<InflightMessage>,
    /// The packet ids in `inflight`, so that allocating one is O(1).
    inflight_ids: HashSet<u16, BuildHasherDefault<IdHasher>>,
    queue: BlockQueue<Queued>,
}

impl Outbound {
    fn is_empty(&self) -> bool {
        self.inflight.is_empty() && self.queue.is_empty()
    }
}

/// A message waiting behind the window, with when it was enqueued (ms
/// since the epoch by the caller's clock, 0 = unknown) for a retention
/// limit ([`SessionState::expire_queued`]).
#[derive(Debug, Clone)]
struct Queued {
    delivery: Delivery,
    at_ms: u64,
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
    /// Boxed, and dropped while empty ([`SessionState::release_idle`]):
    /// inline, its three empty collections would be 96 bytes of every
    /// idle connection.
    outbound: Option<Box<Outbound>>,
    /// Client packet ids of QoS 2 messages received and acknowledged with
    /// PUBREC, kept until PUBREL so a resent PUBLISH is not routed twice.
    inbound_qos2: InboundQos2,
    last_packet_id: u16,
    dropped: u64,
    /// Changes to write to storage, when journaling is on.
    /// Boxed: only a persistent session on a durable node has one, and
    /// every connected client's session would pay for it inline.
    #[allow(clippy::box_collection)]
    journal: Option<Box<Vec<SessionChange>>>,
}

impl SessionState {
    pub fn new(limits: SessionLimits) -> SessionState {
        SessionState {
            limits,
            outbound: None,
            inbound_qos2: InboundQos2::default(),
            last_packet_id: 0,
            dropped: 0,
            journal: None,
        }
    }

    /// Turns the journal of stored-state changes on or off.
    pub fn set_journal(&mut self, on: bool) {
        match (on, self.journal.is_some()) {
            (true, false) => self.journal = Some(Box::default()),
            (false, true) => self.journal = None,
            _ => {}
        }
    }

    pub fn is_journaled(&self) -> bool {
        self.journal.is_some()
    }

    /// Whether changes were recorded since the last [`Self::take_journal`].
    pub fn has_journal_changes(&self) -> bool {
        self.journal
            .as_ref()
            .is_some_and(|journal| !journal.is_empty())
    }

    /// Takes the changes recorded since the last call.
    pub fn take_journal(&mut self) -> Vec<SessionChange> {
        match &mut self.journal {
            Some(journal) => std::mem::take(&mut **journal),
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
        self.enqueue_at(delivery, 0)
    }

    /// [`SessionState::enqueue`], recording that it happened at `at_ms`
    /// (ms since the epoch) for [`SessionState::expire_queued`].
    pub fn enqueue_at(&mut self, delivery: Delivery, at_ms: u64) -> Enqueued {
        let limits = self.limits;
        let outbound = self.outbound.get_or_insert_with(Box::default);
        if outbound.queue.len() >= limits.max_queued.max(1) as usize {
            match limits.overflow {
                QueueOverflow::DropNewest => {
                    self.dropped += 1;
                    self.record(|| delivery.id.map(SessionChange::Dequeue));
                    return Enqueued::Refused;
                }
                QueueOverflow::DropOldest => {
                    let oldest = outbound.queue.pop_front().map(|q| q.delivery);
                    outbound.queue.push_back(Queued { delivery, at_ms });
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
        outbound.queue.push_back(Queued { delivery, at_ms });
        Enqueued::Accepted
    }

    /// Drops the queued messages (not those in flight) enqueued before
    /// `before_ms` (ms since the epoch; messages of unknown time stay):
    /// an offline-message retention. Journals their removal; returns how
    /// many were dropped.
    pub fn expire_queued(&mut self, before_ms: u64) -> usize {
        let Some(outbound) = self.outbound.as_mut() else {
            return 0;
        };
        let mut queue = std::mem::take(&mut outbound.queue);
        let mut expired = 0;
        queue.retain(|queued| {
            let keep = queued.at_ms == 0 || queued.at_ms >= before_ms;
            if !keep {
                expired += 1;
                self.record(|| queued.delivery.id.map(SessionChange::Dequeue));
            }
            keep
        });
        if let Some(outbound) = self.outbound.as_mut() {
            outbound.queue = queue;
        }
        expired
    }

    pub fn queued(&self) -> usize {
        self.outbound.as_ref().map_or(0, |o| o.queue.len())
    }

    pub fn inflight_len(&self) -> usize {
        self.outbound.as_ref().map_or(0, |o| o.inflight.len())
    }

    pub fn inflight(&self) -> impl Iterator<Item = &InflightMessage> {
        self.outbound.iter().flat_map(|o| o.inflight.iter())
    }

    pub fn queue(&self) -> impl Iterator<Item = &Delivery> {
        self.outbound
            .iter()
            .flat_map(|o| o.queue.iter().map(|q| &q.delivery))
    }

    /// Frees the memory of the outbound window and queue while both are
    /// empty; the next message allocates them again. For a driver with
    /// nothing to do, not after every acknowledgement: a steady flow would
    /// allocate them again for every message.
    pub fn release_idle(&mut self) {
        if self.outbound.as_ref().is_some_and(|o| o.is_empty()) {
            self.outbound = None;
        }
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
        self.inflight_len() < usize::from(self.limits.max_inflight.max(1))
    }

    /// Takes the next queued message that may be sent now: QoS 0 always,
    /// QoS 1/2 only with room in the window. Keeps queue order, so a QoS 0
    /// message never overtakes an earlier QoS 1 message stuck behind a full
    /// window.
    #[cfg(test)]
    pub(crate) fn next_sendable(&mut self) -> Option<(Delivery, Option<PacketId>)> {
        self.send_next(|delivery, packet_id| (delivery.clone(), packet_id))
    }

    /// [`SessionState::next_sendable`] without a copy of the delivery: `send`
    /// sees it where it stays (the window for QoS 1/2), which spares the
    /// message's shared reference count two atomic updates per delivery.
    pub(crate) fn send_next<T>(
        &mut self,
        send: impl FnOnce(&Delivery, Option<PacketId>) -> T,
    ) -> Option<T> {
        let front = self.outbound.as_ref()?.queue.front()?;
        if front.delivery.qos == QoS::AtMostOnce {
            return self
                .outbound
                .as_mut()?
                .queue
                .pop_front()
                .map(|q| send(&q.delivery, None));
        }
        if !self.window_open() {
            return None;
        }
        let packet_id = self.allocate_packet_id()?;
        let delivery = self.outbound.as_mut()?.queue.pop_front()?.delivery;
        self.record(|| {
            delivery.id.map(|id| SessionChange::SetInflight {
                packet_id,
                id,
                phase: OutboundPhase::Published,
                qos: delivery.qos,
                retain: delivery.retain,
            })
        });
        let outbound = self.outbound.as_mut()?;
        outbound.inflight_ids.insert(packet_id.get());
        outbound.inflight.push_back(InflightMessage {
            packet_id,
            delivery,
            phase: OutboundPhase::Published,
        });
        let sent = outbound.inflight.back()?;
        Some(send(&sent.delivery, Some(packet_id)))
    }

    /// Picks the next packet id after the last one, skipping 0 and every id
    /// still in flight, so an id is never reused before its flow completes.
    /// O(1) unless ids from a previous round of the 16-bit space are still
    /// in flight.
    fn allocate_packet_id(&mut self) -> Option<PacketId> {
        let in_use = self.outbound.as_ref().map(|o| &o.inflight_ids);
        if in_use.is_some_and(|ids| ids.len() >= usize::from(u16::MAX)) {
            return None;
        }
        let mut candidate = self.last_packet_id;
        for _ in 0..u16::MAX {
            candidate = candidate.wrapping_add(1);
            let Some(id) = PacketId::new(candidate) else {
                continue;
            };
            if !in_use.is_some_and(|ids| ids.contains(&candidate)) {
                self.last_packet_id = candidate;
                return Some(id);
            }
        }
        None
    }

    /// Where the in-flight message with `packet_id` is. Ids are given in
    /// send order and clients acknowledge in order ([MQTT-4.6.0-2]), so the
    /// message is found by its distance from the front or from the back of
    /// the window without a search; the search is only for the rest.
    fn inflight_index(&self, packet_id: PacketId) -> Option<usize> {
        let outbound = self.outbound.as_ref()?;
        if !outbound.inflight_ids.contains(&packet_id.get()) {
            return None;
        }
        let inflight = &outbound.inflight;
        let id = packet_id.get();
        let is_at = |index: usize| {
            inflight
                .get(index)
                .is_some_and(|m| m.packet_id == packet_id)
        };
        if let Some(front) = inflight.front() {
            let index = usize::from(id.wrapping_sub(front.packet_id.get()));
            if is_at(index) {
                return Some(index);
            }
        }
        if let Some(back) = inflight.back() {
            let behind = usize::from(back.packet_id.get().wrapping_sub(id));
            if let Some(index) = (inflight.len() - 1).checked_sub(behind)
                && is_at(index)
            {
                return Some(index);
            }
        }
        inflight.iter().position(|m| m.packet_id == packet_id)
    }

    fn inflight_at(&self, index: usize) -> Option<&InflightMessage> {
        self.outbound.as_ref()?.inflight.get(index)
    }

    /// Removes the in-flight message at `index`.
    fn remove_inflight(&mut self, index: usize) -> Option<InflightMessage> {
        let outbound = self.outbound.as_mut()?;
        let removed = outbound.inflight.remove(index)?;
        outbound.inflight_ids.remove(&removed.packet_id.get());
        Some(removed)
    }

    /// PUBACK: completes a QoS 1 message. Returns whether it was in flight.
    pub(crate) fn acknowledge(&mut self, packet_id: PacketId) -> Option<InflightMessage> {
        let index = self.inflight_index(packet_id).filter(|&index| {
            self.inflight_at(index).is_some_and(|m| {
                m.phase == OutboundPhase::Published && m.delivery.qos == QoS::AtLeastOnce
            })
        })?;
        let removed = self.remove_inflight(index)?;
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
        let index = self.inflight_index(packet_id);
        match index
            .zip(self.outbound.as_mut())
            .and_then(|(index, outbound)| outbound.inflight.get_mut(index))
            .filter(|m| m.delivery.qos == QoS::ExactlyOnce)
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
                        retain: m.delivery.retain,
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
        let index = self.inflight_index(packet_id).filter(|&index| {
            self.inflight_at(index)
                .is_some_and(|m| m.phase == OutboundPhase::Released)
        })?;
        let removed = self.remove_inflight(index)?;
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
        self.inbound_qos2.insert(packet_id.get())
    }

    /// PUBREL: forgets an inbound QoS 2 packet id.
    pub(crate) fn release_inbound_qos2(&mut self, packet_id: PacketId) -> bool {
        let known = self.inbound_qos2.remove(packet_id.get());
        if known {
            self.record(|| Some(SessionChange::RemoveInboundQos2(packet_id)));
        }
        known
    }

    /// Forgets an inbound QoS 2 id whose PUBLISH could not be routed, so
    /// that its retransmission is routed; nothing is journaled (storage
    /// never got the id).
    pub(crate) fn forget_inbound_qos2(&mut self, packet_id: PacketId) {
        self.inbound_qos2.remove(packet_id.get());
    }

    /// Drops every queued message and in-flight state (clean session).
    pub fn clear(&mut self) {
        self.outbound = None;
        self.inbound_qos2 = InboundQos2::default();
    }

    /// Restores a session from storage: in-flight messages in send order,
    /// queued messages in order with the time each was enqueued (for
    /// [`SessionState::expire_queued`]; 0 = unknown), inbound QoS 2 ids
    /// awaiting PUBREL.
    pub fn restore(
        limits: SessionLimits,
        inflight: Vec<InflightMessage>,
        queue: Vec<(Delivery, u64)>,
        inbound_qos2: Vec<PacketId>,
    ) -> SessionState {
        let last_packet_id = inflight.last().map(|m| m.packet_id.get()).unwrap_or(0);
        let inflight_ids = inflight.iter().map(|m| m.packet_id.get()).collect();
        let queue = queue
            .into_iter()
            .map(|(delivery, at_ms)| Queued { delivery, at_ms })
            .collect();
        let outbound = Outbound {
            inflight: inflight.into(),
            inflight_ids,
            queue,
        };
        SessionState {
            limits,
            outbound: (!outbound.is_empty()).then(|| Box::new(outbound)),
            inbound_qos2: InboundQos2::from_ids(inbound_qos2.into_iter().map(PacketId::get)),
            last_packet_id,
            dropped: 0,
            journal: None,
        }
    }
}

/// Client packet ids of inbound QoS 2 messages awaiting PUBREL. Boxed and
/// dropped while empty: almost every session has none almost always, and
/// an empty set inline would be 24 bytes of every idle connection.
// The box is the point: an empty `BTreeSet` inline is 24 bytes, the
// `Option<Box<..>>` 8.
#[allow(clippy::box_collection)]
#[derive(Debug, Clone, Default)]
struct InboundQos2(Option<Box<BTreeSet<u16>>>);

impl InboundQos2 {
    fn from_ids(ids: impl Iterator<Item = u16>) -> InboundQos2 {
        let ids: BTreeSet<u16> = ids.collect();
        InboundQos2((!ids.is_empty()).then(|| Box::new(ids)))
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |ids| ids.len())
    }

    /// False if it was there already.
    fn insert(&mut self, id: u16) -> bool {
        self.0.get_or_insert_with(Box::default).insert(id)
    }

    /// False if it was not there.
    fn remove(&mut self, id: u16) -> bool {
        let Some(ids) = self.0.as_mut() else {
            return false;
        };
        let removed = ids.remove(&id);
        if ids.is_empty() {
            self.0 = None;
        }
        removed
    }
}

/// Hashes a packet id with one multiplication (SipHash would cost more
/// than the lookup it serves; the ids are ours, not the peer's choice).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
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
    fn expire_queued_drops_only_what_is_older_than_the_limit() {
        let mut s = SessionState::new(SessionLimits {
            max_inflight: 1,
            max_queued: 3,
            overflow: QueueOverflow::DropOldest,
        });
        s.set_journal(true);
        let stored =
            Delivery::routed(message(QoS::AtLeastOnce), QoS::AtLeastOnce).stored_as(MessageId(7));
        s.enqueue_at(stored, 1_000);
        s.enqueue(Delivery::routed(
            message(QoS::AtLeastOnce),
            QoS::AtLeastOnce,
        ));
        let fresh =
            Delivery::routed(message(QoS::AtLeastOnce), QoS::AtLeastOnce).stored_as(MessageId(8));
        s.enqueue_at(fresh.clone(), 5_000);
        // Overflow drops the oldest (stamped 1 000) with its stamp.
        s.enqueue_at(fresh.clone(), 2_000);
        assert_eq!(s.queued(), 3);
        s.take_journal();
        // Unknown time (0) stays; 2 000 < 3 000 goes.
        assert_eq!(s.expire_queued(3_000), 1);
        assert_eq!(s.queued(), 2);
        assert_eq!(s.take_journal(), vec![SessionChange::Dequeue(MessageId(8))]);
        // What is sent leaves the queue with its stamp.
        assert!(s.next_sendable().is_some());
        assert_eq!(s.expire_queued(6_000), 1);
        assert_eq!(s.queued(), 0);
        assert_eq!(s.expire_queued(u64::MAX), 0);
    }

    /// An idle session holds no window or queue memory; one with a
    /// message queued or in flight keeps it, and a released one works again.
    #[test]
    fn release_idle_frees_the_outbound_only_while_empty() {
        let mut s = SessionState::new(SessionLimits {
            max_inflight: 1,
            max_queued: 3,
            overflow: QueueOverflow::DropOldest,
        });
        assert!(s.outbound.is_none());
        for _ in 0..2 {
            s.enqueue(Delivery::routed(
                message(QoS::AtLeastOnce),
                QoS::AtLeastOnce,
            ));
        }
        let (_, first) = s.next_sendable().unwrap();
        s.release_idle();
        assert!(s.outbound.is_some(), "freed with messages waiting");
        assert!(s.acknowledge(first.unwrap()).is_some());
        let (_, second) = s.next_sendable().unwrap();
        s.release_idle();
        assert_eq!((s.inflight_len(), s.queued()), (1, 0));
        assert!(s.acknowledge(second.unwrap()).is_some());
        s.release_idle();
        assert!(s.outbound.is_none());

        // Packet ids go on after the last one, not from 1 again.
        s.enqueue(Delivery::routed(
            message(QoS::AtLeastOnce),
            QoS::AtLeastOnce,
        ));
        let (_, third) = s.next_sendable().unwrap();
        assert_eq!(third.map(PacketId::get), Some(3));
        assert_eq!(s.expire_queued(u64::MAX), 0);
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
    fn acknowledgements_out_of_order_and_after_a_wrap() {
        let mut s = SessionState::new(SessionLimits {
            max_inflight: 4,
            max_queued: 100,
            overflow: QueueOverflow::DropOldest,
        });
        s.last_packet_id = u16::MAX - 2;
        for _ in 0..4 {
            s.enqueue(Delivery::routed(
                message(QoS::AtLeastOnce),
                QoS::AtLeastOnce,
            ));
        }
        let ids: Vec<PacketId> = std::iter::from_fn(|| s.next_sendable())
            .filter_map(|(_, id)| id)
            .collect();
        assert_eq!(
            ids.iter().map(|id| id.get()).collect::<Vec<_>>(),
            vec![65534, 65535, 1, 2]
        );
        // The middle ones first, then one unknown, then the ends.
        assert!(s.acknowledge(ids[2]).is_some());
        assert!(s.acknowledge(ids[1]).is_some());
        assert!(s.acknowledge(ids[1]).is_none(), "already acknowledged");
        assert!(s.acknowledge(PacketId::new(9).expect("nonzero")).is_none());
        assert!(s.acknowledge(ids[3]).is_some());
        assert!(s.acknowledge(ids[0]).is_some());
        assert_eq!(s.inflight_len(), 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Against a model: the window never holds an id twice, acks find
        /// exactly the messages in flight whatever their order, and the
        /// window keeps send order.
        #[test]
        fn window_matches_a_model(
            start in proptest::prelude::any::<u16>(),
            ops in proptest::collection::vec((0u8..4, proptest::prelude::any::<u16>()), 1..400),
        ) {
            let mut s = SessionState::new(SessionLimits {
                max_inflight: 8,
                max_queued: 1000,
                overflow: QueueOverflow::DropOldest,
            });
            s.last_packet_id = start;
            // (packet id, qos 2, released)
            let mut model: Vec<(u16, bool, bool)> = Vec::new();
            for (op, pick) in ops {
                match op {
                    0 => {
                        let qos = if pick % 2 == 0 { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
                        s.enqueue(Delivery::routed(message(qos), qos));
                        if let Some((d, Some(id))) = s.next_sendable() {
                            proptest::prop_assert!(model.iter().all(|m| m.0 != id.get()));
                            model.push((id.get(), d.qos == QoS::ExactlyOnce, false));
                        }
                    }
                    _ => {
                        // An id in flight (most of the time) or any id.
                        let id = if model.is_empty() || pick % 5 == 0 {
                            pick.max(1)
                        } else {
                            model[usize::from(pick) % model.len()].0
                        };
                        let Some(packet_id) = PacketId::new(id) else { continue };
                        let at = model.iter().position(|m| m.0 == id);
                        match op {
                            1 => {
                                let expect = at.filter(|&i| !model[i].1);
                                proptest::prop_assert_eq!(s.acknowledge(packet_id).is_some(), expect.is_some());
                                if let Some(i) = expect { model.remove(i); }
                            }
                            2 => {
                                let expect = at.filter(|&i| model[i].1);
                                proptest::prop_assert_eq!(s.received(packet_id), expect.is_some());
                                if let Some(i) = expect { model[i].2 = true; }
                            }
                            _ => {
                                let expect = at.filter(|&i| model[i].1 && model[i].2);
                                proptest::prop_assert_eq!(s.complete(packet_id).is_some(), expect.is_some());
                                if let Some(i) = expect { model.remove(i); }
                            }
                        }
                    }
                }
                let window: Vec<u16> = s.inflight().map(|m| m.packet_id.get()).collect();
                let expected: Vec<u16> = model.iter().map(|m| m.0).collect();
                proptest::prop_assert_eq!(window, expected);
            }
        }
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
