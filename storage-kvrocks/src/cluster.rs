//! The cluster port ([`easy_mqtt_core::cluster`]) on Kvrocks: the writes of
//! [`ClusterOp`] (sent by `apply` before or after its session writes, see
//! [`leads`]) and the reads and
//! claims of [`Cluster`](easy_mqtt_core::cluster::Cluster). Key layout: see
//! the crate documentation.
//!
//! Only plain single-key commands, as for sessions. What that costs:
//!
//! - A heartbeat checks the fence (`EXISTS`) and then renews (`SET PX`,
//!   `HSET` of the members): a heartbeat racing with a winning adoption
//!   (one that arrives after its time to live expired) may answer `Alive`
//!   once; the next one answers `Fenced`.
//! - `claim_owner` is `INCR` of the epoch, then `SET … GET` of the owner,
//!   then the owned-by sets: two claims of one client id at the same
//!   moment may leave the lower epoch stored as owner; the broker settles
//!   that through `Kick` (a higher epoch kicks back). A claim cut short may
//!   leave the owned-by sets behind the owner record.
//! - `Forward` is `XADD *`: applying its batch again (or a round trip sent
//!   again after a dropped connection) may append the entry twice.
//! - `read_inbox` with a `wait` blocks in `XREAD ... BLOCK` on a
//!   connection of its own (a blocked command would stall the shared,
//!   multiplexed ones), so an entry is read as soon as it is appended. It
//!   polls with `XRANGE` every [`INBOX_POLL`] instead while another read
//!   holds that connection, or after the server refused `BLOCK`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_io::Timer;
use bytes::Bytes;
use easy_mqtt_core::cluster::{
    BusEntry, Claim, ClusterOp, InboxId, Liveness, Member, Owner, Presence,
};
use easy_mqtt_core::packet::ByteStr;
use easy_mqtt_core::storage::StorageError;
use redis::Value;

use crate::codec;
use crate::conn::{Command, Redis};
use crate::keys::Keys;
use crate::reply;

/// How long an adoption's fence lives: far longer than a fenced process
/// can go on heartbeating unnoticed.
const FENCE_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// The inbox field holding the encoded entry.
const ENTRY_FIELD: &str = "e";
/// How often `read_inbox` looks again while it waits.
pub(crate) const INBOX_POLL: Duration = Duration::from_millis(50);
/// Index entries of records that expired this long ago are dropped by
/// `scan_records` (a margin for clocks that differ between nodes).
const INDEX_GRACE_MS: u64 = 60 * 60 * 1000;

