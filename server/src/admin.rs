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

mod in_cluster;

pub use in_cluster::{ClusterInfo, MemberInfo, RemoteClient};

use std::sync::Arc;
use std::time::Instant;

use easy_mqtt_core::session::{CloseReason, Delivery, Message};
use easy_mqtt_core::storage::{Op, StorageError};
use easy_mqtt_core::{ByteStr, QoS};

use crate::metrics::Metrics;
use crate::node::{Node, read, write};
use crate::persist::PreparedRoute;
use crate::runtime::Runtime;
use crate::sessions::{ConnectedInfo, SessionEntry, SessionKey, lock};

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
                        retained_peers: None,
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
    /// in storage first, so that a restart does not bring it back; in a
    /// cluster, the other nodes then read the retained state again (they
    /// keep every retained message too).
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
        self.tell_peers_read_retained();
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
