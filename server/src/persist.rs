//! Durable persistence on the node side: what is written to storage, when,
//! and how a node recovers what storage holds.
//!
//! Only with a durable backend (`Storage::is_durable`); with the in-memory
//! backend none of this runs and routing stays in memory.
//!
//! - An inbound QoS 1/2 PUBLISH (and a retained or will message) is routed
//!   in two halves: [`Node::prepare_route`] matches the trie and builds one
//!   batch (`PutMessage`, one `Enqueue` per matching persistent session,
//!   `SetRetained`, and last `AddInboundQos2` for a persistent publisher);
//!   the connection's driver applies it, and only once storage acknowledged
//!   it calls [`Node::finish_route`] (deliveries in memory) and sends the
//!   PUBACK/PUBREC. Stored, then visible, then acknowledged.
//! - A persistent session's outbound changes are journaled by core's
//!   `SessionState` and written by the driver; a QoS 2 PUBLISH leaves only
//!   after the `SetInflight` giving it its packet id is stored, and its
//!   PUBREL only after the `SetInflight` of the `Released` phase (written
//!   when the PUBREC arrives) is: a restart resumes with PUBREL exactly
//!   when the client may have seen one.
//! - Message ids: [`MessageId::new`] with a 16-bit tag (FNV-1a of the node
//!   id, folded) and a 48-bit sequence seeded from the wall clock in
//!   microseconds at start, so a node restarted under the same id does not
//!   mint ids its previous life stored (as long as it minted fewer than one
//!   id per microsecond on average).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use easy_mqtt_core::ByteStr;
use easy_mqtt_core::PacketId;
use easy_mqtt_core::QoS;
use easy_mqtt_core::cluster::{BusEntry, ClusterOp};
use easy_mqtt_core::session::{
    CloseReason, Delivery, InflightMessage, Message, OutboundPhase, QueueOverflow, SessionChange,
    SessionLimits, SessionState,
};
use easy_mqtt_core::storage::{MessageId, Op, SessionRecord, StorageError, StoredSession};

use crate::metrics::Metrics;
use crate::node::{Node, write};
use crate::runtime::Runtime;
use crate::sessions::{ConnCell, SessionEntry, SessionInner, SessionKey, lock};

/// A message whose batch is being stored, and where it goes once it is.
pub struct PreparedRoute {
    pub message: Arc<Message>,
    pub id: MessageId,
    /// Session, granted QoS, and whether storage holds the delivery.
    pub targets: Vec<(SessionKey, QoS, bool)>,
    /// In a cluster: this route is in flight until dropped (a session is
    /// released to another node only once the routes that may still write
    /// to it are done).
    pub(crate) ticket: Option<crate::cluster::RouteTicket>,
    /// Whether the message updates this node's retained index (not when it
    /// comes from a dead node's inbox: that copy may be older than what
    /// this node's own inbox brought since).
    pub(crate) updates_retained: bool,
    /// For a retained message stored here in a cluster: the nodes it was
    /// forwarded to, followed up once stored (see `cluster/retained.rs`).
    pub(crate) retained_peers: Option<crate::cluster::RetainedPeers>,
}

/// The queue of a persistent session that storage holds and this node has
/// not loaded (recovered at start, its client not back yet): its ids only,
/// in queue order, so that `max-queued-messages` and `queue-overflow` bound
/// it like the queue of a loaded session. Initialised from
/// `Storage::load_subscriptions`; each routing batch that enqueues for the
/// session adds its id, and when the queue is full the batch either leaves
/// the session out (drop-newest) or also dequeues the oldest id
/// (drop-oldest); both count in `dropped_queue_full`.
///
/// It is a view, not the truth: a routing batch that fails after it was
/// counted here leaves it off by that batch until the session is loaded
/// (which replaces it with what storage holds). While a CONNECT loads the
/// session, ids are added but nothing is dropped (the load is reading the
/// queue).
#[derive(Debug, Default)]
pub struct StoredQueue {
    ids: BTreeSet<(u64, u16)>,
}

