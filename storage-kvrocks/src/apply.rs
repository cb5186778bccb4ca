//! `apply`: a batch of ops becomes a few pipelined phases.
//!
//! 1. **Read and pin** (one round trip): every touched session's existence
//!    (`EXISTS`) and in-flight window (only the entries named, `HMGET`, for
//!    a session the batch only completes deliveries of and enqueues to),
//!    whether the held set has the ids the batch's sends and drops name
//!    (`SMISMEMBER`; the whole held set when the batch deletes the session;
//!    an `Enqueue` reads nothing more than its session's existence, nor does
//!    a send the batch also acknowledges, see "Unread sends" below; a send's
//!    flags are its op's); whether each enqueued body is stored. Queue
//!    positions do not depend on these reads: a queue is in id order (see
//!    [`MessageId::queue_order`]), so concurrent batches enqueuing to one
//!    session never compete for a position. In the same round trip,
//!    the writes that must be durable *before* any reference: bodies
//!    (`HSETNX`), a holder field for every `Enqueue` (`HSET`, speculative,
//!    one command per body, its value the flags of the delivery), the index
//!    entry of every `PutSession`
//!    (`SADD`), retained messages, and the cluster writes that announce
//!    (`Forward`, routes, presence, records).
//! 2. **Simulate** (`simulate.rs`) the batch op by op on what was read, exactly as the
//!    reference backend does, and emit for each effective op its single-key
//!    writes, in batch order per client (all keys of a client share one
//!    slot, so they run in that order on one node; different clients touch
//!    different keys). Consecutive enqueues of a client share one `SADD`,
//!    and removals from one key that end up next to each other (once the
//!    writes a later op made useless are dropped) share one `SREM`/`HDEL`.
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

use easy_mqtt_core::packet::QoS;
use easy_mqtt_core::storage::{MessageId, Op, StorageError};
use redis::Value;

use crate::codec::{self, Held};
use crate::conn::{Command, Redis};
use crate::keys::{self, BODY_FIELD, Keys};
use crate::load;
use crate::reply;
use crate::simulate::{Batch, Client, PacketUse, PlannedSend, Step, push_unique, session_id};

/// At most this many fields in one `HSET`/`HDEL` of holder fields.
const FIELDS_PER_COMMAND: usize = 1024;

/// Each body of `items` (sorted by body, `id`) with the runs of its
/// items, at most [`FIELDS_PER_COMMAND`] in each.
/// The length of a client's holder field.
fn holder_len(client: &Client) -> usize {
    keys::HOLDER_PREFIX.len() + client.id.len()
}

fn by_body<T>(
    items: &[T],
    id: impl Fn(&T) -> MessageId + Copy,
) -> impl Iterator<Item = (MessageId, &[T])> {
    items
        .chunk_by(move |a, b| id(a) == id(b))
        .flat_map(|run| run.chunks(FIELDS_PER_COMMAND))
        .map(move |chunk| (id(&chunk[0]), chunk))
}

/// The ops that name a client as (client, position, step), grouped by
/// client (in the order of `clients`), in batch order within each client.
/// A counting sort: the batch is read in order once more, and each op
/// written where its client's run goes.
fn by_client<'o>(
    ops: &[&'o Op],
    op_clients: &[Option<usize>],
    clients: usize,
) -> Vec<(usize, usize, Step<'o>)> {
    let mut starts = vec![0; clients + 1];
    for index in op_clients.iter().flatten() {
        starts[index + 1] += 1;
    }
    for index in 1..starts.len() {
        starts[index] += starts[index - 1];
    }
    // Every slot is filled below (the runs' lengths are the counts above),
    // so the placeholder never survives; an `Option` per slot cost a
    // second list of a million ops to take it off.
    let placeholder = Step::Enqueue { id: MessageId(0) };
    let mut order = vec![(usize::MAX, 0, placeholder); starts[clients]];
    for (at, (op, index)) in ops.iter().zip(op_clients).enumerate() {
        if let Some(index) = *index {
            order[starts[index]] = (index, at, Step::of(op));
            starts[index] += 1;
        }
    }
    debug_assert!(order.iter().all(|(index, ..)| *index != usize::MAX));
    order
}

/// The flags an `Enqueue` gives its delivery.
fn enqueued_flags(op: &Op) -> Held {
    match *op {
        Op::Enqueue { qos, retain, .. } => Held { qos, retain },
        // Pins name `Enqueue`s only.
        _ => Held {
            qos: QoS::AtMostOnce,
            retain: false,
        },
    }
}

