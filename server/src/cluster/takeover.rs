//! One owner per client id across the cluster.
//!
//! A CONNECT claims the client id (a new, higher epoch). The claim does not
//! end the previous owner's *responsibility*: messages for the client may
//! still sit in that node's inbox, ahead of anything a kick could overtake.
//! So the claimant kicks every node still responsible for the client (the
//! previous owner, and any earlier claimant that never let go) through its
//! inbox, and the CONNACK waits until none is left. A node answers a kick
//! once it has served its inbox up to it: it closes the old connection
//! (publishing its will as a takeover does), stores that connection's last
//! writes, drops the session from memory and, in one batch, disowns the
//! client, acknowledges the kick and answers `Released`. What the new node
//! loads from storage is then complete. Deliveries its routes still match
//! for the client are forwarded to the new owner for `forward_grace`, the
//! time other nodes' route caches may need to learn the new owner's routes.
//!
//! A responsible node that died answers through its adopter, which serves
//! the dead node's inbox (kicks included) on its behalf. A responsible node
//! that stays alive and silent for `takeover_timeout` makes the CONNECT fail
//! with CONNACK 3 rather than risk two live connections; the claim stands,
//! and this node takes the session over (offline) once the others let go,
//! so it is never left without a holder.
//! Two nodes claiming at once: the higher epoch wins; a node kicked with a
//! lower epoch than its own kicks back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use easy_mqtt_core::ByteStr;
use easy_mqtt_core::cluster::{BusEntry, ClusterOp, InboxId, Presence};
use easy_mqtt_core::session::{CloseReason, Message};
use easy_mqtt_core::storage::{BoxFuture, MessageId, Op, StorageError};

use super::{apply_until_stored, apply_until_stored_as};
use crate::metrics::Metrics;
use crate::node::{Node, write};
use crate::runtime::{Runtime, sleep_until};
use crate::sessions::lock;

/// How often a release looks at the routes it waits for.
const WAIT_STEP: Duration = Duration::from_millis(100);
/// How often a waiting takeover reads which nodes are still responsible,
/// when none answered meanwhile.
const RECHECK: Duration = Duration::from_millis(500);
/// How often a claim or release waits for the other one of the same client.
const GUARD_STEP: Duration = Duration::from_millis(5);

/// How a wait for the other responsible nodes ended.
enum Waited {
    Released,
    /// This node's claim was superseded by a newer one.
    Superseded,
    /// Still responsible when the time ran out.
    TimedOut(Vec<ByteStr>),
}

/// Held while this node claims or releases one client id.
pub(crate) struct OwnershipGuard {
    busy: Arc<std::sync::Mutex<std::collections::HashSet<ByteStr>>>,
    client_id: ByteStr,
}

impl Drop for OwnershipGuard {
    fn drop(&mut self) {
        lock(&self.busy).remove(&self.client_id);
    }
}

