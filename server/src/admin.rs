//! What the HTTP API asks of the node: introspection (clients, their
//! subscriptions, retained messages, counts) and publishing on behalf of
//! the business system.
//!
//! On a durable node, the writes (publishing to a topic, to one client,
//! deleting a retained message) go through storage as an MQTT PUBLISH does:
//! stored, then visible, then answered; a storage failure is an error the
//! API turns into 503 (the `*_stored` methods).
//!
//! In a cluster (`Node::cluster`), a client may be on another node: the
//! one-to-one publish, the kick and the client details reach it through
//! the cluster state in storage (its owner, the presence records, the
//! owner's inbox); see the `*_in_cluster` methods and `cluster_info`.
//!
//! Every method keeps the lock order of the node (registry → session entry
//! → connection cell → trie) and holds the registry only long enough to
//! copy out the entries it needs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use easy_mqtt_core::cluster::{BusEntry, ClusterOp, Presence};
use easy_mqtt_core::session::{CloseReason, Delivery, Message};
use easy_mqtt_core::storage::{Op, StorageError};
use easy_mqtt_core::{ByteStr, QoS};

use crate::metrics::Metrics;
use crate::node::{Node, read, write};
use crate::persist::PreparedRoute;
use crate::runtime::{Runtime, sleep_until};
use crate::sessions::{ConnectedInfo, SessionEntry, SessionKey, lock};

/// How often a kick of a client on another node looks for its release.
const KICK_WAIT_STEP: Duration = Duration::from_millis(100);

/// A client connected to another node of the cluster, as that node's
/// presence record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteClient {
    pub client_id: ByteStr,
    /// The id of the node it is connected to.
    pub node: ByteStr,
    /// That node's name in the cluster (`<node id>@<incarnation>`).
    pub name: ByteStr,
    /// When it connected, in milliseconds since the Unix epoch.
    pub since_ms: u64,
}

/// One node of the cluster as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub node: ByteStr,
    pub alive: bool,
    /// The current incarnation when alive, else the last one.
    pub incarnation: u64,
    /// The filters it has subscribers for (this node's as written, the
    /// others' as last read).
    pub routes: usize,
    /// Clients connected to it, as its presence records say.
    pub clients: usize,
}

/// The cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// This node's id.
    pub node: ByteStr,
    /// Every node storage knows, in node id order.
    pub members: Vec<MemberInfo>,
}

/// One session as the API shows it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub client_id: ByteStr,
    /// Whether a network connection is attached now.
    pub connected: bool,
    /// The current connection, or the last one of a disconnected
    /// persistent session.
    pub connection: Option<ConnectedInfo>,
    pub clean_session: bool,
    /// Filter → granted QoS, in filter order.
    pub subscriptions: Vec<(ByteStr, QoS)>,
    /// Outbound QoS 1/2 messages awaiting acknowledgement.
    pub inflight: usize,
    /// Messages waiting behind the in-flight window.
    pub queued: usize,
}

/// What closing a client's connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickOutcome {
    Kicked,
    /// The session exists but no connection is attached.
    NotConnected,
    NotFound,
}

/// The client id of a one-to-one publish is not a known session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownClient;

/// A write the API could not store, and whether an attempt was made (its
/// outcome is then unknown: storage may have applied it).
struct Unstored {
    error: StorageError,
    attempted: bool,
}

/// Why a one-to-one publish through storage failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPublishError {
    UnknownClient,
    /// Storage refused the write: nothing was delivered.
    Storage(StorageError),
}

/// Sizes and counters of the node at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStats {
    pub connections: u64,
    pub sessions: u64,
    /// (session, filter) pairs.
    pub subscriptions: u64,
    pub retained: u64,
    /// PUBLISH packets from clients plus messages published through the API.
    pub messages_received: u64,
    /// PUBLISH packets written to clients.
    pub messages_sent: u64,
    pub dropped_queue_full: u64,
    pub dropped_offline_qos0: u64,
}

impl<R: Runtime> Node<R> {
    fn entry(&self, client_id: &str) -> Option<Arc<SessionEntry>> {
        lock(&self.registry).get(client_id).cloned()
    }

