//! The QoS 2 messages each persistent client received, logged so that a
//! copy reaching it later by another path is not delivered again.
//!
//! While a client moves between nodes, one message can reach it along two
//! paths: delivered by the node it leaves, and a copy in another node's
//! inbox, served late (that node was cut off from storage, or died and its
//! adopter serves the inbox) and queued for the client once the client's
//! session is held there. For QoS 1 the second delivery is allowed; for
//! QoS 2 it is a duplicate ([MQTT-4.3.3]), and the node that queues the copy
//! has no memory of the first delivery, which may have been completed and
//! forgotten on another node.
//!
//! So every PUBREC of a persistent session's QoS 2 delivery also logs the
//! message id under the client id ([`RECEIVED_SPACE`]), in the batch that
//! stores the `Released` phase: the PUBREL waits for that batch, so the
//! log holds the id before the flow can complete and leave the window. A
//! node loading the session reads the log, drops the queued copies of
//! logged ids (and dequeues them in storage), and watches the rest of the
//! hand-over for copies still on their way.

use std::collections::HashSet;

use easy_mqtt_core::ByteStr;
use easy_mqtt_core::cluster::ClusterOp;
use easy_mqtt_core::storage::{MessageId, Op, StorageError, StoredSession};

use crate::node::Node;
use crate::runtime::Runtime;
use crate::sessions::lock;

/// The log space of the received QoS 2 ids, keyed by client id; each entry
/// holds the ids of one batch, 8 bytes big-endian each.
pub const RECEIVED_SPACE: &str = "cluster-qos2-received";
/// Entries kept per client: far more QoS 2 deliveries than can happen
/// between a message's first delivery and its copy's arrival (an adoption
/// takes seconds), at 8 bytes each.
pub const RECEIVED_KEEP: u32 = 1024;

/// The op that logs `ids` (8 bytes big-endian each) as received by
/// `client_id`.
pub fn log_received(client_id: &ByteStr, ids: Vec<u8>) -> Op {
    Op::from(ClusterOp::PushLog {
        space: ByteStr::from(RECEIVED_SPACE),
        key: client_id.clone(),
        entry: bytes::Bytes::from(ids),
        keep: RECEIVED_KEEP,
    })
}

/// The op that deletes the log of `client_id` (its session ended).
pub fn forget_received(client_id: &ByteStr) -> Op {
    Op::from(ClusterOp::PushLog {
        space: ByteStr::from(RECEIVED_SPACE),
        key: client_id.clone(),
        entry: bytes::Bytes::new(),
        keep: 0,
    })
}

impl<R: Runtime> Node<R> {
    /// The QoS 2 messages `client_id` received, as logged (empty outside a
    /// cluster).
    pub(crate) async fn received_qos2(
        &self,
        client_id: &str,
    ) -> Result<HashSet<MessageId>, StorageError> {
        let Some(store) = self.cluster_store() else {
            return Ok(HashSet::new());
        };
        let entries = store
            .read_log(RECEIVED_SPACE, client_id, RECEIVED_KEEP as usize)
            .await?;
        Ok(entries
            .iter()
            .flat_map(|entry| {
                entry
                    .chunks_exact(8)
                    .filter_map(|id| Some(MessageId(u64::from_be_bytes(id.try_into().ok()?))))
            })
            .collect())
    }

    /// Takes the copies of messages the client received already out of a
    /// loaded session's queue and out of what was kept aside for it while
    /// it loaded (before the log was read), and dequeues them in storage.
    pub(crate) async fn drop_received_copies(
        &self,
        client_id: &ByteStr,
        stored: &mut StoredSession,
        received: &HashSet<MessageId>,
    ) -> Result<(), StorageError> {
        if received.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::new();
        let mut dequeue = |id: MessageId| {
            ops.push(Op::Dequeue {
                client_id: client_id.clone(),
                id,
            });
        };
        stored.queue.retain(|delivery| {
            let copy = received.contains(&delivery.id);
            if copy {
                dequeue(delivery.id);
            }
            !copy
        });
        let entry = lock(&self.registry).get(client_id).cloned();
        if let Some(entry) = entry
            && let Some(kept) = lock(&entry.inner).loading_mut()
        {
            kept.retain(|delivery| match delivery.id {
                Some(id) if received.contains(&id) => {
                    dequeue(id);
                    false
                }
                _ => true,
            });
        }
        if ops.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            client_id = %client_id,
            copies = ops.len(),
            "queued copies of QoS 2 messages the client received dropped"
        );
        self.storage.apply(ops).await
    }
}
