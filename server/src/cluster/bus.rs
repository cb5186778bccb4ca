//! The cluster bus: sending to other nodes' inboxes and serving this one's.
//!
//! Sending: a QoS 1/2 (or retained) message goes to the other nodes in the
//! batch that stores it, so the PUBACK still waits for it; a QoS 0 one goes
//! through the outbox, a bounded queue the cluster task writes in batches.
//! From half full, the connections that publish stop reading until it is
//! down to a quarter (a burst is slowed to what the bus carries, not
//! dropped); full, which takes a writer stalled on storage, QoS 0 is
//! dropped and counted, as QoS 0 allows.
//!
//! Serving: entries are read in append order, in batches; the writes they
//! cause (a message enqueued for this node's persistent sessions) are
//! stored in one batch together with the acknowledgement of the entries,
//! and only then delivered in memory. A crash before that batch is stored
//! leaves the entries to be read again (by this node when it returns, or by
//! the node that adopts it); the message keeps the id its origin gave it,
//! so storing it again enqueues nothing twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use easy_mqtt_core::cluster::{BusEntry, ClusterOp, InboxId};
use easy_mqtt_core::session::{Delivery, Message};
use easy_mqtt_core::storage::{MessageId, Op};
use easy_mqtt_core::{ByteStr, QoS};

use super::{apply_until_stored, apply_until_stored_as};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::persist::PreparedRoute;
use crate::runtime::{Runtime, sleep_until};
use crate::sessions::{SessionKey, lock};

/// Outbox ops written per batch.
const OUTBOX_BATCH: usize = 1024;
/// An outbox write taking longer than this is stalled (see
/// [`run_outbox`]).
const OUTBOX_STALL: Duration = Duration::from_secs(1);
/// How long an empty inbox read may wait on a backend that can block.
const INBOX_WAIT: Duration = Duration::from_millis(500);
/// The pause between reads of an empty inbox on a backend that answers at
/// once.
const INBOX_POLL: Duration = Duration::from_millis(5);

/// The logs of the QoS 2 messages each inbox served, one log per inbox
/// (keyed by the inbox's node name).
///
/// A retried publish batch whose first attempt timed out (unknown outcome,
/// yet stored) appends its `Forward` entries again; the node serving the
/// inbox drops the copies through `seen`, which lives in its memory only.
/// When the copy is read by another process (the node died, or was fenced,
/// and its adopter serves its inbox), the message would be stored and
/// delivered again, though the first copy's delivery may have been
/// completed and forgotten already: for QoS 2, a second delivery
/// ([MQTT-4.3.3]). So every inbox batch that served QoS 2 messages pushes
/// their keys to this log, in the batch that acknowledges them, and an
/// adopter reads the log into `seen` before it serves the dead node's
/// inbox. (QoS 1 may arrive twice, QoS 0 is never stored: neither is
/// logged.)
pub(crate) const SERVED_SPACE: &str = "cluster-served";
/// Batches kept per log: each served at least one id, so the log covers at
/// least as many ids as the in-memory `seen` set of one inbox.
pub(crate) const SERVED_KEEP: u32 = 65_536;

/// The encoded keys of one log entry: (client key, message id) pairs, 16
/// bytes each, big-endian.
fn encode_served(keys: &[(u64, MessageId)]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(keys.len() * 16);
    for (client, id) in keys {
        out.extend_from_slice(&client.to_be_bytes());
        out.extend_from_slice(&id.0.to_be_bytes());
    }
    bytes::Bytes::from(out)
}

/// The keys of a log entry; a torn trailing pair is ignored.
pub(crate) fn decode_served(entry: &[u8]) -> impl Iterator<Item = (u64, MessageId)> + '_ {
    entry.chunks_exact(16).filter_map(|pair| {
        let client = u64::from_be_bytes(pair.get(..8)?.try_into().ok()?);
        let id = u64::from_be_bytes(pair.get(8..)?.try_into().ok()?);
        Some((client, MessageId(id)))
    })
}

/// A client id as a key of the recent-ids sets (never 0, which stands for
/// "every session of the node").
pub(crate) fn client_key(client_id: &ByteStr) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(client_id.as_str(), &mut hasher);
    std::hash::Hasher::finish(&hasher).max(1)
}

