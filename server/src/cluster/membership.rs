//! Membership and lease: the heartbeat that keeps this node's lease, the
//! dead nodes it finds (and adopts, see `adopt.rs`), fencing, route
//! refreshes and the retained catch-up (see `retained.rs`) on the same
//! beat; the writes of the cluster's own tasks (retried while the node may
//! write); leaving at shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use easy_mqtt_core::ByteStr;
use easy_mqtt_core::cluster::{ClusterOp, Liveness};
use easy_mqtt_core::storage::{Op, StorageError};

use super::bus;
use super::retained::CatchUp;
use crate::node::Node;
use crate::runtime::{Runtime, sleep_until};
use crate::sessions::lock;

/// Applies `ops`, retrying with back-off until storage takes them or the
/// node stops; never gives up on its own (the callers' data is in them).
pub(crate) async fn apply_until_stored<R: Runtime>(node: &Node<R>, ops: Vec<Op>) -> bool {
    apply_retrying(node, node.incarnation(), ops, true).await
}

/// [`apply_until_stored`] for work that an incarnation of this node
/// started (`incarnation`, read before it began): false, nothing written,
/// once the node is another incarnation. What the earlier one held went
/// to its adopter, which does that work again on its behalf (an inbox
/// entry it had not acknowledged, a kick it had not answered): written by
/// the new incarnation instead, an answer to a kick read before the fence
/// let a session go although the entries ahead of the kick were never
/// stored (their batch was refused, fenced), and they were lost.
pub(crate) async fn apply_until_stored_as<R: Runtime>(
    node: &Node<R>,
    incarnation: Option<u64>,
    ops: Vec<Op>,
) -> bool {
    apply_retrying(node, incarnation, ops, true).await
}

/// [`apply_until_stored`] for the cluster task's own writes (adoptions):
/// false as soon as the lease is gone. Only that task's heartbeat brings
/// the lease back, so waiting for it there would stop the node for good
/// (never renewed, never told it was fenced); the adoption is taken up
/// again next round instead, every step of it being idempotent.
pub(crate) async fn apply_while_leased<R: Runtime>(node: &Node<R>, ops: Vec<Op>) -> bool {
    apply_retrying(node, node.incarnation(), ops, false).await
}

async fn apply_retrying<R: Runtime>(
    node: &Node<R>,
    incarnation: Option<u64>,
    ops: Vec<Op>,
    wait_for_lease: bool,
) -> bool {
    let mut attempt = 0;
    loop {
        let result = match node.cluster.as_ref() {
            // Fenced meanwhile: what this incarnation held is adopted.
            Some(c) if Some(c.incarnation.load(Ordering::Acquire)) != incarnation => return false,
            Some(c) if !c.lease_valid(node.runtime.now()) => {
                if !wait_for_lease {
                    return false;
                }
                Err(StorageError::Unavailable("no cluster lease".into()))
            }
            _ => node.storage.apply(ops.clone()).await,
        };
        match result {
            Ok(()) => return true,
            Err(error) => {
                node.storage_failed("cluster", &error);
                if node.is_shutting_down() || matches!(error, StorageError::Invalid(_)) {
                    return false;
                }
                attempt += 1;
                let at = node.runtime.now() + crate::persist::backoff(attempt);
                sleep_until(&node.runtime, at).await;
            }
        }
    }
}

/// Runs the node's part of the cluster until it shuts down: heartbeats,
/// membership (adopting dead nodes), route refreshes, the outbox and the
/// inbox. Spawn it once after [`Node::recover`].
pub async fn run<R: Runtime>(node: Arc<Node<R>>) {
    if node.cluster.is_none() || node.storage.cluster().is_none() {
        return;
    }
    let inbox = bus::run_inbox(node.clone());
    let outbox = bus::run_outbox(node.clone());
    let members = run_membership(node.clone());
    futures_lite::future::or(futures_lite::future::or(inbox, outbox), members).await;
}