    /// A session's details, `None` when the client id is unknown.
    pub fn client_info(&self, client_id: &str) -> Option<ClientInfo> {
        let entry = self.entry(client_id)?;
        Self::describe(&entry)
    }

    fn describe(entry: &SessionEntry) -> Option<ClientInfo> {
        let inner = lock(&entry.inner);
        if inner.removed {
            return None;
        }
        let (connected, inflight, queued) = match &inner.attached {
            Some(cell) => {
                let c = lock(&cell.inner);
                let session = c.conn.session();
                (
                    !c.conn.is_closed(),
                    session.map_or(0, |s| s.inflight_len()),
                    session.map_or(0, |s| s.queued()),
                )
            }
            None => match &inner.offline {
                Some(state) => (false, state.inflight_len(), state.queued()),
                None => (false, 0, 0),
            },
        };
        Some(ClientInfo {
            client_id: entry.client_id.clone(),
            connected,
            connection: inner.connection.clone(),
            clean_session: inner.clean,
            subscriptions: inner
                .subscriptions
                .iter()
                .map(|(filter, qos)| (filter.clone(), *qos))
                .collect(),
            inflight,
            queued,
        })
    }

    /// Up to `limit` sessions whose client id starts with `prefix` and
    /// sorts after `after` (byte order), and whether more follow.
    pub fn clients_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<ClientInfo>, bool) {
        let mut page: Vec<(ByteStr, Arc<SessionEntry>)> = lock(&self.registry)
            .iter()
            .filter(|entry| {
                let id = entry.client_id.as_str();
                id.starts_with(prefix) && after.is_none_or(|a| id > a)
            })
            .map(|entry| (entry.client_id.clone(), entry.clone()))
            .collect();
        let more = page.len() > limit;
        if more {
            page.select_nth_unstable_by(limit, |a, b| a.0.cmp(&b.0));
            page.truncate(limit);
        }
        page.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let clients = page
            .iter()
            .filter_map(|(_, entry)| Self::describe(entry))
            .collect();
        (clients, more)
    }

    /// Closes a client's connection as an administrator (`Kicked`): like
    /// any close without DISCONNECT, its will is published; a persistent
    /// session stays for its return.
    pub fn kick(&self, client_id: &str) -> KickOutcome {
        let Some(entry) = self.entry(client_id) else {
            return KickOutcome::NotFound;
        };
        let inner = lock(&entry.inner);
        if inner.removed {
            return KickOutcome::NotFound;
        }
        let Some(cell) = &inner.attached else {
            return KickOutcome::NotConnected;
        };
        let mut c = lock(&cell.inner);
        if c.conn.is_closed() {
            return KickOutcome::NotConnected;
        }
        c.conn.close(CloseReason::Kicked, self.runtime.now());
        c.wake();
        Metrics::inc(&self.metrics.clients_kicked);
        tracing::info!(client_id, "client kicked through the API");
        KickOutcome::Kicked
    }

    /// Publishes to a topic as a client would: retained handling included,
    /// delivered to every matching subscription. Returns how many sessions
    /// took the message.
    pub fn publish_message(&self, message: Message) -> usize {
        Metrics::inc(&self.metrics.api_publishes);
        self.route(Arc::new(message), &mut Vec::new())
    }

    /// Hands a message to one session only, whatever it subscribed to: to
    /// its connection, or to the queue of a disconnected persistent
    /// session (QoS 1; QoS 0 is not kept offline). Returns whether the
    /// session took it.
    pub fn publish_to_client(
        &self,
        client_id: &str,
        message: Message,
    ) -> Result<bool, UnknownClient> {
        let entry = self.entry(client_id).ok_or(UnknownClient)?;
        if lock(&entry.inner).removed {
            return Err(UnknownClient);
        }
        Metrics::inc(&self.metrics.api_publishes);
        let qos = message.qos;
        let delivery = Delivery {
            message: Arc::new(message),
            qos,
            retain: false,
            id: None,
        };
        Ok(entry.deliver(delivery, &self.metrics))
    }

    /// Up to `limit` retained messages after the topic `after` (in the
    /// index's level order), and whether more follow.
    pub fn retained_page(&self, after: Option<&str>, limit: usize) -> (Vec<Arc<Message>>, bool) {
        let retained = read(&self.retained);
        let mut page: Vec<Arc<Message>> = retained
            .iter_from(after, limit.saturating_add(1))
            .into_iter()
            .map(|(_, message)| message.clone())
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }

    pub fn retained_message(&self, topic: &str) -> Option<Arc<Message>> {
        read(&self.retained).get(topic).cloned()
    }

    /// Removes a retained message; whether there was one.
    pub fn delete_retained(&self, topic: &str) -> bool {
        let mut retained = write(&self.retained);
        self.retained_touched(&ByteStr::from(topic));
        retained.remove(topic).is_some()
    }

    /// Applies `ops`, retried with back-off while storage is unavailable
    /// for up to half the connect timeout (as a CONNECT's load is).
    async fn store(&self, ops: Vec<Op>) -> Result<(), StorageError> {
        self.store_by(ops, None)
            .await
            .map_err(|unstored| unstored.error)
    }

    /// [`Node::store`], not attempted after `write_by` (a publish routed
    /// with the cluster's routes of then, see
    /// `ClusterConfig::route_write_window`), nor while a cluster node has
    /// no lease.
    async fn store_by(&self, ops: Vec<Op>, write_by: Option<Instant>) -> Result<(), Unstored> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut deadline = self.runtime.now() + self.config.connection.connect_timeout / 2;
        if let Some(write_by) = write_by {
            deadline = deadline.min(write_by);
        }
        let incarnation = self.incarnation();
        let mut attempted = false;
        let mut attempt = 0;
        loop {
            let result = match self.may_write_as(incarnation) {
                Ok(()) if write_by.is_none_or(|by| self.runtime.now() <= by) => {
                    attempted = true;
                    self.storage.apply(ops.clone()).await
                }
                Ok(()) => Err(crate::journal::too_late()),
                Err(error) => Err(error),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(error) => {
                    self.storage_failed("api", &error);
                    if !matches!(error, StorageError::Unavailable(_))
                        || self.runtime.now() >= deadline
                    {
                        return Err(Unstored { error, attempted });
                    }
                    attempt += 1;
                    let at = self.runtime.now() + crate::persist::backoff(attempt);
                    crate::runtime::sleep_until(&self.runtime, at).await;
                }
            }
        }
    }

    /// [`Node::publish_message`] through storage on a durable node: the
    /// message is stored for every persistent session it goes to (and as
    /// retained) before it is delivered in memory and before this returns.
    /// On a storage error nothing is delivered.
    /// A point-to-point topic (`aliyun`) goes to its client as
    /// [`Node::publish_to_client_stored`] sends it (0 when unknown).
    pub async fn publish_message_stored(&self, message: Message) -> Result<usize, StorageError> {
        if self.durable
            && let Some(target) = self.direct_target(&message.topic)
        {
            return match self.publish_to_client_stored(&target, message).await {
                Ok(taken) => Ok(usize::from(taken)),
                Err(ClientPublishError::UnknownClient) => {
                    tracing::debug!(
                        client_id = target,
                        "p2p message for an unknown client dropped"
                    );
                    Ok(0)
                }
                Err(ClientPublishError::Storage(error)) => Err(error),
            };
        }
        if !self.durable {
            return Ok(self.publish_message(message));
        }
        Metrics::inc(&self.metrics.api_publishes);
        let (prepared, ops) = self.prepare_route(Arc::new(message), None, &mut Vec::new());
        let write_by = self.route_write_by(&ops);
        match self.store_by(ops, write_by).await {
            Ok(()) => Ok(self.finish_route(prepared)),
            Err(Unstored { error, attempted }) => {
                if attempted {
                    self.route_outcome_unknown(prepared, self.runtime.now());
                }
                Err(error)
            }
        }
    }

    /// [`Node::publish_to_client`] through storage on a durable node: a QoS
    /// 1 message to a persistent session is stored in its queue before it is
    /// handed over and before this returns.
    pub async fn publish_to_client_stored(
        &self,
        client_id: &str,
        message: Message,
    ) -> Result<bool, ClientPublishError> {
        if !self.durable {
            return self
                .publish_to_client(client_id, message)
                .map_err(|UnknownClient| ClientPublishError::UnknownClient);
        }
        if self.cluster_store().is_some() && !self.holds_client(client_id) {
            return self.publish_to_client_in_cluster(client_id, message).await;
        }
        let entry = self
            .entry(client_id)
            .ok_or(ClientPublishError::UnknownClient)?;
        let stored = {
            let inner = lock(&entry.inner);
            if inner.removed {
                return Err(ClientPublishError::UnknownClient);
            }
            inner.stored && !inner.clean
        };
        Metrics::inc(&self.metrics.api_publishes);
        let qos = message.qos;
        let message = Arc::new(message);
        let mut delivery = Delivery {
            message: message.clone(),
            qos,
            retain: false,
            id: None,
        };
        if stored && qos != QoS::AtMostOnce {
            let id = self.next_message_id();
            let ops = vec![
                Op::PutMessage {
                    id,
                    message,
                    at_ms: self.unix_ms(),
                },
                Op::Enqueue {
                    client_id: entry.client_id.clone(),
                    id,
                    qos,
                    retain: false,
                },
            ];
            if let Err(Unstored { error, attempted }) = self.store_by(ops, None).await {
                if attempted {
                    // As for a routing batch (see `route_outcome_unknown`).
                    let prepared = PreparedRoute {
                        message: delivery.message,
                        id,
                        targets: vec![(SessionKey(entry), qos, true)],
                        ticket: None,
                        updates_retained: false,
                    };
                    self.route_outcome_unknown(prepared, self.runtime.now());
                }
                return Err(ClientPublishError::Storage(error));
            }
            delivery = delivery.stored_as(id);
        }
        Ok(entry.deliver(delivery, &self.metrics))
    }

    /// [`Node::delete_retained`] through storage on a durable node: cleared
    /// in storage first, so that a restart does not bring it back.
    pub async fn delete_retained_stored(&self, topic: &str) -> Result<bool, StorageError> {
        if !self.durable {
            return Ok(self.delete_retained(topic));
        }
        if read(&self.retained).get(topic).is_none() {
            return Ok(false);
        }
        self.store(vec![Op::SetRetained {
            topic: ByteStr::from(topic),
            message: None,
        }])
        .await?;
        Ok(self.delete_retained(topic))
    }

    /// Sizes and counters now.
    pub fn stats(&self) -> NodeStats {
        let metrics = &self.metrics;
        let sessions = lock(&self.registry).len() as u64;
        let subscriptions = read(&self.trie).len() as u64;
        let retained = read(&self.retained).len() as u64;
        NodeStats {
            connections: Metrics::get(&metrics.connections_current),
            sessions,
            subscriptions,
            retained,
            messages_received: Metrics::get(&metrics.publishes_received)
                + Metrics::get(&metrics.api_publishes),
            messages_sent: Metrics::get(&metrics.publishes_sent),
            dropped_queue_full: Metrics::get(&metrics.dropped_queue_full),
            dropped_offline_qos0: Metrics::get(&metrics.dropped_offline_qos0),
        }
    }

    /// The runtime's clock, for the API to date connections.
    pub fn now(&self) -> Instant {
        self.runtime.now()
    }
}