fn corrupt(key: &str, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Milliseconds, at least 1 (`PX 0` is an error).
fn millis(time: Duration) -> u64 {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|time| u64::try_from(time.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

fn value(values: &mut std::vec::IntoIter<Value>) -> Value {
    values.next().unwrap_or(Value::Nil)
}

/// Whether `apply` sends this op's writes in its first round trip, before
/// the batch's session writes; the others (they retire an obligation whose
/// work the session writes hold) follow them.
pub(crate) fn leads(op: &ClusterOp) -> bool {
    match op {
        ClusterOp::Forward { .. }
        | ClusterOp::AddRoute { .. }
        | ClusterOp::SetPresence { .. }
        | ClusterOp::PutRecord { .. } => true,
        ClusterOp::InboxAck { .. }
        | ClusterOp::RemoveRoute { .. }
        | ClusterOp::ClearPresence { .. }
        | ClusterOp::Disown { .. }
        | ClusterOp::DeleteRecord { .. }
        | ClusterOp::PushLog { .. } => false,
    }
}

/// The commands of one cluster op, for `apply` (see [`leads`]). Each
/// sets or removes a definite value, except `XADD` (see the module docs).
pub(crate) fn writes(keys: &Keys, op: &ClusterOp) -> Vec<Command> {
    match op {
        ClusterOp::Forward { node, entry } => vec![
            Command::new("XADD", &keys.node(node).inbox)
                .arg("*")
                .arg(ENTRY_FIELD)
                .arg(codec::encode_bus_entry(entry)),
        ],
        ClusterOp::InboxAck { node, entry } => vec![
            Command::new("XDEL", &keys.node(node).inbox).arg(format!("{}-{}", entry.ms, entry.seq)),
        ],
        ClusterOp::AddRoute { node, filter } => vec![
            Command::new("HSET", &keys.node(node).routes)
                .arg(filter.as_str())
                .arg("1"),
        ],
        ClusterOp::RemoveRoute { node, filter } => {
            vec![Command::new("HDEL", &keys.node(node).routes).arg(filter.as_str())]
        }
        ClusterOp::SetPresence { node, presence } => vec![
            Command::new("HSET", &keys.node(node).presence)
                .arg(presence.client_id.as_str())
                .arg(codec::encode_presence(presence)),
        ],
        ClusterOp::Disown { node, client_id } => {
            vec![Command::new("SREM", &keys.node(node).owned).arg(client_id.as_str())]
        }
        ClusterOp::ClearPresence { node, client_id } => {
            vec![Command::new("HDEL", &keys.node(node).presence).arg(client_id.as_str())]
        }
        ClusterOp::PutRecord {
            space,
            key,
            value,
            ttl,
        } => {
            let record = keys.record(space, key);
            let index = keys.record_index(space);
            match ttl {
                // Under a millisecond: expired at once.
                Some(ttl) if *ttl < Duration::from_millis(1) => vec![
                    Command::new("DEL", &record),
                    Command::new("ZREM", &index).arg(key.as_str()),
                ],
                Some(ttl) => {
                    let expires = unix_ms().saturating_add(millis(*ttl));
                    vec![
                        Command::new("ZADD", &index).arg(expires).arg(key.as_str()),
                        Command::new("SET", &record)
                            .arg(value.as_ref())
                            .arg("PX")
                            .arg(millis(*ttl)),
                    ]
                }
                None => vec![
                    Command::new("ZADD", &index).arg("+inf").arg(key.as_str()),
                    Command::new("SET", &record).arg(value.as_ref()),
                ],
            }
        }
        ClusterOp::DeleteRecord { space, key } => vec![
            Command::new("DEL", &keys.record(space, key)),
            Command::new("ZREM", &keys.record_index(space)).arg(key.as_str()),
        ],
        ClusterOp::PushLog {
            space,
            key,
            entry,
            keep,
        } => {
            let log = keys.log(space, key);
            if *keep == 0 {
                return vec![Command::new("DEL", &log)];
            }
            vec![
                Command::new("LPUSH", &log).arg(entry.as_ref()),
                Command::new("LTRIM", &log).arg(0).arg(i64::from(*keep) - 1),
            ]
        }
    }
}

pub(crate) async fn heartbeat(
    redis: &Redis,
    keys: &Keys,
    node: &str,
    incarnation: u64,
    ttl: Duration,
) -> Result<Liveness, StorageError> {
    let deadline = redis.deadline();
    let node_keys = keys.node(node);
    let fence = node_keys.fence(incarnation);
    let values = redis
        .run(&[Command::new("EXISTS", &fence)], deadline)
        .await?;
    if reply::int(&fence, values.first().unwrap_or(&Value::Nil))? != 0 {
        return Ok(Liveness::Fenced);
    }
    let renew = [
        Command::new("SET", &node_keys.alive)
            .arg(incarnation)
            .arg("PX")
            .arg(millis(ttl)),
        Command::new("HSET", &keys.members())
            .arg(node)
            .arg(incarnation),
    ];
    redis.run(&renew, deadline).await?;
    Ok(Liveness::Alive)
}

pub(crate) async fn members(redis: &Redis, keys: &Keys) -> Result<Vec<Member>, StorageError> {
    let deadline = redis.deadline();
    let members_key = keys.members();
    let values = redis
        .run(&[Command::new("HGETALL", &members_key)], deadline)
        .await?;
    let mut registered = Vec::new();
    for (node, incarnation) in reply::pairs(
        &members_key,
        values.into_iter().next().unwrap_or(Value::Nil),
    )? {
        let node = codec::decode_utf8(&members_key, node)?;
        let incarnation = codec::decode_u64(&members_key, &incarnation)?;
        registered.push((node, incarnation));
    }
    let alive_keys: Vec<String> = registered
        .iter()
        .map(|(node, _)| keys.node(node).alive)
        .collect();
    let commands: Vec<Command> = alive_keys
        .iter()
        .map(|key| Command::new("GET", key))
        .collect();
    let mut values = redis.run(&commands, deadline).await?.into_iter();
    let mut members = Vec::with_capacity(registered.len());
    for ((node, incarnation), key) in registered.into_iter().zip(&alive_keys) {
        let alive = reply::optional_bytes(key, value(&mut values))?
            .map(|bytes| codec::decode_u64(key, &bytes))
            .transpose()?;
        members.push(Member {
            node,
            alive,
            incarnation,
        });
    }
    Ok(members)
}

pub(crate) async fn claim_adoption(
    redis: &Redis,
    keys: &Keys,
    dead: &str,
    incarnation: u64,
    by: &str,
) -> Result<bool, StorageError> {
    let deadline = redis.deadline();
    let node_keys = keys.node(dead);
    let values = redis
        .run(&[Command::new("GET", &node_keys.alive)], deadline)
        .await?;
    let alive = reply::optional_bytes(
        &node_keys.alive,
        values.into_iter().next().unwrap_or(Value::Nil),
    )?
    .map(|bytes| codec::decode_u64(&node_keys.alive, &bytes))
    .transpose()?;
    if alive == Some(incarnation) {
        return Ok(false);
    }
    let fence = node_keys.fence(incarnation);
    let claim = Command::new("SET", &fence)
        .arg(by)
        .arg("NX")
        .arg("PX")
        .arg(FENCE_TTL_MS);
    let values = redis.run(&[claim], deadline).await?;
    match values.into_iter().next().unwrap_or(Value::Nil) {
        // Taken: by this claimant itself when this is a retry whose first
        // answer was lost (a timeout after the server set it), and then it
        // still wins, or nobody would ever adopt the node.
        Value::Nil => Ok(adopter(redis, keys, dead, incarnation)
            .await?
            .is_some_and(|winner| winner == by)),
        Value::Okay | Value::SimpleString(_) => Ok(true),
        other => Err(corrupt(
            &fence,
            format!("expected OK or nil, got {other:?}"),
        )),
    }
}

pub(crate) async fn adopter(
    redis: &Redis,
    keys: &Keys,
    dead: &str,
    incarnation: u64,
) -> Result<Option<ByteStr>, StorageError> {
    let fence = keys.node(dead).fence(incarnation);
    let values = redis
        .run(&[Command::new("GET", &fence)], redis.deadline())
        .await?;
    reply::optional_bytes(&fence, values.into_iter().next().unwrap_or(Value::Nil))?
        .map(|bytes| codec::decode_utf8(&fence, bytes))
        .transpose()
}

pub(crate) async fn forget_member(
    redis: &Redis,
    keys: &Keys,
    node: &str,
) -> Result<(), StorageError> {
    let node_keys = keys.node(node);
    let commands = [
        Command::new("HDEL", &keys.members()).arg(node),
        Command::new("DEL", &node_keys.alive),
        Command::new("DEL", &node_keys.inbox),
        Command::new("DEL", &node_keys.routes),
        Command::new("DEL", &node_keys.presence),
        Command::new("DEL", &node_keys.owned),
    ];
    redis.run(&commands, redis.deadline()).await?;
    Ok(())
}

pub(crate) async fn claim_owner(
    redis: &Redis,
    keys: &Keys,
    client_id: &str,
    node: &str,
) -> Result<Claim, StorageError> {
    let deadline = redis.deadline();
    let epoch_key = keys.epoch(client_id);
    let values = redis
        .run(&[Command::new("INCR", &epoch_key)], deadline)
        .await?;
    let epoch = reply::int(&epoch_key, values.first().unwrap_or(&Value::Nil))?;
    let epoch = u64::try_from(epoch).map_err(|_| corrupt(&epoch_key, "negative epoch"))?;
    let owner_key = keys.owner(client_id);
    let owner = Owner {
        node: ByteStr::from(node),
        epoch,
    };
    let set = Command::new("SET", &owner_key)
        .arg(codec::encode_owner(&owner))
        .arg("GET");
    let values = redis.run(&[set], deadline).await?;
    let previous =
        reply::optional_bytes(&owner_key, values.into_iter().next().unwrap_or(Value::Nil))?
            .map(|bytes| codec::decode_owner(&owner_key, &bytes))
            .transpose()?;
    // The previous owner stays responsible until it is disowned.
    let index = [Command::new("SADD", &keys.node(node).owned).arg(client_id)];
    redis.run(&index, deadline).await?;
    Ok(Claim { epoch, previous })
}

pub(crate) async fn owner(
    redis: &Redis,
    keys: &Keys,
    client_id: &str,
) -> Result<Option<Owner>, StorageError> {
    let key = keys.owner(client_id);
    let values = redis
        .run(&[Command::new("GET", &key)], redis.deadline())
        .await?;
    reply::optional_bytes(&key, values.into_iter().next().unwrap_or(Value::Nil))?
        .map(|bytes| codec::decode_owner(&key, &bytes))
        .transpose()
}

pub(crate) async fn owned_by(
    redis: &Redis,
    keys: &Keys,
    node: &str,
) -> Result<Vec<ByteStr>, StorageError> {
    let key = keys.node(node).owned;
    let values = redis
        .run(&[Command::new("SMEMBERS", &key)], redis.deadline())
        .await?;
    reply::members(&key, values.into_iter().next().unwrap_or(Value::Nil))?
        .into_iter()
        .map(|member| codec::decode_utf8(&key, member))
        .collect()
}

/// The names of every member (alive or not, not forgotten).
async fn member_names(
    redis: &Redis,
    keys: &Keys,
    deadline: std::time::Instant,
) -> Result<Vec<ByteStr>, StorageError> {
    let members_key = keys.members();
    let values = redis
        .run(&[Command::new("HKEYS", &members_key)], deadline)
        .await?;
    reply::members(
        &members_key,
        values.into_iter().next().unwrap_or(Value::Nil),
    )?
    .into_iter()
    .map(|node| codec::decode_utf8(&members_key, node))
    .collect()
}

pub(crate) async fn responsible(
    redis: &Redis,
    keys: &Keys,
    client_id: &str,
) -> Result<Vec<ByteStr>, StorageError> {
    let deadline = redis.deadline();
    let nodes = member_names(redis, keys, deadline).await?;
    let owned_keys: Vec<String> = nodes.iter().map(|node| keys.node(node).owned).collect();
    let commands: Vec<Command> = owned_keys
        .iter()
        .map(|key| Command::new("SISMEMBER", key).arg(client_id))
        .collect();
    let mut values = redis.run(&commands, deadline).await?.into_iter();
    let mut responsible = Vec::new();
    for (node, key) in nodes.into_iter().zip(&owned_keys) {
        if reply::int(key, &value(&mut values))? == 1 {
            responsible.push(node);
        }
    }
    Ok(responsible)
}

pub(crate) async fn presence(
    redis: &Redis,
    keys: &Keys,
    node: &str,
) -> Result<Vec<Presence>, StorageError> {
    let key = keys.node(node).presence;
    let values = redis
        .run(&[Command::new("HGETALL", &key)], redis.deadline())
        .await?;
    reply::pairs(&key, values.into_iter().next().unwrap_or(Value::Nil))?
        .into_iter()
        .map(|(client_id, bytes)| {
            let presence = codec::decode_presence(&key, &bytes)?;
            if presence.client_id.as_bytes().as_ref() != client_id.as_slice() {
                return Err(corrupt(&key, "presence stored under another client id"));
            }
            Ok(presence)
        })
        .collect()
}

pub(crate) async fn routes(
    redis: &Redis,
    keys: &Keys,
) -> Result<easy_mqtt_core::cluster::NodeRoutes, StorageError> {
    let deadline = redis.deadline();
    let nodes = member_names(redis, keys, deadline).await?;
    let route_keys: Vec<String> = nodes.iter().map(|node| keys.node(node).routes).collect();
    let commands: Vec<Command> = route_keys
        .iter()
        .map(|key| Command::new("HKEYS", key))
        .collect();
    let mut values = redis.run(&commands, deadline).await?.into_iter();
    let mut routes = Vec::with_capacity(nodes.len());
    for (node, key) in nodes.into_iter().zip(&route_keys) {
        let filters = reply::members(key, value(&mut values))?
            .into_iter()
            .map(|filter| codec::decode_utf8(key, filter))
            .collect::<Result<Vec<_>, _>>()?;
        routes.push((node, filters));
    }
    Ok(routes)
}

fn parse_inbox_id(key: &str, bytes: &[u8]) -> Result<InboxId, StorageError> {
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt(key, "stream id is not UTF-8"))?;
    let parsed = text.split_once('-').and_then(|(ms, seq)| {
        Some(InboxId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    });
    parsed.ok_or_else(|| corrupt(key, format!("stream id {text:?}")))
}

/// The smallest stream id after `after`.
fn next_id(after: InboxId) -> String {
    match after.seq.checked_add(1) {
        Some(seq) => format!("{}-{seq}", after.ms),
        None => format!("{}-0", after.ms.saturating_add(1)),
    }
}

/// The entries of the one stream an `XREAD` named: nil when none came,
/// `[[key, entries]]` (RESP2) or `{key: entries}` (RESP3) otherwise.
fn stream_of_read(key: &str, value: Value) -> Result<Value, StorageError> {
    match value {
        Value::Nil => Ok(Value::Array(Vec::new())),
        Value::Map(streams) => Ok(streams
            .into_iter()
            .next()
            .map_or(Value::Array(Vec::new()), |(_, entries)| entries)),
        value => {
            let Some(stream) = reply::items(key, value)?.into_iter().next() else {
                return Ok(Value::Array(Vec::new()));
            };
            let mut parts = reply::items(key, stream)?.into_iter();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(_), Some(entries), None) => Ok(entries),
                _ => Err(corrupt(key, "XREAD reply is not [[stream, entries]]")),
            }
        }
    }
}

fn inbox_entries(key: &str, value: Value) -> Result<Vec<(InboxId, BusEntry)>, StorageError> {
    let mut entries = Vec::new();
    for item in reply::items(key, value)? {
        let mut parts = reply::items(key, item)?.into_iter();
        let (Some(id), Some(fields), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(corrupt(key, "stream entry is not [id, fields]"));
        };
        let Some(id) = reply::optional_bytes(key, id)? else {
            return Err(corrupt(key, "stream entry without an id"));
        };
        let id = parse_inbox_id(key, &id)?;
        let entry = reply::pairs(key, fields)?
            .into_iter()
            .find(|(field, _)| field.as_slice() == ENTRY_FIELD.as_bytes())
            .ok_or_else(|| corrupt(key, "stream entry without its field"))?;
        entries.push((id, codec::decode_bus_entry(key, &entry.1)?));
    }
    Ok(entries)
}

pub(crate) async fn read_inbox(
    redis: &Redis,
    keys: &Keys,
    node: &str,
    after: Option<InboxId>,
    max: usize,
    wait: Duration,
) -> Result<Vec<(InboxId, BusEntry)>, StorageError> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let key = keys.node(node).inbox;
    let start = after.map_or_else(|| "-".to_owned(), next_id);
    let until = std::time::Instant::now() + wait;
    // XREAD answers what follows an id, XRANGE from one.
    let last = after.map_or_else(|| "0-0".to_owned(), |id| format!("{}-{}", id.ms, id.seq));
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        // BLOCK 0 would be forever: under a millisecond, read once instead.
        let block_ms = left.min(redis.block_limit()).as_millis();
        if block_ms > 0 {
            let mut read = redis::cmd("XREAD");
            read.arg("COUNT")
                .arg(max)
                .arg("BLOCK")
                .arg(block_ms as u64)
                .arg("STREAMS")
                .arg(&key)
                .arg(&last);
            if let Some(value) = redis.run_blocking(&read).await? {
                let entries = inbox_entries(&key, stream_of_read(&key, value)?)?;
                let left = until.saturating_duration_since(std::time::Instant::now());
                if !entries.is_empty() || left.is_zero() {
                    return Ok(entries);
                }
                continue;
            }
        }
        let range = Command::new("XRANGE", &key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(max);
        let values = redis.run(&[range], redis.deadline()).await?;
        let entries = inbox_entries(&key, values.into_iter().next().unwrap_or(Value::Nil))?;
        let left = until.saturating_duration_since(std::time::Instant::now());
        if !entries.is_empty() || left.is_zero() {
            return Ok(entries);
        }
        Timer::after(left.min(INBOX_POLL)).await;
    }
}

