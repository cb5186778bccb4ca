//! The broker node: session registry, router, retained messages and wills.
//!
//! Connection drivers hand the node the events of their state machines; the
//! node answers them synchronously (routing in memory is immediate). A
//! CONNECT waits for the node's [`Authenticator`], when one is set: its
//! future is polled by the connection's driver, which then calls
//! [`Node::connect`] or refuses. The HTTP API's view of the node is in
//! `admin.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Instant;

use easy_mqtt_core::packet::{Connect, LastWill, Publish, Subscribe, SubscribeReturnCode};
use easy_mqtt_core::session::{
    CloseReason, Connection, ConnectionConfig, Delivery, Message, SessionState,
};
use easy_mqtt_core::storage::Storage;
use easy_mqtt_core::topic::{self, RetainedIndex, SubscriptionTrie};
use easy_mqtt_core::{ByteStr, ConnectReturnCode, QoS};

use crate::auth::Authenticator;
use crate::driver::ConnectionInfo;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::sessions::{ConnCell, ConnectedInfo, SessionEntry, SessionInner, SessionKey, lock};

/// Node-wide settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Identifies this node in logs and in generated client ids.
    pub node_id: String,
    pub connection: ConnectionConfig,
    /// Open connections allowed (0: no limit).
    pub max_connections: usize,
    /// Idle time after which a plain TCP connection hibernates (see
    /// `crate::hibernate`); `None`: never.
    pub hibernate_after: Option<std::time::Duration>,
    /// Cluster timings; `None`: this node is alone (also when the storage
    /// backend cannot share state between nodes).
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Distinguishes this process's life from earlier ones under the same
    /// node id (default: start time in milliseconds).
    pub incarnation: u64,
    /// Bounds of the node-wide storage writer (durable storage only).
    pub journal: crate::journal::WriterLimits,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: "node-1".into(),
            connection: ConnectionConfig::default(),
            max_connections: 0,
            hibernate_after: Some(std::time::Duration::from_secs(10)),
            cluster: None,
            incarnation: crate::persist::sequence_seed() / 1000,
            journal: crate::journal::WriterLimits::default(),
        }
    }
}

pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct Node<R: Runtime> {
    pub(crate) config: NodeConfig,
    pub(crate) runtime: R,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) registry: Mutex<crate::sessions::Registry>,
    pub(crate) trie: RwLock<SubscriptionTrie<SessionKey>>,
    pub(crate) retained: RwLock<RetainedIndex<Arc<Message>>>,
    /// While a cluster catch-up reads the retained messages from storage:
    /// the topics changed in memory meanwhile (under `retained`'s write
    /// lock), which keep their value rather than the one read.
    pub(crate) retained_touched: Mutex<Option<std::collections::HashSet<ByteStr>>>,
    /// Every open connection, for shutdown (and the API later).
    pub(crate) connections: Mutex<HashMap<u64, Weak<ConnCell>>>,
    pub(crate) next_connection_id: AtomicU64,
    pub(crate) next_assigned_id: AtomicU64,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) shutdown_done: event_listener::Event,
    /// Asked about every CONNECT when set (`authentication-url`).
    pub(crate) authenticator: Option<Arc<dyn Authenticator>>,
    /// Per-client rules beside the MQTT ones (the Alibaba Cloud mode).
    pub(crate) policy: Option<Arc<dyn Policy>>,
    pub metrics: Metrics,
    /// `storage.is_durable()`: writes go through storage (see `persist.rs`).
    pub(crate) durable: bool,
    /// The high 16 bits of the message ids this node mints.
    pub(crate) node_tag: u16,
    pub(crate) next_message: AtomicU64,
    /// When a storage failure was last logged (ms since the epoch).
    pub(crate) storage_error_logged: AtomicU64,
    /// The cluster state, when the node is one of several (durable
    /// storage that shares cluster state, and `NodeConfig::cluster`).
    pub(crate) cluster: Option<crate::cluster::ClusterState>,
    /// Wakes the cluster task when another node's routes changed.
    pub(crate) routes_notice: event_listener::Event,
    /// `config.connection`, shared by every connection's state machine.
    connection_config: Arc<easy_mqtt_core::session::ConnectionConfig>,
    /// Dead nodes' inboxes this node serves.
    pub(crate) adopted: Mutex<Vec<crate::cluster::Adopted>>,
    /// Merges the connections' small storage batches (see `journal.rs`).
    pub(crate) journal: crate::journal::JournalWriter,
}