/// A dead node's inbox being served: the sessions adopted from it, and
/// those it had just released.
pub(crate) type DeadInbox<'a> = (
    &'a std::collections::HashSet<ByteStr>,
    &'a easy_mqtt_core::topic::SubscriptionTrie<(ByteStr, ByteStr)>,
);

/// What to do in memory once an inbox batch is stored.
enum Then {
    Route(PreparedRoute),
    Direct(SessionKey, Delivery),
}

impl<R: Runtime> Node<R> {
    /// Whether `id` already reached `client_id` while it was handed over
    /// (or since it was adopted).
    ///
    /// The first QoS 2 delivery of a watched client is also logged as
    /// served (in `ops`): copies forwarded by the node that let the client
    /// go may still be on their way to this node's inbox, or be sent there
    /// later by the adopter of that node. Should this node die before they
    /// arrive, its adopter reads them with an empty memory, after the
    /// client completed the first copy.
    pub(crate) fn delivered_in_handover(
        &self,
        client_id: &ByteStr,
        id: MessageId,
        qos: QoS,
        ops: &mut Vec<Op>,
    ) -> bool {
        let Some(cluster) = self.cluster.as_ref() else {
            return false;
        };
        match cluster.delivered_in_handover(client_id, id) {
            super::Watched::Again => true,
            super::Watched::No => false,
            super::Watched::First => {
                if qos == QoS::ExactlyOnce {
                    ops.push(Op::from(ClusterOp::PushLog {
                        space: ByteStr::from(SERVED_SPACE),
                        key: cluster.name(),
                        entry: encode_served(&[(client_key(client_id), id)]),
                        keep: SERVED_KEEP,
                    }));
                }
                false
            }
        }
    }

    /// When this node gave `client_id` up, adds the op that forwards the
    /// delivery to its new owner and returns true.
    pub(crate) fn forward_if_given_up(
        &self,
        client_id: &ByteStr,
        id: MessageId,
        message: &Arc<Message>,
        qos: QoS,
        ops: &mut Vec<Op>,
    ) -> bool {
        let Some(to) = self.cluster.as_ref().and_then(|c| c.forward_of(client_id)) else {
            return false;
        };
        ops.push(Op::from(ClusterOp::Forward {
            node: to,
            entry: BusEntry::Direct {
                client_id: client_id.clone(),
                id,
                message: message.clone(),
                qos,
            },
        }));
        true
    }

    /// A message in a dead node's inbox for a client it had released: to
    /// the node it was released to, as the dead node would have forwarded
    /// it (which forwards it on, or queues it if nobody holds the
    /// session). Not to the owner of record directly: the node it was
    /// released to may have got the message itself meanwhile, and only
    /// that node (or, once it died, its served log) knows.
    fn forward_departed(
        &self,
        (client_id, to): (ByteStr, ByteStr),
        id: MessageId,
        message: &Arc<Message>,
        granted: QoS,
        ops: &mut Vec<Op>,
    ) {
        let qos = message.qos.min(granted);
        if qos == QoS::AtMostOnce {
            return;
        }
        ops.push(Op::from(ClusterOp::Forward {
            node: to,
            entry: BusEntry::Direct {
                client_id,
                id,
                message: message.clone(),
                qos,
            },
        }));
    }

    /// Adds the ops that hand `message` to every other node that needs it:
    /// those with a matching route, or for a retained message every node
    /// that keeps retained messages (all of them); for a retained message,
    /// returns the membership read that named those (see `retained.rs`).
    pub(crate) fn forward_to_nodes(
        &self,
        id: MessageId,
        message: &Arc<Message>,
        ops: &mut Vec<Op>,
    ) -> Option<super::RetainedPeers> {
        let cluster = self.cluster.as_ref()?;
        let mut forward = |node: ByteStr| {
            ops.push(Op::from(ClusterOp::Forward {
                node,
                entry: BusEntry::Publish {
                    id,
                    message: message.clone(),
                },
            }));
        };
        if message.retain {
            let peers = cluster.retained_peers();
            tracing::trace!(topic = %message.topic, nodes = ?peers.nodes, "forwarding retained");
            peers.nodes.iter().cloned().for_each(&mut forward);
            return Some(peers);
        }
        let mut nodes = Vec::new();
        self.remote_nodes(&message.topic, &mut nodes);
        tracing::trace!(topic = %message.topic, ?nodes, "forwarding to nodes");
        nodes.into_iter().for_each(forward);
        None
    }

