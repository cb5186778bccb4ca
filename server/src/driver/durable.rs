//! Storage writes of a connection on a durable node: its batches, applied
//! one at a time in order, and what happens once each is stored or fails.

use std::collections::VecDeque;

use super::*;

/// Inbound PUBLISH packets waiting for storage beyond which the driver
/// stops reading.
pub(super) const MAX_STORAGE_BACKLOG: usize = 256;

/// What to do once a storage batch is stored.
pub(super) enum After {
    /// Deliver in memory, then acknowledge (a will or retained QoS 0: no ack).
    Route {
        packet_id: Option<PacketId>,
        prepared: PreparedRoute,
    },
    Subscribe {
        subscribe: Subscribe,
        codes: Vec<SubscribeReturnCode>,
    },
    Unsubscribe(PacketId),
    /// Retained messages for a new subscription of a persistent session,
    /// stored in its queue (QoS 1/2, with ids): delivered in memory now.
    Retained(Vec<easy_mqtt_core::session::Delivery>),
    /// The session's outbound changes: nothing but (maybe) releasing
    /// held-back QoS 2 PUBLISH bytes.
    Journal,
}

/// A connection's storage writes in order; the front one is running.
/// Boxed, and dropped when empty: only a persistent session on a durable
/// node writes, and a queue inline cost every idle connection's task 24
/// bytes more.
#[derive(Default)]
#[allow(clippy::box_collection)] // the point: 8 bytes inline, not 32
pub(super) struct StorageQueue(Option<Box<VecDeque<StorageBatch>>>);

impl StorageQueue {
    pub(super) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|queue| queue.is_empty())
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &StorageBatch> {
        self.0.iter().flat_map(|queue| queue.iter())
    }

    pub(super) fn front_mut(&mut self) -> Option<&mut StorageBatch> {
        self.0.as_mut()?.front_mut()
    }

    pub(super) fn back_mut(&mut self) -> Option<&mut StorageBatch> {
        self.0.as_mut()?.back_mut()
    }

    pub(super) fn push_back(&mut self, batch: StorageBatch) {
        self.0.get_or_insert_with(Box::default).push_back(batch);
    }

    pub(super) fn pop_front(&mut self) -> Option<StorageBatch> {
        self.0.as_mut()?.pop_front()
    }

    /// Frees the queue once it is empty (an idle connection).
    pub(super) fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

/// Ops in one chunk of a connection's batch, when appended one or two
/// at a time.
const CHUNK_OPS: usize = 64;

/// Appends `ops` to a batch not yet written (so its chunks are not shared:
/// no copy). A persistent subscriber's batch grows by one or two ops a
/// delivery while the one before it is written (seconds under load, for
/// hundreds of deliveries): grown as one vector, its doubling copied it
/// and faulted fresh pages in, 9 % of the broker's CPU in the original's
/// scenario on Kvrocks. Chunks of [`CHUNK_OPS`] are filled in place, and a
/// bigger `ops` (a routing batch) is a chunk of its own, not copied.
fn append_ops(chunks: &mut Vec<Arc<Vec<Op>>>, ops: Vec<Op>) {
    if ops.is_empty() {
        return;
    }
    if let Some(last) = chunks.last_mut() {
        let last = Arc::make_mut(last);
        if last.capacity() - last.len() >= ops.len() {
            last.extend(ops);
            return;
        }
    }
    if ops.len() >= CHUNK_OPS {
        chunks.push(Arc::new(ops));
        return;
    }
    let mut chunk = Vec::with_capacity(CHUNK_OPS);
    chunk.extend(ops);
    chunks.push(Arc::new(chunk));
}

/// One storage write of this connection; they are applied one at a time,
/// in order (a FIFO), and writes queued meanwhile share one batch.
pub(super) struct StorageBatch {
    /// Shared with the journal writer while written (see `journal.rs`):
    /// written again after a failure without a copy. In chunks (see
    /// [`append_ops`]).
    pub(super) ops: Vec<Arc<Vec<Op>>>,
    pub(super) after: Vec<After>,
    /// Holds back the bytes written meanwhile: it assigns a packet id to a
    /// QoS 2 PUBLISH.
    pub(super) gates: bool,
    pub(super) routes: usize,
    pub(super) running: Option<BoxFuture<'static, Result<(), StorageError>>>,
    pub(super) failing_since: Option<Instant>,
    pub(super) retry_at: Option<Instant>,
    pub(super) attempts: u32,
    /// The cluster incarnation the batch was made under: a node declared
    /// dead meanwhile (fenced) lost what it held to its adopter, so the
    /// batch is stale and never written.
    pub(super) incarnation: Option<u64>,
    /// For a batch routing a publish to other cluster nodes: the last
    /// instant at which it may be written (`ClusterConfig::route_write_window`
    /// after its first such route; see `Node::route_write_by`). Its inbox
    /// entries for other nodes were addressed with the routes of that
    /// time; written later (a node that
    /// cannot hear storage retries for a long time, and its later batches
    /// wait behind), an entry could reach a node that has since let the
    /// subscriber go and no longer forwards for it: lost, though PUBACKed
    /// by whoever the publisher sends it to again. Failed instead, never
    /// acknowledged: the publisher sends it again (to a node with fresh
    /// routes, or finding it received if an earlier attempt was stored).
    pub(super) write_by: Option<Instant>,
}