impl StoredQueue {
    pub fn new(ids: impl IntoIterator<Item = MessageId>) -> StoredQueue {
        StoredQueue {
            ids: ids.into_iter().map(MessageId::queue_order).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn insert(&mut self, id: MessageId) {
        self.ids.insert(id.queue_order());
    }

    fn pop_oldest(&mut self) -> Option<MessageId> {
        self.ids
            .pop_first()
            .map(|(sequence, tag)| MessageId::new(tag, sequence))
    }
}

/// What the bound of a [`StoredQueue`] lets a routing batch do.
enum Admit {
    /// Enqueue (and dequeue this oldest id, dropped to make room).
    Enqueue(Option<MessageId>),
    /// Full, drop-newest: leave the session out.
    Refuse,
}

/// How a CONNECT must be prepared before it is accepted.
pub enum ConnectPlan {
    /// Accept at once.
    Direct,
    /// Load the stored session and put its record (persistent CONNECT).
    Load,
    /// Delete the stored session (a clean CONNECT replacing it).
    Delete,
}

/// The 16-bit tag of message ids minted by the node `node_id`: FNV-1a.
pub fn node_tag(node_id: &str) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in node_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    ((hash >> 16) ^ (hash & 0xffff)) as u16
}

/// The first sequence number of this process: the wall clock in microseconds.
pub fn sequence_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(0))
        .unwrap_or(0)
}

/// Maps journaled changes of `client_id` onto ops; true when one of them
/// is a phase of a QoS 2 delivery, whose bytes must wait until it is
/// stored: the `Published` phase that gives a PUBLISH its packet id, and
/// the `Released` phase (PUBREC received) that its PUBREL announces. A
/// client that saw the PUBREL has forgotten the packet id once it sends
/// PUBCOMP; had storage still held `Published`, a restart would send the
/// PUBLISH again (DUP) and the client would take it as a new message.
///
/// With `received_log` (a cluster node), the QoS 2 messages the client
/// acknowledged with PUBREC are also logged for the client (see
/// [`crate::cluster::RECEIVED_SPACE`]), in the batch the PUBREL waits for.
pub fn journal_ops(
    client_id: &ByteStr,
    changes: Vec<SessionChange>,
    ops: &mut Vec<Op>,
    received_log: bool,
) -> bool {
    let mut gates = false;
    let mut received: Vec<u8> = Vec::new();
    for change in changes {
        if received_log
            && let SessionChange::SetInflight {
                id,
                phase: OutboundPhase::Released,
                ..
            } = &change
        {
            received.extend_from_slice(&id.0.to_be_bytes());
        }
        ops.push(match change {
            SessionChange::Dequeue(id) => Op::Dequeue {
                client_id: client_id.clone(),
                id,
            },
            SessionChange::SetInflight {
                packet_id,
                id,
                phase,
                qos,
                retain,
            } => {
                // Published or Released: see above.
                gates |= qos == QoS::ExactlyOnce;
                Op::SetInflight {
                    client_id: client_id.clone(),
                    packet_id,
                    id,
                    phase,
                    qos,
                    retain,
                }
            }
            SessionChange::CompleteInflight(packet_id) => Op::CompleteInflight {
                client_id: client_id.clone(),
                packet_id,
            },
            SessionChange::RemoveInboundQos2(packet_id) => Op::RemoveInboundQos2 {
                client_id: client_id.clone(),
                packet_id,
            },
        });
    }
    if !received.is_empty() {
        ops.push(crate::cluster::log_received(client_id, received));
    }
    gates
}

/// A stored session as the state machine's session, journal on. A queued
/// message keeps the time its body was stored (for an offline-message
/// retention); one stored without a time counts from `now_ms`, the load.
pub fn restore(stored: StoredSession, limits: SessionLimits, now_ms: u64) -> SessionState {
    let delivery = |d: easy_mqtt_core::storage::StoredDelivery| Delivery {
        message: d.message,
        qos: d.qos,
        retain: d.retain,
        id: Some(d.id),
    };
    let inflight = stored
        .inflight
        .into_iter()
        .map(|m| InflightMessage {
            packet_id: m.packet_id,
            delivery: delivery(m.delivery),
            phase: m.phase,
        })
        .collect();
    let queue = (stored.queue.into_iter())
        .map(|d| {
            let at_ms = if d.at_ms == 0 { now_ms } else { d.at_ms };
            (delivery(d), at_ms)
        })
        .collect();
    let mut state = SessionState::restore(limits, inflight, queue, stored.inbound_qos2);
    state.set_journal(true);
    state
}

impl<R: Runtime> Node<R> {
    /// Whether writes go to a durable backend.
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    pub(crate) fn next_message_id(&self) -> MessageId {
        let sequence = self.next_message.fetch_add(1, Ordering::Relaxed);
        MessageId::new(self.node_tag, sequence)
    }