    /// The cluster half of an in-memory route (QoS 0, or a node without
    /// durable writes): forwards through the outbox. Returns the sessions
    /// left to deliver to here.
    pub(crate) fn forward_in_memory(
        &self,
        message: &Arc<Message>,
        targets: &mut Vec<(SessionKey, QoS)>,
    ) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let id = self.next_message_id();
        let mut ops = Vec::new();
        targets.retain(|(key, granted)| {
            let qos = message.qos.min(*granted);
            !self.forward_if_given_up(&key.0.client_id, id, message, qos, &mut ops)
        });
        // Not durable: no retained state stored to follow up.
        let _ = self.forward_to_nodes(id, message, &mut ops);
        let essential = message.qos != QoS::AtMostOnce;
        for op in ops {
            cluster.send_later(op, essential);
        }
    }

    /// Builds the batch and the in-memory work of inbox entries.
    #[allow(clippy::too_many_arguments)]
    fn take_entries(
        self: &Arc<Self>,
        inbox: &ByteStr,
        entries: Vec<(InboxId, BusEntry)>,
        owners: &HashMap<ByteStr, ByteStr>,
        dead: Option<DeadInbox<'_>>,
        incarnation: Option<u64>,
        ops: &mut Vec<Op>,
        then: &mut Vec<Then>,
    ) {
        let only = dead.map(|(sessions, _)| sessions);
        let mut served_qos2 = Vec::new();
        let mut departed_matches = Vec::new();
        let mut scratch = Vec::new();
        for (entry_id, entry) in entries {
            // One message may come as a `Publish` for this node's sessions
            // and as a `Direct` for one client given up by the sender: each
            // is told apart by what it is for.
            let key = match &entry {
                BusEntry::Publish { id, .. } => Some((0, *id)),
                BusEntry::Direct { id, client_id, .. } => Some((client_key(client_id), *id)),
                _ => None,
            };
            let repeated = key.is_some_and(|key| {
                self.cluster.as_ref().is_some_and(|c| {
                    let mut seen = lock(&c.seen);
                    // Looked up first: the inbox name is cloned only once.
                    let recent = match seen.get_mut(inbox) {
                        Some(recent) => recent,
                        None => seen.entry(inbox.clone()).or_default(),
                    };
                    !recent.insert(key)
                })
            });
            if repeated {
                ops.push(Op::from(ClusterOp::InboxAck {
                    node: inbox.clone(),
                    entry: entry_id,
                }));
                continue;
            }
            let qos2 = match &entry {
                BusEntry::Publish { message, .. } => message.qos == QoS::ExactlyOnce,
                BusEntry::Direct { qos, .. } => *qos == QoS::ExactlyOnce,
                _ => false,
            };
            if let Some(key) = key.filter(|_| qos2) {
                served_qos2.push(key);
            }
            match entry {
                BusEntry::Publish { id, message } => {
                    if let Some((_, departed)) = dead
                        && !departed.is_empty()
                    {
                        // Released by the dead node shortly before it died:
                        // forwarded as it would have.
                        departed.matches_dedup(&message.topic, &mut departed_matches);
                        for (departed, granted) in departed_matches.drain(..) {
                            self.forward_departed(departed, id, &message, granted, ops);
                        }
                    }
                    let (prepared, more) =
                        self.prepare_route_among(message, id, None, false, only, &mut scratch);
                    ops.extend(more);
                    then.push(Then::Route(prepared));
                }
                BusEntry::Direct {
                    client_id,
                    id,
                    message,
                    qos,
                } => {
                    let key = (client_key(&client_id), id);
                    if !self.take_direct(client_id, id, message, qos, owners, ops, then) {
                        // Passed on, not served: while the client moves
                        // between nodes the same entry may come back here
                        // once this node owns it, and is no replay then
                        // (a real replay passed on twice is told apart by
                        // the node that serves it). Nor is it logged as
                        // served for an adopter.
                        served_qos2.retain(|served| *served != key);
                        if let Some(cluster) = self.cluster.as_ref()
                            && let Some(recent) = lock(&cluster.seen).get_mut(inbox)
                        {
                            recent.forget(&key);
                        }
                    }
                }
                BusEntry::Kick {
                    client_id,
                    epoch,
                    from,
                } => {
                    let node = self.clone();
                    if let Some(cluster) = self.cluster.as_ref() {
                        cluster.pending_releases.fetch_add(1, Ordering::AcqRel);
                        // Given up at once (the release refines where to):
                        // what this node routes for the client from now on
                        // is forwarded, so it may serve again before the
                        // release has finished (which may wait for writes
                        // that need it to serve).
                        let mine = lock(&cluster.epochs).get(&client_id).copied();
                        if from != cluster.name() && mine.is_none_or(|mine| mine <= epoch) {
                            cluster.give_up(&client_id, &from, self.runtime.now());
                        }
                    }
                    let inbox = inbox.clone();
                    self.runtime.spawn(Box::pin(async move {
                        node.clone()
                            .release(client_id, epoch, from, inbox, entry_id, incarnation)
                            .await;
                        if let Some(cluster) = node.cluster.as_ref() {
                            cluster.pending_releases.fetch_sub(1, Ordering::AcqRel);
                        }
                    }));
                    // Acknowledged by the release's own batch: a node that
                    // dies half-way leaves the kick to its adopter.
                    continue;
                }
                BusEntry::Released { client_id, epoch } => self.released(&client_id, epoch),
                BusEntry::RoutesChanged { .. } => self.routes_stale(),
                BusEntry::ReadRetained => {
                    if let Some(cluster) = self.cluster.as_ref() {
                        cluster.read_retained_soon();
                    }
                }
            }
            ops.push(Op::from(ClusterOp::InboxAck {
                node: inbox.clone(),
                entry: entry_id,
            }));
        }
        if !served_qos2.is_empty() {
            // After the acknowledgements: a backend that stops half-way
            // through the batch never logs an entry it left unacknowledged.
            ops.push(Op::from(ClusterOp::PushLog {
                space: ByteStr::from(SERVED_SPACE),
                key: inbox.clone(),
                entry: encode_served(&served_qos2),
                keep: SERVED_KEEP,
            }));
        }
    }

    /// A message for one client: delivered here if this node holds its
    /// session, forwarded if it gave it up, else stored in its queue (if it
    /// has a persistent session: the op is ignored otherwise). False when
    /// it was passed on to another node.
    #[allow(clippy::too_many_arguments)]
    fn take_direct(
        &self,
        client_id: ByteStr,
        id: MessageId,
        message: Arc<Message>,
        qos: QoS,
        owners: &HashMap<ByteStr, ByteStr>,
        ops: &mut Vec<Op>,
        then: &mut Vec<Then>,
    ) -> bool {
        if self.forward_if_given_up(&client_id, id, &message, qos, ops) {
            return false;
        }
        let entry = lock(&self.registry).get(&client_id).cloned();
        if entry.is_none()
            && let Some(owner) = owners.get(&client_id)
        {
            // Sent here by a node whose view was stale (a forward to an
            // owner that moved on): to the owner of record.
            ops.push(Op::from(ClusterOp::Forward {
                node: owner.clone(),
                entry: BusEntry::Direct {
                    client_id,
                    id,
                    message,
                    qos,
                },
            }));
            return false;
        }
        // Checked once it is known to be served here: one passed on is no
        // delivery (it may come back once this node owns the client).
        if self.delivered_in_handover(&client_id, id, qos, ops) {
            return true;
        }
        let stored = entry.as_ref().is_none_or(|entry| {
            let inner = lock(&entry.inner);
            // A session loading for a persistent CONNECT is stored too.
            (inner.stored || inner.is_loading()) && !inner.clean && !inner.removed
        }) && qos != QoS::AtMostOnce;
        if stored {
            ops.push(Op::PutMessage {
                id,
                message: message.clone(),
                at_ms: self.unix_ms(),
            });
            ops.push(Op::Enqueue {
                client_id: client_id.clone(),
                id,
                qos,
                retain: false,
            });
        }
        if let Some(entry) = entry {
            let mut delivery = Delivery::routed(message, qos);
            if stored {
                delivery = delivery.stored_as(id);
            }
            then.push(Then::Direct(SessionKey(entry), delivery));
        }
        true
    }

    /// The owners (other than this node) of the clients that `Direct`
    /// entries name and this node does not hold.
    async fn owners_of_strangers(
        &self,
        entries: &[(InboxId, BusEntry)],
    ) -> HashMap<ByteStr, ByteStr> {
        let mut owners = HashMap::new();
        let (Some(cluster), Some(store)) = (self.cluster.as_ref(), self.storage.cluster()) else {
            return owners;
        };
        let own = cluster.name();
        for (_, entry) in entries {
            let BusEntry::Direct { client_id, .. } = entry else {
                continue;
            };
            if owners.contains_key(client_id)
                || lock(&self.registry).contains_key(client_id)
                || cluster.forward_of(client_id).is_some()
            {
                continue;
            }
            match store.owner(client_id).await {
                Ok(Some(owner)) if owner.node != own => {
                    owners.insert(client_id.clone(), owner.node);
                }
                Ok(_) => {}
                Err(error) => self.storage_failed("owner", &error),
            }
        }
        owners
    }

    /// Delivers in memory what a stored inbox batch brought.
    fn finish_entries(&self, then: Vec<Then>) {
        for then in then {
            match then {
                Then::Route(prepared) => {
                    self.finish_route(prepared);
                }
                Then::Direct(key, delivery) => {
                    // Like storage's `Enqueue`, a no-op for an id the session
                    // holds: the old owner's forward of a message this node
                    // also routed may come after the hand-over's watch ended
                    // (held back by a storage outage).
                    if delivery.id.is_some_and(|id| key.0.holds(id)) {
                        continue;
                    }
                    key.0.deliver(delivery, &self.metrics);
                }
            }
        }
    }

    /// Reads and serves `inbox` once: how many entries it held (stored
    /// with what they caused once this returns).
    pub(crate) async fn serve_inbox_once(
        self: &Arc<Self>,
        inbox: &ByteStr,
        after: &mut Option<InboxId>,
        dead: Option<DeadInbox<'_>>,
        wait: Duration,
    ) -> Result<usize, ()> {
        let Some(cluster) = self.cluster.as_ref() else {
            return Err(());
        };
        let Some(store) = self.storage.cluster() else {
            return Err(());
        };
        // What the entries cause is written by the incarnation that read
        // them, or not at all (see `apply_until_stored_as`).
        let incarnation = self.incarnation();
        let entries = match store
            .read_inbox(inbox, *after, cluster.config.inbox_batch, wait)
            .await
        {
            Ok(entries) => entries,
            Err(error) => {
                self.storage_failed("inbox", &error);
                return Err(());
            }
        };
        if entries.is_empty() {
            return Ok(0);
        }
        let read = entries.len();
        if let Some((last, _)) = entries.last() {
            *after = Some(*last);
        }
        Metrics::add(&self.metrics.bus_received, entries.len() as u64);
        tracing::trace!(inbox = %inbox, entries = entries.len(), "inbox entries");
        let owners = self.owners_of_strangers(&entries).await;
        let mut ops = Vec::new();
        let mut then = Vec::new();
        self.take_entries(
            inbox,
            entries,
            &owners,
            dead,
            incarnation,
            &mut ops,
            &mut then,
        );
        if apply_until_stored_as(self, incarnation, ops).await {
            self.finish_entries(then);
        }
        Ok(read)
    }
}

