//! Session entries: one per client id, holding either the live connection's
//! state machine or the session kept for a disconnected persistent client.
//!
//! Lock order, everywhere: registry map, then a session entry, then a
//! connection cell, then the subscription trie. Nothing takes an earlier lock
//! while holding a later one.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

use easy_mqtt_core::session::{Connection, Delivery, Enqueued, SessionState};
use easy_mqtt_core::{ByteStr, ProtocolVersion, QoS};

use crate::driver::ConnectionInfo;
use crate::metrics::Metrics;

/// Locks a mutex, recovering the data if a panicking thread poisoned it: the
/// state behind our locks stays consistent between statements, and one
/// panicking connection must not take the broker down.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A connection's state machine, shared by its driver task and the routers
/// of other connections that deliver to it.
#[derive(Debug)]
pub struct ConnCell {
    pub id: u64,
    pub inner: Mutex<ConnInner>,
}

#[derive(Debug)]
pub struct ConnInner {
    pub conn: Connection,
    /// The driver's waker, taken by whoever gives the driver work.
    pub waker: Option<Waker>,
}

impl ConnInner {
    pub fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl ConnCell {
    pub fn new(id: u64, conn: Connection) -> ConnCell {
        ConnCell {
            id,
            inner: Mutex::new(ConnInner { conn, waker: None }),
        }
    }

    /// Closes the connection from outside its driver, and wakes the
    /// driver to finish it.
    pub fn close(&self, reason: easy_mqtt_core::session::CloseReason, now: std::time::Instant) {
        let mut inner = lock(&self.inner);
        inner.conn.close(reason, now);
        inner.wake();
    }
}

/// The session entries by client id. A set of the entries, looked up by
/// the client id each holds, rather than a map from a copy of it: the key's
/// 32 bytes, with their share of the table's slack, were paid for every
/// session.
#[derive(Debug, Default)]
pub struct Registry {
    entries: HashSet<Registered>,
}

/// An entry in the [`Registry`]: hashed, compared and looked up by its
/// client id.
#[derive(Debug)]
struct Registered(Arc<SessionEntry>);

impl Hash for Registered {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that lookups by `&str` find it (`Borrow`).
        self.0.client_id.as_str().hash(state);
    }
}

impl PartialEq for Registered {
    fn eq(&self, other: &Registered) -> bool {
        self.0.client_id.as_str() == other.0.client_id.as_str()
    }
}

impl Eq for Registered {}

impl Borrow<str> for Registered {
    fn borrow(&self) -> &str {
        self.0.client_id.as_str()
    }
}

impl Registry {
    pub fn get(&self, client_id: &str) -> Option<&Arc<SessionEntry>> {
        self.entries.get(client_id).map(|registered| &registered.0)
    }

    pub fn contains_key(&self, client_id: &str) -> bool {
        self.entries.contains(client_id)
    }

    /// The entry of `client_id`, and whether it was made (and registered)
    /// now because there was none.
    pub fn get_or_create(&mut self, client_id: &ByteStr) -> (Arc<SessionEntry>, bool) {
        if let Some(registered) = self.entries.get(client_id.as_str()) {
            return (registered.0.clone(), false);
        }
        let entry = Arc::new(SessionEntry::new(client_id.clone()));
        self.entries.insert(Registered(entry.clone()));
        (entry, true)
    }

    /// Registers `entry` under its client id, in place of any other.
    pub fn insert(&mut self, entry: Arc<SessionEntry>) {
        self.entries.replace(Registered(entry));
    }

    pub fn remove(&mut self, client_id: &str) -> Option<Arc<SessionEntry>> {
        self.entries.take(client_id).map(|registered| registered.0)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<SessionEntry>> {
        self.entries.iter().map(|registered| &registered.0)
    }

    pub fn drain(&mut self) -> impl Iterator<Item = Arc<SessionEntry>> + '_ {
        self.entries.drain().map(|registered| registered.0)
    }
}

#[derive(Debug)]
pub struct SessionEntry {
    pub client_id: ByteStr,
    pub inner: Mutex<SessionInner>,
}

/// `repr(C)` with `attached` first: it then shares the cache line of the
/// entry's lock (and of its `Arc` counts), so handing a message to a
/// connected session misses the cache once for the entry, not twice. A
/// fan-out to 19,500 sessions is bound by those misses.
#[derive(Debug, Default)]
#[repr(C)]
pub struct SessionInner {
    /// The live connection, if any.
    pub attached: Option<Arc<ConnCell>>,
    /// The session of a disconnected persistent client.
    /// Boxed: a connected client's entry holds none, and the state is large.
    pub offline: Option<Box<SessionState>>,
    /// What a durable node tracks while the session is loaded or only
    /// recovered. Boxed, and dropped when empty: most entries never need
    /// it, and inline (56 bytes) it put every entry a size class higher.
    durable: Option<Box<DurableLoad>>,
    /// Filter → granted QoS.
    pub subscriptions: BTreeMap<ByteStr, QoS>,
    /// The current (or last) network connection, for the HTTP API.
    pub connection: Option<ConnectedInfo>,
    /// Whether the current (or last) connection asked for a clean session.
    pub clean: bool,
    /// Set when the entry has left the registry; a CONNECT that still holds
    /// it must look the client id up again.
    pub removed: bool,
    /// A durable node holds this persistent session in storage: messages
    /// routed to it are written there before it sees them.
    pub stored: bool,
    /// Storage may hold a message this session's state in memory lacks: a
    /// routing batch for it failed after an attempt that may have been
    /// stored (see `Node::route_outcome_unknown`). Its state in memory is
    /// dropped once no connection holds it, and the next CONNECT loads
    /// the session from storage.
    pub reload: bool,
}