/// The connection a [`Policy`] is asked about.
#[derive(Debug, Clone, Copy)]
pub struct ClientCtx<'a> {
    pub client_id: &'a str,
    /// The connection's id (`ConnCell::id`), unique in this node.
    pub connection_id: u64,
}

/// Rules a compatibility mode adds to MQTT's (`aliyun`): who may publish
/// and subscribe what, point-to-point topics, and connection events. The
/// methods are called without node locks held, except
/// `authorize_subscribe`, which must not call back into the node.
pub trait Policy: Send + Sync + 'static {
    /// False drops the PUBLISH (a QoS 1/2 one is still acknowledged).
    fn authorize_publish(&self, client: &ClientCtx<'_>, publish: &Publish) -> bool;
    /// False refuses the filter (SUBACK 0x80).
    fn authorize_subscribe(&self, client: &ClientCtx<'_>, filter: &str) -> bool;
    /// The one client id a message on `topic` goes to, bypassing subscriptions.
    fn direct_target<'a>(&self, topic: &'a str) -> Option<&'a str>;
    fn on_connected(&self, client: &ClientCtx<'_>, connect: &Connect, info: &ConnectionInfo);
    fn on_disconnected(&self, client: &ClientCtx<'_>, reason: &CloseReason, info: &ConnectionInfo);
    fn as_any(&self) -> &dyn std::any::Any;
}

/// What a connection driver keeps between calls into the node.
pub struct Attachment {
    /// The session, which also holds the client id (kept once: a copy here
    /// was 32 bytes in every connection's task).
    pub entry: Arc<SessionEntry>,
}

impl<R: Runtime> Node<R> {
    pub fn new(config: NodeConfig, runtime: R, storage: Arc<dyn Storage>) -> Arc<Node<R>> {
        Node::with_authenticator(config, runtime, storage, None)
    }

    /// A node that asks `authenticator` about every CONNECT before
    /// accepting it (`None`: every well-formed CONNECT is accepted).
    pub fn with_authenticator(
        config: NodeConfig,
        runtime: R,
        storage: Arc<dyn Storage>,
        authenticator: Option<Arc<dyn Authenticator>>,
    ) -> Arc<Node<R>> {
        Node::with_policy(config, runtime, storage, authenticator, None)
    }

    /// A node with an authenticator and a [`Policy`].
    pub fn with_policy(
        config: NodeConfig,
        runtime: R,
        storage: Arc<dyn Storage>,
        authenticator: Option<Arc<dyn Authenticator>>,
        policy: Option<Arc<dyn Policy>>,
    ) -> Arc<Node<R>> {
        let durable = storage.is_durable();
        let runtime_seed = runtime.unix_time();
        let node_tag = crate::persist::node_tag(&config.node_id);
        let connection_config = Arc::new(config.connection);
        let cluster = match config.cluster {
            Some(cluster) if durable && storage.cluster().is_some() => Some(
                crate::cluster::ClusterState::new(cluster, &config.node_id, config.incarnation),
            ),
            _ => None,
        };
        Arc::new(Node {
            journal: crate::journal::JournalWriter::new(storage.clone(), config.journal),
            config,
            runtime,
            storage,
            registry: Mutex::new(crate::sessions::Registry::default()),
            trie: RwLock::new(SubscriptionTrie::new()),
            retained: RwLock::new(RetainedIndex::new()),
            retained_touched: Mutex::new(None),
            connections: Mutex::new(HashMap::new()),
            next_connection_id: AtomicU64::new(1),
            next_assigned_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            shutdown_done: event_listener::Event::new(),
            authenticator,
            policy,
            metrics: Metrics::default(),
            durable,
            node_tag,
            next_message: AtomicU64::new(u64::try_from(runtime_seed.as_micros()).unwrap_or(0)),
            storage_error_logged: AtomicU64::new(0),
            cluster,
            routes_notice: event_listener::Event::new(),
            connection_config,
            adopted: Mutex::new(Vec::new()),
        })
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn authenticator(&self) -> Option<&Arc<dyn Authenticator>> {
        self.authenticator.as_ref()
    }

    pub fn policy(&self) -> Option<&Arc<dyn Policy>> {
        self.policy.as_ref()
    }

    /// Whether the policy sends messages on `topic` to one client only (p2p).
    pub fn is_direct(&self, topic: &str) -> bool {
        (self.policy.as_ref()).is_some_and(|p| p.direct_target(topic).is_some())
    }

    /// Loads what storage holds (retained messages, persistent sessions)
    /// and, in a cluster, joins it, before serving.
    pub async fn recover(self: &Arc<Self>) -> Result<(), easy_mqtt_core::storage::StorageError> {
        if self.cluster.is_some() {
            self.join_cluster().await?;
        }
        let retained = self.storage.load_retained().await?;
        let count = retained.len();
        {
            let mut index = write(&self.retained);
            for message in retained {
                let topic = message.topic.clone();
                index.insert(&topic, message);
            }
        }
        if count > 0 {
            tracing::info!(count, "retained messages recovered");
        }
        if self.durable {
            self.recover_sessions().await?;
        }
        Ok(())
    }

    /// Registers a new network connection, or `None` when the connection
    /// limit is reached (the caller closes it at once).
    pub fn open_connection(&self) -> Option<Arc<ConnCell>> {
        let max = self.config.max_connections;
        let current = Metrics::get(&self.metrics.connections_current) as usize;
        if self.shutting_down.load(Ordering::Acquire) || (max > 0 && current >= max) {
            Metrics::inc(&self.metrics.connections_refused_limit);
            return None;
        }
        Metrics::inc(&self.metrics.connections_current);
        Metrics::inc(&self.metrics.connections_total);
        let id = self.next_connection_id.fetch_add(1, Ordering::Relaxed);
        let cell = Arc::new(ConnCell::new(
            id,
            Connection::shared(self.connection_config.clone(), self.runtime.now()),
        ));
        lock(&self.connections).insert(id, Arc::downgrade(&cell));
        Some(cell)
    }

    /// Forgets a network connection once its driver is done.
    pub fn close_connection(&self, cell: &ConnCell) {
        let remaining = {
            let mut connections = lock(&self.connections);
            connections.remove(&cell.id);
            connections.len()
        };
        Metrics::dec(&self.metrics.connections_current);
        if remaining == 0 && self.shutting_down.load(Ordering::Acquire) {
            self.shutdown_done.notify(usize::MAX);
        }
    }

    /// Answers a CONNECT: assigns a client id when it is empty, takes over a
    /// live connection with the same id, resumes or discards the stored
    /// session, and accepts. Returns the attachment for the driver.
    pub fn connect(
        &self,
        cell: &Arc<ConnCell>,
        connect: Connect,
        info: &ConnectionInfo,
    ) -> Option<Attachment> {
        self.connect_loaded(cell, connect, info, None)
    }

    /// [`Node::connect`] with what a durable node loaded for it
    /// (`Some(None)`: storage holds no such session).
    pub fn connect_loaded(
        &self,
        cell: &Arc<ConnCell>,
        connect: Connect,
        info: &ConnectionInfo,
        loaded: Option<Option<easy_mqtt_core::storage::StoredSession>>,
    ) -> Option<Attachment> {
        let mut loaded = loaded;
        let now = self.runtime.now();
        if self.shutting_down.load(Ordering::Acquire) {
            lock(&cell.inner)
                .conn
                .refuse(ConnectReturnCode::ServerUnavailable, now);
            return None;
        }
        let client_id = if connect.client_id.is_empty() {
            // [MQTT-3.1.3-6]: clean session with an empty id gets a unique one.
            let n = self.next_assigned_id.fetch_add(1, Ordering::Relaxed);
            ByteStr::from(format!("auto-{}-{n}", self.config.node_id))
        } else {
            connect.client_id.clone()
        };
        loop {
            let entry = self.registered_entry(&client_id);
            let mut inner = lock(&entry.inner);
            if inner.removed {
                // The previous clean session is leaving the registry; let it go and look again.
                drop(inner);
                self.unregister(&client_id, &entry);
                continue;
            }
            if inner.reload {
                if connect.clean_session {
                    inner.reload = false;
                } else {
                    let old = self.refuse_to_reload(&mut inner, cell, now);
                    drop(inner);
                    if let Some(old) = old {
                        old.close(CloseReason::StorageUnavailable, now);
                    }
                    return None;
                }
            }
            let previous = match inner.attached.take() {
                Some(old) => {
                    // [MQTT-3.1.4-2]: the new connection wins.
                    let mut old = lock(&old.inner);
                    old.conn.close(CloseReason::TakenOver, now);
                    let state = old.conn.take_session();
                    old.wake();
                    state
                }
                None => inner.offline.take().map(|state| *state),
            };
            let resumable = !connect.clean_session && !inner.clean;
            let buffered = inner.take_loading();
            let restored = match loaded.take() {
                Some(Some(stored)) if !connect.clean_session => Some(stored),
                _ => None,
            };
            let (mut session, present) = match (previous, restored) {
                (Some(state), _) if resumable => (state, true),
                (_, Some(stored)) => {
                    // Recovered from storage: subscriptions back in the trie
                    // if this node did not know them yet.
                    let key = SessionKey(entry.clone());
                    let mut trie = write(&self.trie);
                    for (filter, qos) in &stored.subscriptions {
                        if !inner.subscriptions.contains_key(filter) {
                            trie.insert(filter, key.clone(), *qos);
                            inner.subscriptions.insert(filter.clone(), *qos);
                        }
                    }
                    drop(trie);
                    (
                        crate::persist::restore(
                            stored,
                            self.config.connection.session,
                            self.unix_ms(),
                        ),
                        true,
                    )
                }
                _ => {
                    if !inner.subscriptions.is_empty() {
                        let key = SessionKey(entry.clone());
                        let mut trie = write(&self.trie);
                        for filter in std::mem::take(&mut inner.subscriptions).into_keys() {
                            trie.remove(&filter, &key);
                        }
                    }
                    (SessionState::new(self.config.connection.session), false)
                }
            };
            if self.durable && !connect.clean_session {
                session.set_journal(true);
                // Routed while the session loaded: storage holds them; add
                // those the load did not see.
                if let Some(buffered) = buffered {
                    let known: std::collections::HashSet<_> = session
                        .queue()
                        .filter_map(|d| d.id)
                        .chain(session.inflight().filter_map(|m| m.delivery.id))
                        .collect();
                    let now_ms = self.unix_ms();
                    for delivery in buffered {
                        if delivery.id.is_none_or(|id| !known.contains(&id)) {
                            session.enqueue_at(delivery, now_ms);
                        }
                    }
                }
            }
            inner.stored = self.durable && !connect.clean_session;
            inner.clean = connect.clean_session;
            inner.attached = Some(cell.clone());
            let keep_alive = {
                let mut c = lock(&cell.inner);
                c.conn.accept(session, present, connect.will.clone(), now);
                c.conn.keep_alive()
            };
            inner.connection = Some(ConnectedInfo {
                since: now,
                info: info.clone(),
                protocol: connect.protocol,
                keep_alive: keep_alive
                    .map_or(0, |d| u16::try_from(d.as_secs()).unwrap_or(u16::MAX)),
            });
            drop(inner);
            tracing::info!(
                client_id = %client_id,
                peer = ?info.peer,
                transport = info.transport.as_str(),
                client_cert_cn = info.client_cert_cn.as_deref(),
                protocol = %connect.protocol,
                clean_session = connect.clean_session,
                keep_alive = connect.keep_alive,
                session_present = present,
                "client connected"
            );
            return Some(Attachment { entry });
        }
    }

    /// The registry's entry of `client_id`, made (and counted in
    /// `sessions_current`, under the registry's lock) when it has none.
    pub(crate) fn registered_entry(&self, client_id: &ByteStr) -> Arc<SessionEntry> {
        let mut registry = lock(&self.registry);
        let (entry, made) = registry.get_or_create(client_id);
        if made {
            Metrics::inc(&self.metrics.sessions_current);
        }
        entry
    }

    /// Routes a PUBLISH: updates the retained store when RETAIN is set, then
    /// hands the message to every matching session once, at the highest QoS
    /// of its matching subscriptions ([MQTT-3.3.5-1]).
    pub fn publish(&self, publish: Publish, scratch: &mut Vec<(SessionKey, QoS)>) {
        Metrics::inc(&self.metrics.publishes_received);
        let message = Arc::new(Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos_pid.qos(),
            retain: publish.retain,
        });
        self.route(message, scratch);
    }

    /// Hands `message` to every matching session; returns how many took it.
    pub(crate) fn route(
        &self,
        message: Arc<Message>,
        scratch: &mut Vec<(SessionKey, QoS)>,
    ) -> usize {
        if let Some(target) = self.direct_target(&message.topic) {
            // Point-to-point: that session only, never the trie or the retained store.
            return usize::from(self.route_direct(&target, message));
        }
        self.update_retained(&message);
        read(&self.trie).matches_dedup(&message.topic, scratch);
        self.forward_in_memory(&message, scratch);
        let mut delivered = 0;
        for (key, granted) in scratch.drain(..) {
            if key
                .0
                .offer(Delivery::routed(message.clone(), granted), &self.metrics)
            {
                delivered += 1;
            }
        }
        Metrics::add(&self.metrics.deliveries, delivered as u64);
        delivered
    }

    /// Stores, replaces or (empty payload) clears the retained message of
    /// the topic, when the message asks to be retained.
    pub(crate) fn update_retained(&self, message: &Arc<Message>) {
        if !message.retain {
            return;
        }
        let mut retained = write(&self.retained);
        self.retained_touched(&message.topic);
        if message.payload.is_empty() {
            // [MQTT-3.3.1-10], [MQTT-3.3.1-11]
            retained.remove(&message.topic);
        } else {
            // [MQTT-3.3.1-5]
            retained.insert(&message.topic, message.clone());
        }
    }

    /// Notes a change of `topic` for a catch-up in progress; called under
    /// `retained`'s write lock.
    pub(crate) fn retained_touched(&self, topic: &ByteStr) {
        if let Some(touched) = lock(&self.retained_touched).as_mut() {
            touched.insert(topic.clone());
        }
    }

    /// Publishes a will message on behalf of a connection that ended.
    pub fn publish_will(&self, client_id: &ByteStr, will: LastWill) {
        Metrics::inc(&self.metrics.wills_published);
        tracing::debug!(client_id = %client_id, topic = %will.topic, "publishing will");
        let message = Arc::new(Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
        });
        self.route(message, &mut Vec::new());
    }

    /// Adds subscriptions and returns one return code per filter. Retained
    /// messages matching the new filters are delivered afterwards by
    /// [`Node::deliver_retained`], once the SUBACK is queued.
    pub fn subscribe(
        &self,
        attachment: &Attachment,
        cell: &Arc<ConnCell>,
        subscribe: &Subscribe,
    ) -> Vec<SubscribeReturnCode> {
        let max_levels = self.config.connection.max_topic_levels;
        let ctx = ClientCtx {
            client_id: &attachment.entry.client_id,
            connection_id: cell.id,
        };
        let allowed: Vec<bool> = (subscribe.filters.iter())
            .map(|f| (self.policy.as_ref()).is_none_or(|p| p.authorize_subscribe(&ctx, &f.filter)))
            .collect();
        let mut inner = lock(&attachment.entry.inner);
        if !SessionEntry::is_attached(&inner, cell) {
            return vec![SubscribeReturnCode::Failure; subscribe.filters.len()];
        }
        let key = SessionKey(attachment.entry.clone());
        let mut trie = write(&self.trie);
        subscribe
            .filters
            .iter()
            .zip(allowed)
            .map(|(f, allowed)| {
                if !allowed || topic::check_levels(&f.filter, max_levels).is_err() {
                    return SubscribeReturnCode::Failure;
                }
                trie.insert(&f.filter, key.clone(), f.qos);
                inner.subscriptions.insert(f.filter.clone(), f.qos);
                SubscribeReturnCode::Granted(f.qos)
            })
            .collect()
    }

    /// Sends the retained messages that match newly granted filters ([MQTT-3.3.1-6]).
    pub fn deliver_retained(
        &self,
        attachment: &Attachment,
        subscribe: &Subscribe,
        codes: &[SubscribeReturnCode],
    ) {
        for delivery in self.retained_deliveries(subscribe, codes) {
            attachment.entry.deliver(delivery, &self.metrics);
        }
    }

    /// The retained messages a SUBSCRIBE gets, in topic order.
    pub fn retained_deliveries(
        &self,
        subscribe: &Subscribe,
        codes: &[SubscribeReturnCode],
    ) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        {
            let retained = read(&self.retained);
            if retained.is_empty() {
                return deliveries;
            }
            for (f, code) in subscribe.filters.iter().zip(codes) {
                if let SubscribeReturnCode::Granted(granted) = code {
                    retained.for_each_match(&f.filter, |_, message| {
                        deliveries.push(Delivery::retained(message.clone(), *granted));
                    });
                }
            }
        }
        // The index walks hash maps; topic order makes the delivery order
        // the same on every run (the simulator depends on it) and readable.
        deliveries.sort_by(|a, b| a.message.topic.cmp(&b.message.topic));
        deliveries
    }

    pub fn unsubscribe(&self, attachment: &Attachment, cell: &Arc<ConnCell>, filters: &[ByteStr]) {
        let mut inner = lock(&attachment.entry.inner);
        if !SessionEntry::is_attached(&inner, cell) {
            return;
        }
        let key = SessionKey(attachment.entry.clone());
        let mut trie = write(&self.trie);
        for filter in filters {
            if inner.subscriptions.remove(filter).is_some() {
                trie.remove(filter, &key);
            }
        }
    }

    /// A persistent CONNECT to a session whose state is to be loaded again
    /// (see `SessionInner::reload`), found set: by a routing batch that
    /// failed while this CONNECT loaded (what it loaded may lack that
    /// message), or before, while the state in memory was still taken as
    /// the newest (this CONNECT did not load). Refused with CONNACK 3, the
    /// old connection (returned) to be closed: the client's next CONNECT
    /// loads from storage.
    fn refuse_to_reload(
        &self,
        inner: &mut SessionInner,
        cell: &Arc<ConnCell>,
        now: Instant,
    ) -> Option<Arc<ConnCell>> {
        let old = inner.attached.take();
        inner.take_loading();
        inner.offline = None;
        inner.set_stored_queue(None);
        lock(&cell.inner)
            .conn
            .refuse(ConnectReturnCode::ServerUnavailable, now);
        old
    }

    /// Detaches a connection that ended from its session: a persistent
    /// session is kept for the client's return, a clean one is discarded
    /// ([MQTT-3.1.2-4], [MQTT-3.1.2-6]).
    pub fn detach(&self, attachment: &Attachment, cell: &Arc<ConnCell>) {
        let mut inner = lock(&attachment.entry.inner);
        if !SessionEntry::is_attached(&inner, cell) {
            return; // Taken over: the session went to the new connection.
        }
        inner.attached = None;
        let state = lock(&cell.inner).conn.take_session();
        if let Some(cluster) = self.cluster.as_ref() {
            // Stored with the will, when there was one (see `route_will`).
            cluster.send_later(self.clear_presence_op(&attachment.entry.client_id), true);
        }
        if !inner.clean {
            if inner.reload {
                // Storage is the truth (see `SessionInner::reload`).
                inner.set_stored_queue(None);
            } else {
                inner.offline = state.map(Box::new);
            }
            return;
        }
        self.retire_entry(&attachment.entry.client_id, &attachment.entry, inner);
    }

    /// Takes a session this node no longer holds out of the trie and the
    /// registry. It is marked removed first, so that a CONNECT that already
    /// found the entry looks again instead of reviving it.
    pub(crate) fn retire_entry(
        &self,
        client_id: &ByteStr,
        entry: &Arc<SessionEntry>,
        mut inner: MutexGuard<'_, SessionInner>,
    ) {
        if !inner.subscriptions.is_empty() {
            let key = SessionKey(entry.clone());
            let mut trie = write(&self.trie);
            for filter in std::mem::take(&mut inner.subscriptions).into_keys() {
                trie.remove(&filter, &key);
            }
        }
        inner.removed = true;
        drop(inner);
        self.unregister(client_id, entry);
    }

    /// Removes `entry` from the registry if it is still the one registered
    /// for `client_id` (a newer session may have replaced it). Whoever
    /// removes it counts it out, so `sessions_current` moves once per entry.
    pub(crate) fn unregister(&self, client_id: &ByteStr, entry: &Arc<SessionEntry>) {
        let mut registry = lock(&self.registry);
        if registry
            .get(client_id)
            .is_some_and(|current| Arc::ptr_eq(current, entry))
        {
            registry.remove(client_id);
            Metrics::dec(&self.metrics.sessions_current);
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Closes every connection without publishing wills and waits (up to
    /// `grace`) until their drivers have finished; in a cluster, then
    /// leaves it (the other nodes take over its persistent sessions).
    pub async fn shutdown(&self, grace: std::time::Duration) {
        self.close_for_shutdown(grace).await;
        self.leave_cluster().await;
    }

    async fn close_for_shutdown(&self, grace: std::time::Duration) {
        self.shutting_down.store(true, Ordering::Release);
        let now = self.runtime.now();
        let cells: Vec<Arc<ConnCell>> = lock(&self.connections)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for cell in &cells {
            let mut inner = lock(&cell.inner);
            inner.conn.close(CloseReason::ServerShutdown, now);
            inner.wake();
        }
        drop(cells);
        let deadline = now + grace;
        loop {
            let listener = self.shutdown_done.listen();
            if lock(&self.connections).is_empty() {
                return;
            }
            let timer = crate::runtime::sleep_until(&self.runtime, deadline);
            let finished = futures_lite::future::or(
                async {
                    listener.await;
                    false
                },
                async {
                    timer.await;
                    true
                },
            )
            .await;
            if finished {
                tracing::warn!(
                    remaining = lock(&self.connections).len(),
                    "shutdown grace period over; exiting with connections still open"
                );
                return;
            }
        }
    }

    /// Number of sessions known (connected or kept).
    pub fn session_count(&self) -> usize {
        lock(&self.registry).len()
    }
}
