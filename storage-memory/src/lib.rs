//! In-memory storage backend: the embedded default for local development and
//! the reference implementation of the storage contract
//! ([`easy_mqtt_core::storage_contract`]).
//!
//! Everything lives behind one [`std::sync::Mutex`]. Every call does its work
//! synchronously while holding the lock and returns an already-completed
//! future, so the lock is never held across an `.await`.
//!
//! # Model
//!
//! - **Message bodies** by [`MessageId`], stored once and reference-counted:
//!   every queue entry and every in-flight entry of every session holds one
//!   reference. A body that no queue or window references at the end of a
//!   batch is removed, whether it lost its last reference in that batch or
//!   was stored ([`Op::PutMessage`]) and never referenced. So a body must be
//!   enqueued in the batch that stores it (or while it is still referenced).
//! - **Sessions** by client id: the record, the subscriptions (filter order),
//!   the queue (queue order), the in-flight window (send order) and the
//!   inbound QoS 2 packet ids.
//! - **Retained messages** by topic.
//!
//! # Semantics of each op
//!
//! A batch is applied in order, op by op. Every op is idempotent:
//!
//! - [`Op::PutSession`] creates the session, or keeps an existing one as it
//!   is (record included).
//! - [`Op::DeleteSession`] removes the session with everything it holds and
//!   releases its message references. No-op for an unknown client id.
//! - [`Op::Subscribe`] inserts or replaces the QoS of a filter;
//!   [`Op::Unsubscribe`] removes it (no-op if absent).
//! - [`Op::PutMessage`] stores a body; no-op if the id is already stored.
//! - [`Op::Enqueue`] inserts into the queue in id order
//!   ([`MessageId::queue_order`](easy_mqtt_core::storage::MessageId::queue_order));
//!   no-op if the session holds that id in its window (so a re-applied
//!   batch that enqueued and then sent a message does not queue it again),
//!   or if the body is not stored. An id already queued stays where it is
//!   and takes the QoS and RETAIN flag of the last `Enqueue` (a networked
//!   backend writes them with the holder of the body, unread, and the last
//!   write wins).
//! - [`Op::Dequeue`] removes the id from the queue (not from the window);
//!   no-op if it is not queued.
//! - [`Op::SetInflight`]: if the packet id is in the window with the same
//!   message id, its phase is updated in place (send order and flags kept).
//!   Otherwise, if the message id is queued, it moves from the queue to the
//!   end of the window with the op's QoS and RETAIN flag (those it was sent
//!   with), replacing (and releasing) any other message the packet id
//!   named. Otherwise it is ignored: a message enters the window through
//!   the queue (`Enqueue` then `SetInflight`, in one batch if need be).
//! - [`Op::CompleteInflight`] removes the packet id from the window (no-op
//!   if absent).
//! - [`Op::AddInboundQos2`] / [`Op::RemoveInboundQos2`] insert into / remove
//!   from a set.
//! - [`Op::SetRetained`] sets, replaces or clears the retained message of a
//!   topic.
//!
//! Session-scoped ops (everything but `PutSession`, `PutMessage` and
//! `SetRetained`) on a client id with no session are **ignored**: they never
//! create a session. A session exists only through `PutSession`.
//!
//! [`Op::Cluster`] and the [`Cluster`] port: see the `cluster` module (times
//! to live are measured by the clock of [`MemoryStorage::with_clock`]).

mod cluster;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::ready;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use easy_mqtt_core::cluster::{
    BusEntry, Claim, Cluster, InboxId, Liveness, Member, Owner, Presence,
};

use easy_mqtt_core::packet::{ByteStr, PacketId, QoS};
use easy_mqtt_core::session::{Message, OutboundPhase};
use easy_mqtt_core::storage::{
    BoxFuture, MessageId, Op, SessionRecord, SessionSubscriptions, Storage, StorageError,
    StoredDelivery, StoredInflight, StoredSession,
};

/// The time since an arbitrary origin, by which times to live are measured.
pub type Clock = Arc<dyn Fn() -> Duration + Send + Sync>;

/// The in-memory [`Storage`] backend. Not durable: everything is lost with
/// the process.
pub struct MemoryStorage {
    inner: Mutex<Inner>,
    clock: Clock,
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStorage")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStorage {
    fn default() -> MemoryStorage {
        let start = Instant::now();
        MemoryStorage::with_clock(Arc::new(move || start.elapsed()))
    }
}

impl MemoryStorage {
    /// A storage measuring times to live with [`Instant`] since its creation.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// A storage measuring times to live (heartbeats, records) with `clock`:
    /// the time since an arbitrary origin, which must not go back (the
    /// simulator hands it its virtual clock).
    pub fn with_clock(clock: Clock) -> MemoryStorage {
        MemoryStorage {
            inner: Mutex::new(Inner::default()),
            clock,
        }
    }

