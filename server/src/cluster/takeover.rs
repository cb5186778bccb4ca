//! One owner per client id across the cluster.
//!
//! A CONNECT claims the client id (a new, higher epoch). When another node
//! owned it, that node is kicked through its inbox, and the CONNACK waits
//! until it answers `Released`: it closed the old connection (publishing
//! its will as a takeover does), stored that connection's last writes, and
//! dropped the session from memory, so what the new node loads from
//! storage is complete. Deliveries its routes still match for the client
//! are forwarded to the new owner for `forward_grace`, the time other
//! nodes' route caches may need to learn the new owner's routes.
//!
//! A previous owner that is not alive is not waited for: its lease ended
//! before its heartbeat expired, so it writes nothing any more (its
//! adopter, or the node itself when it returns, still reads the kick). A
//! previous owner that stays alive and silent for `takeover_timeout` makes
//! the CONNECT fail with CONNACK 3 rather than risk two live connections.
//! Two nodes claiming at once: the higher epoch wins; a node kicked with a
//! lower epoch than its own kicks back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use easy_mqtt_core::ByteStr;
use easy_mqtt_core::cluster::{BusEntry, ClusterOp, Presence};
use easy_mqtt_core::session::{CloseReason, Message};
use easy_mqtt_core::storage::{BoxFuture, Op, StorageError};

use super::{Forward, apply_until_stored};
use crate::metrics::Metrics;
use crate::node::{Node, write};
use crate::runtime::{Runtime, sleep_until};
use crate::sessions::lock;

/// How often a waiting takeover looks at the previous owner's liveness.
const WAIT_STEP: Duration = Duration::from_millis(100);

fn kick(node: ByteStr, client_id: ByteStr, epoch: u64, from: ByteStr) -> Op {
    Op::Cluster(ClusterOp::Forward {
        node,
        entry: BusEntry::Kick {
            client_id,
            epoch,
            from,
        },
    })
}

