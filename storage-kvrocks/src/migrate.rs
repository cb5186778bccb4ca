//! The version of the stored layout, and the migration to it.
//!
//! `P:layout` holds the version of the layout the keys are in ([`LAYOUT`]).
//! [`KvrocksStorage::connect`](crate::KvrocksStorage::connect) brings an
//! older store up to date before it returns, and refuses a newer one.
//!
//! **Layout 1** (no `P:layout` key) kept a session's held ids in a sorted
//! set `P:{c:<id>}:q`, scored by order × 8 + QoS × 2 + RETAIN, and every
//! holder field was `1`. **Layout 2** keeps them in a plain set
//! `P:{c:<id>}:h`, in id order (the order layout 1 wrote too: an id's
//! sequence), and a delivery's flags in its holder field. Adding to a
//! sorted set was the storage server's largest cost when a publication
//! reached many persistent sessions: a linear insert into a small sorted
//! set's listpack in Redis, two RocksDB keys per member in Kvrocks, where
//! a plain set takes one.
//!
//! The migration reads each indexed session's sorted set, writes its
//! holder fields and its set, then deletes the sorted set; a session whose
//! sorted set is gone is done. Every step sets a definite value, so a
//! migration cut short (a crash, a lost connection) is simply run again by
//! the next start; `P:layout` is written last. Brokers of layout 1 must
//! all be stopped before one of layout 2 starts: they would go on writing
//! sorted sets that no one reads.

use easy_mqtt_core::storage::StorageError;

use crate::codec::{self, Held};
use crate::conn::{Command, Redis};
use crate::keys::{HolderField, Keys};
use crate::load::{self, SESSIONS_PER_ROUND_TRIP};
use crate::reply;

/// The layout this backend reads and writes.
pub(crate) const LAYOUT: u64 = 2;

/// What [`migrate`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Migrated {
    /// The layout the store was in.
    pub from: u64,
    /// Sessions whose held ids moved.
    pub sessions: usize,
    /// Held ids moved.
    pub held: usize,
}

/// Brings the store to [`LAYOUT`]; an error if it is newer.
pub(crate) async fn migrate(redis: &Redis, keys: &Keys) -> Result<Migrated, StorageError> {
    let key = keys.layout();
    let mut values = redis
        .run(&[Command::new("GET", &key)], redis.deadline())
        .await?;
    let stored = values.pop().unwrap_or(redis::Value::Nil);
    let from = match reply::optional_bytes(&key, stored)? {
        Some(bytes) => codec::decode_u64(&key, &bytes)?,
        None => 1,
    };
    let mut migrated = Migrated {
        from,
        ..Migrated::default()
    };
    if from == LAYOUT {
        return Ok(migrated);
    }
    if from > LAYOUT {
        return Err(StorageError::Invalid(format!(
            "the keys under prefix {:?} are in layout {from}, newer than this broker's \
             ({LAYOUT}): run a broker version that knows it",
            keys.prefix()
        )));
    }
    let client_ids = load::indexed_client_ids(redis, keys).await?;
    for chunk in client_ids.chunks(SESSIONS_PER_ROUND_TRIP) {
        let reads: Vec<Command> = chunk
            .iter()
            .map(|id| {
                Command::new("ZRANGE", &keys.legacy_held(id))
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
            })
            .collect();
        let values = redis.run(&reads, redis.deadline()).await?;
        let mut writes = Vec::new();
        let mut deletes = Vec::new();
        for ((client_id, read), value) in chunk.iter().zip(&reads).zip(values) {
            let entries = reply::scored(&read.key, value)?;
            if entries.is_empty() {
                continue;
            }
            let mut add = Command::with_capacity(
                "SADD",
                &keys.session(client_id).held,
                entries.len(),
                entries.len() * codec::MESSAGE_ID_LEN,
            );
            for (member, score) in &entries {
                let id = codec::decode_message_id(&read.key, member)?;
                let held = Held::from_legacy_score(&read.key, *score)?;
                writes.push(
                    Command::new("HSET", &keys.body(id))
                        .arg(HolderField(client_id))
                        .arg(held.encode()),
                );
                add.push_arg(member.as_slice());
            }
            writes.push(add);
            deletes.push(Command::new("DEL", &read.key));
            migrated.sessions += 1;
            migrated.held += entries.len();
        }
        // The new entries are whole before the old ones go.
        redis.run_owned(writes, redis.deadline()).await?;
        redis.run_owned(deletes, redis.deadline()).await?;
    }
    redis
        .run(&[Command::new("SET", &key).arg(LAYOUT)], redis.deadline())
        .await?;
    Ok(migrated)
}