impl<S, R> Driver<S, R>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    R: Runtime,
{
    /// The client id of this connection's session when storage holds it.
    pub(super) fn stored_client(&self) -> Option<easy_mqtt_core::ByteStr> {
        let attachment = self.attachment.as_ref()?;
        let stored = {
            let inner = lock(&attachment.entry.inner);
            inner.stored && !inner.clean
        };
        stored.then(|| attachment.entry.client_id.clone())
    }

    /// A QoS 1/2 (or retained) PUBLISH on a durable node: stored, then
    /// delivered, then acknowledged.
    pub(super) fn route_durable(&mut self, publish: Publish) {
        Metrics::inc(&self.node.metrics.publishes_received);
        let packet_id = publish.packet_id();
        let publisher = match publish.qos_pid {
            easy_mqtt_core::QosPid::ExactlyOnce(id) => self.stored_client().map(|c| (c, id)),
            _ => None,
        };
        let message = Arc::new(Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos_pid.qos(),
            retain: publish.retain,
        });
        let (prepared, ops) = match self.node.direct_target(&message.topic) {
            Some(target) => {
                let (prepared, mut ops) = self.node.prepare_direct(&target, message);
                if let Some((client_id, packet_id)) = publisher {
                    ops.push(Op::AddInboundQos2 {
                        client_id,
                        packet_id,
                    });
                }
                (prepared, ops)
            }
            None => self.node.prepare_route(
                message,
                publisher,
                &mut super::work(&mut self.work).scratch,
            ),
        };
        self.push_storage(
            ops,
            After::Route {
                packet_id,
                prepared,
            },
            false,
        );
    }

    pub(super) fn route_will(&mut self, will: easy_mqtt_core::LastWill) {
        Metrics::inc(&self.node.metrics.wills_published);
        let message = Arc::new(Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
        });
        let (prepared, mut ops) = match self.node.direct_target(&message.topic) {
            Some(target) => self.node.prepare_direct(&target, message),
            None => {
                self.node
                    .prepare_route(message, None, &mut super::work(&mut self.work).scratch)
            }
        };
        if self.node.cluster().is_some()
            && let Some(attachment) = &self.attachment
        {
            // With the will, so that a node adopting this one after a
            // crash publishes it only if it was not.
            ops.push(self.node.clear_presence_op(&attachment.entry.client_id));
        }
        self.push_storage(
            ops,
            After::Route {
                packet_id: None,
                prepared,
            },
            false,
        );
    }

    /// Queues a storage write behind the earlier ones (sharing the batch
    /// not yet sent, if any). With nothing to write and nothing before it,
    /// it completes at once.
    pub(super) fn push_storage(&mut self, ops: Vec<Op>, after: After, gates: bool) {
        if ops.is_empty() && self.storage.is_empty() {
            self.finish_after(after);
            return;
        }
        let routes = usize::from(matches!(after, After::Route { .. }));
        let incarnation = self.node.incarnation();
        let write_by = if routes > 0 {
            self.node.route_write_by(&ops)
        } else {
            None
        };
        if let Some(back) = self.storage.back_mut()
            && back.running.is_none()
            && back.failing_since.is_none()
            && back.incarnation == incarnation
        {
            append_ops(&mut back.ops, ops);
            back.after.push(after);
            back.gates |= gates;
            back.routes += routes;
            // The earliest: the batch's first route.
            back.write_by = back.write_by.or(write_by);
            return;
        }
        self.storage.push_back(StorageBatch {
            ops: vec![Arc::new(ops)],
            after: vec![after],
            gates,
            routes,
            running: None,
            failing_since: None,
            retry_at: None,
            attempts: 0,
            incarnation,
            write_by,
        });
    }

    /// Runs the storage FIFO: one batch at a time, retried with back-off
    /// while it fails, for up to the connect timeout. True on progress.
    pub(super) fn poll_storage(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        loop {
            let now = self.node.runtime().now();
            let Some(front) = self.storage.front_mut() else {
                return progress;
            };
            if front.running.is_none() {
                if front.incarnation != self.node.incarnation() {
                    if let Some(batch) = self.storage.pop_front() {
                        self.fail_batch(batch, now);
                    }
                    progress = true;
                    continue;
                }
                if front.write_by.is_some_and(|by| now > by) {
                    tracing::warn!(
                        routes = front.routes,
                        "a publish was not stored in time (the cluster's routes may have moved on)"
                    );
                    if let Some(batch) = self.storage.pop_front() {
                        self.fail_batch(batch, now);
                    }
                    progress = true;
                    continue;
                }
                if front.ops.iter().all(|chunk| chunk.is_empty()) {
                    if let Some(batch) = self.storage.pop_front() {
                        self.finish_batch(batch);
                    }
                    progress = true;
                    continue;
                }
                if let Some(at) = front.retry_at
                    && at > now
                {
                    let runtime = self.node.runtime().clone();
                    let timer = match &mut self.retry_timer {
                        Some(timer) => {
                            runtime.reset(timer, at);
                            timer
                        }
                        None => self.retry_timer.insert(Box::new(runtime.timer(at))),
                    };
                    if runtime.poll_timer(timer, cx).is_pending() {
                        return progress;
                    }
                }
                front.retry_at = None;
                let ops = front.ops.clone();
                // A cluster node without a lease writes nothing: it may have
                // been declared dead, and its writes would be stale.
                front.running = Some(if !self.node.may_write() {
                    Box::pin(std::future::ready(Err(StorageError::Unavailable(
                        "no cluster lease".into(),
                    ))))
                } else {
                    // Merged with other connections' batches (checked
                    // again there: see `journal.rs`).
                    self.node
                        .journal_write(ops, front.incarnation, front.write_by)
                });
            }
            let Some(running) = &mut front.running else {
                return progress;
            };
            let Poll::Ready(result) = running.as_mut().poll(cx) else {
                return progress;
            };
            progress = true;
            front.running = None;
            match result {
                Ok(()) => {
                    if let Some(batch) = self.storage.pop_front() {
                        self.finish_batch(batch);
                    }
                }
                Err(error) => {
                    self.node.storage_failed("apply", &error);
                    let since = *front.failing_since.get_or_insert(now);
                    front.attempts += 1;
                    let limit = self.node.config().connection.connect_timeout;
                    if now.duration_since(since) >= limit
                        || matches!(error, StorageError::Invalid(_))
                    {
                        if let Some(batch) = self.storage.pop_front() {
                            self.fail_batch(batch, now);
                        }
                    } else {
                        front.retry_at = Some(now + crate::persist::backoff(front.attempts));
                    }
                }
            }
        }
    }

    pub(super) fn finish_batch(&mut self, batch: StorageBatch) {
        for after in batch.after {
            self.finish_after(after);
        }
    }

    pub(super) fn finish_after(&mut self, after: After) {
        match after {
            After::Route {
                packet_id,
                prepared,
            } => {
                self.node.finish_route(prepared);
                if let Some(id) = packet_id {
                    super::work(&mut self.work).acks.push(id);
                }
            }
            After::Subscribe { subscribe, codes } => {
                lock(&self.cell.inner)
                    .conn
                    .complete_subscribe(subscribe.packet_id, codes.clone());
                if let Some(attachment) = &self.attachment
                    && codes.iter().any(|c| *c != SubscribeReturnCode::Failure)
                {
                    match self.stored_client() {
                        // Journaled like any delivery: stored with an id
                        // first, so the packet id it gets is stored too.
                        Some(client_id) => self.store_retained(client_id, &subscribe, &codes),
                        None => self.node.deliver_retained(attachment, &subscribe, &codes),
                    }
                }
            }
            After::Retained(deliveries) => {
                if let Some(attachment) = &self.attachment {
                    for delivery in deliveries {
                        attachment.entry.deliver(delivery, &self.node.metrics);
                    }
                }
            }
            After::Unsubscribe(packet_id) => {
                lock(&self.cell.inner).conn.complete_unsubscribe(packet_id);
            }
            After::Journal => {}
        }
    }

    /// The retained messages of a persistent session's new subscription:
    /// each QoS 1/2 one gets a message id and is stored in the session's
    /// queue before it is delivered, so that the packet id it is sent under
    /// is journaled like any delivery's (a QoS 2 one survives a crash
    /// under the same packet id).
    fn store_retained(
        &mut self,
        client_id: easy_mqtt_core::ByteStr,
        subscribe: &Subscribe,
        codes: &[SubscribeReturnCode],
    ) {
        let mut ops = Vec::new();
        let deliveries = self
            .node
            .retained_deliveries(subscribe, codes)
            .into_iter()
            .map(|delivery| {
                if delivery.qos == easy_mqtt_core::QoS::AtMostOnce {
                    return delivery;
                }
                let id = self.node.next_message_id();
                ops.push(Op::PutMessage {
                    id,
                    message: delivery.message.clone(),
                    at_ms: self.node.unix_ms(),
                });
                ops.push(Op::Enqueue {
                    client_id: client_id.clone(),
                    id,
                    qos: delivery.qos,
                    retain: delivery.retain,
                });
                delivery.stored_as(id)
            })
            .collect();
        self.push_storage(ops, After::Retained(deliveries), false);
    }

    /// Storage stayed unavailable: nothing of the batch is acknowledged,
    /// and the connection closes (the client sends it all again).
    pub(super) fn fail_batch(&mut self, batch: StorageBatch, now: Instant) {
        tracing::warn!(
            ops = batch.ops.iter().map(|chunk| chunk.len()).sum::<usize>(),
            "storage unavailable; closing the connection without acknowledging"
        );
        // An attempt that got no answer may have been stored.
        let maybe_stored = batch.attempts > 0;
        let mut unknown = Vec::new();
        let mut reload_own = false;
        let mut inner = lock(&self.cell.inner);
        for after in batch.after {
            match after {
                After::Route {
                    packet_id,
                    prepared,
                } => {
                    if let Some(id) = packet_id {
                        Metrics::inc(&self.node.metrics.storage_publishes_failed);
                        // The state machine forgets the QoS 2 packet id
                        // (its retransmission is to be routed), which
                        // storage may hold all the same: this session is
                        // loaded again from storage, which knows.
                        reload_own |= maybe_stored && prepared.message.qos == QoS::ExactlyOnce;
                        inner
                            .conn
                            .fail_publish(id, CloseReason::StorageUnavailable, now);
                    }
                    if maybe_stored {
                        unknown.push(prepared);
                    }
                }
                After::Journal => {}
                After::Subscribe { .. } | After::Unsubscribe(_) | After::Retained(_) => {
                    inner.conn.close(CloseReason::StorageUnavailable, now);
                }
            }
        }
        // Without this connection's lock: a target may be this connection.
        drop(inner);
        if reload_own && let Some(attachment) = &self.attachment {
            let mut session = lock(&attachment.entry.inner);
            if session.stored && !session.clean {
                session.reload = true;
            }
        }
        for prepared in unknown {
            self.node.route_outcome_unknown(prepared, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use easy_mqtt_core::packet::ByteStr;

    use super::*;

    fn complete(n: u16) -> Op {
        Op::CompleteInflight {
            client_id: ByteStr::from("c"),
            packet_id: NonZeroU16::new(n).unwrap_or(NonZeroU16::MIN),
        }
    }

    fn packet_ids(chunks: &[Arc<Vec<Op>>]) -> Vec<u16> {
        (chunks.iter().flat_map(|chunk| chunk.iter()))
            .map(|op| match op {
                Op::CompleteInflight { packet_id, .. } => packet_id.get(),
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn ops_appended_one_at_a_time_fill_chunks_in_order_without_copies() {
        let mut chunks = vec![Arc::new(vec![complete(1)])];
        for n in 2..=200 {
            append_ops(&mut chunks, vec![complete(n)]);
            append_ops(&mut chunks, Vec::new());
        }
        assert_eq!(packet_ids(&chunks), (1..=200).collect::<Vec<_>>());
        // The first batch as it came, then chunks filled to their capacity.
        let lengths: Vec<usize> = chunks.iter().map(|chunk| chunk.len()).collect();
        assert_eq!(
            lengths,
            [1, CHUNK_OPS, CHUNK_OPS, CHUNK_OPS, 199 - 3 * CHUNK_OPS]
        );
        assert!(
            chunks[1..]
                .iter()
                .all(|chunk| chunk.capacity() == CHUNK_OPS)
        );

        // A routing batch is a chunk of its own, the same allocation.
        let routing: Vec<Op> = (201..=300).map(complete).collect();
        let address = routing.as_ptr();
        append_ops(&mut chunks, routing);
        assert_eq!(chunks.len(), 6);
        assert_eq!(chunks[5].as_ptr(), address);
        // Room left in the last chunk is used before a new one.
        append_ops(&mut chunks, vec![complete(301)]);
        assert_eq!(chunks.len(), 7);
        assert_eq!(packet_ids(&chunks), (1..=301).collect::<Vec<_>>());
    }
}