/// The node id in a cluster member's name (`<node id>@<incarnation>`).
fn node_id_of(name: &str) -> &str {
    name.rsplit_once('@').map_or(name, |(id, _)| id)
}

/// The cluster side of the API: clients held by other nodes.
impl<R: Runtime> Node<R> {
    /// This node's id (`mqtt.server.node-id`).
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Whether this node holds `client_id`'s session (connected here or
    /// kept here), and did not give it up to another node.
    pub fn holds_client(&self, client_id: &str) -> bool {
        let held = self
            .entry(client_id)
            .is_some_and(|entry| !lock(&entry.inner).removed);
        held && self
            .cluster
            .as_ref()
            .is_none_or(|c| c.forward_of(client_id).is_none())
    }

    /// The client's owner when it is another live node.
    async fn owner_elsewhere(&self, client_id: &str) -> Result<Option<ByteStr>, StorageError> {
        let (Some(cluster), Some(store)) = (self.cluster.as_ref(), self.cluster_store()) else {
            return Ok(None);
        };
        let Some(owner) = store.owner(client_id).await?.map(|o| o.node) else {
            return Ok(None);
        };
        if owner == cluster.name() {
            return Ok(None);
        }
        // The live nodes as of the last heartbeat; a node that joined since
        // is looked up.
        let live = cluster.peers().contains(&owner)
            || (store.members().await?)
                .iter()
                .any(|m| m.node == owner && m.alive.is_some());
        Ok(live.then_some(owner))
    }

