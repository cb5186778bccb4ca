//! The loads: one session, every session's subscriptions, every retained
//! message.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use easy_mqtt_core::packet::{ByteStr, PacketId, QoS};
use easy_mqtt_core::session::Message;
use easy_mqtt_core::storage::{
    MessageId, SessionRecord, SessionSubscriptions, StorageError, StoredDelivery, StoredInflight,
    StoredSession,
};
use redis::Value;

use crate::codec::{self, Held, WindowEntry};
use crate::conn::{Command, Redis};
use crate::keys::{BODY_FIELD, HolderField, Keys, SHARDS, SessionKeys};
use crate::reply;

/// How many entries one `SSCAN`/`HSCAN` call asks for.
const SCAN_COUNT: usize = 1000;
/// How many sessions one round trip of `load_subscriptions` reads.
pub(crate) const SESSIONS_PER_ROUND_TRIP: usize = 500;

fn corrupt(key: &str, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn take(values: &mut std::vec::IntoIter<Value>) -> Value {
    values.next().unwrap_or(Value::Nil)
}

/// Decodes a session record read at `keys.record`, checking it names
/// `client_id`.
fn record(
    keys: &SessionKeys,
    client_id: &str,
    bytes: &[u8],
) -> Result<SessionRecord, StorageError> {
    let record = codec::decode_record(&keys.record, bytes)?;
    if record.client_id != client_id {
        return Err(corrupt(
            &keys.record,
            format!("record names client {:?}", record.client_id.as_str()),
        ));
    }
    Ok(record)
}

/// Subscriptions in filter order.
fn subscriptions(keys: &SessionKeys, value: Value) -> Result<Vec<(ByteStr, QoS)>, StorageError> {
    let key = &keys.subscriptions;
    let mut subscriptions = reply::pairs(key, value)?
        .into_iter()
        .map(|(filter, qos)| {
            Ok((
                codec::decode_utf8(key, filter)?,
                codec::decode_qos_digit(key, &qos)?,
            ))
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(subscriptions)
}

pub(crate) fn window(
    keys: &SessionKeys,
    value: Value,
) -> Result<Vec<(PacketId, WindowEntry)>, StorageError> {
    let key = &keys.window;
    reply::pairs(key, value)?
        .into_iter()
        .map(|(packet_id, entry)| {
            Ok((
                codec::decode_packet_id(key, &packet_id)?,
                codec::decode_window(key, &entry)?,
            ))
        })
        .collect()
}

/// Held ids (an `SMEMBERS` answer) in queue order.
pub(crate) fn held(keys: &SessionKeys, value: Value) -> Result<Vec<MessageId>, StorageError> {
    let key = &keys.held;
    let mut held = reply::members(key, value)?
        .iter()
        .map(|member| codec::decode_message_id(key, member))
        .collect::<Result<Vec<_>, _>>()?;
    held.sort_unstable_by_key(|id| id.queue_order());
    Ok(held)
}

/// The queue: the held ids minus those in the window (an id in flight
/// stays in the held set until its flow completes).
fn queue_of(mut held: Vec<MessageId>, window: &[(PacketId, WindowEntry)]) -> Vec<MessageId> {
    let in_window: HashSet<MessageId> = window.iter().map(|(_, entry)| entry.id).collect();
    held.retain(|id| !in_window.contains(id));
    held
}

/// The ids of a session's queue in queue order, from its held set (an
/// `SMEMBERS` answer) and its window (an `HGETALL` answer).
fn queued(
    keys: &SessionKeys,
    held_value: Value,
    window_value: Value,
) -> Result<Vec<MessageId>, StorageError> {
    let window = window(keys, window_value)?;
    Ok(queue_of(held(keys, held_value)?, &window))
}

pub(crate) async fn load_session(
    redis: &Redis,
    keys: &Keys,
    client_id: &str,
) -> Result<Option<StoredSession>, StorageError> {
    let deadline = redis.deadline();
    let session = keys.session(client_id);
    let commands = [
        Command::new("GET", &session.record),
        Command::new("HGETALL", &session.subscriptions),
        Command::new("SMEMBERS", &session.held),
        Command::new("HGETALL", &session.window),
        Command::new("SMEMBERS", &session.inbound),
    ];
    let mut values = redis.run(&commands, deadline).await?.into_iter();
    let Some(record_bytes) = reply::optional_bytes(&session.record, take(&mut values))? else {
        return Ok(None);
    };
    let record = record(&session, client_id, &record_bytes)?;
    let subscriptions = subscriptions(&session, take(&mut values))?;
    let held = held(&session, take(&mut values))?;
    let mut window = window(&session, take(&mut values))?;
    window.sort_by_key(|(packet_id, entry)| (entry.order, *packet_id));
    let mut inbound_qos2 = reply::members(&session.inbound, take(&mut values))?
        .iter()
        .map(|member| codec::decode_packet_id(&session.inbound, member))
        .collect::<Result<Vec<_>, _>>()?;
    inbound_qos2.sort_unstable();

    let queue = queue_of(held, &window);

    let mut ids: Vec<MessageId> = window.iter().map(|(_, entry)| entry.id).collect();
    ids.extend(&queue);
    let bodies = load_bodies(redis, keys, client_id, &ids, deadline).await?;
    let body = |id: MessageId| -> Result<&Loaded, StorageError> {
        bodies.get(&id).ok_or_else(|| {
            corrupt(
                &keys.body(id),
                format!("message body referenced by session {client_id:?} is not stored"),
            )
        })
    };

    let inflight = window
        .into_iter()
        .map(|(packet_id, entry)| {
            let loaded = body(entry.id)?;
            Ok(StoredInflight {
                packet_id,
                delivery: StoredDelivery {
                    id: entry.id,
                    message: Arc::clone(&loaded.message),
                    qos: entry.qos,
                    retain: entry.retain,
                    at_ms: loaded.at_ms,
                },
                phase: entry.phase,
            })
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    let queue = queue
        .into_iter()
        .map(|id| {
            let loaded = body(id)?;
            // Written before the id entered the held set, removed only
            // after it left.
            let held = loaded.held.ok_or_else(|| {
                corrupt(
                    &keys.body(id),
                    format!("queued for session {client_id:?} without its holder field"),
                )
            })?;
            Ok(StoredDelivery {
                id,
                message: Arc::clone(&loaded.message),
                qos: held.qos,
                retain: held.retain,
                at_ms: loaded.at_ms,
            })
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    Ok(Some(StoredSession {
        record,
        subscriptions,
        inflight,
        queue,
        inbound_qos2,
    }))
}

/// A stored body, its time, and the flags in a client's holder field.
struct Loaded {
    message: Arc<Message>,
    at_ms: u64,
    held: Option<Held>,
}

/// The stored bodies among `ids`, with `client_id`'s holder fields
/// (missing bodies are left out).
async fn load_bodies(
    redis: &Redis,
    keys: &Keys,
    client_id: &str,
    ids: &[MessageId],
    deadline: std::time::Instant,
) -> Result<HashMap<MessageId, Loaded>, StorageError> {
    let mut distinct: Vec<MessageId> = ids.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let commands: Vec<Command> = distinct
        .iter()
        .map(|id| {
            Command::new("HMGET", &keys.body(*id))
                .arg(BODY_FIELD)
                .arg(HolderField(client_id))
        })
        .collect();
    let values = redis.run(&commands, deadline).await?;
    let mut bodies = HashMap::with_capacity(distinct.len());
    for ((id, command), value) in distinct.iter().zip(&commands).zip(values) {
        let key = &command.key;
        let mut fields = reply::items(key, value)?.into_iter();
        let (Some(body), Some(holder)) = (fields.next(), fields.next()) else {
            return Err(corrupt(key, "HMGET of two fields answered otherwise"));
        };
        if let Some(bytes) = reply::optional_bytes(key, body)? {
            let (message, at_ms) = codec::decode_body(key, &bytes)?;
            let held = (reply::optional_bytes(key, holder)?)
                .map(|flags| Held::decode(key, &flags))
                .transpose()?;
            bodies.insert(
                *id,
                Loaded {
                    message: Arc::new(message),
                    at_ms,
                    held,
                },
            );
        }
    }
    Ok(bodies)
}

/// Scans every shard (`SSCAN`/`HSCAN` on `key(shard)`) to the end, one
/// round trip per page of all shards at once.
async fn scan_shards(
    redis: &Redis,
    command: &'static str,
    key: impl Fn(u16) -> String,
) -> Result<Vec<(String, Value)>, StorageError> {
    let mut cursors: Vec<(String, Vec<u8>)> = (0..SHARDS)
        .map(|shard| (key(shard), b"0".to_vec()))
        .collect();
    let mut pages = Vec::new();
    while !cursors.is_empty() {
        let commands: Vec<Command> = cursors
            .iter()
            .map(|(key, cursor)| {
                Command::new(command, key)
                    .arg(cursor.as_slice())
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
            })
            .collect();
        // Each page has its own deadline: a large store takes many pages.
        let values = redis.run(&commands, redis.deadline()).await?;
        let mut next = Vec::new();
        for ((key, _), value) in cursors.into_iter().zip(values) {
            let (cursor, page) = reply::scan_page(&key, value)?;
            if cursor != b"0" {
                next.push((key.clone(), cursor));
            }
            pages.push((key, page));
        }
        cursors = next;
    }
    Ok(pages)
}

/// Every client id in the index of persistent sessions.
pub(crate) async fn indexed_client_ids(
    redis: &Redis,
    keys: &Keys,
) -> Result<Vec<ByteStr>, StorageError> {
    let mut client_ids: Vec<ByteStr> = Vec::new();
    let mut seen: HashSet<ByteStr> = HashSet::new();
    for (key, page) in scan_shards(redis, "SSCAN", |shard| keys.index(shard)).await? {
        for member in reply::members(&key, page)? {
            let client_id = codec::decode_utf8(&key, member)?;
            if seen.insert(client_id.clone()) {
                client_ids.push(client_id);
            }
        }
    }
    Ok(client_ids)
}

pub(crate) async fn load_subscriptions(
    redis: &Redis,
    keys: &Keys,
) -> Result<Vec<SessionSubscriptions>, StorageError> {
    let client_ids = indexed_client_ids(redis, keys).await?;
    let mut sessions = Vec::with_capacity(client_ids.len());
    for chunk in client_ids.chunks(SESSIONS_PER_ROUND_TRIP) {
        let session_keys: Vec<SessionKeys> = chunk.iter().map(|id| keys.session(id)).collect();
        let commands: Vec<Command> = session_keys
            .iter()
            .flat_map(|session| {
                [
                    Command::new("GET", &session.record),
                    Command::new("HGETALL", &session.subscriptions),
                    Command::new("SMEMBERS", &session.held),
                    Command::new("HGETALL", &session.window),
                ]
            })
            .collect();
        let mut values = redis.run(&commands, redis.deadline()).await?.into_iter();
        for (client_id, session) in chunk.iter().zip(&session_keys) {
            let record_value = take(&mut values);
            let subscriptions_value = take(&mut values);
            let held_value = take(&mut values);
            let window_value = take(&mut values);
            // An index entry without a record: a session deleted (or a
            // batch cut short) after the entry was written; not a session.
            let Some(bytes) = reply::optional_bytes(&session.record, record_value)? else {
                continue;
            };
            let record = record(session, client_id, &bytes)?;
            sessions.push(SessionSubscriptions {
                record,
                subscriptions: subscriptions(session, subscriptions_value)?,
                queued: queued(session, held_value, window_value)?,
            });
        }
    }
    Ok(sessions)
}

pub(crate) async fn load_retained(
    redis: &Redis,
    keys: &Keys,
) -> Result<Vec<Arc<Message>>, StorageError> {
    let mut retained = Vec::new();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    for (key, page) in scan_shards(redis, "HSCAN", |shard| keys.retained(shard)).await? {
        for (topic, bytes) in reply::pairs(&key, page)? {
            let message = codec::decode_message(&key, &bytes)?;
            if message.topic.as_bytes().as_ref() != topic.as_slice() {
                return Err(corrupt(&key, "retained message stored under another topic"));
            }
            if seen.insert(topic) {
                retained.push(Arc::new(message));
            }
        }
    }
    Ok(retained)
}
