//! `apply`: a batch of ops becomes a few pipelined phases.
//!
//! 1. **Read and pin** (one round trip): every touched session's existence
//!    (`EXISTS`) and in-flight window (only the entries named, `HMGET`, for
//!    a session the batch only completes deliveries of), the held-set
//!    entries the batch names (`ZMSCORE`; the whole held set when the batch
//!    deletes the session; neither window nor entries for a session the
//!    batch only enqueues to)
//!    and, when the batch sends, its highest order; whether each enqueued
//!    body is stored. Queue positions do not depend on these reads: an
//!    enqueued id's order is its sequence number (see
//!    [`MessageId::queue_order`]), so concurrent batches enqueuing to one
//!    session never compete for a position. In the same round trip,
//!    the writes that must be durable *before* any reference: bodies
//!    (`HSETNX`), a holder field for every `Enqueue` (`HSET`, speculative,
//!    one command per body), the index entry of every `PutSession`
//!    (`SADD`), retained messages, and the cluster writes that announce
//!    (`Forward`, routes, presence, records).
//! 2. **Simulate** (`simulate.rs`) the batch op by op on what was read, exactly as the
//!    reference backend does, and emit for each effective op its single-key
//!    writes, in batch order per client (all keys of a client share one
//!    slot, so they run in that order on one node; different clients touch
//!    different keys). Consecutive enqueues of a client share one `ZADD NX`,
//!    and removals from one key that end up next to each other (once the
//!    writes a later op made useless are dropped) share one `ZREM`/`HDEL`.
//! 3. **Release** (after the writes): remove the holder fields of every
//!    (client, message) pair the batch touched that the client no longer
//!    holds, read `HLEN`/`HEXISTS` of the bodies that may have lost their
//!    last holder, and drop the index entries of deleted sessions. In
//!    standalone mode this rides in the same pipeline as step 2 (one
//!    connection runs it in order) unless the batch has trailing cluster
//!    writes (below); in a cluster it is its own round trip, since
//!    pipelines to different nodes are not ordered.
//! 4. **Collect** (only if some body is left with no holder): `DEL` it.
//!
//! The cluster writes that retire an obligation (`InboxAck`, `Disown`,
//! `ClearPresence`, ...; see `cluster::leads`) go after step 2's writes
//! have answered, at the head of step 3's round trip (a pipeline goes on
//! past a refused command, so the same pipeline would not do).
//!
//! So a body is always pinned by a holder field before a queue refers to it,
//! and unpinned only after the reference is gone: a batch cut short at any
//! point leaves at worst a body pinned by nobody's queue (a leak), never a
//! queue entry without its body.

/// Keyed per process (client ids come from peers), and several times
/// faster than SipHash on the million-op batches of the journal writer.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

use easy_mqtt_core::storage::{MessageId, Op, StorageError};
use redis::Value;

use crate::codec::{self, Held};
use crate::conn::{Command, Redis};
use crate::keys::{self, BODY_FIELD, Keys};
use crate::load;
use crate::reply;
use crate::simulate::{Batch, Client, push_unique, session_id};

/// At most this many fields in one `HSET`/`HDEL` of holder fields.
const FIELDS_PER_COMMAND: usize = 1024;

/// (client, message) pairs grouped by message, in first-seen order.
fn by_body(pairs: &[(usize, MessageId)]) -> Vec<(MessageId, Vec<usize>)> {
    let mut groups: Vec<(MessageId, Vec<usize>)> = Vec::new();
    let mut at: HashMap<MessageId, usize> = HashMap::default();
    for (index, id) in pairs {
        let group = *at.entry(*id).or_insert_with(|| {
            groups.push((*id, Vec::new()));
            groups.len() - 1
        });
        groups[group].1.push(*index);
    }
    groups
}