    /// Where a client this node does not hold is connected: its owner, if
    /// another live node, when that node's presence records list it.
    /// `None` outside a cluster.
    pub async fn find_remote_client(
        &self,
        client_id: &str,
    ) -> Result<Option<RemoteClient>, StorageError> {
        let Some(store) = self.cluster_store() else {
            return Ok(None);
        };
        let Some(node) = self.owner_elsewhere(client_id).await? else {
            return Ok(None);
        };
        let presence = store.presence(&node).await?;
        Ok(presence
            .into_iter()
            .find(|p| p.client_id == client_id)
            .map(|p| RemoteClient {
                client_id: p.client_id,
                node: ByteStr::from(node_id_of(&node)),
                name: node.clone(),
                since_ms: p.since_ms,
            }))
    }

    /// Whether storage keeps a persistent session for `client_id`.
    async fn stored_session_exists(&self, client_id: &str) -> Result<bool, StorageError> {
        Ok(self.storage.load_session(client_id).await?.is_some())
    }

    /// [`Node::publish_to_client_stored`] for a client this node does not
    /// hold: forwarded to its owner's inbox when another live node owns it
    /// (and has it connected or keeps its persistent session), else queued
    /// in its persistent session in storage (QoS 1). Unknown everywhere:
    /// [`ClientPublishError::UnknownClient`], as on a single node.
    async fn publish_to_client_in_cluster(
        &self,
        client_id: &str,
        message: Message,
    ) -> Result<bool, ClientPublishError> {
        let storage = ClientPublishError::Storage;
        let client = ByteStr::from(client_id);
        let qos = message.qos;
        if let Some(owner) = self.owner_elsewhere(client_id).await.map_err(storage)? {
            let persistent = self
                .stored_session_exists(client_id)
                .await
                .map_err(storage)?;
            let known = persistent
                || self
                    .find_remote_client(client_id)
                    .await
                    .map_err(storage)?
                    .is_some();
            if !known {
                return Err(ClientPublishError::UnknownClient);
            }
            Metrics::inc(&self.metrics.api_publishes);
            let id = self.next_message_id();
            let op = Op::Cluster(ClusterOp::Forward {
                node: owner.clone(),
                entry: BusEntry::Direct {
                    client_id: client,
                    id,
                    message: Arc::new(message),
                    qos,
                },
            });
            let ops = vec![op];
            let write_by = self.route_write_by(&ops);
            self.store_by(ops, write_by)
                .await
                .map_err(|unstored| storage(unstored.error))?;
            tracing::debug!(client_id, node = %owner, "API publish forwarded to the client's node");
            return Ok(true);
        }
        // Nobody else holds it: a persistent session in storage keeps QoS 1
        // for the client's return (QoS 0 is not kept offline).
        if !self
            .stored_session_exists(client_id)
            .await
            .map_err(storage)?
        {
            return Err(ClientPublishError::UnknownClient);
        }
        Metrics::inc(&self.metrics.api_publishes);
        if qos == QoS::AtMostOnce {
            Metrics::inc(&self.metrics.dropped_offline_qos0);
            return Ok(false);
        }
        let id = self.next_message_id();
        let ops = vec![
            Op::PutMessage {
                id,
                message: Arc::new(message),
                at_ms: self.unix_ms(),
            },
            Op::Enqueue {
                client_id: client,
                id,
                qos,
                retain: false,
            },
        ];
        self.store(ops).await.map_err(storage)?;
        Ok(true)
    }