impl<R: Runtime> Node<R> {
    /// The cluster step of a CONNECT: claims `client_id`, makes the
    /// previous owner let go, and stores the presence (with the will).
    /// Answers the epoch, or `None` when this node is not in a cluster.
    pub fn claim_for_connect(
        self: &Arc<Self>,
        client_id: ByteStr,
        will: Option<Arc<Message>>,
    ) -> BoxFuture<'static, Result<Option<u64>, StorageError>> {
        let node = self.clone();
        Box::pin(async move {
            let (Some(cluster), Some(store)) = (node.cluster.as_ref(), node.storage.cluster())
            else {
                return Ok(None);
            };
            if client_id.is_empty() {
                return Ok(None);
            }
            // Storage may be coming back: wait for the lease (and retry the
            // claim) for up to half the connect timeout, like a load.
            let deadline = node.runtime.now() + node.config.connection.connect_timeout / 2;
            let mut attempt = 0;
            let claim = loop {
                let now = node.runtime.now();
                let result = if cluster.accepting(now) {
                    store.claim_owner(&client_id, &cluster.name()).await
                } else {
                    Err(StorageError::Unavailable(
                        "this node holds no cluster lease".into(),
                    ))
                };
                match result {
                    Err(StorageError::Unavailable(_)) if node.runtime.now() < deadline => {
                        attempt += 1;
                        let step = crate::persist::backoff(attempt).min(WAIT_STEP);
                        sleep_until(&node.runtime, node.runtime.now() + step).await;
                    }
                    result => break result?,
                }
            };
            let epoch = claim.epoch;
            lock(&cluster.epochs).insert(client_id.clone(), epoch);
            if write(&cluster.forwards).remove(&client_id).is_some() {
                cluster.forward_count.fetch_sub(1, Ordering::AcqRel);
            }
            let mut ops = Vec::with_capacity(2);
            let mut wait_for = None;
            if let Some(previous) = claim.previous
                && previous.node != cluster.name()
            {
                Metrics::inc(&node.metrics.cluster_takeovers);
                let config = cluster.config;
                lock(&cluster.handovers).insert(
                    client_id.clone(),
                    super::Handover {
                        until: node.runtime.now()
                            + config.takeover_timeout
                            + config.forward_grace
                            + config.route_refresh,
                        delivered: super::RecentIds::default(),
                    },
                );
                ops.push(kick(
                    previous.node.clone(),
                    client_id.clone(),
                    epoch,
                    cluster.name(),
                ));
                if cluster.peers().contains(&previous.node) {
                    lock(&cluster.releases).insert(client_id.clone(), (epoch, false));
                    wait_for = Some(previous.node);
                }
            }
            ops.push(Op::Cluster(ClusterOp::SetPresence {
                node: cluster.name(),
                presence: Presence {
                    client_id: client_id.clone(),
                    epoch,
                    will,
                    since_ms: u64::try_from(node.runtime.unix_time().as_millis()).unwrap_or(0),
                },
            }));
            let stored = node.storage.apply(ops).await;
            let waited = match (stored, wait_for) {
                (Err(error), _) => Err(error),
                (Ok(()), None) => Ok(()),
                (Ok(()), Some(previous)) => node.wait_release(&client_id, epoch, &previous).await,
            };
            lock(&cluster.releases).remove(&client_id);
            waited?;
            Ok(Some(epoch))
        })
    }

    /// Waits until `previous` released `client_id` (or died).
    async fn wait_release(
        &self,
        client_id: &ByteStr,
        epoch: u64,
        previous: &ByteStr,
    ) -> Result<(), StorageError> {
        let Some(cluster) = self.cluster.as_ref() else {
            return Ok(());
        };
        let deadline = self.runtime.now() + cluster.config.takeover_timeout;
        loop {
            let listener = cluster.release_event.listen();
            let released = lock(&cluster.releases)
                .get(client_id)
                .is_some_and(|(e, released)| *e == epoch && *released);
            if released || !cluster.peers().contains(previous) {
                return Ok(());
            }
            if lock(&cluster.epochs).get(client_id) != Some(&epoch) {
                return Err(StorageError::Unavailable(format!(
                    "{client_id} was claimed again meanwhile"
                )));
            }
            let now = self.runtime.now();
            if now >= deadline {
                tracing::warn!(
                    client_id = %client_id,
                    previous = %previous,
                    "the previous owner did not release the session in time"
                );
                return Err(StorageError::Unavailable(format!(
                    "node {previous} did not release {client_id}"
                )));
            }
            let step = (now + WAIT_STEP).min(deadline);
            futures_lite::future::or(listener, sleep_until(&self.runtime, step)).await;
        }
    }

    /// Records what a taken-over session held when it loaded, so that the
    /// same messages arriving again through the bus are not delivered twice.
    pub(crate) fn note_loaded(
        &self,
        client_id: &ByteStr,
        stored: &easy_mqtt_core::storage::StoredSession,
    ) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        if let Some(handover) = lock(&cluster.handovers).get_mut(client_id) {
            let ids = (stored.queue.iter().map(|d| d.id))
                .chain(stored.inflight.iter().map(|m| m.delivery.id));
            for id in ids {
                handover.delivered.insert(id);
            }
        }
    }

    /// Whether `epoch` is still the one this node holds `client_id` under
    /// (a kick may have come while its CONNECT loaded).
    pub fn holds_epoch(&self, client_id: &str, epoch: Option<u64>) -> bool {
        match (self.cluster.as_ref(), epoch) {
            (Some(cluster), Some(epoch)) => lock(&cluster.epochs).get(client_id) == Some(&epoch),
            _ => true,
        }
    }

    /// The answer to a kick: lets `client_id` go to `to` (or kicks back
    /// when this node claimed it later).
    pub(crate) async fn release(self: Arc<Self>, client_id: ByteStr, epoch: u64, to: ByteStr) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        if to == cluster.name() {
            return;
        }
        let mine = lock(&cluster.epochs).get(&client_id).copied();
        if let Some(mine) = mine
            && mine > epoch
        {
            let back = kick(to, client_id, mine, cluster.name());
            apply_until_stored(&self, vec![back]).await;
            return;
        }
        lock(&cluster.epochs).remove(&client_id);
        // A kick read late (this node was cut off) names an owner that may
        // have moved on since: forward to the owner of record.
        let target = match self.storage.cluster() {
            Some(store) => match store.owner(&client_id).await {
                Ok(Some(owner)) if owner.node != cluster.name() && owner.epoch >= epoch => {
                    owner.node
                }
                _ => to.clone(),
            },
            None => to.clone(),
        };
        let now = self.runtime.now();
        {
            let mut forwards = write(&cluster.forwards);
            let previous = forwards.insert(
                client_id.clone(),
                Forward {
                    node: target,
                    until: now + cluster.config.forward_grace,
                },
            );
            if previous.is_none() {
                cluster.forward_count.fetch_add(1, Ordering::AcqRel);
            }
        }
        // Routes that matched the session before it was marked given up may
        // still write to it: they finish first, so the new owner loads them.
        let horizon = cluster.route_horizon();
        let deadline = now + cluster.config.takeover_timeout;
        while let Err(listener) = cluster.routes_before(horizon) {
            if self.runtime.now() >= deadline {
                break;
            }
            let step = (self.runtime.now() + WAIT_STEP).min(deadline);
            futures_lite::future::or(listener, sleep_until(&self.runtime, step)).await;
        }
        let entry = lock(&self.registry).get(&client_id).cloned();
        if let Some(entry) = &entry {
            let cell = lock(&entry.inner).attached.clone();
            if let Some(cell) = cell {
                let mut c = lock(&cell.inner);
                c.conn.close(CloseReason::TakenOver, now);
                c.wake();
            }
            // The driver detaches once its writes are stored.
            while lock(&entry.inner).attached.is_some() && self.runtime.now() < deadline {
                sleep_until(&self.runtime, self.runtime.now() + Duration::from_millis(5)).await;
            }
            let mut inner = lock(&entry.inner);
            // Storage holds the session now; the new owner loads it.
            inner.offline = None;
            inner.stored_queue = None;
        }
        tracing::info!(client_id = %client_id, to = %to, epoch, "session released to another node");
        let ops = vec![
            Op::Cluster(ClusterOp::ClearPresence {
                node: cluster.name(),
                client_id: client_id.clone(),
            }),
            Op::Cluster(ClusterOp::Forward {
                node: to,
                entry: BusEntry::Released { client_id, epoch },
            }),
        ];
        apply_until_stored(&self, ops).await;
    }

    /// A previous owner answered a kick.
    pub(crate) fn released(&self, client_id: &ByteStr, epoch: u64) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        if let Some((e, released)) = lock(&cluster.releases).get_mut(client_id)
            && *e == epoch
        {
            *released = true;
        }
        cluster.release_event.notify(usize::MAX);
    }

    /// Ends the forwarding of clients given up long enough ago: their
    /// subscriptions leave the trie and their entries the registry.
    pub(crate) fn expire_forwards(&self, now: std::time::Instant) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        if cluster.forward_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let expired: Vec<ByteStr> = {
            let mut forwards = write(&cluster.forwards);
            let expired: Vec<ByteStr> = forwards
                .iter()
                .filter(|(_, f)| f.until <= now)
                .map(|(client, _)| client.clone())
                .collect();
            for client in &expired {
                forwards.remove(client);
            }
            cluster
                .forward_count
                .fetch_sub(expired.len(), Ordering::AcqRel);
            expired
        };
        for client_id in expired {
            self.forget_session(&client_id);
        }
    }

    /// Removes a session this node no longer holds (not attached, not
    /// loading) from the registry and the trie.
    pub(crate) fn forget_session(&self, client_id: &ByteStr) {
        let Some(entry) = lock(&self.registry).get(client_id).cloned() else {
            return;
        };
        let mut inner = lock(&entry.inner);
        if inner.attached.is_some() || inner.loading.is_some() || inner.offline.is_some() {
            return;
        }
        if !inner.subscriptions.is_empty() {
            let key = crate::sessions::SessionKey(entry.clone());
            let mut trie = write(&self.trie);
            for filter in std::mem::take(&mut inner.subscriptions).into_keys() {
                trie.remove(&filter, &key);
            }
        }
        inner.removed = true;
        drop(inner);
        let mut registry = lock(&self.registry);
        if registry
            .get(client_id)
            .is_some_and(|current| Arc::ptr_eq(current, &entry))
        {
            registry.remove(client_id);
            Metrics::dec(&self.metrics.sessions_current);
        }
    }
}