pub(crate) async fn get_record(
    redis: &Redis,
    keys: &Keys,
    space: &str,
    key: &str,
) -> Result<Option<Bytes>, StorageError> {
    let record = keys.record(space, key);
    let values = redis
        .run(&[Command::new("GET", &record)], redis.deadline())
        .await?;
    Ok(
        reply::optional_bytes(&record, values.into_iter().next().unwrap_or(Value::Nil))?
            .map(Bytes::from),
    )
}

/// Reads the index of the space, then every record it names (those that
/// expired are left out), then drops index entries expired long ago.
pub(crate) async fn scan_records(
    redis: &Redis,
    keys: &Keys,
    space: &str,
) -> Result<Vec<(ByteStr, Bytes)>, StorageError> {
    let deadline = redis.deadline();
    let index = keys.record_index(space);
    let values = redis
        .run(&[Command::new("ZRANGE", &index).arg(0).arg(-1)], deadline)
        .await?;
    let names = reply::members(&index, values.into_iter().next().unwrap_or(Value::Nil))?
        .into_iter()
        .map(|name| codec::decode_utf8(&index, name))
        .collect::<Result<Vec<_>, _>>()?;
    let record_keys: Vec<String> = names.iter().map(|name| keys.record(space, name)).collect();
    let mut commands: Vec<Command> = record_keys
        .iter()
        .map(|key| Command::new("GET", key))
        .collect();
    commands.push(
        Command::new("ZREMRANGEBYSCORE", &index)
            .arg("-inf")
            .arg(format!("({}", unix_ms().saturating_sub(INDEX_GRACE_MS))),
    );
    let mut values = redis.run(&commands, deadline).await?.into_iter();
    let mut records = Vec::with_capacity(names.len());
    for (name, key) in names.into_iter().zip(&record_keys) {
        if let Some(bytes) = reply::optional_bytes(key, value(&mut values))? {
            records.push((name, Bytes::from(bytes)));
        }
    }
    Ok(records)
}

pub(crate) async fn read_log(
    redis: &Redis,
    keys: &Keys,
    space: &str,
    key: &str,
    max: usize,
) -> Result<Vec<Bytes>, StorageError> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let log = keys.log(space, key);
    let last = i64::try_from(max).unwrap_or(i64::MAX) - 1;
    let values = redis
        .run(
            &[Command::new("LRANGE", &log).arg(0).arg(last)],
            redis.deadline(),
        )
        .await?;
    Ok(
        reply::members(&log, values.into_iter().next().unwrap_or(Value::Nil))?
            .into_iter()
            .map(Bytes::from)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_ids_parse_and_step() {
        assert_eq!(parse_inbox_id("k", b"12-3"), Ok(InboxId { ms: 12, seq: 3 }));
        assert!(parse_inbox_id("k", b"12").is_err());
        assert!(parse_inbox_id("k", b"a-1").is_err());
        assert_eq!(next_id(InboxId { ms: 12, seq: 3 }), "12-4");
        assert_eq!(
            next_id(InboxId {
                ms: 12,
                seq: u64::MAX
            }),
            "13-0"
        );
    }
}