/// Serves this node's inbox (and the inboxes of nodes it adopted) until
/// the node shuts down.
pub(super) async fn run_inbox<R: Runtime>(node: Arc<Node<R>>) {
    let Some(cluster) = node.cluster.as_ref() else {
        return;
    };
    let mut own = cluster.name();
    let mut after = None;
    let mut attempt = 0;
    while !node.is_shutting_down() {
        let started = node.runtime.now();
        let name = cluster.name();
        if name != own {
            // A new incarnation reads its own, new inbox.
            lock(&cluster.seen).remove(&own);
            own = name;
            after = None;
        }
        let round = cluster.inbox_round.fetch_add(1, Ordering::AcqRel) + 1;
        // A takeover waits for a round that started after the others let
        // go: no need to wait for entries then.
        let wait = if cluster.barrier_waiters.load(Ordering::Acquire) > 0 {
            Duration::ZERO
        } else {
            INBOX_WAIT
        };
        let own_result = node
            .serve_inbox_once(&own, &mut after, None, wait)
            .await
            .map(|read| {
                if read < cluster.config.inbox_batch {
                    cluster.inbox_caught_up.fetch_max(round, Ordering::AcqRel);
                    let mut at = lock(&cluster.inbox_caught_up_at);
                    if at.is_none_or(|at| at < started) {
                        *at = Some(started);
                    }
                    drop(at);
                    cluster.inbox_event.notify(usize::MAX);
                }
                read > 0
            });

        let adopted = node.serve_adopted_inboxes().await;
        match own_result {
            Ok(true) => attempt = 0,
            Ok(false) if adopted => attempt = 0,
            Ok(false) => {
                attempt = 0;
                // The kicks read meanwhile gave their clients up already.
                if cluster.catching_up.load(Ordering::Acquire) {
                    cluster.catching_up.store(false, Ordering::Release);
                    cluster.serving.store(true, Ordering::Release);
                    tracing::info!("inbox caught up; serving again");
                }
                // A backend that does not block answered at once.
                if node.runtime.now().duration_since(started) < INBOX_WAIT / 2 {
                    sleep_until(&node.runtime, node.runtime.now() + INBOX_POLL).await;
                }
            }
            Err(()) => {
                attempt += 1;
                // Read again from the oldest entry not acknowledged.
                after = None;
                let at = node.runtime.now() + crate::persist::backoff(attempt);
                sleep_until(&node.runtime, at).await;
            }
        }
    }
}