pub(crate) async fn apply(redis: &Redis, keys: &Keys, ops: Vec<&Op>) -> Result<(), StorageError> {
    if ops.is_empty() {
        return Ok(());
    }
    // A big batch (a routing batch to thousands of sessions) waits for its
    // turn: its commands and replies take memory (see the `conn` module).
    let _turn = redis.big_call(ops.len()).await?;
    // Cluster ops touch keys of their own. Those that announce (a forward,
    // a route, a presence, a record) go in the first round trip; those that
    // retire an obligation (an inbox entry served, a client disowned, a
    // presence whose will was published) only once the session writes are
    // done: a batch cut short in between must leave the inbox entry to be
    // served again, not gone with its delivery unwritten. Batch order holds
    // within each group (see the `cluster` module).
    let is_cluster = |op: &&Op| matches!(op, Op::Cluster(_));
    // A routing batch holds a million ops and most batches no cluster op:
    // split only when there is something to split.
    let (cluster_ops, ops): (Vec<&Op>, Vec<&Op>) = if ops.iter().any(is_cluster) {
        ops.into_iter().partition(is_cluster)
    } else {
        (Vec::new(), ops)
    };
    let mut cluster_writes: Vec<Command> = Vec::new();
    let mut trailing_writes: Vec<Command> = Vec::new();
    for op in cluster_ops {
        if let Op::Cluster(op) = op {
            let leads = crate::cluster::leads(op);
            let commands = crate::cluster::writes(keys, op);
            if leads {
                cluster_writes.extend(commands);
            } else {
                trailing_writes.extend(commands);
            }
        }
    }
    let deadline = redis.deadline();
    let mut batch = Batch {
        keys,
        clients: Vec::new(),
        by_id: HashMap::default(),
    };

    // What the batch needs to read, and what it writes up front.
    let mut enqueued_ids = Vec::new();
    let mut enqueued_seen = HashSet::default();
    let mut put_ids = Vec::new();
    let mut put_seen = HashSet::default();
    let mut pins: Vec<(usize, MessageId)> = Vec::new();
    // Sized up front: a routing batch pins one body per op, and growing a
    // table of a million entries rehashes it a dozen times.
    let enqueues = ops
        .iter()
        .filter(|op| matches!(op, Op::Enqueue { .. }))
        .count();
    let mut pins_seen =
        HashSet::with_capacity_and_hasher(enqueues, foldhash::fast::RandomState::default());
    let mut score_seen: HashSet<(usize, MessageId)> = HashSet::default();
    // The client of each op, looked up once (hashing the client id was a
    // sixth of a routing batch's CPU when done again in phase 2).
    let mut op_clients: Vec<Option<usize>> = Vec::with_capacity(ops.len());
    for op in &ops {
        let Some(client_id) = session_id(op) else {
            op_clients.push(None);
            if let Op::PutMessage { id, .. } = op {
                push_unique(&mut put_ids, &mut put_seen, *id);
            }
            continue;
        };
        let index = batch.client(client_id);
        op_clients.push(Some(index));
        let client = &mut batch.clients[index];
        let mut score = |client: &mut Client, id: MessageId| {
            if score_seen.insert((index, id)) {
                client.score_ids.push(id);
            }
        };
        if !matches!(op, Op::Enqueue { .. }) {
            client.only_enqueue = false;
        }
        if !matches!(op, Op::CompleteInflight { .. }) {
            client.only_complete = false;
        }
        match op {
            Op::PutSession(_) => {
                client.lifecycle = true;
                client.needs_window = true;
            }
            Op::DeleteSession { .. } => {
                client.lifecycle = true;
                client.full = true;
                client.needs_window = true;
            }
            Op::Enqueue { id, .. } => {
                client.enqueued.push(*id);
                // Consecutive enqueues mostly name one body (a routing batch).
                if enqueued_ids.last() != Some(id) {
                    push_unique(&mut enqueued_ids, &mut enqueued_seen, *id);
                }
                push_unique(&mut pins, &mut pins_seen, (index, *id));
            }
            Op::SetInflight { id, .. } => {
                client.needs_window = true;
                client.needs_order = true;
                score(client, *id);
            }
            Op::Dequeue { id, .. } => {
                client.needs_window = true;
                score(client, *id);
            }
            Op::CompleteInflight { packet_id, .. } if !client.completed.contains(packet_id) => {
                client.completed.push(*packet_id);
            }
            _ => {}
        }
    }

    // A client whose ops are all `Enqueue`s reads its existence only: each
    // of its writes is a `ZADD NX`, which already leaves an id the session
    // holds (queued or in flight: the held set has both) as it is, and the
    // simulated state is used for nothing else than telling which holder
    // fields to release (an enqueued id is held either way). Mixed with
    // other ops, the queue state before the batch decides what they do
    // (and an `Enqueue` of an id already held must not change its QoS),
    // so it is read.
    //
    // A client whose ops are all `CompleteInflight`s reads the window
    // entries they name only: an id is in the window under one packet id
    // at most (`SetInflight`, which reads the whole window, moves only an
    // id that is not in it), so the entries not read cannot make a
    // completed id still held.
    for (index, client) in batch.clients.iter_mut().enumerate() {
        if !client.only_complete && !client.completed.is_empty() {
            client.needs_window = true;
        }
        if client.only_enqueue {
            continue;
        }
        for id in std::mem::take(&mut client.enqueued) {
            client.needs_window = true;
            if score_seen.insert((index, id)) {
                client.score_ids.push(id);
            }
        }
    }

    // Phase 1: reads first (so that they see the state before the batch),
    // then the writes that must precede any reference.
    let mut phase1 = Vec::new();
    for client in &mut batch.clients {
        client.record_at = phase1.len();
        phase1.push(Command::new("EXISTS", &client.keys.record));
        if client.needs_window {
            client.window_at = Some(phase1.len());
            phase1.push(Command::new("HGETALL", &client.keys.window));
        } else if !client.completed.is_empty() {
            client.completed_at = Some(phase1.len());
            let mut command = Command::new("HMGET", &client.keys.window);
            for packet_id in &client.completed {
                command = command.arg(&codec::encode_packet_id(*packet_id));
            }
            phase1.push(command);
        }
        if client.full {
            client.full_at = Some(phase1.len());
            phase1.push(
                Command::new("ZRANGE", &client.keys.held)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES"),
            );
        } else {
            if client.needs_order {
                client.max_at = Some(phase1.len());
                phase1.push(
                    Command::new("ZRANGE", &client.keys.held)
                        .arg(-1)
                        .arg(-1)
                        .arg("WITHSCORES"),
                );
            }
            if !client.score_ids.is_empty() {
                client.scores_at = Some(phase1.len());
                let mut command = Command::new("ZMSCORE", &client.keys.held);
                for id in &client.score_ids {
                    command = command.arg(&codec::encode_message_id(*id));
                }
                phase1.push(command);
            }
        }
    }
    let body_checks: Vec<(MessageId, usize)> = enqueued_ids
        .iter()
        .map(|id| {
            let at = phase1.len();
            phase1.push(Command::new("HEXISTS", &keys.body(*id)).arg(BODY_FIELD));
            (*id, at)
        })
        .collect();
    for op in &ops {
        match op {
            Op::PutMessage { id, message, at_ms } if put_seen.remove(id) => {
                phase1.push(
                    Command::new("HSETNX", &keys.body(*id))
                        .arg(BODY_FIELD)
                        .arg(codec::encode_body(message, *at_ms)),
                );
            }
            Op::PutSession(record) => {
                // `SADD` is idempotent: one per op is as good as one per client.
                phase1.push(
                    Command::new("SADD", &keys.index_of(&record.client_id))
                        .arg(record.client_id.as_str()),
                );
            }
            Op::SetRetained { topic, message } => {
                let key = keys.retained_of(topic);
                phase1.push(match message {
                    Some(message) => Command::new("HSET", &key)
                        .arg(topic.as_str())
                        .arg(codec::encode_message(message)),
                    None => Command::new("HDEL", &key).arg(topic.as_str()),
                });
            }
            _ => {}
        }
    }
    for (id, holders) in by_body(&pins) {
        for chunk in holders.chunks(FIELDS_PER_COMMAND) {
            let mut command = Command::new("HSET", &keys.body(id));
            for index in chunk {
                command = command
                    .arg(keys::holder_field(&batch.clients[*index].id))
                    .arg("1");
            }
            phase1.push(command);
        }
    }
    phase1.extend(cluster_writes);
    let values = redis.run(&phase1, deadline).await?;

    // What was read.
    let mut values: Vec<Option<Value>> = values.into_iter().map(Some).collect();
    let mut take = |at: usize| {
        values
            .get_mut(at)
            .and_then(Option::take)
            .unwrap_or(Value::Nil)
    };
    let mut body_before = HashSet::default();
    for (id, at) in &body_checks {
        if reply::int(&keys.body(*id), &take(*at))? == 1 {
            body_before.insert(*id);
        }
    }
    for client in &mut batch.clients {
        client.exists = reply::int(&client.keys.record, &take(client.record_at))? == 1;
        if let Some(at) = client.window_at {
            for (packet_id, entry) in load::window(&client.keys, take(at))? {
                client.see_order(entry.order);
                client.window.insert(packet_id, entry);
            }
        }
        if let Some(at) = client.completed_at {
            let key = client.keys.window.clone();
            let key = &key;
            let entries = reply::items(key, take(at))?;
            if entries.len() != client.completed.len() {
                return Err(StorageError::Corrupt {
                    key: key.clone(),
                    reason: format!(
                        "{} entries for {} packet ids",
                        entries.len(),
                        client.completed.len()
                    ),
                });
            }
            for (packet_id, entry) in std::mem::take(&mut client.completed)
                .into_iter()
                .zip(entries)
            {
                if let Some(bytes) = reply::optional_bytes(key, entry)? {
                    let entry = codec::decode_window(key, &bytes)?;
                    client.see_order(entry.order);
                    client.window.insert(packet_id, entry);
                }
            }
        }
        let mut held = Vec::new();
        if let Some(at) = client.full_at.or(client.max_at) {
            held.extend(load::held(&client.keys, take(at))?);
        }
        if let Some(at) = client.scores_at {
            let scores = reply::items(&client.keys.held, take(at))?;
            if scores.len() != client.score_ids.len() {
                return Err(StorageError::Corrupt {
                    key: client.keys.held.clone(),
                    reason: format!(
                        "{} scores for {} members",
                        scores.len(),
                        client.score_ids.len()
                    ),
                });
            }
            for (id, score) in client.score_ids.iter().zip(scores) {
                if let Some(score) = reply::optional_score(&client.keys.held, score)? {
                    held.push((*id, Held::from_score(&client.keys.held, score)?));
                }
            }
        }
        for (id, entry) in held {
            client.see_order(entry.order);
            client.held.insert(id, entry);
        }
    }

    // Phase 2: simulate, emitting the writes of each effective op.
    let mut released: Vec<(usize, MessageId)> = Vec::new();
    let mut put_so_far = HashSet::default();
    for client in &mut batch.clients {
        client.held.reserve(client.enqueued.len());
    }
    for (op, index) in ops.into_iter().zip(op_clients) {
        if let Op::PutMessage { id, .. } = &op {
            put_so_far.insert(*id);
            continue;
        }
        let Some(index) = index else {
            continue;
        };
        let stored = |id: &MessageId| body_before.contains(id) || put_so_far.contains(id);
        let mut lost = Vec::new();
        batch.clients[index].simulate(op, &stored, &mut lost)?;
        released.extend(lost.into_iter().map(|id| (index, id)));
    }

    // Each client's writes in batch order; different clients' writes touch
    // different keys, so they need no order between them.
    let mut writes: Vec<Command> = Vec::new();
    for client in &mut batch.clients {
        client.take_writes(&mut writes);
    }

    // Phase 3: unpin what is no longer held, find bodies left unpinned.
    let mut releases = Vec::new();
    let mut kept = HashSet::default();
    let mut candidates = Vec::new();
    let mut candidates_seen = HashSet::default();
    let mut touched: Vec<(usize, MessageId)> = Vec::new();
    // Pins are unique already (`pins_seen`): only released pairs need a
    // check, against the pins and each other.
    let mut released_seen = HashSet::default();
    let released = released
        .into_iter()
        .filter(|pair| !pins_seen.contains(pair) && released_seen.insert(*pair));
    let mut last_kept = None;
    for (index, id) in pins.into_iter().chain(released) {
        if batch.clients[index].holds(id) {
            // Consecutive pins mostly name one body (a routing batch).
            if last_kept != Some(id) {
                kept.insert(id);
                last_kept = Some(id);
            }
        } else {
            touched.push((index, id));
        }
    }
    for (id, holders) in by_body(&touched) {
        for chunk in holders.chunks(FIELDS_PER_COMMAND) {
            let mut command = Command::new("HDEL", &keys.body(id));
            for index in chunk {
                command = command.arg(keys::holder_field(&batch.clients[*index].id));
            }
            releases.push(command);
        }
        push_unique(&mut candidates, &mut candidates_seen, id);
    }
    for id in put_ids {
        push_unique(&mut candidates, &mut candidates_seen, id);
    }
    candidates.retain(|id| !kept.contains(id));
    let checks_at = releases.len();
    for id in &candidates {
        let key = keys.body(*id);
        releases.push(Command::new("HLEN", &key));
        releases.push(Command::new("HEXISTS", &key).arg(BODY_FIELD));
    }
    for client in &batch.clients {
        if client.lifecycle && !client.exists {
            releases.push(Command::new("SREM", &keys.index_of(&client.id)).arg(client.id.as_str()));
        }
    }

    // Pipelines to different nodes are not ordered, and a command refused
    // inside a pipeline (`WRONGTYPE`, `OOM`, a failover's `READONLY`) does
    // not stop the ones after it: the trailing cluster writes wait for the
    // session writes' answers.
    let checks = if redis.is_cluster() || (!trailing_writes.is_empty() && !writes.is_empty()) {
        redis.run(&writes, deadline).await?;
        let skip = trailing_writes.len() + checks_at;
        trailing_writes.extend(releases);
        let mut values = redis.run(&trailing_writes, deadline).await?;
        values.drain(..skip.min(values.len()));
        values
    } else {
        writes.extend(trailing_writes);
        let offset = writes.len() + checks_at;
        writes.extend(releases);
        let mut values = redis.run(&writes, deadline).await?;
        values.drain(..offset.min(values.len()));
        values
    };

    // Phase 4: collect bodies left with their body field only.
    let mut collect = Vec::new();
    for (id, answers) in candidates.iter().zip(checks.chunks(2)) {
        let key = keys.body(*id);
        let [fields, has_body] = answers else {
            continue;
        };
        if reply::int(&key, fields)? == 1 && reply::int(&key, has_body)? == 1 {
            collect.push(Command::new("DEL", &key));
        }
    }
    redis.run(&collect, deadline).await?;
    Ok(())
}
