//! The cluster port: what the broker nodes of one cluster share through
//! storage (Kvrocks), since they share nothing else.
//!
//! - **Membership**: each node heartbeats `(node id, incarnation)` with a
//!   time to live ([`Cluster::heartbeat`]). A node whose heartbeat expired is
//!   dead; one surviving node wins [`Cluster::claim_adoption`], which also
//!   *fences* the dead incarnation: its next heartbeat answers
//!   [`Liveness::Fenced`], and a fenced node must drop every session it holds
//!   and start again under a new incarnation.
//! - **Ownership**: one owner per client id ([`Cluster::claim_owner`]), with
//!   an epoch that grows with every claim. A node stays *responsible* for a
//!   client id from its claim until it (or its adopter) lets it go
//!   ([`ClusterOp::Disown`]): a claim does not end the previous owner's
//!   responsibility, since messages for the client may still sit in that
//!   node's inbox. The claimant kicks every responsible node through its
//!   inbox ([`BusEntry::Kick`]) and serves the client only once none is
//!   left ([`Cluster::responsible`]).
//! - **The bus**: one durable inbox per node, written with [`Op::Forward`]
//!   in the same batch as the rest of a publish (so a PUBACK still means
//!   "stored"), read with [`Cluster::read_inbox`], acknowledged with
//!   [`Op::InboxAck`] in the batch that stores what the entry caused.
//! - **Routes**: which node has subscribers for which filters
//!   ([`Op::AddRoute`], [`Cluster::routes`]); each node caches them.
//! - **Presence**: who is connected where, with the will to publish if that
//!   node dies ([`Op::SetPresence`]).
//! - **Records and logs**: small keyed values with an optional time to live
//!   and capped lists, for compatibility modes (Alibaba Cloud tokens and
//!   status events).
//!
//! The writes are [`Op`](crate::storage::Op)s, applied by
//! [`Storage::apply`](crate::storage::Storage::apply) in the batches the
//! broker already builds; the reads and the few writes that answer a value
//! are the methods of [`Cluster`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::packet::{ByteStr, QoS};
use crate::session::Message;
use crate::storage::{BoxFuture, MessageId, StorageError};

/// The position of an entry in a node's inbox: increasing in append order
/// (a Redis stream id `ms-seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InboxId {
    pub ms: u64,
    pub seq: u64,
}

/// What one node asks of another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEntry {
    /// A message for the receiving node's subscribers: it matches its own
    /// subscriptions and fans out there, keeping `id` (so a replay after a
    /// crash enqueues nothing twice).
    Publish {
        id: MessageId,
        message: Arc<Message>,
    },
    /// A message for one session on the receiving node, at `qos`
    /// (point-to-point topics, the HTTP API's one-to-one publish, and
    /// deliveries forwarded by a node that just gave the session up).
    Direct {
        client_id: ByteStr,
        id: MessageId,
        message: Arc<Message>,
        qos: QoS,
    },
    /// `from` owns `client_id` from `epoch` on: close its connection and
    /// release its session (last writes stored), then answer
    /// [`BusEntry::Released`]. A receiver holding the client under a higher
    /// epoch kicks `from` back instead.
    Kick {
        client_id: ByteStr,
        epoch: u64,
        from: ByteStr,
    },
    /// The answer to a [`BusEntry::Kick`]: nothing of `client_id` is held
    /// or written by the sender any more.
    Released { client_id: ByteStr, epoch: u64 },
    /// `node`'s routes changed: refresh the route cache now.
    RoutesChanged { node: ByteStr },
    /// Retained messages changed in storage that may not have reached the
    /// receiving node through its inbox (a batch built before the sender
    /// knew the receiver and stored late, or a retained message deleted
    /// through the HTTP API): read the retained state again from storage.
    /// Sent only once that change is stored, so the read finds it.
    ReadRetained,
}

/// Every node's route filters, as [`Cluster::routes`] lists them.
pub type NodeRoutes = Vec<(ByteStr, Vec<ByteStr>)>;

/// The owner of a client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node: ByteStr,
    pub epoch: u64,
}

/// What [`Cluster::claim_owner`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The new epoch; higher than every earlier claim of this client id.
    pub epoch: u64,
    /// The owner before this claim, if any.
    pub previous: Option<Owner>,
}

/// What a heartbeat learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Registered and alive for the time to live given.
    Alive,
    /// This incarnation was declared dead and adopted by another node:
    /// nothing it held may be acted on any more.
    Fenced,
}

/// A node known to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: ByteStr,
    /// The incarnation whose heartbeat is current; `None` when the last
    /// heartbeat expired (the node is dead, or cut off from storage).
    pub alive: Option<u64>,
    /// The last incarnation that heartbeated, alive or not.
    pub incarnation: u64,
}