    /// In a cluster, the last instant a batch of `ops` routed now may be
    /// written, when it hands messages to other nodes (see
    /// `ClusterConfig::route_write_window`): they were addressed with the
    /// routes of now. Deliveries to this node's own sessions have no such
    /// limit: a session released to another node waits for the routes in
    /// flight here (`ClusterState::routes_before`), and a storage that is
    /// slow but answering (a fan-out of millions of deliveries queued in
    /// the journal) is no reason to refuse a publish.
    /// A message put in this node's own inbox (a point-to-point message
    /// for a client held elsewhere) is addressed when it is read, not now:
    /// it needs no limit either.
    pub(crate) fn route_write_by(&self, ops: &[Op]) -> Option<Instant> {
        let cluster = self.cluster.as_ref()?;
        let mut own = None;
        ops.iter()
            .any(|op| match op {
                Op::Cluster(op) => match &**op {
                    ClusterOp::Forward {
                        node,
                        entry: BusEntry::Publish { .. } | BusEntry::Direct { .. },
                    } => *node != *own.get_or_insert_with(|| cluster.name()),
                    _ => false,
                },
                _ => false,
            })
            .then(|| self.runtime.now() + cluster.config.route_write_window())
    }

    /// Writes a connection's batch (made under `incarnation`, to be
    /// written by `write_by` if given) through the node-wide journal
    /// writer, merged with other connections' (see `journal.rs`).
    pub(crate) fn journal_write(
        self: &Arc<Self>,
        ops: Vec<Arc<Vec<Op>>>,
        incarnation: Option<u64>,
        write_by: Option<Instant>,
    ) -> easy_mqtt_core::storage::BoxFuture<'static, Result<(), StorageError>> {
        let runtime = self.runtime.clone();
        let node = Arc::downgrade(self);
        self.journal.write(
            ops,
            incarnation,
            write_by,
            |task| runtime.spawn(task),
            move || {
                Arc::new(move |incarnation| match node.upgrade() {
                    Some(node) => node.may_write_as(incarnation).map(|()| node.runtime.now()),
                    None => Err(StorageError::Unavailable("node stopped".into())),
                })
            },
        )
    }

    /// Whether a batch made under `incarnation` may be written now: not
    /// once the node was fenced (a new incarnation), nor without a lease.
    pub(crate) fn may_write_as(&self, incarnation: Option<u64>) -> Result<(), StorageError> {
        if self.incarnation() != incarnation {
            return Err(StorageError::Unavailable("stale incarnation".into()));
        }
        if !self.may_write() {
            return Err(StorageError::Unavailable("no cluster lease".into()));
        }
        Ok(())
    }

    /// The node-wide journal writer's counts.
    pub fn journal_stats(&self) -> crate::journal::WriterStats {
        self.journal.stats()
    }

    /// Counts a storage failure and logs it, at most once a second.
    pub fn storage_failed(&self, what: &str, error: &StorageError) {
        Metrics::inc(&self.metrics.storage_errors);
        let now = u64::try_from(self.runtime.unix_time().as_millis()).unwrap_or(0);
        let last = self.storage_error_logged.load(Ordering::Relaxed);
        if now >= last + 1000
            && self
                .storage_error_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                %error,
                what,
                errors = Metrics::get(&self.metrics.storage_errors),
                "storage write failed"
            );
        }
    }

    /// Loads every persistent session's subscriptions: the sessions become
    /// offline entries, routed to (through storage) before they return.
    pub(crate) async fn recover_sessions(&self) -> Result<(), StorageError> {
        let mut sessions = self.storage.load_subscriptions().await?;
        // In a cluster, each node routes for the sessions it owns.
        let mut routes = crate::cluster::RoutePin::default();
        if let (Some(cluster), Some(store)) = (self.cluster.as_ref(), self.cluster_store()) {
            let owned: std::collections::HashSet<ByteStr> =
                store.owned_by(&cluster.name()).await?.into_iter().collect();
            sessions.retain(|s| owned.contains(&s.record.client_id));
            let filters = sessions
                .iter()
                .flat_map(|s| s.subscriptions.iter().map(|(f, _)| f.clone()))
                .collect::<Vec<_>>();
            routes = self.store_routes(filters).await?;
        }
        let count = sessions.len();
        for listed in sessions {
            let easy_mqtt_core::storage::SessionSubscriptions {
                record,
                subscriptions,
                queued,
            } = listed;
            let entry = self.registered_entry(&record.client_id);
            let mut inner = lock(&entry.inner);
            inner.clean = false;
            inner.stored = true;
            if inner.attached.is_none() && inner.offline.is_none() {
                inner.set_stored_queue(Some(StoredQueue::new(queued)));
            }
            let key = SessionKey(entry.clone());
            let mut trie = write(&self.trie);
            for (filter, qos) in subscriptions {
                trie.insert(&filter, key.clone(), qos);
                inner.subscriptions.insert(filter, qos);
            }
        }
        drop(routes);
        if count > 0 {
            tracing::info!(count, "persistent sessions recovered");
        }
        Ok(())
    }

    /// What a CONNECT needs from storage before it is accepted. A `Load`
    /// marks the session as loading: deliveries meanwhile are kept aside.
    pub fn connect_plan(&self, client_id: &ByteStr, clean_session: bool) -> ConnectPlan {
        if !self.durable || client_id.is_empty() {
            return ConnectPlan::Direct;
        }
        let entry = {
            let mut registry = lock(&self.registry);
            match registry.get(client_id) {
                Some(entry) => entry.clone(),
                None if clean_session => return ConnectPlan::Direct,
                None => {
                    // Registered while it loads, so that what is routed to
                    // it meanwhile (a forward from the node it left) is
                    // kept aside rather than missed.
                    let entry = Arc::new(SessionEntry::new(client_id.clone()));
                    lock(&entry.inner).start_loading();
                    registry.insert(entry);
                    Metrics::inc(&self.metrics.sessions_current);
                    return ConnectPlan::Load;
                }
            }
        };
        let mut inner = lock(&entry.inner);
        if clean_session {
            return if inner.stored {
                ConnectPlan::Delete
            } else {
                ConnectPlan::Direct
            };
        }
        if inner.stored && !inner.reload && (inner.attached.is_some() || inner.offline.is_some()) {
            // The live state in memory is the newest.
            return ConnectPlan::Direct;
        }
        if inner.attached.is_none() {
            // Storage is the truth from now on: what this load reads is
            // accepted, unless the flag is set again meanwhile.
            inner.reload = false;
        }
        inner.start_loading();
        ConnectPlan::Load
    }

    /// A durable node's CONNECT for a client id whose session a connection
    /// still holds: that connection is closed, and the CONNECT waits until
    /// it has let go (once its storage writes are stored or have failed),
    /// for up to the connect timeout. Taken over at once, the old
    /// connection's last writes could land after the new one's for the
    /// same session (a QoS 2 message's phase written back to an older
    /// one), which a takeover from another node never allows (see
    /// `release`). `None` when no other connection holds the session.
    pub(crate) fn takeover_wait(
        &self,
        client_id: &ByteStr,
        cell: &Arc<ConnCell>,
    ) -> Option<easy_mqtt_core::storage::BoxFuture<'static, ()>> {
        if !self.durable || client_id.is_empty() {
            return None;
        }
        let entry = lock(&self.registry).get(client_id).cloned()?;
        let old = match &lock(&entry.inner).attached {
            Some(old) if !Arc::ptr_eq(old, cell) => old.clone(),
            _ => return None,
        };
        let now = self.runtime.now();
        old.close(CloseReason::TakenOver, now);
        let runtime = self.runtime.clone();
        let deadline = now + self.config.connection.connect_timeout;
        Some(Box::pin(async move {
            while lock(&entry.inner)
                .attached
                .as_ref()
                .is_some_and(|attached| Arc::ptr_eq(attached, &old))
                && runtime.now() < deadline
            {
                let at = runtime.now() + Duration::from_millis(5);
                crate::runtime::sleep_until(&runtime, at).await;
            }
        }))
    }

    /// The future of a [`ConnectPlan::Load`]: the stored session (if any),
    /// then its record put.
    pub fn load_for_connect(
        self: &Arc<Self>,
        client_id: ByteStr,
    ) -> easy_mqtt_core::storage::BoxFuture<'static, Result<Option<StoredSession>, StorageError>>
    {
        let storage = self.storage.clone();
        let runtime = self.runtime.clone();
        // Retried with back-off for up to half the connect timeout: a
        // connection to storage that dropped is re-established by the
        // backend on the next call.
        let deadline = runtime.now() + self.config.connection.connect_timeout / 2;
        Box::pin(async move {
            let mut attempt = 0;
            loop {
                let result = async {
                    let stored = storage.load_session(client_id.as_str()).await?;
                    storage
                        .apply(vec![Op::PutSession(SessionRecord {
                            client_id: client_id.clone(),
                            created_at_ms: u64::try_from(runtime.unix_time().as_millis())
                                .unwrap_or(0),
                        })])
                        .await?;
                    Ok(stored)
                }
                .await;
                match result {
                    Err(StorageError::Unavailable(_)) if runtime.now() < deadline => {
                        attempt += 1;
                        let at = runtime.now() + backoff(attempt);
                        crate::runtime::sleep_until(&runtime, at).await;
                    }
                    result => return result,
                }
            }
        })
    }

    /// A CONNECT whose load failed: deliveries kept aside are dropped
    /// (storage holds them).
    pub fn end_load(&self, client_id: &ByteStr) {
        let entry = lock(&self.registry).get(client_id).cloned();
        if let Some(entry) = entry {
            let mut inner = lock(&entry.inner);
            inner.take_loading();
            let bare = inner.attached.is_none()
                && inner.offline.is_none()
                && !inner.stored
                && inner.subscriptions.is_empty();
            if bare {
                // Registered only for the load that failed.
                self.retire_entry(client_id, &entry, inner);
            }
        }
    }

    /// Matches a message and builds the batch that stores it for every
    /// persistent session it goes to. `publisher`: the client id and packet
    /// id of a persistent publisher's QoS 2 PUBLISH.
    pub fn prepare_route(
        &self,
        message: Arc<Message>,
        publisher: Option<(ByteStr, PacketId)>,
        scratch: &mut Vec<(SessionKey, QoS)>,
    ) -> (PreparedRoute, Vec<Op>) {
        let id = self.next_message_id();
        self.prepare_route_as(message, id, publisher, true, scratch)
    }

    /// [`Node::prepare_route`] for a message with an id already: minted
    /// here (`local`: it also goes to the other nodes whose routes match,
    /// and its retained state is stored), or by the node whose inbox entry
    /// brought it (the origin did both).
    pub(crate) fn prepare_route_as(
        &self,
        message: Arc<Message>,
        id: MessageId,
        publisher: Option<(ByteStr, PacketId)>,
        local: bool,
        scratch: &mut Vec<(SessionKey, QoS)>,
    ) -> (PreparedRoute, Vec<Op>) {
        self.prepare_route_among(message, id, publisher, local, None, scratch)
    }

    /// [`Node::prepare_route_as`] to the sessions named in `only` (when
    /// given) among those that match: a dead node's inbox is for the
    /// sessions adopted from it.
    pub(crate) fn prepare_route_among(
        &self,
        message: Arc<Message>,
        id: MessageId,
        publisher: Option<(ByteStr, PacketId)>,
        local: bool,
        only: Option<&std::collections::HashSet<ByteStr>>,
        scratch: &mut Vec<(SessionKey, QoS)>,
    ) -> (PreparedRoute, Vec<Op>) {
        // Taken before matching: see `RouteTicket`.
        let ticket = self.cluster.as_ref().map(|c| c.route_ticket());
        crate::node::read(&self.trie).matches_dedup(&message.topic, scratch);
        if let Some(only) = only {
            scratch.retain(|(key, _)| only.contains(&key.0.client_id));
        }
        let mut ops = Vec::new();
        let mut body_stored = false;
        let mut targets = Vec::with_capacity(scratch.len());
        let mut remaining = scratch.len();
        for (key, granted) in scratch.drain(..) {
            // Mostly an `Enqueue` per target once one is stored (grown op
            // by op, the vector of a 19,500-subscriber route was copied a
            // dozen times), none for clean sessions (nothing allocated).
            if ops.len() == ops.capacity() && !ops.is_empty() {
                ops.reserve(remaining + 2);
            }
            remaining -= 1;
            let target = (key, granted);
            self.stage_target(
                target,
                id,
                &message,
                &mut body_stored,
                &mut ops,
                &mut targets,
            );
        }
        let retained_peers = if local {
            self.forward_to_nodes(id, &message, &mut ops)
        } else {
            None
        };
        if message.retain && local {
            ops.push(Op::SetRetained {
                topic: message.topic.clone(),
                message: (!message.payload.is_empty()).then(|| message.clone()),
            });
        }
        if let Some((client_id, packet_id)) = publisher {
            ops.push(Op::AddInboundQos2 {
                client_id,
                packet_id,
            });
        }
        (
            PreparedRoute {
                message,
                id,
                targets,
                ticket,
                updates_retained: only.is_none(),
                retained_peers,
            },
            ops,
        )
    }

    /// One session of a route being prepared: forwarded when this node
    /// gave it up, skipped when it already got `id` during a hand-over,
    /// else added to `targets`, and for a persistent session (QoS 1/2)
    /// stored in its queue (the body once per route: `body_stored`).
    pub(crate) fn stage_target(
        &self,
        (key, granted): (SessionKey, QoS),
        id: MessageId,
        message: &Arc<Message>,
        body_stored: &mut bool,
        ops: &mut Vec<Op>,
        targets: &mut Vec<(SessionKey, QoS, bool)>,
    ) {
        let qos = message.qos.min(granted);
        if self.forward_if_given_up(&key.0.client_id, id, message, qos, ops)
            || self.delivered_in_handover(&key.0.client_id, id, qos, ops)
        {
            return;
        }
        let mut dropped = None;
        let stored = {
            let mut inner = lock(&key.0.inner);
            let stored = inner.stored && !inner.clean && !inner.removed && qos != QoS::AtMostOnce;
            if stored {
                match self.admit_stored(&mut inner, id) {
                    Admit::Enqueue(oldest) => dropped = oldest,
                    Admit::Refuse => return,
                }
            }
            stored
        };
        if stored {
            if !*body_stored {
                *body_stored = true;
                ops.push(Op::PutMessage {
                    id,
                    message: message.clone(),
                    at_ms: self.unix_ms(),
                });
            }
            ops.push(Op::Enqueue {
                client_id: key.0.client_id.clone(),
                id,
                qos,
                retain: false,
            });
            if let Some(oldest) = dropped {
                ops.push(Op::Dequeue {
                    client_id: key.0.client_id.clone(),
                    id: oldest,
                });
            }
        }
        targets.push((key, granted, stored));
    }

    /// The runtime's wall clock in ms since the Unix epoch: the time a
    /// stored message body carries (`Op::PutMessage::at_ms`).
    pub(crate) fn unix_ms(&self) -> u64 {
        u64::try_from(self.runtime.unix_time().as_millis()).unwrap_or(u64::MAX)
    }

    /// Bounds the [`StoredQueue`] of a session not loaded yet, which `id`
    /// is about to be enqueued for, with the limits and the overflow policy
    /// a loaded session applies (and the same `dropped_queue_full` count).
    /// A session whose live state is in memory bounds its queue itself.
    fn admit_stored(&self, inner: &mut SessionInner, id: MessageId) -> Admit {
        if inner.attached.is_some() || inner.offline.is_some() {
            inner.set_stored_queue(None);
            return Admit::Enqueue(None);
        }
        let loading = inner.is_loading();
        let Some(queue) = inner.stored_queue_mut() else {
            return Admit::Enqueue(None);
        };
        let limits = self.config.connection.session;
        let mut dropped = None;
        if !loading && queue.len() >= limits.max_queued.max(1) as usize {
            Metrics::inc(&self.metrics.dropped_queue_full);
            match limits.overflow {
                QueueOverflow::DropNewest => return Admit::Refuse,
                QueueOverflow::DropOldest => dropped = queue.pop_oldest(),
            }
        }
        queue.insert(id);
        Admit::Enqueue(dropped)
    }

    /// A routing batch failed after an attempt that may have been stored
    /// (it got no answer): storage may hold the message for its persistent
    /// targets or not, and their state in memory cannot follow either way.
    /// Delivered in memory, a copy storage never got is sent again under
    /// a new id when the publisher retries (a QoS 2 duplicate); not
    /// delivered, a copy storage holds reaches the client only when it
    /// loads the session again. So each such session is closed and loads
    /// again from storage (see `SessionInner::reload`). A clean session's
    /// QoS 1 copy is delivered (a duplicate at worst, which QoS 1 allows);
    /// its QoS 2 one ends the connection, and the clean session with it.
    pub(crate) fn route_outcome_unknown(&self, prepared: PreparedRoute, now: Instant) {
        let PreparedRoute {
            message,
            targets,
            retained_peers,
            ..
        } = prepared;
        if let (Some(cluster), Some(peers)) = (self.cluster.as_ref(), &retained_peers) {
            // Storage may hold the retained change or not: this node reads
            // it back, and the nodes it may have missed are told to.
            cluster.read_retained_soon();
            cluster.retained_stored(peers, now);
        }
        for (key, granted, stored) in targets {
            let qos = message.qos.min(granted);
            if qos == QoS::AtMostOnce {
                continue;
            }
            if !stored && qos == QoS::AtLeastOnce {
                if key
                    .0
                    .offer(Delivery::routed(message.clone(), granted), &self.metrics)
                {
                    Metrics::inc(&self.metrics.deliveries);
                }
                continue;
            }
            let attached = {
                let mut inner = lock(&key.0.inner);
                if stored {
                    inner.reload = true;
                    if inner.attached.is_none() {
                        inner.offline = None;
                        inner.set_stored_queue(None);
                    }
                }
                inner.attached.clone()
            };
            if let Some(cell) = attached {
                cell.close(CloseReason::StorageUnavailable, now);
            }
        }
    }

    /// The second half of routing, once the batch is stored: the retained
    /// index and the deliveries in memory.
    pub fn finish_route(&self, prepared: PreparedRoute) -> usize {
        let PreparedRoute {
            message,
            id,
            targets,
            ticket: _ticket,
            updates_retained,
            retained_peers,
        } = prepared;
        if updates_retained {
            self.update_retained(&message);
        }
        self.retained_stored(retained_peers.as_ref());
        let mut delivered = 0;
        for (key, granted, stored) in targets {
            let mut delivery = Delivery::routed(message.clone(), granted);
            if stored {
                delivery = delivery.stored_as(id);
            }
            if key.0.offer(delivery, &self.metrics) {
                delivered += 1;
            }
        }
        Metrics::add(&self.metrics.deliveries, delivered as u64);
        delivered
    }
}