    fn now(&self) -> Duration {
        (self.clock)()
    }

    /// How many message bodies are stored. Every stored body is referenced
    /// by at least one queue or in-flight window.
    pub fn message_count(&self) -> usize {
        self.lock().messages.len()
    }

    /// How many sessions are stored.
    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held (no callbacks, no user code),
        // so a poisoned lock cannot hold a half-applied op; take it back.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Storage for MemoryStorage {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn is_durable(&self) -> bool {
        false
    }

    fn apply(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StorageError>> {
        let now = self.now();
        self.lock().apply(ops, now);
        Box::pin(ready(Ok(())))
    }

    fn load_session<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredSession>, StorageError>> {
        let result = self.lock().load_session(client_id);
        Box::pin(ready(result))
    }

    fn load_subscriptions(&self) -> BoxFuture<'_, Result<Vec<SessionSubscriptions>, StorageError>> {
        let result = self.lock().load_subscriptions();
        Box::pin(ready(Ok(result)))
    }

    fn load_retained(&self) -> BoxFuture<'_, Result<Vec<Arc<Message>>, StorageError>> {
        let result = self.lock().retained.values().cloned().collect();
        Box::pin(ready(Ok(result)))
    }

    fn cluster(&self) -> Option<&dyn Cluster> {
        Some(self)
    }
}

impl Cluster for MemoryStorage {
    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        incarnation: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Liveness, StorageError>> {
        let now = self.now();
        let result = self.lock().cluster.heartbeat(node, incarnation, ttl, now);
        Box::pin(ready(Ok(result)))
    }

    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, StorageError>> {
        let now = self.now();
        let result = self.lock().cluster.members(now);
        Box::pin(ready(Ok(result)))
    }

    fn claim_adoption<'a>(
        &'a self,
        dead: &'a str,
        incarnation: u64,
        by: &'a str,
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        let now = self.now();
        let result = self
            .lock()
            .cluster
            .claim_adoption(dead, incarnation, by, now);
        Box::pin(ready(Ok(result)))
    }

    fn adopter<'a>(
        &'a self,
        dead: &'a str,
        incarnation: u64,
    ) -> BoxFuture<'a, Result<Option<ByteStr>, StorageError>> {
        let result = self.lock().cluster.adopter(dead, incarnation);
        Box::pin(ready(Ok(result)))
    }

    fn forget_member<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        self.lock().cluster.forget_member(node);
        Box::pin(ready(Ok(())))
    }

    fn claim_owner<'a>(
        &'a self,
        client_id: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Claim, StorageError>> {
        let result = self.lock().cluster.claim_owner(client_id, node);
        Box::pin(ready(Ok(result)))
    }

    fn owner<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Owner>, StorageError>> {
        let result = self.lock().cluster.owner(client_id);
        Box::pin(ready(Ok(result)))
    }

    fn owned_by<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<ByteStr>, StorageError>> {
        let result = self.lock().cluster.owned_by(node);
        Box::pin(ready(Ok(result)))
    }

    fn responsible<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ByteStr>, StorageError>> {
        let result = self.lock().cluster.responsible(client_id);
        Box::pin(ready(Ok(result)))
    }

    fn presence<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<Presence>, StorageError>> {
        let result = self.lock().cluster.presence(node);
        Box::pin(ready(Ok(result)))
    }

    fn routes(&self) -> BoxFuture<'_, Result<easy_mqtt_core::cluster::NodeRoutes, StorageError>> {
        let result = self.lock().cluster.routes();
        Box::pin(ready(Ok(result)))
    }

    /// Answers at once, with nothing when the inbox has nothing after
    /// `after`: `wait` is an upper bound, and the caller polls.
    fn read_inbox<'a>(
        &'a self,
        node: &'a str,
        after: Option<InboxId>,
        max: usize,
        _wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<(InboxId, BusEntry)>, StorageError>> {
        let result = self.lock().cluster.read_inbox(node, after, max);
        Box::pin(ready(Ok(result)))
    }

    fn get_record<'a>(
        &'a self,
        space: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>> {
        let now = self.now();
        let result = self.lock().cluster.get_record(space, key, now);
        Box::pin(ready(Ok(result)))
    }

    fn scan_records<'a>(
        &'a self,
        space: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(ByteStr, Bytes)>, StorageError>> {
        let now = self.now();
        let result = self.lock().cluster.scan_records(space, now);
        Box::pin(ready(Ok(result)))
    }

    fn read_log<'a>(
        &'a self,
        space: &'a str,
        key: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, StorageError>> {
        let result = self.lock().cluster.read_log(space, key, max);
        Box::pin(ready(Ok(result)))
    }
}

