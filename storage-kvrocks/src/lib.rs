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
//! | `P:{c:<id>}:q` | sorted set | held message ids (8 bytes BE), queued *or* in flight; score = order × 8 + QoS × 2 + RETAIN |
//! | `P:{c:<id>}:w` | hash | in-flight window: packet id (2 bytes BE) → message id, QoS, RETAIN, phase, send order |
//! | `P:{c:<id>}:i` | set | inbound QoS 2 packet ids (2 bytes BE) |
//! | `P:m:<message id, 16 hex>` | hash | field `b`: the body; one field `h:<client id>` per client holding it |
//! | `P:{i:<n>}`, n in 0..16 | set | index of persistent sessions (client ids), sharded by FNV-1a of the id |
//! | `P:{r:<n>}`, n in 0..16 | hash | retained messages: topic → message, sharded by FNV-1a of the topic |
//!
//! The queue is the held set minus the ids in the window, in score order;
//! the window is in send order. Bodies and retained messages use a compact
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
//! - `Enqueue`: the holder field `h:<client>` is set first (`HSET`), then
//!   `ZADD q NX`, which never moves or changes an id already held.
//! - `Dequeue`: `ZREM q`, then the holder field goes.
//! - `SetInflight`: one `HSET w` (the id stays in the held set; an id in
//!   the window is not queued), so the move from queue to window is a
//!   single command. Replacing another message under the same packet id
//!   removes that one from the held set first.
//! - `CompleteInflight`: `ZREM q` then `HDEL w`: in between, the entry is
//!   still in flight (not queued), and a replay completes it.
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
//! # Errors
//!
//! Connection failures and timeouts are [`StorageError::Unavailable`];
//! `TRYAGAIN` (slot migration) is retried with a doubling back-off a few
//! times, then Unavailable; data this backend cannot decode (or a key of
//! the wrong type) is [`StorageError::Corrupt`] naming the key. Every call
//! is bounded by [`KvrocksSettings::timeout`] (the loads of all sessions
//! and all retained messages: per round trip, since they page).
//!
//! # Assumptions
//!
//! One writer per session at a time (the broker's single owner per client
//! id): two concurrent `apply` calls touching the same session may
//! interleave.
//!
//! A batch cut short (connection lost, broker killed) never leaves a queue
//! or window entry without its body, and applying it again completes it.
//! It can leak bodies: pinned by a holder whose queue never got the entry
//! (if never replayed), or left with no holder when the cut falls between
//! dropping the last reference and deleting the body (a replay no longer
//! sees that reference). Leaks cost space only; a sweeper that removes
//! holder fields older than a grace period without a matching entry, and
//! bodies with no holder, would reclaim them.

mod apply;
mod codec;
mod conn;
mod keys;
mod load;
mod reply;
mod settings;

use std::sync::Arc;

use easy_mqtt_core::session::Message;
use easy_mqtt_core::storage::{
    BoxFuture, Op, SessionSubscriptions, Storage, StorageError, StoredSession,
};

pub use settings::KvrocksSettings;

/// Connects to Kvrocks: the same as [`KvrocksStorage::connect`].
pub async fn connect(settings: KvrocksSettings) -> Result<KvrocksStorage, StorageError> {
    KvrocksStorage::connect(settings).await
}

/// The Kvrocks [`Storage`] backend. Durable: what `apply` acknowledged is in
/// Kvrocks' write-ahead log.
pub struct KvrocksStorage {
    redis: conn::Redis,
    keys: keys::Keys,
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
    /// `connect_timeout + timeout`, or if the settings are unusable.
    pub async fn connect(settings: KvrocksSettings) -> Result<KvrocksStorage, StorageError> {
        let redis = conn::Redis::connect(&settings).await?;
        Ok(KvrocksStorage {
            redis,
            keys: keys::Keys::new(&settings.key_prefix),
        })
    }

    /// Whether this backend talks to a cluster.
    pub fn is_cluster(&self) -> bool {
        self.redis.is_cluster()
    }

    /// Round trips sent since connecting (a phase sent to several cluster
    /// nodes at once counts once; retries count).
    pub fn round_trips(&self) -> u64 {
        self.redis.round_trips()
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
        Box::pin(apply::apply(&self.redis, &self.keys, ops))
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
}