/// Heartbeats, lease, fencing, dead nodes, route refreshes and forward
/// expiry, once per `heartbeat_interval`.
async fn run_membership<R: Runtime>(node: Arc<Node<R>>) {
    let Some(cluster) = node.cluster.as_ref() else {
        return;
    };
    let config = cluster.config;
    let mut last_refresh: Option<Instant> = None;
    // Retained messages (see `retained.rs`): set while the other nodes did
    // not know this one yet, they were not sent to it, so it reads them
    // again once they all do.
    let mut catch_up = CatchUp::default();
    catch_up.at_or_after(node.runtime.now() + config.heartbeat_interval * 3);
    while !node.is_shutting_down() {
        let started = node.runtime.now();
        if cluster.retained_stale.swap(false, Ordering::AcqRel) {
            catch_up.at_or_after(started + config.heartbeat_interval * 3);
        }
        if cluster.take_read_retained() {
            catch_up.at_or_after(started);
        }
        if catch_up.due(started) && node.catch_up_retained().await {
            catch_up.done();
        }
        let leased_before = cluster.lease_valid(started);
        heartbeat(&node, started).await;
        let now = node.runtime.now();
        let leased = cluster.lease_valid(now);
        if leased && !leased_before {
            // Registered (again) only now, by the end of that heartbeat:
            // the others send this node the retained messages set from
            // their next member read on, so what was set before must be
            // read again after that, whatever catch-up ran while this node
            // had no lease (sim seed 233024: a fenced node read them before
            // its new incarnation had ever heartbeat, and a retained
            // message set just after its read reached the nodes the
            // publisher knew, not it).
            catch_up.at_or_after(now + config.heartbeat_interval * 3);
        }
        if leased {
            node.adopt_dead_nodes().await;
        }
        let now = node.runtime.now();
        // Listening before the dirty flag is read: a notice that arrives
        // while the routes are being read must still cut the sleep below
        // short, or it would wait a whole interval (a lost wake-up).
        let listener = node.routes_notice.listen();
        if cluster.routes_dirty.swap(false, Ordering::AcqRel)
            || last_refresh.is_none_or(|at| now.duration_since(at) >= config.route_refresh)
        {
            if node.refresh_routes().await {
                // The iteration's start, not `now`: the next timed iteration
                // starts one interval later, and measured from `now` it
                // would find slightly less than `route_refresh` elapsed and
                // skip its refresh, doubling the documented bound.
                last_refresh = Some(started);
            } else {
                cluster.routes_dirty.store(true, Ordering::Release);
            }
        }
        node.expire_forwards(now);
        cluster.expire_handovers(now);
        cluster.expire_adopted(now);
        node.prune_routes();
        let next = started + config.heartbeat_interval.min(config.route_refresh);
        // Woken early by a route change notice.
        futures_lite::future::or(
            async {
                sleep_until(&node.runtime, next).await;
            },
            async {
                listener.await;
            },
        )
        .await;
    }
}

/// One heartbeat: renews the lease, or loses it (connections closed), or
/// learns this incarnation was fenced (everything dropped, new incarnation).
pub(super) async fn heartbeat<R: Runtime>(node: &Arc<Node<R>>, started: Instant) {
    let (Some(cluster), Some(store)) = (node.cluster.as_ref(), node.storage.cluster()) else {
        return;
    };
    let incarnation = cluster.incarnation.load(Ordering::Acquire);
    match store
        .heartbeat(&cluster.name(), incarnation, cluster.config.node_ttl)
        .await
    {
        Ok(Liveness::Alive) => {
            // Taken before the membership read: the late batches were
            // stored before it, so it names every node they missed.
            let late_retained = cluster.take_late_retained();
            // A margin for the time the request took to reach storage is
            // already in `started`; a fifth of the TTL covers clock rates.
            let lease = started + cluster.config.node_ttl - cluster.config.node_ttl / 5;
            *lock(&cluster.lease_until) = Some(lease);
            if !cluster.serving.load(Ordering::Acquire)
                && !cluster.catching_up.swap(true, Ordering::AcqRel)
            {
                tracing::info!(
                    incarnation,
                    "cluster lease regained; catching up with the inbox"
                );
            }
            let read_at = node.runtime.now();
            match store.members().await {
                Ok(members) => {
                    let own = cluster.name();
                    let mut live = Vec::new();
                    let mut retained_peers = Vec::new();
                    for member in members {
                        if member.alive.is_some() {
                            if member.node != own {
                                retained_peers.push(member.node.clone());
                            }
                            live.push(member.node);
                            continue;
                        }
                        if member.node == own {
                            continue;
                        }
                        // Adopted: fenced, it reads the retained state again
                        // when it comes back (see `retained_stale`).
                        match store.adopter(&member.node, member.incarnation).await {
                            Ok(Some(_)) => {}
                            Ok(None) => retained_peers.push(member.node),
                            Err(error) => {
                                node.storage_failed("adopter", &error);
                                retained_peers.push(member.node);
                            }
                        }
                    }
                    let notices = cluster.set_members(live, retained_peers, read_at, late_retained);
                    for op in notices {
                        cluster.send_later(op, true);
                    }
                }
                Err(error) => {
                    cluster.restore_late_retained(late_retained);
                    node.storage_failed("members", &error);
                }
            }
        }
        Ok(Liveness::Fenced) => {
            let next = incarnation + 1;
            tracing::error!(
                incarnation,
                next,
                "this node was declared dead and adopted by another; dropping its sessions"
            );
            cluster.serving.store(false, Ordering::Release);
            node.drop_all_sessions(easy_mqtt_core::session::CloseReason::ServerShutdown);
            cluster.reincarnate(next);
            *lock(&cluster.lease_until) = None;
            // What the adopter changed meanwhile is in storage.
            cluster.retained_stale.store(true, Ordering::Release);
        }
        Err(error) => {
            node.storage_failed("heartbeat", &error);
            let now = node.runtime.now();
            if !cluster.lease_valid(now) && cluster.serving.swap(false, Ordering::AcqRel) {
                tracing::error!(
                    %error,
                    "cluster lease lost (storage unreachable); closing connections until it is back"
                );
                node.close_all_connections(
                    easy_mqtt_core::session::CloseReason::StorageUnavailable,
                );
            }
        }
    }
}