/// A stored message body and the number of queue and window entries that
/// hold it.
#[derive(Debug)]
struct Body {
    message: Arc<Message>,
    /// When it was stored (`Op::PutMessage`'s `at_ms`).
    at_ms: u64,
    refs: usize,
}

/// A reference to a body from a queue or a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    id: MessageId,
    qos: QoS,
    retain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Inflight {
    packet_id: PacketId,
    entry: Entry,
    phase: OutboundPhase,
}

#[derive(Debug)]
struct Session {
    record: SessionRecord,
    subscriptions: BTreeMap<ByteStr, QoS>,
    /// In queue order.
    queue: VecDeque<Entry>,
    /// In send order.
    inflight: VecDeque<Inflight>,
    inbound_qos2: BTreeSet<PacketId>,
    /// Every message id in `queue` or `inflight` (each at most once).
    held: HashSet<MessageId>,
}

impl Session {
    fn new(record: SessionRecord) -> Session {
        Session {
            record,
            subscriptions: BTreeMap::new(),
            queue: VecDeque::new(),
            inflight: VecDeque::new(),
            inbound_qos2: BTreeSet::new(),
            held: HashSet::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    messages: HashMap<MessageId, Body>,
    /// Keyed by client id; `BTreeMap` so lookups by `&str` are sound
    /// (`ByteStr` orders like `str`) and listings are in client-id order.
    sessions: BTreeMap<ByteStr, Session>,
    retained: BTreeMap<ByteStr, Arc<Message>>,
    cluster: cluster::ClusterState,
}

impl Inner {
    fn apply(&mut self, ops: Vec<Op>, now: Duration) {
        // Bodies that were stored or lost a reference in this batch; those
        // left without references at the end of the batch are removed.
        let mut unreferenced = Vec::new();
        for op in ops {
            self.apply_op(op, now, &mut unreferenced);
        }
        for id in unreferenced {
            if self.messages.get(&id).is_some_and(|body| body.refs == 0) {
                self.messages.remove(&id);
            }
        }
    }

    fn apply_op(&mut self, op: Op, now: Duration, unreferenced: &mut Vec<MessageId>) {
        match op {
            Op::PutSession(record) => {
                self.sessions
                    .entry(record.client_id.clone())
                    .or_insert_with(|| Session::new(record));
            }
            Op::DeleteSession { client_id } => {
                if let Some(session) = self.sessions.remove(client_id.as_str()) {
                    let ids = session
                        .queue
                        .iter()
                        .map(|entry| entry.id)
                        .chain(session.inflight.iter().map(|inflight| inflight.entry.id));
                    for id in ids {
                        release(&mut self.messages, id, unreferenced);
                    }
                }
            }
            Op::Subscribe {
                client_id,
                filter,
                qos,
            } => {
                if let Some(session) = self.sessions.get_mut(client_id.as_str()) {
                    session.subscriptions.insert(filter, qos);
                }
            }
            Op::Unsubscribe { client_id, filter } => {
                if let Some(session) = self.sessions.get_mut(client_id.as_str()) {
                    session.subscriptions.remove(filter.as_str());
                }
            }
            Op::PutMessage { id, message, at_ms } => {
                (self.messages.entry(id)).or_insert(Body {
                    message,
                    at_ms,
                    refs: 0,
                });
                unreferenced.push(id);
            }
            Op::Enqueue {
                client_id,
                id,
                qos,
                retain,
            } => {
                let Some(session) = self.sessions.get_mut(client_id.as_str()) else {
                    return;
                };
                let Some(body) = self.messages.get_mut(&id) else {
                    return;
                };
                if session.held.insert(id) {
                    body.refs += 1;
                    // In id order (sequence, then node tag), as every
                    // backend keeps a queue.
                    let at = session
                        .queue
                        .partition_point(|entry| entry.id.queue_order() <= id.queue_order());
                    session.queue.insert(at, Entry { id, qos, retain });
                } else if let Ok(at) = session
                    .queue
                    .binary_search_by_key(&id.queue_order(), |entry| entry.id.queue_order())
                    && let Some(entry) = session.queue.get_mut(at)
                {
                    // Queued already: it takes the last QoS and RETAIN.
                    entry.qos = qos;
                    entry.retain = retain;
                }
            }
            Op::Dequeue { client_id, id } => {
                let Some(session) = self.sessions.get_mut(client_id.as_str()) else {
                    return;
                };
                if let Some(index) = session.queue.iter().position(|entry| entry.id == id) {
                    session.queue.remove(index);
                    session.held.remove(&id);
                    release(&mut self.messages, id, unreferenced);
                }
            }
            Op::SetInflight {
                client_id,
                packet_id,
                id,
                phase,
                qos,
                retain,
            } => {
                let Some(session) = self.sessions.get_mut(client_id.as_str()) else {
                    return;
                };
                let current = session
                    .inflight
                    .iter()
                    .position(|inflight| inflight.packet_id == packet_id);
                if let Some(inflight) = current
                    .and_then(|index| session.inflight.get_mut(index))
                    .filter(|inflight| inflight.entry.id == id)
                {
                    inflight.phase = phase;
                    return;
                }
                let Some(queued) = session.queue.iter().position(|entry| entry.id == id) else {
                    return;
                };
                // The packet id now names another message: the old one is
                // replaced (last write wins, as for any key).
                if let Some(replaced) = current.and_then(|index| session.inflight.remove(index)) {
                    session.held.remove(&replaced.entry.id);
                    release(&mut self.messages, replaced.entry.id, unreferenced);
                }
                if let Some(entry) = session.queue.remove(queued) {
                    // The reference moves from the queue to the window,
                    // with the flags it was sent with.
                    session.inflight.push_back(Inflight {
                        packet_id,
                        entry: Entry {
                            qos,
                            retain,
                            ..entry
                        },
                        phase,
                    });
                }
            }
            Op::CompleteInflight {
                client_id,
                packet_id,
            } => {
                let Some(session) = self.sessions.get_mut(client_id.as_str()) else {
                    return;
                };
                let index = session
                    .inflight
                    .iter()
                    .position(|inflight| inflight.packet_id == packet_id);
                if let Some(done) = index.and_then(|index| session.inflight.remove(index)) {
                    session.held.remove(&done.entry.id);
                    release(&mut self.messages, done.entry.id, unreferenced);
                }
            }
            Op::AddInboundQos2 {
                client_id,
                packet_id,
            } => {
                if let Some(session) = self.sessions.get_mut(client_id.as_str()) {
                    session.inbound_qos2.insert(packet_id);
                }
            }
            Op::RemoveInboundQos2 {
                client_id,
                packet_id,
            } => {
                if let Some(session) = self.sessions.get_mut(client_id.as_str()) {
                    session.inbound_qos2.remove(&packet_id);
                }
            }
            Op::SetRetained { topic, message } => match message {
                Some(message) => {
                    self.retained.insert(topic, message);
                }
                None => {
                    self.retained.remove(topic.as_str());
                }
            },
            Op::Cluster(op) => self.cluster.apply(*op, now),
        }
    }

    fn load_session(&self, client_id: &str) -> Result<Option<StoredSession>, StorageError> {
        let Some(session) = self.sessions.get(client_id) else {
            return Ok(None);
        };
        let delivery = |entry: &Entry| -> Result<StoredDelivery, StorageError> {
            let Some(body) = self.messages.get(&entry.id) else {
                return Err(StorageError::Corrupt {
                    key: format!("session {client_id:?} message {}", entry.id.0),
                    reason: "referenced message body is not stored".to_owned(),
                });
            };
            Ok(StoredDelivery {
                id: entry.id,
                message: Arc::clone(&body.message),
                qos: entry.qos,
                retain: entry.retain,
                at_ms: body.at_ms,
            })
        };
        let inflight = session
            .inflight
            .iter()
            .map(|inflight| {
                Ok(StoredInflight {
                    packet_id: inflight.packet_id,
                    delivery: delivery(&inflight.entry)?,
                    phase: inflight.phase,
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let queue = session
            .queue
            .iter()
            .map(delivery)
            .collect::<Result<Vec<_>, StorageError>>()?;
        Ok(Some(StoredSession {
            record: session.record.clone(),
            subscriptions: subscriptions(session),
            inflight,
            queue,
            inbound_qos2: session.inbound_qos2.iter().copied().collect(),
        }))
    }

    fn load_subscriptions(&self) -> Vec<SessionSubscriptions> {
        self.sessions
            .values()
            .map(|session| SessionSubscriptions {
                record: session.record.clone(),
                subscriptions: subscriptions(session),
                queued: session.queue.iter().map(|entry| entry.id).collect(),
            })
            .collect()
    }
}

fn subscriptions(session: &Session) -> Vec<(ByteStr, QoS)> {
    session
        .subscriptions
        .iter()
        .map(|(filter, qos)| (filter.clone(), *qos))
        .collect()
}

/// Drops one reference to a body; the caller's batch removes it at its end if
/// nothing took a new reference in the meantime.
fn release(
    messages: &mut HashMap<MessageId, Body>,
    id: MessageId,
    unreferenced: &mut Vec<MessageId>,
) {
    if let Some(body) = messages.get_mut(&id) {
        debug_assert!(body.refs > 0, "message {id:?} released more than held");
        body.refs = body.refs.saturating_sub(1);
        if body.refs == 0 {
            unreferenced.push(id);
        }
    }
}

#[cfg(test)]
mod tests;