    /// [`Node::kick`] anywhere in the cluster. A client connected to another
    /// node is kicked as a takeover by this node: this node claims its
    /// ownership and asks the owner to let go (the owner closes the
    /// connection, its will is published, its last writes are stored); once
    /// it did, a persistent session is held here, offline, until its client
    /// returns (to any node). Answers once the kick is stored.
    pub async fn kick_in_cluster(
        self: &Arc<Self>,
        client_id: &str,
    ) -> Result<KickOutcome, StorageError> {
        let (Some(cluster), Some(store)) = (self.cluster.as_ref(), self.cluster_store()) else {
            return Ok(self.kick(client_id));
        };
        if self.holds_client(client_id) {
            return Ok(self.kick(client_id));
        }
        let Some(remote) = self.find_remote_client(client_id).await? else {
            return Ok(if self.stored_session_exists(client_id).await? {
                KickOutcome::NotConnected
            } else {
                KickOutcome::NotFound
            });
        };
        let client = ByteStr::from(client_id);
        let claim = store.claim_owner(client_id, &cluster.name()).await?;
        let previous = claim
            .previous
            .map(|o| o.node)
            .filter(|node| *node != cluster.name())
            .unwrap_or(remote.name);
        lock(&cluster.epochs).insert(client.clone(), claim.epoch);
        lock(&cluster.releases).insert(client.clone(), (claim.epoch, false));
        let kick = Op::Cluster(ClusterOp::Forward {
            node: previous.clone(),
            entry: BusEntry::Kick {
                client_id: client.clone(),
                epoch: claim.epoch,
                from: cluster.name(),
            },
        });
        if let Err(error) = self.store(vec![kick]).await {
            let mut releases = lock(&cluster.releases);
            if releases
                .get(client_id)
                .is_some_and(|(e, _)| *e == claim.epoch)
            {
                releases.remove(client_id);
            }
            return Err(error);
        }
        Metrics::inc(&self.metrics.clients_kicked);
        tracing::info!(client_id, node = %previous, "client on another node kicked through the API");
        let node = self.clone();
        self.runtime.spawn(Box::pin(async move {
            node.hold_after_kick(client, claim.epoch, previous).await;
        }));
        Ok(KickOutcome::Kicked)
    }

