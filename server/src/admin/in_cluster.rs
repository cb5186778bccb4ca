//! The cluster side of the API: clients held by other nodes (their
//! details, a one-to-one publish to them, a kick), and the members.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use easy_mqtt_core::cluster::{BusEntry, ClusterOp, Presence};
use easy_mqtt_core::session::Message;
use easy_mqtt_core::storage::{Op, StorageError};
use easy_mqtt_core::{ByteStr, QoS};

use super::{ClientPublishError, KickOutcome};
use crate::metrics::Metrics;
use crate::node::{Node, read};
use crate::runtime::{Runtime, sleep_until};
use crate::sessions::lock;

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
    pub(super) async fn publish_to_client_in_cluster(
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
            let op = Op::from(ClusterOp::Forward {
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
        let kick = Op::from(ClusterOp::Forward {
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
        let ops = self.hold_loaded_offline(&client_id, stored.subscriptions, cluster);
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