/// The back-off before the `attempt`-th retry of a storage write.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(1))
}

#[cfg(test)]
mod journal_tests {
    use super::*;
    use easy_mqtt_core::cluster::ClusterOp;

    fn packet(id: u16) -> PacketId {
        PacketId::new(id).unwrap_or(PacketId::MIN)
    }

    fn qos2_flow() -> Vec<SessionChange> {
        vec![
            SessionChange::SetInflight {
                packet_id: packet(1),
                id: MessageId(7),
                phase: OutboundPhase::Published,
                qos: QoS::ExactlyOnce,
                retain: false,
            },
            SessionChange::SetInflight {
                packet_id: packet(2),
                id: MessageId(8),
                phase: OutboundPhase::Released,
                qos: QoS::ExactlyOnce,
                retain: false,
            },
            SessionChange::SetInflight {
                packet_id: packet(3),
                id: MessageId(9),
                phase: OutboundPhase::Released,
                qos: QoS::ExactlyOnce,
                retain: false,
            },
            SessionChange::CompleteInflight(packet(2)),
        ]
    }

    /// A PUBREC logs the message as received by the client, in the batch
    /// its PUBREL waits for; a PUBLISH sent does not (the client may never
    /// have got it).
    #[test]
    fn a_cluster_node_logs_the_qos2_messages_a_client_acknowledged_with_pubrec() {
        let client = ByteStr::from("s1");
        let mut ops = Vec::new();
        let gates = journal_ops(&client, qos2_flow(), &mut ops, true);
        assert!(gates, "a QoS 2 phase gates the bytes");
        assert_eq!(ops.len(), 5);
        let mut expected = Vec::new();
        expected.extend_from_slice(&8u64.to_be_bytes());
        expected.extend_from_slice(&9u64.to_be_bytes());
        assert_eq!(
            ops.last(),
            Some(&Op::from(ClusterOp::PushLog {
                space: ByteStr::from(crate::cluster::RECEIVED_SPACE),
                key: client.clone(),
                entry: bytes::Bytes::from(expected),
                keep: crate::cluster::RECEIVED_KEEP,
            }))
        );

        let mut single = Vec::new();
        journal_ops(&client, qos2_flow(), &mut single, false);
        assert_eq!(single.len(), 4, "no log outside a cluster: {single:?}");
        assert_eq!(&ops[..4], &single[..]);
    }
}
