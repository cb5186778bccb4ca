//! The storage port: what a backend (in memory, Kvrocks) must do.
//!
//! Writes are expressed as a batch of [`Op`]s applied with one call, so that a
//! networked backend can send a whole batch in one pipeline (one round trip
//! for many messages). A batch is applied in order; when [`Storage::apply`]
//! returns `Ok`, every op of the batch is durable. Ops are idempotent, so a
//! batch whose outcome is unknown (a dropped connection) may be applied again.
//!
//! A message body is stored once ([`Op::PutMessage`]) and referenced by id
//! from every queue that holds it.
//!
//! # What the caller promises
//!
//! Replaying a batch is safe only for batches built this way, which is how
//! the broker builds them:
//! - a session's ops come after its [`Op::PutSession`] (in an earlier batch
//!   or earlier in the same one);
//! - [`Op::PutMessage`] comes before the first [`Op::Enqueue`] of its id, in
//!   the same batch, or the body is still held by another queue;
//! - [`Op::SetInflight`] of an id comes after its [`Op::Enqueue`];
//! - a packet id is not completed and reused for another message in one
//!   batch ([`Op::CompleteInflight`] is keyed by packet id);
//! - batches that send, acknowledge or delete for one session (its
//!   journal, `PutSession`, `DeleteSession`) are applied one at a time (the
//!   broker serialises them per session). Batches that only `PutMessage`
//!   and `Enqueue` (routing) may run concurrently with anything, including
//!   for the same session: queue positions come from the message ids.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::cluster::{Cluster, ClusterOp};
use crate::packet::{ByteStr, PacketId, QoS};
use crate::session::{Message, OutboundPhase};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Identifies a stored message body. Unique per cluster: the high bits name
/// the node that minted it (see [`MessageId::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

impl MessageId {
    /// A 16-bit node tag and a 48-bit per-node sequence number.
    pub fn new(node_tag: u16, sequence: u64) -> MessageId {
        MessageId((u64::from(node_tag) << 48) | (sequence & ((1 << 48) - 1)))
    }

    /// The 48-bit per-node sequence number (the low bits).
    pub fn sequence(self) -> u64 {
        self.0 & ((1 << 48) - 1)
    }

    /// The 16-bit tag of the node that minted the id (the high bits).
    pub fn node_tag(self) -> u16 {
        (self.0 >> 48) as u16
    }

    /// Queue order: by sequence, then node tag. Sequences are time based
    /// (see the broker's `persist` module), so this is close to arrival
    /// order across nodes, and it needs nothing but the id: concurrent
    /// writers to one queue agree on every position without reading it.
    pub fn queue_order(self) -> (u64, u16) {
        (self.sequence(), self.node_tag())
    }
}

/// A persistent session's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub client_id: ByteStr,
    /// Milliseconds since the Unix epoch when the session was created.
    pub created_at_ms: u64,
}

/// A persistent session as listed by [`Storage::load_subscriptions`]: what
/// routing to it needs before it is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSubscriptions {
    pub record: SessionRecord,
    /// In filter order.
    pub subscriptions: Vec<(ByteStr, QoS)>,
    /// The ids in its queue (not in flight), in queue order: the broker
    /// bounds the queue of a session not loaded yet with them.
    pub queued: Vec<MessageId>,
}

/// A message waiting in a session's queue or window, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    pub id: MessageId,
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    /// When its body was stored ([`Op::PutMessage`]'s `at_ms`), in ms since
    /// the Unix epoch; 0 when unknown (a body stored without a time).
    pub at_ms: u64,
}

/// An outbound message in flight, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInflight {
    pub packet_id: PacketId,
    pub delivery: StoredDelivery,
    pub phase: OutboundPhase,
}