/// Whether a client's held set has each of `ids` (`SMISMEMBER`).
fn read_named(client: &Client, ids: &[MessageId]) -> Command {
    let mut command = Command::with_capacity(
        "SMISMEMBER",
        &client.keys.held,
        ids.len(),
        ids.len() * codec::MESSAGE_ID_LEN,
    );
    for id in ids {
        command.push_arg(&codec::encode_message_id(*id));
    }
    command
}

/// The held ones among `ids`, from the answer of [`read_named`].
fn named_held(
    client: &Client,
    ids: &[MessageId],
    value: Value,
) -> Result<Vec<MessageId>, StorageError> {
    let key = &client.keys.held;
    let members = reply::items(key, value)?;
    if members.len() != ids.len() {
        return Err(StorageError::Corrupt {
            key: key.clone(),
            reason: format!("{} answers for {} members", members.len(), ids.len()),
        });
    }
    let mut held = Vec::new();
    for (id, member) in ids.iter().zip(members) {
        if reply::int(key, &member)? == 1 {
            held.push(*id);
        }
    }
    Ok(held)
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
    let mut batch = Batch::new(keys);

    // What the batch needs to read, and what it writes up front.
    let mut enqueued_ids = Vec::new();
    let mut enqueued_seen = HashSet::default();
    let mut put_ids = Vec::new();
    let mut put_seen = HashSet::default();
    // Sized up front: a routing batch pins one body per op.
    let enqueues = ops
        .iter()
        .filter(|op| matches!(op, Op::Enqueue { .. }))
        .count();
    // (body, client, position of the op) of every `Enqueue`. Sorted and
    // deduplicated once all are in, not through a hash set: a routing batch
    // pins a million pairs, and each insert into a set that size missed the
    // cache (7 % of a fan-out's CPU). They come as runs already sorted (one
    // publication's subscribers), which the stable sort merges.
    let mut pins: Vec<(MessageId, usize, usize)> = Vec::with_capacity(enqueues);
    let mut named_seen: HashSet<(usize, MessageId)> = HashSet::default();
    // The client of each op, looked up once (hashing the client id was a
    // sixth of a routing batch's CPU when done again in phase 2).
    let mut op_clients: Vec<Option<usize>> = Vec::with_capacity(ops.len());
    for (at, op) in ops.iter().enumerate() {
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
        let mut name = |client: &mut Client, id: MessageId| {
            if named_seen.insert((index, id)) {
                client.named_ids.push(id);
            }
        };
        if !matches!(op, Op::CompleteInflight { .. } | Op::Enqueue { .. }) {
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
                // Consecutive enqueues mostly name one body (a routing batch).
                if enqueued_ids.last() != Some(id) {
                    push_unique(&mut enqueued_ids, &mut enqueued_seen, *id);
                }
                pins.push((*id, index, at));
            }
            Op::SetInflight { packet_id, id, .. } => {
                client.needs_window = true;
                let after_complete = matches!(
                    client
                        .packets
                        .insert(*packet_id, PacketUse::Sent(client.sends.len())),
                    Some(PacketUse::Completed)
                );
                client.sends.push(PlannedSend {
                    packet_id: *packet_id,
                    id: *id,
                    completed: false,
                    after_complete,
                });
            }
            Op::Dequeue { id, .. } => {
                client.needs_window = true;
                name(client, *id);
            }
            Op::CompleteInflight { packet_id, .. } => {
                if let Some(PacketUse::Sent(send)) =
                    client.packets.insert(*packet_id, PacketUse::Completed)
                {
                    client.sends[send].completed = true;
                }
                if !client.completed.contains(packet_id) {
                    client.completed.push(*packet_id);
                }
            }
            _ => {}
        }
    }
    pins.sort();
    // The last `Enqueue` of a pair sets the holder field: its flags are
    // those of the entry if it is queued after the batch (an id does not
    // go back from the window to the queue).
    pins.dedup_by(|later, kept| {
        let same = (later.0, later.1) == (kept.0, kept.1);
        if same {
            kept.2 = later.2;
        }
        same
    });

    // Unread sends. A message sent and acknowledged within the batch (the
    // journal lags behind the socket under load, so most are) leaves one
    // write: its removal from the held set (see
    // `Client::complete_inflight`). That write is right whether or not
    // the session held the id queued, so the id's entry is not read
    // (reading the entry of every id sent was a fifth of the storage
    // server's command time in the original's scenario) and the simulation takes
    // it as queued, when:
    // - the next op naming the packet id is its completion, so the window
    //   entry the send makes is never written;
    // - no other op of the client names the id (a `Dequeue`, another
    //   send, an `Enqueue`): none can see the assumption, and the check
    //   after the simulation (the assumed entry must be gone) could not
    //   tell an entry an `Enqueue` made from the assumed one;
    // - the packet id is free when the send uses it: an earlier op of the
    //   batch completed it, or the window read has no entry there (else
    //   the send replaces that entry only if the id is queued, and the id
    //   is read after all, in a round trip of its own).
    // A `PutSession` that creates the session clears the assumption with
    // the rest of the simulated state, and a `DeleteSession` reads the
    // whole held set.
    // An id already in the window (read whole) is not queued, whatever
    // the held set says: such a send is no move, and the simulation sees
    // that without the assumption.
    let mut named: HashMap<MessageId, u32> = HashMap::default();
    for (index, client) in batch.clients.iter_mut().enumerate() {
        if client.sends.is_empty() {
            continue;
        }
        named.clear();
        for send in &client.sends {
            *named.entry(send.id).or_insert(0) += 1;
        }
        for id in &client.named_ids {
            *named.entry(*id).or_insert(0) += 1;
        }
        let mut sends = std::mem::take(&mut client.sends);
        sends.retain(|send| {
            let unread = send.completed
                && named.get(&send.id) == Some(&1)
                && pins
                    .binary_search_by(|pin| (pin.0, pin.1).cmp(&(send.id, index)))
                    .is_err();
            if !unread && named_seen.insert((index, send.id)) {
                client.named_ids.push(send.id);
            }
            unread
        });
        // From here on, the unread sends only.
        client.sends = sends;
    }

    // An `Enqueue` reads nothing but its session's existence. Its writes
    // are the holder field (its flags, which a queued id takes and an id
    // in flight ignores: its window entry has its own) and an `SADD`,
    // which leaves an id the session already holds (queued or in flight:
    // the held set has both) as it is, and in the simulation it makes the
    // id held either way. What the simulation cannot know unread (whether
    // the id was held before, in the window or not) matters only to a
    // later op of the batch that names the id (`SetInflight`, `Dequeue`),
    // and that op reads it. So a routing
    // batch reads one `EXISTS` per session, and a session that also sends
    // or acknowledges in the batch reads no more than those ops need.
    //
    // A client whose other ops are all `CompleteInflight`s reads the
    // window entries they name only: an id is in the window under one
    // packet id at most (`SetInflight`, which reads the whole window, moves
    // only an id that is not in it), so the entries not read cannot make a
    // completed id still held.
    for client in &mut batch.clients {
        if !client.only_complete && !client.completed.is_empty() {
            client.needs_window = true;
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
            phase1.push(Command::new("SMEMBERS", &client.keys.held));
        }
        if !client.named_ids.is_empty() {
            client.named_at = Some(phase1.len());
            phase1.push(read_named(client, &client.named_ids));
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
    for (id, holders) in by_body(&pins, |pin| pin.0) {
        let bytes = (holders.iter())
            .map(|(_, index, _)| holder_len(&batch.clients[*index]) + 2)
            .sum();
        let mut command = Command::with_capacity("HSET", &keys.body(id), 2 * holders.len(), bytes);
        for &(_, index, at) in holders {
            command.push_arg(keys::HolderField(&batch.clients[index].id));
            command.push_arg(enqueued_flags(ops[at]).encode());
        }
        phase1.push(command);
    }
    phase1.extend(cluster_writes);
    let values = redis.run_owned(phase1, deadline).await?;

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
        if let Some(at) = client.full_at {
            client.held.extend(load::held(&client.keys, take(at))?);
        }
        if let Some(at) = client.named_at {
            let held = named_held(client, &client.named_ids, take(at))?;
            client.held.extend(held);
        }
    }

    // The unread sends (above): assumed queued, or read now if the window
    // read shows their packet id taken by another message. Still before
    // any write to a held set (phase 1 writes none).
    let mut late: Vec<(usize, Vec<MessageId>)> = Vec::new();
    for (index, client) in batch.clients.iter_mut().enumerate() {
        let mut ids = Vec::new();
        for send in std::mem::take(&mut client.sends) {
            if client.in_window(send.id) {
                continue;
            }
            if !send.after_complete && client.window.get(&send.packet_id).is_some() {
                ids.push(send.id);
            } else if client.held.insert(send.id) {
                client.assumed.push(send.id);
            }
        }
        if !ids.is_empty() {
            late.push((index, ids));
        }
    }
    if !late.is_empty() {
        let commands = (late.iter())
            .map(|(index, ids)| read_named(&batch.clients[*index], ids))
            .collect();
        let mut values = redis.run_owned(commands, deadline).await?.into_iter();
        for (index, ids) in &late {
            let client = &mut batch.clients[*index];
            let held = named_held(client, ids, values.next().unwrap_or(Value::Nil))?;
            client.held.extend(held);
        }
    }

    // Phase 2: simulate, emitting the writes of each effective op, client
    // by client (each client's ops in batch order). A client's state then
    // stays in cache for all its ops: in batch order, a routing batch
    // visits all its sessions once per publication, and reading each one's
    // held set again missed the cache (a sixth of a fan-out's CPU).
    // Clients touch different keys, so their writes need no order between
    // them; an op sees a body as stored if it was before the batch or an
    // op before it (in batch order) put it.
    let mut put_first: HashMap<MessageId, usize> = HashMap::default();
    for (at, op) in ops.iter().enumerate() {
        if let Op::PutMessage { id, .. } = op {
            put_first.entry(*id).or_insert(at);
        }
    }
    // Whether the client of each `Enqueue` holds its body after the batch,
    // and each (body, client, held after the batch) that an op let go.
    // Built after the reads' round trip, not beside its commands and
    // replies: a routing batch's runs are tens of MB.
    let order = by_client(&ops, &op_clients, batch.clients.len());
    let mut pin_held = vec![false; ops.len()];
    let mut released: Vec<(MessageId, usize, bool)> = Vec::new();
    let mut lost = Vec::new();
    for run in order.chunk_by(|a, b| a.0 == b.0) {
        let index = run[0].0;
        let client = &mut batch.clients[index];
        client.held.reserve(run.len());
        for &(_, at, step) in run {
            let stored = |id: &MessageId| {
                body_before.contains(id) || put_first.get(id).is_some_and(|first| *first < at)
            };
            client.simulate_step(step, &stored, &mut lost)?;
        }
        if client.exists
            && (client.assumed.iter()).any(|id| client.held.contains(id) || client.in_window(*id))
        {
            // What the send did on the assumption (an unread id taken as
            // queued) would be written: refuse the batch instead.
            return Err(StorageError::Invalid(format!(
                "internal: a send of {} not completed as planned",
                client.id
            )));
        }
        for &(_, at, step) in run {
            if let Step::Enqueue { id, .. } = step {
                pin_held[at] = client.holds(id);
            }
        }
        released.extend(lost.drain(..).map(|id| (id, index, client.holds(id))));
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
    let mut touched: Vec<(MessageId, usize)> = Vec::new();
    // The released pairs not pinned too (both sorted: one pass).
    released.sort();
    released.dedup_by_key(|(id, index, _)| (*id, *index));
    let mut pin_at = 0;
    released.retain(|(id, index, _)| {
        while pins
            .get(pin_at)
            .is_some_and(|pin| (pin.0, pin.1) < (*id, *index))
        {
            pin_at += 1;
        }
        pins.get(pin_at)
            .is_none_or(|pin| (pin.0, pin.1) != (*id, *index))
    });
    let mut last_kept = None;
    let pairs = (pins
        .iter()
        .map(|&(id, index, at)| (id, index, pin_held[at])))
    .chain(released.iter().copied());
    for (id, index, held) in pairs {
        if held {
            // Consecutive pins mostly name one body (a routing batch).
            if last_kept != Some(id) {
                kept.insert(id);
                last_kept = Some(id);
            }
        } else {
            touched.push((id, index));
        }
    }
    // Two sorted runs (from the pins, from the releases).
    touched.sort();
    for (id, holders) in by_body(&touched, |pair| pair.0) {
        let clients = holders.iter().map(|(_, index)| &batch.clients[*index]);
        let bytes = clients.clone().map(holder_len).sum();
        let mut command = Command::with_capacity("HDEL", &keys.body(id), holders.len(), bytes);
        for client in clients {
            command.push_arg(keys::HolderField(&client.id));
        }
        releases.push(command);
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
        redis.run_owned(writes, deadline).await?;
        let skip = trailing_writes.len() + checks_at;
        trailing_writes.extend(releases);
        let mut values = redis.run_owned(trailing_writes, deadline).await?;
        values.drain(..skip.min(values.len()));
        values
    } else {
        writes.extend(trailing_writes);
        let offset = writes.len() + checks_at;
        writes.extend(releases);
        let mut values = redis.run_owned(writes, deadline).await?;
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
    redis.run_owned(collect, deadline).await?;
    Ok(())
}