    /// After a kick of a client on `previous`: waits (up to the takeover
    /// timeout) until `previous` released it, then holds its persistent
    /// session here for routing, as an adopted one, so that messages for it
    /// keep being stored while its client is away.
    async fn hold_after_kick(self: Arc<Self>, client_id: ByteStr, epoch: u64, previous: ByteStr) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let deadline = self.runtime.now() + cluster.config.takeover_timeout;
        let released = loop {
            let listener = cluster.release_event.listen();
            let state = lock(&cluster.releases).get(&client_id).copied();
            match state {
                Some((e, true)) if e == epoch => break true,
                Some((e, false)) if e == epoch => {}
                // Claimed again meanwhile (a CONNECT here): not ours any more.
                _ => return,
            }
            if !cluster.peers().contains(&previous) {
                // It died: its adopter finds this node the owner.
                break true;
            }
            let now = self.runtime.now();
            if now >= deadline || self.is_shutting_down() {
                break false;
            }
            let step = (now + KICK_WAIT_STEP).min(deadline);
            futures_lite::future::or(listener, sleep_until(&self.runtime, step)).await;
        };
        {
            let mut releases = lock(&cluster.releases);
            if releases.get(&client_id).is_some_and(|(e, _)| *e == epoch) {
                releases.remove(&client_id);
            }
        }
        if !released {
            tracing::warn!(client_id = %client_id, node = %previous, "the kicked client's node did not release it in time");
            return;
        }
        let stored = match self.storage.load_session(&client_id).await {
            Ok(stored) => stored,
            Err(error) => {
                self.storage_failed("kick", &error);
                return;
            }
        };
        let Some(stored) = stored else {
            return;
        };
        // A CONNECT here or elsewhere may have claimed it since.
        if lock(&cluster.epochs).get(&client_id) != Some(&epoch) || self.holds_client(&client_id) {
            return;
        }
        let filters: Vec<ByteStr> = stored
            .subscriptions
            .iter()
            .map(|(f, _)| f.clone())
            .collect();
        self.hold_offline_session(&client_id, stored.subscriptions);
        let ops = self.route_ops_for(filters, cluster);
        if let Err(error) = self.store(ops).await {
            // The route refresh writes them again (`written_routes`).
            tracing::warn!(%error, client_id = %client_id, "routes of a kicked session not stored yet");
        }
    }

    /// Connected clients of every live node (presence records), whose
    /// client id starts with `prefix` and sorts after `after`, up to
    /// `limit`, and whether more follow. `None` outside a cluster.
    pub async fn clients_in_cluster(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<(Vec<RemoteClient>, bool)>, StorageError> {
        let Some(store) = self.cluster_store() else {
            return Ok(None);
        };
        let members = store.members().await?;
        // One record per client id: the newest claim wins.
        let mut clients: HashMap<ByteStr, (u64, RemoteClient)> = HashMap::new();
        for member in members.into_iter().filter(|m| m.alive.is_some()) {
            for Presence {
                client_id,
                epoch,
                since_ms,
                ..
            } in store.presence(&member.node).await?
            {
                if !client_id.starts_with(prefix) || after.is_some_and(|a| client_id.as_str() <= a)
                {
                    continue;
                }
                if clients.get(&client_id).is_some_and(|(e, _)| *e >= epoch) {
                    continue;
                }
                let remote = RemoteClient {
                    client_id: client_id.clone(),
                    node: ByteStr::from(node_id_of(&member.node)),
                    name: member.node.clone(),
                    since_ms,
                };
                clients.insert(client_id, (epoch, remote));
            }
        }
        let mut page: Vec<RemoteClient> = clients.into_values().map(|(_, c)| c).collect();
        page.sort_unstable_by(|a, b| a.client_id.cmp(&b.client_id));
        let more = page.len() > limit;
        page.truncate(limit);
        Ok(Some((page, more)))
    }

    /// Every node of the cluster with its liveness, routes and connected
    /// clients. `None` outside a cluster.
    pub async fn cluster_info(&self) -> Result<Option<ClusterInfo>, StorageError> {
        let (Some(cluster), Some(store)) = (self.cluster.as_ref(), self.cluster_store()) else {
            return Ok(None);
        };
        let own = cluster.name();
        let mut members = store.members().await?;
        members.sort_unstable_by(|a, b| a.node.cmp(&b.node));
        let mut infos = Vec::with_capacity(members.len());
        for member in members {
            let clients = store.presence(&member.node).await?.len();
            let routes = if member.node == own {
                lock(&cluster.written_routes).written.len()
            } else {
                read(&cluster.routes).route_count(&member.node)
            };
            infos.push(MemberInfo {
                alive: member.alive.is_some(),
                incarnation: member.alive.unwrap_or(member.incarnation),
                node: ByteStr::from(node_id_of(&member.node)),
                routes,
                clients,
            });
        }
        Ok(Some(ClusterInfo {
            node: ByteStr::from(self.node_id()),
            members: infos,
        }))
    }

    /// The live nodes of the cluster (this one included), as the last
    /// heartbeat read them; `None` outside a cluster.
    pub fn live_nodes(&self) -> Option<usize> {
        let cluster = self.cluster.as_ref()?;
        let live = read(&cluster.live);
        let own = usize::from(!live.contains(&cluster.name()));
        Some(live.len() + own)
    }

    /// QoS 0 messages not sent to other nodes because the bus queue was
    /// full (0 outside a cluster).
    pub fn bus_dropped(&self) -> u64 {
        self.cluster.as_ref().map_or(0, |c| {
            c.dropped_bus.load(std::sync::atomic::Ordering::Relaxed)
        })
    }
}