/// A client connected to a node, as [`Op::SetPresence`] stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub client_id: ByteStr,
    /// The epoch of ownership under which it connected.
    pub epoch: u64,
    /// The will to publish if the node dies with the client connected.
    pub will: Option<Arc<Message>>,
    /// Milliseconds since the Unix epoch.
    pub since_ms: u64,
}

/// The cluster ops (variants of [`Op`](crate::storage::Op)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterOp {
    /// Appends to `node`'s inbox.
    Forward {
        node: ByteStr,
        entry: BusEntry,
    },
    /// Removes an inbox entry that was dealt with (no-op if gone).
    InboxAck {
        node: ByteStr,
        entry: InboxId,
    },
    /// `node` has subscribers for `filter` (idempotent: a set).
    AddRoute {
        node: ByteStr,
        filter: ByteStr,
    },
    RemoveRoute {
        node: ByteStr,
        filter: ByteStr,
    },
    /// `client_id` is connected to `node` (replaces an earlier presence).
    SetPresence {
        node: ByteStr,
        presence: Presence,
    },
    ClearPresence {
        node: ByteStr,
        client_id: ByteStr,
    },
    /// `node` holds nothing of `client_id` any more: it leaves the
    /// responsible nodes (and `node`'s owned-by index).
    Disown {
        node: ByteStr,
        client_id: ByteStr,
    },
    /// Sets a record; `ttl` `None` keeps it until deleted.
    PutRecord {
        space: ByteStr,
        key: ByteStr,
        value: Bytes,
        ttl: Option<Duration>,
    },
    DeleteRecord {
        space: ByteStr,
        key: ByteStr,
    },
    /// Prepends `entry` to a log and keeps its newest `keep` entries.
    PushLog {
        space: ByteStr,
        key: ByteStr,
        entry: Bytes,
        keep: u32,
    },
}

/// Cluster state in storage. Implemented by every durable backend; times to
/// live are measured by the backend's clock.
pub trait Cluster: Send + Sync + 'static {
    /// Registers `node` (or renews it) as alive for `ttl` under
    /// `incarnation`, unless that incarnation is fenced.
    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        incarnation: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Liveness, StorageError>>;

    /// Every node that ever heartbeated and was not forgotten.
    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, StorageError>>;

    /// Claims the adoption of `dead`'s `incarnation` for `by`; true for the
    /// one claimant that wins, and again for that claimant if it claims
    /// again (its first answer may have been lost in a timeout while the
    /// claim was made: without this, nobody would ever adopt the node).
    /// Winning fences that incarnation. A claim does not win while the
    /// incarnation's heartbeat is current.
    fn claim_adoption<'a>(
        &'a self,
        dead: &'a str,
        incarnation: u64,
        by: &'a str,
    ) -> BoxFuture<'a, Result<bool, StorageError>>;

    /// The node that won the adoption of `dead`'s `incarnation`, if any
    /// (an adopter that dies before it finished passes the adoption on to
    /// its own adopter).
    fn adopter<'a>(
        &'a self,
        dead: &'a str,
        incarnation: u64,
    ) -> BoxFuture<'a, Result<Option<ByteStr>, StorageError>>;

    /// Removes a dead node's membership, inbox, routes and presence (after
    /// its adoption finished).
    fn forget_member<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Makes `node` the owner of `client_id` under a new epoch, and adds it
    /// to the responsible nodes. The previous owner stays responsible until
    /// it is disowned.
    fn claim_owner<'a>(
        &'a self,
        client_id: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Claim, StorageError>>;

    fn owner<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Owner>, StorageError>>;

    /// The clients `node` is responsible for: claimed and not disowned
    /// (persistent sessions kept there, connected clients, and clients
    /// claimed away from it that it has not released yet).
    fn owned_by<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<ByteStr>, StorageError>>;

    /// The members responsible for `client_id` (see [`Cluster::owned_by`]),
    /// in no particular order.
    fn responsible<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ByteStr>, StorageError>>;

    /// The clients connected to `node`, as last stored.
    fn presence<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<Presence>, StorageError>>;

    /// Every node's route filters.
    fn routes(&self) -> BoxFuture<'_, Result<NodeRoutes, StorageError>>;

    /// Up to `max` entries of `node`'s inbox after `after` (from the start
    /// when `None`), in append order; waits up to `wait` when there are none.
    fn read_inbox<'a>(
        &'a self,
        node: &'a str,
        after: Option<InboxId>,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<(InboxId, BusEntry)>, StorageError>>;

    fn get_record<'a>(
        &'a self,
        space: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>>;

    /// Every record of `space` (unexpired), in no particular order.
    fn scan_records<'a>(
        &'a self,
        space: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(ByteStr, Bytes)>, StorageError>>;

    /// The newest `max` entries of a log, newest first.
    fn read_log<'a>(
        &'a self,
        space: &'a str,
        key: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, StorageError>>;
}