pub(super) fn kick(node: ByteStr, client_id: ByteStr, epoch: u64, from: ByteStr) -> Op {
    Op::from(ClusterOp::Forward {
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
                // Not while this node releases the same client (its disown
                // must not land after this claim).
                // Held for the claim only, not while waiting to retry: a
                // release waiting for it is what this node may need before
                // it serves again.
                let result = if !cluster.accepting(now) {
                    Err(StorageError::Unavailable(
                        "this node holds no cluster lease".into(),
                    ))
                } else if let Some(_guard) = node.try_ownership_guard(&client_id) {
                    store.claim_owner(&client_id, &cluster.name()).await
                } else {
                    Err(StorageError::Unavailable(format!(
                        "{client_id} is being released here"
                    )))
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
            cluster.end_forward(&client_id);
            let own = cluster.name();
            let mut holders = store.responsible(&client_id).await?;
            holders.retain(|holder| *holder != own);
            let mut ops = Vec::with_capacity(holders.len() + 1);
            if !holders.is_empty() {
                Metrics::inc(&node.metrics.cluster_takeovers);
                let config = cluster.config;
                // What this node still holds for the client (its session
                // stayed here while another node claimed it and let it
                // go again): a copy of one of those coming through the bus
                // is one too many, even once it has been delivered.
                let mut delivered = super::RecentIds::default();
                for id in node.held_ids(&client_id) {
                    delivered.insert(id);
                }
                cluster.watch_handover(
                    client_id.clone(),
                    super::Handover {
                        until: node.runtime.now()
                            + config.takeover_timeout
                            + config.forward_grace
                            + config.route_refresh,
                        delivered,
                    },
                );
                lock(&cluster.releases).insert(client_id.clone(), (epoch, false));
                for holder in &holders {
                    ops.push(kick(holder.clone(), client_id.clone(), epoch, own.clone()));
                }
            }
            ops.push(Op::from(ClusterOp::SetPresence {
                node: own,
                presence: Presence {
                    client_id: client_id.clone(),
                    epoch,
                    will,
                    since_ms: u64::try_from(node.runtime.unix_time().as_millis()).unwrap_or(0),
                },
            }));
            let stored = node.storage.apply(ops).await;
            let waited = match stored {
                Err(error) => Err(error),
                Ok(()) if holders.is_empty() => Ok(()),
                Ok(()) => {
                    let deadline = node.runtime.now() + cluster.config.takeover_timeout;
                    match node.wait_release(&client_id, epoch, deadline, false).await {
                        Waited::Released => Ok(()),
                        Waited::Superseded => Err(StorageError::Unavailable(format!(
                            "{client_id} was claimed again meanwhile"
                        ))),
                        // The claim stands: the CONNECT fails, and its
                        // driver's `connect_abandoned` takes the session
                        // over once the others let go.
                        Waited::TimedOut(holders) => Err(StorageError::Unavailable(format!(
                            "{holders:?} did not release {client_id}"
                        ))),
                    }
                }
            };
            if waited.is_ok() || !node.holds_epoch(&client_id, Some(epoch)) {
                lock(&cluster.releases).remove(&client_id);
            }
            waited?;
            Ok(Some(epoch))
        })
    }
    /// Waits until no other node is responsible for `client_id`, re-reading
    /// storage when one answered and every `RECHECK` (and at once with
    /// `check_now`: the others may have let go already).
    async fn wait_release(
        &self,
        client_id: &ByteStr,
        epoch: u64,
        deadline: std::time::Instant,
        check_now: bool,
    ) -> Waited {
        let (Some(cluster), Some(store)) = (self.cluster.as_ref(), self.storage.cluster()) else {
            return Waited::Released;
        };
        let mut next_check = self.runtime.now();
        if !check_now {
            next_check += RECHECK;
        }
        let mut holders: Vec<ByteStr> = Vec::new();
        loop {
            let listener = cluster.release_event.listen();
            let answered = lock(&cluster.releases)
                .get_mut(client_id)
                .filter(|(e, _)| *e == epoch)
                .is_some_and(|(_, released)| std::mem::take(released));
            let now = self.runtime.now();
            if answered || now >= next_check {
                next_check = now + RECHECK;
                match store.responsible(client_id).await {
                    Ok(mut found) => {
                        let own = cluster.name();
                        found.retain(|holder| *holder != own);
                        if found.is_empty() {
                            // What they forwarded here before letting go
                            // sits in this node's inbox: served first.
                            return if self.inbox_barrier(deadline).await {
                                Waited::Released
                            } else {
                                Waited::TimedOut(Vec::new())
                            };
                        }
                        holders = found;
                    }
                    Err(error) => self.storage_failed("responsible", &error),
                }
            }
            if lock(&cluster.epochs).get(client_id) != Some(&epoch) {
                return Waited::Superseded;
            }
            let now = self.runtime.now();
            if now >= deadline {
                tracing::warn!(
                    client_id = %client_id,
                    ?holders,
                    "the previous owner did not release the session in time"
                );
                return Waited::TimedOut(holders);
            }
            let step = next_check.min(deadline);
            futures_lite::future::or(listener, sleep_until(&self.runtime, step)).await;
        }
    }

    /// Waits until this node's inbox was read through by a round that
    /// started after this call, and what it held is stored; false at
    /// `deadline`.
    async fn inbox_barrier(&self, deadline: std::time::Instant) -> bool {
        let Some(cluster) = self.cluster.as_ref() else {
            return true;
        };
        let target = cluster.inbox_round.load(Ordering::Acquire) + 1;
        cluster.barrier_waiters.fetch_add(1, Ordering::AcqRel);
        let reached = loop {
            let listener = cluster.inbox_event.listen();
            if cluster.inbox_caught_up.load(Ordering::Acquire) >= target {
                break true;
            }
            if self.runtime.now() >= deadline || self.is_shutting_down() {
                break false;
            }
            futures_lite::future::or(listener, sleep_until(&self.runtime, deadline)).await;
        };
        cluster.barrier_waiters.fetch_sub(1, Ordering::AcqRel);
        reached
    }

    /// A CONNECT that claimed `client_id` here ended without being
    /// accepted (its connection closed while it loaded, or the load
    /// failed). The claim stands: this node is the owner of record, and the
    /// node it took the client from stopped routing for it. So it holds
    /// the persistent session offline, or what is published for the client
    /// until its next CONNECT would reach nobody.
    pub fn connect_abandoned(self: &Arc<Self>, client_id: &ByteStr) {
        self.end_load(client_id);
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let Some(epoch) = lock(&cluster.epochs).get(client_id).copied() else {
            return;
        };
        self.runtime.spawn(Box::pin(
            self.clone().hold_when_released(client_id.clone(), epoch),
        ));
    }

    /// For an abandoned CONNECT: once the other nodes let go of
    /// `client_id`, holds its persistent session offline here (its owner
    /// of record), unless a newer claim or connection came meanwhile.
    async fn hold_when_released(self: Arc<Self>, client_id: ByteStr, epoch: u64) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let mut attempt = 0u32;
        loop {
            if self.is_shutting_down() || !self.holds_epoch(&client_id, Some(epoch)) {
                lock(&cluster.releases).remove(&client_id);
                return;
            }
            let deadline = self.runtime.now() + cluster.config.takeover_timeout;
            match self.wait_release(&client_id, epoch, deadline, true).await {
                Waited::Released => break,
                Waited::TimedOut(_) => {}
                Waited::Superseded => {
                    lock(&cluster.releases).remove(&client_id);
                    return;
                }
            }
        }
        lock(&cluster.releases).remove(&client_id);
        let busy = lock(&self.registry).get(&client_id).is_some_and(|entry| {
            let inner = lock(&entry.inner);
            inner.attached.is_some() || inner.is_loading() || inner.stored
        });
        if busy {
            return;
        }
        let stored = loop {
            match self.storage.load_session(&client_id).await {
                Ok(stored) => break stored,
                Err(error) => {
                    self.storage_failed("load a released session", &error);
                    if !self.holds_epoch(&client_id, Some(epoch)) || self.is_shutting_down() {
                        return;
                    }
                    attempt = attempt.saturating_add(1);
                    let at = self.runtime.now() + crate::persist::backoff(attempt);
                    sleep_until(&self.runtime, at).await;
                }
            }
        };
        let Some(stored) = stored else {
            return;
        };
        if !self.holds_epoch(&client_id, Some(epoch)) {
            return;
        }
        tracing::info!(client_id = %client_id, epoch, "holding a released session offline");
        let ops = self.hold_loaded_offline(&client_id, stored.subscriptions, cluster);
        if !ops.is_empty() {
            apply_until_stored(&self, ops).await;
        }
    }

    /// The ids of the messages this node holds in memory for `client_id`,
    /// queued or in flight.
    fn held_ids(&self, client_id: &ByteStr) -> Vec<MessageId> {
        let Some(entry) = lock(&self.registry).get(client_id).cloned() else {
            return Vec::new();
        };
        let inner = lock(&entry.inner);
        let ids = |state: &easy_mqtt_core::session::SessionState| -> Vec<MessageId> {
            (state.queue())
                .chain(state.inflight().map(|m| &m.delivery))
                .filter_map(|delivery| delivery.id)
                .collect()
        };
        if let Some(offline) = &inner.offline {
            return ids(offline);
        }
        if let Some(cell) = &inner.attached
            && let Some(session) = lock(&cell.inner).conn.session()
        {
            return ids(session);
        }
        Vec::new()
    }

    /// Records what a taken-over session held when it loaded, so that the
    /// same messages arriving again through the bus are not delivered twice.
    pub(crate) fn note_loaded(
        &self,
        client_id: &ByteStr,
        stored: &easy_mqtt_core::storage::StoredSession,
        received: std::collections::HashSet<MessageId>,
    ) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        cluster.with_handover(client_id, |handover| {
            let ids = (stored.queue.iter().map(|d| d.id))
                .chain(stored.inflight.iter().map(|m| m.delivery.id))
                .chain(received);
            for id in ids {
                handover.delivered.insert(id);
            }
        });
    }

    /// Whether `epoch` is still the one this node holds `client_id` under
    /// (a kick may have come while its CONNECT loaded).
    pub fn holds_epoch(&self, client_id: &str, epoch: Option<u64>) -> bool {
        match (self.cluster.as_ref(), epoch) {
            (Some(cluster), Some(epoch)) => lock(&cluster.epochs).get(client_id) == Some(&epoch),
            _ => true,
        }
    }

    /// The answer to a kick read from `inbox` (this node's, or a dead
    /// node's it adopted, on whose behalf it answers): lets `client_id` go
    /// to `to` (or kicks back when this node claimed it later), then
    /// disowns it for `inbox`'s node and acknowledges the kick, in the
    /// batch that answers `Released`. `incarnation` is this node's when it
    /// read the kick: nothing is written once it is another (see
    /// `apply_until_stored_as`).
    pub(crate) async fn release(
        self: Arc<Self>,
        client_id: ByteStr,
        epoch: u64,
        to: ByteStr,
        inbox: ByteStr,
        entry: InboxId,
        incarnation: Option<u64>,
    ) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        // One release of a client at a time, and none while this node claims
        // it: a disown stored after a newer claim of this node would erase
        // that claim's responsibility.
        let _guard = self.ownership_guard(&client_id).await;
        if self.incarnation() != incarnation {
            // Read by an incarnation since fenced: the entries ahead of the
            // kick may never have been stored. The kick is still in the
            // inbox, unacknowledged, for the adopter to answer.
            return;
        }
        let own = cluster.name();
        let ack = Op::from(ClusterOp::InboxAck {
            node: inbox.clone(),
            entry,
        });
        let answer = |inbox: &ByteStr, to: ByteStr, client_id: &ByteStr| {
            vec![
                Op::from(ClusterOp::ClearPresence {
                    node: inbox.clone(),
                    client_id: client_id.clone(),
                }),
                Op::from(ClusterOp::Disown {
                    node: inbox.clone(),
                    client_id: client_id.clone(),
                }),
                Op::from(ClusterOp::Forward {
                    node: to,
                    entry: BusEntry::Released {
                        client_id: client_id.clone(),
                        epoch,
                    },
                }),
            ]
        };
        if to == own {
            // Routes that matched the session before the kick was read (those
            // of the inbox entries ahead of it included) may still write to it:
            // they finish first, so that whoever loads it next sees them.
            let horizon = cluster.route_horizon();
            self.routes_done_before(cluster, horizon, &client_id).await;
            // This node's own claim, read from a dead node's inbox it
            // serves: everything before the kick was served, so the dead
            // node lets go; the session itself stays (it is this node's).
            let mut ops = Vec::new();
            if inbox != own {
                ops = answer(&inbox, to, &client_id);
                ops.remove(0);
            }
            ops.push(ack);
            apply_until_stored_as(&self, incarnation, ops).await;
            return;
        }
        let mine = lock(&cluster.epochs).get(&client_id).copied();
        if let Some(mine) = mine
            && mine > epoch
        {
            let back = kick(to, client_id, mine, own);
            apply_until_stored_as(&self, incarnation, vec![back, ack]).await;
            return;
        }
        lock(&cluster.epochs).remove(&client_id);
        // A kick read late (this node was cut off) names an owner that may
        // have moved on since: forward to the owner of record.
        let target = match self.storage.cluster() {
            Some(store) => match store.owner(&client_id).await {
                Ok(Some(owner)) if owner.node != own && owner.epoch >= epoch => owner.node,
                _ => to.clone(),
            },
            None => to.clone(),
        };
        let now = self.runtime.now();
        cluster.give_up(&client_id, &target, now);
        // Routes that matched the session before it was marked given up may
        // still write to it: they finish first, so the new owner loads them.
        let horizon = cluster.route_horizon();
        self.routes_done_before(cluster, horizon, &client_id).await;
        let deadline = self.runtime.now() + cluster.config.takeover_timeout;
        let entry = lock(&self.registry).get(&client_id).cloned();
        if let Some(entry) = &entry {
            let cell = lock(&entry.inner).attached.clone();
            if let Some(cell) = cell {
                cell.close(CloseReason::TakenOver, now);
            }
            // The driver detaches once its writes are stored.
            while lock(&entry.inner).attached.is_some() && self.runtime.now() < deadline {
                sleep_until(&self.runtime, self.runtime.now() + Duration::from_millis(5)).await;
            }
            let mut inner = lock(&entry.inner);
            // Storage holds the session now; the new owner loads it.
            inner.offline = None;
            inner.set_stored_queue(None);
        }
        tracing::info!(client_id = %client_id, to = %to, epoch, for_node = %inbox, "session released to another node");
        let mut ops = answer(&inbox, to.clone(), &client_id);
        // Should this node die while it still forwards, its adopter
        // forwards what its inbox held for the client instead. The adopter
        // comes only once the heartbeat expired (up to a node time to live
        // after the death, plus its own heartbeat round): the record
        // outlives the grace by that much, or a node dying within the grace
        // would leave what its inbox holds for the client to nobody.
        let config = cluster.config;
        let ttl = config.forward_grace + config.node_ttl + config.heartbeat_interval * 2;
        // Released on behalf of a dead node this one adopted: the session's
        // routes were this node's, so messages for it also reach this
        // node's own inbox, which its own adopter serves.
        let mut spaces = vec![inbox.clone()];
        if inbox != own {
            spaces.push(own.clone());
        }
        for space in spaces {
            ops.push(Op::from(ClusterOp::PutRecord {
                space: super::forwards_space(&space),
                key: client_id.clone(),
                value: bytes::Bytes::copy_from_slice(to.as_bytes()),
                ttl: Some(ttl),
            }));
        }
        ops.push(ack);
        apply_until_stored_as(&self, incarnation, ops).await;
    }

    /// Waits until every route started before `horizon` is stored or
    /// failed: until then one of them may still write to a session this
    /// node lets go, and the next owner must load what it wrote. Not
    /// bounded by the takeover timeout: let go past it, a route stored
    /// later (its node cut off from storage for longer, then back) wrote to
    /// a session another node already held in memory, which never saw it
    /// (simulator seed 117597: a QoS 2 message acknowledged to its
    /// publisher and never delivered). A route ends once its connection's
    /// batches are stored or given up (each after the connect timeout of
    /// failing), or when the node is declared dead (its writes are then
    /// fenced).
    async fn routes_done_before(
        &self,
        cluster: &super::ClusterState,
        horizon: u64,
        client_id: &ByteStr,
    ) {
        let warn_at = self.runtime.now() + cluster.config.takeover_timeout;
        let mut warned = false;
        while let Err(listener) = cluster.routes_before(horizon) {
            let now = self.runtime.now();
            if !warned && now >= warn_at {
                tracing::warn!(client_id = %client_id, "a release waits for routes still being stored");
                warned = true;
            }
            futures_lite::future::or(listener, sleep_until(&self.runtime, now + WAIT_STEP)).await;
        }
    }

    /// Serializes this node's claims and releases of one client id.
    pub(crate) async fn ownership_guard(&self, client_id: &ByteStr) -> OwnershipGuard {
        loop {
            if let Some(guard) = self.try_ownership_guard(client_id) {
                return guard;
            }
            sleep_until(&self.runtime, self.runtime.now() + GUARD_STEP).await;
        }
    }

    fn try_ownership_guard(&self, client_id: &ByteStr) -> Option<OwnershipGuard> {
        {
            let Some(cluster) = self.cluster.as_ref() else {
                return Some(OwnershipGuard {
                    busy: Arc::default(),
                    client_id: client_id.clone(),
                });
            };
            lock(&cluster.ownership_busy)
                .insert(client_id.clone())
                .then(|| OwnershipGuard {
                    busy: cluster.ownership_busy.clone(),
                    client_id: client_id.clone(),
                })
        }
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
    ///
    /// The grace is about when a message reached this node's inbox, not
    /// when this node got to read it: a forward ends only once a round of
    /// inbox reading that started after its end has caught up. A node cut
    /// off from storage (or slow to read) would otherwise drop what other
    /// nodes, their route caches still naming it, appended for the client
    /// within the grace.
    pub(crate) fn expire_forwards(&self, now: std::time::Instant) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        if cluster.forward_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let Some(read_through) = *lock(&cluster.inbox_caught_up_at) else {
            return;
        };
        let horizon = now.min(read_through);
        let expired: Vec<ByteStr> = {
            let mut forwards = write(&cluster.forwards);
            let expired: Vec<ByteStr> = forwards
                .iter()
                .filter(|(_, f)| f.until <= horizon)
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
        let inner = lock(&entry.inner);
        if inner.attached.is_some() || inner.is_loading() || inner.offline.is_some() {
            return;
        }
        self.retire_entry(client_id, &entry, inner);
    }
}
