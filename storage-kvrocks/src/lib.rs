//! Kvrocks storage backend: the [`Storage`] port over the Redis protocol,
//! on a standalone Kvrocks (one node) or a Kvrocks cluster (several nodes).
//!
//! It follows the reference backend (`easy-mqtt-storage-memory`) op for op
//! and passes the shared contract suite
//! ([`easy_mqtt_core::storage_contract`]). It uses only plain single-key
//! commands (no `EVAL`, no `MULTI`: both take Kvrocks' global lock), sent
//! in pipelines; see [`apply`](Storage::apply) below for the round trips.
//!
//! # Key layout
//!
//! `P` is [`KvrocksSettings::key_prefix`] (default `emq`). Every key of one
//! client carries the hash tag `{c:<id>}`, where `<id>` is the client id
//! with `%`, `{` and `}` escaped as `%25`, `%7B`, `%7D` (so the tag is
//! exactly the escaped id, whatever it contains, and distinct ids give
//! distinct keys); a client's keys therefore live in one cluster slot.
//!
//! | key | type | content |
//! |---|---|---|
//! | `P:{c:<id>}:r` | string | session record: the session exists iff this key does |
//! | `P:{c:<id>}:s` | hash | filter → QoS (`0`/`1`/`2`) |
//! | `P:{c:<id>}:h` | set | held message ids (8 bytes BE), queued *or* in flight |
//! | `P:{c:<id>}:w` | hash | in-flight window: packet id (2 bytes BE) → message id, QoS, RETAIN, phase, send order |
//! | `P:{c:<id>}:i` | set | inbound QoS 2 packet ids (2 bytes BE) |
//! | `P:m:<message id, 16 hex>` | hash | field `b`: the body; one field `h:<client id>` per client holding it, its value the delivery's QoS digit then `r` if RETAIN (`1`, `0r`) |
//! | `P:layout` | string | the version of this layout (2, see "Layout versions") |
//! | `P:{i:<n>}`, n in 0..16 | set | index of persistent sessions (client ids), sharded by FNV-1a of the id |
//! | `P:{r:<n>}`, n in 0..16 | hash | retained messages: topic → message, sharded by FNV-1a of the topic |
//! | `P:{n}:members` | hash | cluster members: node → last incarnation that heartbeated (decimal) |
//! | `P:{n:<node>}:alive` | string | the incarnation whose heartbeat is current (`SET PX` ttl) |
//! | `P:{n:<node>}:fence:<incarnation>` | string | the adopter of that incarnation (`SET NX`, one day) |
//! | `P:{n:<node>}:inbox` | stream | the node's inbox: one field `e`, the encoded entry (`XADD *`, `XDEL` on ack, never trimmed) |
//! | `P:{n:<node>}:routes` | hash | filter → `1` |
//! | `P:{n:<node>}:presence` | hash | client id → presence (epoch, since, will) |
//! | `P:{n:<node>}:owned` | set | client ids the node owns |
//! | `P:{c:<id>}:e` | string | the client id's ownership epoch (`INCR`) |
//! | `P:{c:<id>}:o` | string | its owner: epoch and node (`SET … GET`) |
//! | `P:{x:<space>}:k:<key>` | string | a record (`SET`, `PX` with a time to live) |
//! | `P:{x:<space>}:i` | sorted set | index of the records of a space: key → expiry (Unix ms, `+inf`); `scan_records` reads it, not `SCAN` |
//! | `P:l:<space>:{<key>}` | list | a log, newest first (`LPUSH` + `LTRIM`); in its key's slot (a space may hold a log per client) |
//!
//! The queue is the held set minus the ids in the window, in id order
//! ([`MessageId::queue_order`](easy_mqtt_core::storage::MessageId::queue_order)),
//! each with the flags of its holder field; the window is in send order. Bodies and retained messages use a compact
//! binary format (see the `codec` module): payloads round-trip byte for
//! byte. Sharding the index and the retained messages over 16 hash tags
//! spreads them over the cluster instead of making one hot slot.
//!
//! # How each op stays idempotent without transactions
//!
//! `apply` reads what the batch depends on (session existence, the window,
//! the held-set entries it names), simulates the batch on it exactly like
//! the reference backend, and writes the effect of each effective op with
//! commands that set or remove a definite value:
//!
//! - `PutSession`: `SET r NX` (an existing record is kept). For a session
//!   that did not exist, its other keys are deleted first (leftovers of an
//!   earlier life cannot resurface). Index: `SADD`.
//! - `DeleteSession`: one `DEL` of the five keys (atomic: same slot), then
//!   the holder fields are removed, then the index entry (`SREM`).
//! - `Subscribe`/`Unsubscribe`: `HSET`/`HDEL`.
//! - `PutMessage`: `HSETNX m:<id> b`, before anything refers to it.
//! - `Enqueue`: the holder field `h:<client>` is set first (`HSET`, its
//!   value the delivery's flags), then `SADD h`, which leaves an id already
//!   held where it is. It reads nothing but its session's existence
//!   (`EXISTS r`): what it would learn from the held set only matters to a
//!   later op naming the id, which reads it. A routing batch therefore
//!   costs one `EXISTS` and one `SADD` per session (one member per
//!   publication) plus one `HSET` of up to 1,024 holder fields per body.
//!   The holder field's last write wins, so an `Enqueue` of an id already
//!   queued sets its flags (the reference does the same); an id in flight
//!   keeps those of its window entry.
//! - `Dequeue`: `SREM h`, then the holder field goes.
//! - `SetInflight`: one `HSET w` (the id stays in the held set; an id in
//!   the window is not queued), so the move from queue to window is a
//!   single command; the entry takes the op's flags (those it was sent
//!   with), so a send reads no more than whether its id is queued. Replacing another message under the same packet id
//!   removes that one from the held set first.
//! - `CompleteInflight`: `SREM h` then `HDEL w`: in between, the entry is
//!   still in flight (not queued), and a replay completes it. An entry
//!   that this batch's own `SetInflight` created is never written: its
//!   `HSET` is dropped and the `SREM` alone takes the id from queued to
//!   gone (the journal lags behind the socket under load, so a PUBLISH
//!   and its PUBACK often share a batch). A session
//!   touched by nothing but `CompleteInflight`s (and `Enqueue`s) in the
//!   batch reads the window entries they name (`HMGET`), not the whole
//!   window.
//! - Inbound QoS 2: `SADD`/`SREM`. Retained: `HSET`/`HDEL` in the shard.
//!
//! Sending a phase again after a partial failure is therefore harmless (the
//! last write of each field wins, `NX` writes repeat nothing), and so is
//! applying a whole batch again: the simulation of the replay starts from
//! the state the first attempt left, and the ops are idempotent there.
//!
//! Bodies are reference-counted by *holder fields* rather than a counter:
//! adding or removing a holder twice is harmless, where `INCR`/`DECR` would
//! not be. A body whose hash is left with its `b` field only is deleted in
//! a last round trip (`HLEN` = 1 and `HEXISTS b`).
//!
//! # Layout versions
//!
//! `P:layout` names the version of the layout above. Connecting migrates
//! a store in an older one first, and refuses a newer one. Layout 1 kept
//! the held ids in a sorted set `P:{c:<id>}:q` scored by order and flags;
//! its migration is resumable and logged (the `migrate` module). All
//! brokers of an older layout must be stopped before one of a newer layout
//! starts.
//!
//! # Errors
//!
//! Connection failures and timeouts are [`StorageError::Unavailable`];
//! `TRYAGAIN` (slot migration) is retried with a doubling back-off a few
//! times, then Unavailable; data this backend cannot decode (or a key of
//! the wrong type) is [`StorageError::Corrupt`] naming the key. Every round
//! trip is bounded by [`KvrocksSettings::timeout`] from when it is sent;
//! a round trip carries at most 2,000 commands (a longer phase is sent as
//! consecutive pipelines), and only a bounded number of large pipelines and
//! large batches run at once, the others wait for their turn as long as
//! the server keeps answering (see the `conn` module). So a call's time
//! grows with its size and with the load, not a call that is merely queued
//! fails (a routing batch of 19,500 enqueues among 300 others, sent as one
//! pipeline, timed out and was retried whole, without end).
//!
//! # Assumptions
//!
//! One writer per session at a time (the broker's single owner per client
//! id): two concurrent `apply` calls touching the same session may
//! interleave.
//!
//! A batch cut short (connection lost, broker killed) never leaves a queue
//! or window entry without its body, and applying it again completes it.
//! Nor does it retire a cluster obligation whose work it had not written:
//! `InboxAck`, `Disown`, `ClearPresence`, `RemoveRoute`, `DeleteRecord`
//! and `PushLog` are sent after the session writes of their batch, so a
//! cut batch leaves the inbox entry to be served again (by the node or its
//! adopter) rather than removed with its deliveries unwritten.
//!
//! # Leaked bodies
//!
//! A cut batch can leak bodies (space only, never wrong data):
//!
//! - **No holder**: `apply` removes the last holder field (`HDEL m:<id>
//!   h:<client>`, in the round trip after the `SREM`/`HDEL w` of a
//!   `Dequeue`, `CompleteInflight` or `DeleteSession`), then reads `HLEN`
//!   and `HEXISTS b`, then `DEL`s the hash in a last round trip. A cut
//!   after the `HDEL` and before that `DEL` leaves `m:<id>` with its `b`
//!   field only, and a replay no longer sees the reference it dropped. So
//!   does a batch cut between `PutMessage` (`HSETNX b`, first round trip
//!   of writes) and the `HSET` of its holders when it is never replayed
//!   (the broker gave up on it).
//!   [`KvrocksStorage::sweep_leaked_bodies`] deletes these: the broker
//!   runs it after recovery at start, then every 10 minutes, each round
//!   bounded (`SCAN … COUNT`), for bodies whose id is older than 10
//!   minutes.
//! - **Stale holder**: a batch cut between the `HSET` of a holder field and
//!   the `SADD` of the queue entry, never replayed, pins the body with a
//!   holder whose queue does not hold the id. The sweeper leaves these
//!   (telling them from a live holder takes a read of that session's
//!   queue); they are rare (the broker replays a failed batch until it
//!   succeeds or the connection closes) and are deleted with their session.