/// Everything stored for one persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub record: SessionRecord,
    /// In filter order.
    pub subscriptions: Vec<(ByteStr, QoS)>,
    /// In send order.
    pub inflight: Vec<StoredInflight>,
    /// In queue order.
    pub queue: Vec<StoredDelivery>,
    /// Inbound QoS 2 packet ids acknowledged with PUBREC, awaiting PUBREL.
    pub inbound_qos2: Vec<PacketId>,
}

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Creates (or keeps) a persistent session.
    PutSession(SessionRecord),
    /// Deletes a session with everything it holds.
    DeleteSession {
        client_id: ByteStr,
    },
    Subscribe {
        client_id: ByteStr,
        filter: ByteStr,
        qos: QoS,
    },
    Unsubscribe {
        client_id: ByteStr,
        filter: ByteStr,
    },
    /// Stores a message body once; queues refer to it by id.
    PutMessage {
        id: MessageId,
        message: Arc<Message>,
        /// When it was stored, in ms since the Unix epoch by the writer's
        /// clock (0 = unknown); loads return it with every delivery of the
        /// body, so that an age limit (an offline-message retention)
        /// survives a restart.
        at_ms: u64,
    },
    /// Adds to a session's queue, which is kept in id order
    /// ([`MessageId::queue_order`]): the position depends on the id alone,
    /// so concurrent writers to one queue need no coordination. An id
    /// already queued stays where it is and takes this op's QoS and
    /// RETAIN flag; an id in flight is left alone.
    Enqueue {
        client_id: ByteStr,
        id: MessageId,
        qos: QoS,
        retain: bool,
    },
    /// Removes a message from the queue (dropped by the overflow policy).
    Dequeue {
        client_id: ByteStr,
        id: MessageId,
    },
    /// Moves the message from the queue into the in-flight window, sent
    /// with `qos` and `retain`, or changes its phase there (its flags as
    /// they were).
    SetInflight {
        client_id: ByteStr,
        packet_id: PacketId,
        id: MessageId,
        phase: OutboundPhase,
        qos: QoS,
        retain: bool,
    },
    /// Removes an in-flight message (its flow completed).
    CompleteInflight {
        client_id: ByteStr,
        packet_id: PacketId,
    },
    AddInboundQos2 {
        client_id: ByteStr,
        packet_id: PacketId,
    },
    RemoveInboundQos2 {
        client_id: ByteStr,
        packet_id: PacketId,
    },
    /// Sets (Some) or clears (None) the retained message of a topic.
    SetRetained {
        topic: ByteStr,
        message: Option<Arc<Message>>,
    },
    /// A write of the cluster state ([`crate::cluster`]); backends without
    /// [`Storage::cluster`] reject it as [`StorageError::Invalid`].
    ///
    /// Boxed: the cluster ops are few and large (up to 120 bytes), and
    /// inline they made every op that size, `Enqueue`s (48 bytes) too, of
    /// which a routing batch holds one per subscriber.
    Cluster(Box<ClusterOp>),
}

// A routing batch holds an op per subscriber: an op grown past this (a
// large variant added inline) costs every batch that much memory.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Op>() <= 72);

impl From<ClusterOp> for Op {
    fn from(op: ClusterOp) -> Op {
        Op::Cluster(Box::new(op))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The backend cannot be reached now; the caller retries or refuses.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be read back.
    #[error("corrupt stored data at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// The backend's settings are wrong (a bad address, a refused
    /// password): retrying will not help.
    #[error("storage misconfigured: {0}")]
    Invalid(String),
}

/// A storage backend.
pub trait Storage: Send + Sync + 'static {
    /// A short name for logs and metrics ("memory", "kvrocks").
    fn name(&self) -> &'static str;

    /// Whether data outlives this process. The in-memory backend does not,
    /// so the broker may skip per-message writes to it: its own live state
    /// already holds everything for as long as the backend would.
    fn is_durable(&self) -> bool;

    /// Applies a batch of writes in order; durable once this returns `Ok`.
    fn apply(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Applies `parts` one after the other as one batch: the node's
    /// journal writer merging many connections' batches. The parts are
    /// shared because their writers keep them, to write them again after a
    /// failure. This default copies them into one batch; a backend that
    /// reads ops by reference spares the copy, which for a merged routing
    /// batch is a million ops, each touching the reference count of a
    /// client id that is in no cache.
    fn apply_parts(&self, parts: Vec<Arc<Vec<Op>>>) -> BoxFuture<'_, Result<(), StorageError>> {
        let mut ops = Vec::with_capacity(parts.iter().map(|part| part.len()).sum());
        for part in &parts {
            ops.extend(part.iter().cloned());
        }
        self.apply(ops)
    }

    /// One persistent session with all it holds.
    fn load_session<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredSession>, StorageError>>;

    /// Every persistent session's record, subscriptions and queued ids,
    /// for routing after a restart (bodies and windows load lazily on
    /// CONNECT).
    fn load_subscriptions(&self) -> BoxFuture<'_, Result<Vec<SessionSubscriptions>, StorageError>>;

    /// Every retained message.
    fn load_retained(&self) -> BoxFuture<'_, Result<Vec<Arc<Message>>, StorageError>>;

    /// The cluster state this backend shares between broker nodes, if it
    /// can (see [`crate::cluster`]).
    fn cluster(&self) -> Option<&dyn Cluster> {
        None
    }
}