#[derive(Debug, Default)]
struct DurableLoad {
    /// A CONNECT is loading this session from storage: deliveries are kept
    /// here meanwhile and added to what it loads.
    loading: Option<Vec<Delivery>>,
    /// A persistent session recovered from storage and not loaded yet: the
    /// ids of its stored queue, which bound it (see `persist::StoredQueue`).
    stored_queue: Option<crate::persist::StoredQueue>,
}

impl SessionInner {
    /// Whether a CONNECT is loading this session from storage.
    pub fn is_loading(&self) -> bool {
        self.durable.as_ref().is_some_and(|d| d.loading.is_some())
    }

    /// Deliveries kept aside while the session loads; `None` when it is
    /// not loading.
    pub fn loading_mut(&mut self) -> Option<&mut Vec<Delivery>> {
        self.durable.as_mut()?.loading.as_mut()
    }

    /// Marks the session as loading (deliveries kept aside from now on),
    /// unless it is already.
    pub fn start_loading(&mut self) {
        let durable = self.durable.get_or_insert_with(Box::default);
        durable.loading.get_or_insert_with(Vec::new);
    }

    /// Ends the load: the deliveries kept aside meanwhile.
    pub fn take_loading(&mut self) -> Option<Vec<Delivery>> {
        let loading = self.durable.as_mut()?.loading.take();
        self.release_durable();
        loading
    }

    pub fn stored_queue_mut(&mut self) -> Option<&mut crate::persist::StoredQueue> {
        self.durable.as_mut()?.stored_queue.as_mut()
    }

    pub fn set_stored_queue(&mut self, queue: Option<crate::persist::StoredQueue>) {
        match queue {
            Some(queue) => {
                self.durable.get_or_insert_with(Box::default).stored_queue = Some(queue);
            }
            None => {
                if let Some(durable) = &mut self.durable {
                    durable.stored_queue = None;
                }
                self.release_durable();
            }
        }
    }

    fn release_durable(&mut self) {
        if self
            .durable
            .as_ref()
            .is_some_and(|d| d.loading.is_none() && d.stored_queue.is_none())
        {
            self.durable = None;
        }
    }
}

/// What the node remembers of a session's current (or last) connection.
#[derive(Debug, Clone)]
pub struct ConnectedInfo {
    /// When its CONNECT was accepted (the runtime's clock).
    pub since: Instant,
    pub info: ConnectionInfo,
    pub protocol: ProtocolVersion,
    /// Effective keep-alive in seconds; 0 = off.
    pub keep_alive: u16,
}

impl SessionEntry {
    pub fn new(client_id: ByteStr) -> SessionEntry {
        SessionEntry {
            client_id,
            inner: Mutex::new(SessionInner::default()),
        }
    }

    /// Whether the session's live state (its connection's, or its offline
    /// one) holds the stored message `id`, queued or in flight.
    pub(crate) fn holds(&self, id: easy_mqtt_core::storage::MessageId) -> bool {
        let held = |state: &easy_mqtt_core::session::SessionState| {
            state.queue().any(|d| d.id == Some(id))
                || state.inflight().any(|m| m.delivery.id == Some(id))
        };
        let inner = lock(&self.inner);
        if let Some(cell) = &inner.attached {
            return lock(&cell.inner).conn.session().is_some_and(held);
        }
        inner.offline.as_deref().is_some_and(held)
    }

    /// Hands one message to this session: to the live connection, or to the
    /// queue of a disconnected persistent session (or to storage, which
    /// holds it for a recovered one). QoS 0 messages are not kept for a
    /// disconnected client. Returns whether the session took it, counted in
    /// `deliveries`.
    pub fn deliver(&self, delivery: Delivery, metrics: &Metrics) -> bool {
        let taken = self.offer(delivery, metrics);
        if taken {
            Metrics::inc(&metrics.deliveries);
        }
        taken
    }