mod apply;
mod cluster;
mod codec;
mod conn;
mod keys;
mod load;
mod migrate;
mod reply;
mod settings;
mod simulate;
mod sweep;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use easy_mqtt_core::cluster::{
    BusEntry, Claim, Cluster, InboxId, Liveness, Member, Owner, Presence,
};
use easy_mqtt_core::packet::ByteStr;
use easy_mqtt_core::session::Message;
use easy_mqtt_core::storage::{
    BoxFuture, Op, SessionSubscriptions, Storage, StorageError, StoredSession,
};

pub use settings::KvrocksSettings;
pub use sweep::SweepRound;

/// Connects to Kvrocks: the same as [`KvrocksStorage::connect`].
pub async fn connect(settings: KvrocksSettings) -> Result<KvrocksStorage, StorageError> {
    KvrocksStorage::connect(settings).await
}

/// The Kvrocks [`Storage`] backend. Durable: what `apply` acknowledged is in
/// Kvrocks' write-ahead log.
pub struct KvrocksStorage {
    redis: conn::Redis,
    keys: keys::Keys,
    /// Where [`KvrocksStorage::sweep_leaked_bodies`] stands.
    sweep: Mutex<sweep::SweepCursor>,
}

impl std::fmt::Debug for KvrocksStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvrocksStorage")
            .field("cluster", &self.redis.is_cluster())
            .field("key_prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl KvrocksStorage {
    /// Connects: one node = standalone, several = cluster. Fails with
    /// [`StorageError::Unavailable`] if no connection can be made within
    /// `connect_timeout + timeout`, or if the settings are unusable. Brings
    /// keys stored in an older layout up to date first (see "Layout
    /// versions" in the crate documentation), and fails with
    /// [`StorageError::Invalid`] on a layout newer than this backend's.
    pub async fn connect(settings: KvrocksSettings) -> Result<KvrocksStorage, StorageError> {
        let redis = conn::Redis::connect(&settings).await?;
        let keys = keys::Keys::new(&settings.key_prefix);
        let migrated = migrate::migrate(&redis, &keys).await?;
        if migrated.from != migrate::LAYOUT {
            tracing::info!(
                from = migrated.from,
                to = migrate::LAYOUT,
                sessions = migrated.sessions,
                held = migrated.held,
                "kvrocks: stored layout migrated"
            );
        }
        Ok(KvrocksStorage {
            redis,
            keys,
            sweep: Mutex::new(sweep::SweepCursor::default()),
        })
    }

    /// Whether this backend talks to a cluster.
    pub fn is_cluster(&self) -> bool {
        self.redis.is_cluster()
    }

    /// One round of the sweeper of leaked bodies (see "Leaked bodies" in
    /// the crate documentation): scans at most about `budget` body keys,
    /// continuing where the previous round stopped, and deletes those whose
    /// hash holds the body only (no holder) and whose id is older than
    /// `grace`. A pass over every key takes as many rounds as it needs;
    /// [`SweepRound::pass_complete`] tells when one ended. Rounds are meant
    /// to run one at a time (a round running beside another starts its own
    /// pass, which is harmless but wasted work). `grace` must be well above
    /// the longest a routing batch is retried (the broker's connect
    /// timeout); the broker uses 10 minutes.
    pub async fn sweep_leaked_bodies(
        &self,
        grace: Duration,
        budget: usize,
    ) -> Result<SweepRound, StorageError> {
        let mut cursor = std::mem::take(
            &mut *self
                .sweep
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let result = sweep::round(&self.redis, &self.keys, &mut cursor, grace, budget).await;
        if result.is_ok() {
            *self
                .sweep
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = cursor;
        }
        result
    }

    /// Round trips sent since connecting (a phase sent to several cluster
    /// nodes at once counts once; retries count).
    pub fn round_trips(&self) -> u64 {
        self.redis.round_trips()
    }

    /// Commands sent in pipelines since connecting (retries count).
    pub fn commands_sent(&self) -> u64 {
        self.redis.commands_sent()
    }
}

impl Storage for KvrocksStorage {
    fn name(&self) -> &'static str {
        "kvrocks"
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn apply(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move { apply::apply(&self.redis, &self.keys, ops.iter().collect()).await })
    }

    /// By reference: the journal writer's merged batch is not copied.
    fn apply_parts(&self, parts: Vec<Arc<Vec<Op>>>) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            let ops = parts.iter().flat_map(|part| part.iter()).collect();
            apply::apply(&self.redis, &self.keys, ops).await
        })
    }

    fn load_session<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredSession>, StorageError>> {
        Box::pin(load::load_session(&self.redis, &self.keys, client_id))
    }

    fn load_subscriptions(&self) -> BoxFuture<'_, Result<Vec<SessionSubscriptions>, StorageError>> {
        Box::pin(load::load_subscriptions(&self.redis, &self.keys))
    }

    fn load_retained(&self) -> BoxFuture<'_, Result<Vec<Arc<Message>>, StorageError>> {
        Box::pin(load::load_retained(&self.redis, &self.keys))
    }

    fn cluster(&self) -> Option<&dyn Cluster> {
        Some(self)
    }
}