/// Writes the outbox in batches until the node shuts down.
pub(super) async fn run_outbox<R: Runtime>(node: Arc<Node<R>>) {
    let Some(cluster) = node.cluster.as_ref() else {
        return;
    };
    while !node.is_shutting_down() {
        let listener = cluster.outbox_event.listen();
        let (ops, left): (Vec<Op>, usize) = {
            let mut outbox = lock(&cluster.outbox);
            let n = outbox.len().min(OUTBOX_BATCH);
            (outbox.drain(..n).collect(), outbox.len())
        };
        cluster.outbox_drained(left);
        if ops.is_empty() {
            futures_lite::future::or(listener, async {
                sleep_until(
                    &node.runtime,
                    node.runtime.now() + Duration::from_millis(100),
                )
                .await;
            })
            .await;
            continue;
        }
        Metrics::add(&node.metrics.bus_sent, ops.len() as u64);
        let removed_routes: Vec<ByteStr> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Cluster(op) => match &**op {
                    ClusterOp::RemoveRoute { filter, .. } => Some(filter.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        let mut write = std::pin::pin!(apply_until_stored(&node, ops));
        let done_soon = futures_lite::future::or(
            async {
                write.as_mut().await;
                true
            },
            async {
                sleep_until(&node.runtime, node.runtime.now() + OUTBOX_STALL).await;
                false
            },
        )
        .await;
        if !done_soon {
            // Storage is slow or down: the publishers waiting for room go
            // on (QoS 0 forwards drop once the outbox is full) rather
            // than stop for as long as the outage lasts.
            tracing::debug!("outbox write stalled; publishers no longer wait for it");
            cluster.set_outbox_stalled(true);
            write.await;
            cluster.set_outbox_stalled(false);
        }
        if !removed_routes.is_empty() {
            node.rewrite_resubscribed_routes(removed_routes);
        }
    }
}