    /// [`SessionEntry::deliver`] without counting it in `deliveries`: for a
    /// caller that hands one message to many sessions and counts them once
    /// (every update of a counter both worker threads write moves its cache
    /// line between the cores).
    pub fn offer(&self, delivery: Delivery, metrics: &Metrics) -> bool {
        let mut inner = lock(&self.inner);
        if let Some(cell) = &inner.attached {
            // The driver is woken after both locks are released: a wake may
            // be a futex call that the driver's own step would wait behind.
            let (taken, waker) = {
                let mut c = lock(&cell.inner);
                match c.conn.deliver(delivery) {
                    Some(Enqueued::Accepted) => (true, c.waker.take()),
                    Some(Enqueued::DroppedOldest(_)) => {
                        Metrics::inc(&metrics.dropped_queue_full);
                        (true, c.waker.take())
                    }
                    Some(Enqueued::Refused) => {
                        Metrics::inc(&metrics.dropped_queue_full);
                        // A journaled session recorded the drop: its driver writes it.
                        (false, c.waker.take())
                    }
                    None => (false, None),
                }
            };
            drop(inner);
            if let Some(waker) = waker {
                waker.wake();
            }
            return taken;
        }
        if let Some(loading) = inner.loading_mut() {
            if delivery.qos == QoS::AtMostOnce {
                Metrics::inc(&metrics.dropped_offline_qos0);
                return false;
            }
            loading.push(delivery);
            return true;
        }
        if let Some(state) = &mut inner.offline {
            if delivery.qos == QoS::AtMostOnce {
                Metrics::inc(&metrics.dropped_offline_qos0);
                return false;
            }
            // Stamped for an offline-message retention (`aliyun`).
            return match state.enqueue_at(delivery, crate::aliyun::now_ms()) {
                Enqueued::Accepted => true,
                Enqueued::DroppedOldest(_) => {
                    Metrics::inc(&metrics.dropped_queue_full);
                    true
                }
                Enqueued::Refused => {
                    Metrics::inc(&metrics.dropped_queue_full);
                    false
                }
            };
        }
        if inner.stored && !inner.clean && delivery.id.is_some() {
            // A recovered session not loaded yet: storage holds the message.
            return true;
        }
        if inner.stored && delivery.qos == QoS::AtMostOnce {
            Metrics::inc(&metrics.dropped_offline_qos0);
        }
        false
    }

    /// Whether `cell` is the connection attached to this session now.
    pub fn is_attached(inner: &SessionInner, cell: &Arc<ConnCell>) -> bool {
        inner
            .attached
            .as_ref()
            .is_some_and(|attached| Arc::ptr_eq(attached, cell))
    }
}

/// A session as a subscriber in the trie: compared by identity.
#[derive(Debug, Clone)]
pub struct SessionKey(pub Arc<SessionEntry>);

impl PartialEq for SessionKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SessionKey {}

impl Hash for SessionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state);
    }
}

#[cfg(test)]
mod registry_tests {
    #![allow(clippy::unwrap_used)]

    use super::{Registry, SessionEntry};
    use easy_mqtt_core::ByteStr;
    use std::sync::Arc;

    /// Entries are found by the client id they hold, made once, replaced
    /// and removed by it.
    #[test]
    fn entries_are_keyed_by_their_client_id() {
        let mut registry = Registry::default();
        let (a, made) = registry.get_or_create(&ByteStr::from("a"));
        let (again, made_again) = registry.get_or_create(&ByteStr::from("a"));
        assert!(made && !made_again && Arc::ptr_eq(&a, &again));
        assert!(registry.get_or_create(&ByteStr::from("b")).1);
        assert_eq!(registry.len(), 2);
        assert!(Arc::ptr_eq(registry.get("a").unwrap(), &a));
        assert!(registry.contains_key("b") && !registry.contains_key("c"));

        let newer = Arc::new(SessionEntry::new(ByteStr::from("a")));
        registry.insert(newer.clone());
        assert!(Arc::ptr_eq(registry.get("a").unwrap(), &newer));
        assert_eq!(registry.len(), 2);

        assert!(Arc::ptr_eq(&registry.remove("a").unwrap(), &newer));
        assert!(registry.remove("a").is_none());
        let mut ids: Vec<String> = registry.iter().map(|e| e.client_id.to_string()).collect();
        ids.sort();
        assert_eq!(ids, ["b"]);
        assert_eq!(registry.drain().count(), 1);
        assert!(registry.is_empty());
    }
}

#[cfg(test)]
mod layout_tests {
    #![allow(clippy::unwrap_used)]

    use super::SessionEntry;
    use easy_mqtt_core::ByteStr;
    use std::sync::Arc;

    /// What `offer` reads of a connected session's entry (its lock word and
    /// `attached`) lies in the first 64 bytes of the `Arc`'s allocation
    /// (16 bytes of counts, then the entry; the allocator's 192-byte class
    /// keeps such allocations aligned to a cache line).
    #[test]
    fn a_session_entrys_hot_fields_share_one_cache_line() {
        let entry = Arc::new(SessionEntry::new(ByteStr::from("c")));
        let base = Arc::as_ptr(&entry) as usize;
        let mutex_at = &entry.inner as *const _ as usize - base;
        let inner = entry.inner.lock().unwrap();
        let data_at = &*inner as *const _ as usize - base;
        let attached_end = &inner.attached as *const _ as usize - base + 8;
        assert_eq!(data_at, mutex_at + 8, "the lock word precedes the data");
        assert!(
            16 + attached_end <= 64,
            "`attached` ends at byte {} of the allocation",
            16 + attached_end
        );
    }
}