/// The cluster state (see the `cluster` module for what each call costs).
impl Cluster for KvrocksStorage {
    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        incarnation: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Liveness, StorageError>> {
        Box::pin(cluster::heartbeat(
            &self.redis,
            &self.keys,
            node,
            incarnation,
            ttl,
        ))
    }

    fn members(&self) -> BoxFuture<'_, Result<Vec<Member>, StorageError>> {
        Box::pin(cluster::members(&self.redis, &self.keys))
    }

    fn claim_adoption<'a>(
        &'a self,
        dead: &'a str,
        incarnation: u64,
        by: &'a str,
    ) -> BoxFuture<'a, Result<bool, StorageError>> {
        Box::pin(cluster::claim_adoption(
            &self.redis,
            &self.keys,
            dead,
            incarnation,
            by,
        ))
    }

    fn adopter<'a>(
        &'a self,
        dead: &'a str,
        incarnation: u64,
    ) -> BoxFuture<'a, Result<Option<ByteStr>, StorageError>> {
        Box::pin(cluster::adopter(&self.redis, &self.keys, dead, incarnation))
    }

    fn forget_member<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(cluster::forget_member(&self.redis, &self.keys, node))
    }

    fn claim_owner<'a>(
        &'a self,
        client_id: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Claim, StorageError>> {
        Box::pin(cluster::claim_owner(
            &self.redis,
            &self.keys,
            client_id,
            node,
        ))
    }

    fn owner<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Owner>, StorageError>> {
        Box::pin(cluster::owner(&self.redis, &self.keys, client_id))
    }

    fn owned_by<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<ByteStr>, StorageError>> {
        Box::pin(cluster::owned_by(&self.redis, &self.keys, node))
    }

    fn responsible<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ByteStr>, StorageError>> {
        Box::pin(cluster::responsible(&self.redis, &self.keys, client_id))
    }

    fn presence<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<Presence>, StorageError>> {
        Box::pin(cluster::presence(&self.redis, &self.keys, node))
    }

    fn routes(&self) -> BoxFuture<'_, Result<easy_mqtt_core::cluster::NodeRoutes, StorageError>> {
        Box::pin(cluster::routes(&self.redis, &self.keys))
    }

    fn read_inbox<'a>(
        &'a self,
        node: &'a str,
        after: Option<InboxId>,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<(InboxId, BusEntry)>, StorageError>> {
        Box::pin(cluster::read_inbox(
            &self.redis,
            &self.keys,
            node,
            after,
            max,
            wait,
        ))
    }

    fn get_record<'a>(
        &'a self,
        space: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>> {
        Box::pin(cluster::get_record(&self.redis, &self.keys, space, key))
    }

    fn scan_records<'a>(
        &'a self,
        space: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(ByteStr, Bytes)>, StorageError>> {
        Box::pin(cluster::scan_records(&self.redis, &self.keys, space))
    }

    fn read_log<'a>(
        &'a self,
        space: &'a str,
        key: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, StorageError>> {
        Box::pin(cluster::read_log(&self.redis, &self.keys, space, key, max))
    }
}