impl<R: Runtime> Node<R> {
    /// The op that forgets `client_id`'s presence on this node.
    pub(crate) fn clear_presence_op(&self, client_id: &ByteStr) -> Op {
        let node = self
            .cluster
            .as_ref()
            .map_or_else(|| ByteStr::from(self.config.node_id.clone()), |c| c.name());
        Op::from(ClusterOp::ClearPresence {
            node,
            client_id: client_id.clone(),
        })
    }

    /// Closes every client connection with `reason`.
    pub(crate) fn close_all_connections(&self, reason: easy_mqtt_core::session::CloseReason) {
        let now = self.runtime.now();
        // In connection order: the simulator replays runs exactly.
        let mut cells: Vec<_> = lock(&self.connections)
            .values()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        cells.sort_by_key(|cell| cell.id);
        for cell in cells {
            let mut inner = lock(&cell.inner);
            inner.conn.close(reason.clone(), now);
            inner.wake();
        }
    }

    /// Forgets every session (this incarnation was fenced: other nodes own
    /// them now), closing their connections.
    pub(crate) fn drop_all_sessions(&self, reason: easy_mqtt_core::session::CloseReason) {
        self.close_all_connections(reason);
        let mut entries: Vec<_> = lock(&self.registry).drain().collect();
        entries.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        for entry in &entries {
            let mut inner = lock(&entry.inner);
            inner.removed = true;
            inner.offline = None;
            inner.subscriptions.clear();
        }
        self.metrics
            .sessions_current
            .fetch_sub(entries.len() as u64, Ordering::Relaxed);
        *crate::node::write(&self.trie) = easy_mqtt_core::topic::SubscriptionTrie::new();
        if let Some(cluster) = self.cluster.as_ref() {
            lock(&cluster.epochs).clear();
            lock(&cluster.written_routes).written.clear();
            crate::node::write(&cluster.forwards).clear();
            cluster.forward_count.store(0, Ordering::Release);
        }
    }
}

impl<R: Runtime> Node<R> {
    /// At shutdown: writes what the outbox holds (presence clears: the
    /// connections closed without wills), then ends this incarnation's
    /// membership at once, so that another node (or this one, restarted)
    /// adopts it without waiting for its heartbeat to expire.
    pub(crate) async fn leave_cluster(&self) {
        let (Some(cluster), Some(store)) = (self.cluster.as_ref(), self.storage.cluster()) else {
            return;
        };
        let ops: Vec<Op> = lock(&cluster.outbox).drain(..).collect();
        if !ops.is_empty()
            && let Err(error) = self.storage.apply(ops).await
        {
            self.storage_failed("leave", &error);
        }
        let incarnation = cluster.incarnation.load(Ordering::Acquire);
        match store
            .heartbeat(&cluster.name(), incarnation, Duration::from_millis(1))
            .await
        {
            Ok(_) => tracing::info!(incarnation, "left the cluster"),
            Err(error) => self.storage_failed("leave", &error),
        }
    }
}
