//! Step 2 of `apply` (see `apply.rs`): each session the batch touches,
//! simulated op by op on what step 1 read, exactly as the reference backend
//! applies the ops, and the single-key writes each effective op makes.

use std::collections::BTreeMap;

use easy_mqtt_core::packet::{ByteStr, PacketId};
use easy_mqtt_core::session::OutboundPhase;
use easy_mqtt_core::storage::{MessageId, Op, SessionRecord, StorageError};

use crate::codec::{self, Held, MAX_ORDER, MESSAGE_ID_LEN, PACKET_ID_LEN, WindowEntry};
use crate::conn::{Command, MAX_MERGED_ARGS};
use crate::keys::{Keys, SessionKeys};

/// Keyed per process (client ids come from peers).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// One client touched by the batch: what to read, then its simulated state.
pub(crate) struct Client {
    pub(crate) id: ByteStr,
    pub(crate) keys: SessionKeys,
    /// Read the whole held set (`DeleteSession` in the batch: it releases
    /// every held body).
    pub(crate) full: bool,
    /// Read the window.
    pub(crate) needs_window: bool,
    /// The batch puts or deletes the session (index maintenance).
    pub(crate) lifecycle: bool,
    /// Held ids to read: whether the held set has them (`SMISMEMBER`).
    pub(crate) named_ids: Vec<MessageId>,
    /// Every op of the batch for this client is a `CompleteInflight` or an
    /// `Enqueue` (a journal batch acknowledging, a routing batch): only the
    /// window entries the completions name are read (`HMGET`), not the
    /// whole window (see `apply`).
    pub(crate) only_complete: bool,
    /// The packet ids this client's `CompleteInflight`s name.
    pub(crate) completed: Vec<PacketId>,
    /// This client's `SetInflight`s, in batch order; once its reads are
    /// planned, those whose id is not read (see `apply`'s "Unread sends").
    pub(crate) sends: Vec<PlannedSend>,
    /// What the batch did last with each packet id it names, in batch
    /// order (which of `sends` used it, or completed it).
    pub(crate) packets: HashMap<PacketId, PacketUse>,
    /// Ids the simulation takes as queued without having read them.
    pub(crate) assumed: Vec<MessageId>,

    // Where phase 1 put each read.
    pub(crate) record_at: usize,
    pub(crate) window_at: Option<usize>,
    pub(crate) completed_at: Option<usize>,
    pub(crate) full_at: Option<usize>,
    /// The `SMISMEMBER` of `named_ids`.
    pub(crate) named_at: Option<usize>,

    // Simulated state.
    pub(crate) exists: bool,
    /// Held ids (queued or in flight); their flags are in storage only
    /// (an `Enqueue`'s go with its holder field, a send's are its op's).
    pub(crate) held: HashSet<MessageId>,
    pub(crate) window: Window,
    pub(crate) next_order: u64,

    /// Writes of this client, in batch order.
    pub(crate) writes: Vec<Write>,
    /// Positions in `writes` of commands made useless by a later op of the
    /// batch, not sent.
    pub(crate) dropped: Vec<usize>,
    /// Packet ids whose window entry this batch creates (storage had none
    /// there when the batch began, or this batch deleted it first), with
    /// the positions of their `HSET`s in `writes`.
    pub(crate) fresh: HashMap<PacketId, Vec<usize>>,
}

/// A write of the simulation, kept as data until [`Client::take_writes`]
/// builds the commands: most window entries a journal batch puts are
/// dropped again by their completion (sent and acknowledged within the
/// batch), and runs of writes to one key become one command. Built at
/// once, each was a command of its own (a key, a buffer and an argument
/// list apiece), then dropped or copied into the one before it.
pub(crate) enum Write {
    /// `SADD held member`.
    Hold(MessageId),
    /// `SREM held member`.
    Unhold(MessageId),
    /// `HSET window packet-id entry`.
    PutWindow(PacketId, WindowEntry),
    /// `HDEL window packet-id`.
    DeleteWindow(PacketId),
    Other(Command),
}

impl Write {
    /// Whether `next` joins this write's command (a run of one kind).
    fn joins(&self, next: &Write) -> bool {
        matches!(
            (self, next),
            (Write::Hold(_), Write::Hold(_))
                | (Write::Unhold(_), Write::Unhold(_))
                | (Write::PutWindow(..), Write::PutWindow(..))
                | (Write::DeleteWindow(_), Write::DeleteWindow(_))
        )
    }
}

impl Client {
    pub(crate) fn new(id: &ByteStr, keys: SessionKeys) -> Client {
        Client {
            id: id.clone(),
            keys,
            full: false,
            needs_window: false,
            lifecycle: false,
            named_ids: Vec::new(),
            only_complete: true,
            completed: Vec::new(),
            sends: Vec::new(),
            packets: HashMap::default(),
            assumed: Vec::new(),
            record_at: 0,
            window_at: None,
            completed_at: None,
            full_at: None,
            named_at: None,
            writes: Vec::new(),
            dropped: Vec::new(),
            fresh: HashMap::default(),
            exists: false,
            held: HashSet::default(),
            window: Window::default(),
            next_order: 1,
        }
    }

    pub(crate) fn in_window(&self, id: MessageId) -> bool {
        self.window.holds(id)
    }

    /// Queued: held and not in flight.
    pub(crate) fn queued(&self, id: MessageId) -> bool {
        self.held.contains(&id) && !self.in_window(id)
    }

    pub(crate) fn holds(&self, id: MessageId) -> bool {
        self.exists && (self.held.contains(&id) || self.in_window(id))
    }

    /// Every id the client holds, queued or in flight.
    pub(crate) fn all_ids(&self) -> Vec<MessageId> {
        let mut ids: Vec<MessageId> = self.held.iter().copied().collect();
        ids.extend(self.window.ids());
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub(crate) fn clear(&mut self) {
        self.held.clear();
        self.window.clear();
        // Storage's window is deleted by the write before: what was fresh
        // stays dropped or written, and nothing after it can be fresh
        // relative to an entry that is gone.
        self.fresh.clear();
    }

    pub(crate) fn take_order(&mut self) -> Result<u64, StorageError> {
        let order = self.next_order;
        if order >= MAX_ORDER {
            return Err(StorageError::Corrupt {
                key: self.keys.held.clone(),
                reason: "send order exhausted".to_owned(),
            });
        }
        self.next_order += 1;
        Ok(order)
    }

    pub(crate) fn write(&mut self, command: Command) {
        self.writes.push(Write::Other(command));
    }

    /// `SADD`; consecutive enqueues share one command (same effect: the
    /// ids are added in order, an id already held stays as it is).
    pub(crate) fn enqueue(&mut self, id: MessageId) {
        self.writes.push(Write::Hold(id));
    }

    /// Applies one op to the simulated state and emits its writes; `lost`
    /// receives the ids this client stops holding.
    /// [`Client::simulate`] of a [`Step`].
    pub(crate) fn simulate_step(
        &mut self,
        step: Step<'_>,
        stored: &dyn Fn(&MessageId) -> bool,
        lost: &mut Vec<MessageId>,
    ) -> Result<(), StorageError> {
        match step {
            Step::Enqueue { id } => {
                if self.exists {
                    self.enqueue_stored(id, stored);
                }
                Ok(())
            }
            Step::Other(op) => self.simulate(op, stored, lost),
        }
    }

    fn enqueue_stored(&mut self, id: MessageId, stored: &dyn Fn(&MessageId) -> bool) {
        // The flags go with the holder field (`apply` writes the last
        // `Enqueue`'s), also for an id already queued; the position comes
        // from the id alone, so concurrent writers to one queue need not
        // agree on anything.
        if stored(&id) && !self.in_window(id) && self.held.insert(id) {
            self.enqueue(id);
        }
    }

    fn simulate(
        &mut self,
        op: &Op,
        stored: &dyn Fn(&MessageId) -> bool,
        lost: &mut Vec<MessageId>,
    ) -> Result<(), StorageError> {
        match op {
            Op::PutSession(record) => self.put_session(record, lost),
            Op::DeleteSession { .. } => self.delete_session(lost),
            _ if !self.exists => {}
            Op::Subscribe { filter, qos, .. } => self.write(
                Command::new("HSET", &self.keys.subscriptions)
                    .arg(filter.as_str())
                    .arg(codec::qos_digit(*qos)),
            ),
            Op::Unsubscribe { filter, .. } => {
                self.write(Command::new("HDEL", &self.keys.subscriptions).arg(filter.as_str()));
            }
            &Op::Enqueue { id, .. } => self.enqueue_stored(id, stored),
            &Op::Dequeue { id, .. } => self.dequeue(id, lost),
            &Op::SetInflight {
                packet_id,
                id,
                phase,
                qos,
                retain,
                ..
            } => self.set_inflight(packet_id, id, phase, Held { qos, retain }, lost)?,
            &Op::CompleteInflight { packet_id, .. } => self.complete_inflight(packet_id, lost),
            &Op::AddInboundQos2 { packet_id, .. } => self.write(
                Command::new("SADD", &self.keys.inbound).arg(&codec::encode_packet_id(packet_id)),
            ),
            &Op::RemoveInboundQos2 { packet_id, .. } => self.write(
                Command::new("SREM", &self.keys.inbound).arg(&codec::encode_packet_id(packet_id)),
            ),
            Op::PutMessage { .. } | Op::SetRetained { .. } | Op::Cluster(_) => {}
        }
        Ok(())
    }

    pub(crate) fn put_session(&mut self, record: &SessionRecord, lost: &mut Vec<MessageId>) {
        if self.exists {
            return;
        }
        // Whatever a previous life left behind goes first (a session deleted
        // while another writer still wrote to it); bodies it pinned that
        // were not read here stay pinned (a leak, never a dangling reference).
        lost.extend(self.all_ids());
        let [subscriptions, held, window, inbound] = self.keys.data();
        let clear = Command::new("DEL", subscriptions)
            .arg(held)
            .arg(window)
            .arg(inbound);
        self.write(clear);
        self.write(
            Command::new("SET", &self.keys.record)
                .arg(codec::encode_record(record))
                .arg("NX"),
        );
        self.exists = true;
        self.clear();
    }

    pub(crate) fn delete_session(&mut self, lost: &mut Vec<MessageId>) {
        // Even for an unknown session: leftovers are cleared the same way.
        lost.extend(self.all_ids());
        let [record, subscriptions, held, window, inbound] = self.keys.all();
        // One command: the session and all it holds go at once.
        let delete = Command::new("DEL", record)
            .arg(subscriptions)
            .arg(held)
            .arg(window)
            .arg(inbound);
        self.write(delete);
        self.exists = false;
        self.clear();
    }

    pub(crate) fn dequeue(&mut self, id: MessageId, lost: &mut Vec<MessageId>) {
        if !self.queued(id) {
            return;
        }
        self.held.remove(&id);
        self.writes.push(Write::Unhold(id));
        lost.push(id);
    }

    pub(crate) fn set_inflight(
        &mut self,
        packet_id: PacketId,
        id: MessageId,
        phase: OutboundPhase,
        sent: Held,
        lost: &mut Vec<MessageId>,
    ) -> Result<(), StorageError> {
        let current = self.window.get(&packet_id).copied();
        if let Some(mut entry) = current.filter(|entry| entry.id == id) {
            // A phase update keeps the send order and the flags.
            entry.phase = phase;
            self.put_window(packet_id, entry);
            return Ok(());
        }
        if !self.queued(id) {
            return Ok(());
        }
        if let Some(replaced) = current {
            // The packet id named another message: it is dropped (removed
            // from the held set first, so that no state in between shows it
            // back in the queue).
            self.held.remove(&replaced.id);
            self.writes.push(Write::Unhold(replaced.id));
            lost.push(replaced.id);
        }
        let entry = WindowEntry {
            id,
            qos: sent.qos,
            retain: sent.retain,
            phase,
            order: self.take_order()?,
        };
        // One command moves it: the id stays in the held set, and an id in
        // the window is not queued.
        self.put_window(packet_id, entry);
        Ok(())
    }

    pub(crate) fn put_window(&mut self, packet_id: PacketId, entry: WindowEntry) {
        let at = self.writes.len();
        if self.window.get(&packet_id).is_none() {
            // The window was read whole (every op that puts reads it), so
            // no entry here means none in storage either, or only one that
            // an earlier write of this batch deletes.
            self.fresh.insert(packet_id, vec![at]);
        } else if let Some(positions) = self.fresh.get_mut(&packet_id) {
            positions.push(at);
        }
        self.window.insert(packet_id, entry);
        self.writes.push(Write::PutWindow(packet_id, entry));
    }

    /// Moves the writes to send to `out`, in batch order, as commands.
    /// Writes of one kind that end up next to each other become one
    /// command: typically the `SREM`s of many deliveries sent and
    /// acknowledged within the batch, whose window writes were dropped,
    /// the window entries of the sends still in flight (one `HSET`), and a
    /// routing batch's enqueues (one `SADD`). Each key's writes keep their
    /// order, and a merged command runs whole: a batch cut short leaves
    /// one of the states that a cut between the separate commands left.
    pub(crate) fn take_writes(&mut self, out: &mut Vec<Command>) {
        let mut writes = std::mem::take(&mut self.writes);
        if !self.dropped.is_empty() {
            self.dropped.sort_unstable();
            self.dropped.dedup();
            let mut dropped = self.dropped.drain(..).peekable();
            let mut at = 0;
            writes.retain(|_| {
                let keep = dropped.next_if_eq(&at).is_none();
                at += 1;
                keep
            });
        }
        let start = out.len();
        let mut writes = writes.into_iter();
        let (id, packet_id) = (MESSAGE_ID_LEN, PACKET_ID_LEN);
        while let Some(write) = writes.next() {
            if let Write::Other(command) = write {
                if out.len() > start
                    && let Some(last) = out.last_mut()
                    && last.absorb(&command)
                {
                    continue;
                }
                out.push(command);
                continue;
            }
            // A run of one kind is one command, bounded as
            // `Command::absorb` bounds merged removals: Redis runs a
            // command to its end.
            let rest = writes.as_slice();
            let (command, run) = match &write {
                Write::Hold(_) => {
                    let run = run_length(&write, rest, MAX_MERGED_ARGS);
                    let command = Command::with_capacity("SADD", &self.keys.held, run, run * id);
                    (command, run)
                }
                Write::Unhold(_) => {
                    let run = run_length(&write, rest, MAX_MERGED_ARGS);
                    let command = Command::with_capacity("SREM", &self.keys.held, run, run * id);
                    (command, run)
                }
                Write::PutWindow(..) => {
                    let run = run_length(&write, rest, MAX_MERGED_ARGS / 2);
                    let bytes = run * (packet_id + codec::WINDOW_ENTRY_LEN);
                    let command = Command::with_capacity("HSET", &self.keys.window, 2 * run, bytes);
                    (command, run)
                }
                Write::DeleteWindow(_) => {
                    let run = run_length(&write, rest, MAX_MERGED_ARGS);
                    let bytes = run * packet_id;
                    let command = Command::with_capacity("HDEL", &self.keys.window, run, bytes);
                    (command, run)
                }
                Write::Other(_) => continue,
            };
            let mut command = command;
            push_write(&mut command, &write);
            for next in writes.by_ref().take(run - 1) {
                push_write(&mut command, &next);
            }
            out.push(command);
        }
    }

    pub(crate) fn complete_inflight(&mut self, packet_id: PacketId, lost: &mut Vec<MessageId>) {
        let Some(entry) = self.window.remove(&packet_id) else {
            return;
        };
        self.held.remove(&entry.id);
        if let Some(positions) = self.fresh.remove(&packet_id) {
            // Sent and acknowledged within one batch (the journal lags
            // behind the socket under load): the entry never needs to reach
            // storage, and the id goes straight from queued to gone. A batch
            // cut before the `SREM` leaves it queued, to be sent again.
            self.dropped.extend(positions);
            self.writes.push(Write::Unhold(entry.id));
            lost.push(entry.id);
            return;
        }
        // Held set first: in between, the entry is still in the window (so
        // not queued) and a replay completes it.
        self.writes.push(Write::Unhold(entry.id));
        self.writes.push(Write::DeleteWindow(packet_id));
        lost.push(entry.id);
    }

    pub(crate) fn see_order(&mut self, order: u64) {
        self.next_order = self.next_order.max(order.saturating_add(1));
    }
}

/// A `SetInflight` of the batch, as `apply` plans its reads.
#[derive(Clone, Copy)]
pub(crate) struct PlannedSend {
    pub(crate) packet_id: PacketId,
    pub(crate) id: MessageId,
    /// The next op of the client naming the packet id is its
    /// `CompleteInflight`.
    pub(crate) completed: bool,
    /// An earlier op of the batch completed the packet id: it is free
    /// when this send uses it, whatever storage held.
    pub(crate) after_complete: bool,
}

/// The last op of a batch naming a packet id of a client.
#[derive(Clone, Copy)]
pub(crate) enum PacketUse {
    /// `SetInflight`: the send at this index of `Client::sends`.
    Sent(usize),
    Completed,
}

/// The simulated in-flight window, its ids indexed: whether a client holds
/// an id is asked for every id a batch enqueues or releases, and scanning
/// windows of 100 entries for each was a tenth of the broker's CPU in the
/// original's scenario.
#[derive(Default)]
pub(crate) struct Window {
    pub(crate) by_packet: BTreeMap<PacketId, WindowEntry>,
    /// How many packet ids name each id (one, unless storage is corrupt).
    pub(crate) ids: HashMap<MessageId, u32>,
}

impl Window {
    pub(crate) fn get(&self, packet_id: &PacketId) -> Option<&WindowEntry> {
        self.by_packet.get(packet_id)
    }

    pub(crate) fn holds(&self, id: MessageId) -> bool {
        // Not even hashed for the many clients of a routing batch, whose
        // window is not read.
        !self.ids.is_empty() && self.ids.contains_key(&id)
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.ids.keys().copied()
    }

    pub(crate) fn insert(&mut self, packet_id: PacketId, entry: WindowEntry) {
        if let Some(replaced) = self.by_packet.insert(packet_id, entry) {
            self.forget(replaced.id);
        }
        *self.ids.entry(entry.id).or_insert(0) += 1;
    }

    pub(crate) fn remove(&mut self, packet_id: &PacketId) -> Option<WindowEntry> {
        let entry = self.by_packet.remove(packet_id)?;
        self.forget(entry.id);
        Some(entry)
    }

    pub(crate) fn forget(&mut self, id: MessageId) {
        if let Some(count) = self.ids.get_mut(&id) {
            *count -= 1;
            if *count == 0 {
                self.ids.remove(&id);
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.by_packet.clear();
        self.ids.clear();
    }
}

/// How many writes from `first` on (`rest` follows it) make one command,
/// at most `most`.
fn run_length(first: &Write, rest: &[Write], most: usize) -> usize {
    1 + rest[..rest.len().min(most.saturating_sub(1))]
        .iter()
        .take_while(|next| first.joins(next))
        .count()
}

/// Appends a write of a run to its command ([`Client::run_command`]).
fn push_write(command: &mut Command, write: &Write) {
    match write {
        Write::Hold(id) | Write::Unhold(id) => command.push_arg(&codec::encode_message_id(*id)),
        Write::PutWindow(packet_id, entry) => {
            command.push_arg(&codec::encode_packet_id(*packet_id));
            command.push_arg(&codec::encode_window(entry));
        }
        Write::DeleteWindow(packet_id) => command.push_arg(&codec::encode_packet_id(*packet_id)),
        Write::Other(_) => {}
    }
}

/// One op of a client's run in `apply`'s phase 2: an `Enqueue` (nearly
/// every op of a routing batch) copied out of the batch, which the run
/// would otherwise read out of order (a cache miss per op), the others by
/// reference.
#[derive(Clone, Copy)]
pub(crate) enum Step<'o> {
    Enqueue { id: MessageId },
    Other(&'o Op),
}

impl<'o> Step<'o> {
    pub(crate) fn of(op: &'o Op) -> Step<'o> {
        match *op {
            Op::Enqueue { id, .. } => Step::Enqueue { id },
            _ => Step::Other(op),
        }
    }
}

pub(crate) struct Batch<'k> {
    keys: &'k Keys,
    pub(crate) clients: Vec<Client>,
    by_id: HashMap<ByteStr, usize>,
    /// The client of each client id seen, by the address and length of its
    /// bytes. A routing batch names each session with clones of one
    /// `ByteStr` (the session's own), so most lookups hash two words and
    /// never read the id's bytes, which are in no cache by then (comparing
    /// them was 5 % of a fan-out's CPU). Sound because the ops, and so the
    /// bytes, outlive the batch: no address is reused meanwhile, and the
    /// bytes behind one address and length are one id.
    by_address: HashMap<(usize, usize), usize>,
}

impl<'k> Batch<'k> {
    pub(crate) fn new(keys: &'k Keys) -> Batch<'k> {
        Batch {
            keys,
            clients: Vec::new(),
            by_id: HashMap::default(),
            by_address: HashMap::default(),
        }
    }

    /// The index in `clients` of `id`, which the caller's ops hold for as
    /// long as this batch lives (see `by_address`).
    pub(crate) fn client(&mut self, id: &ByteStr) -> usize {
        let address = (id.as_bytes().as_ptr() as usize, id.len());
        if let Some(index) = self.by_address.get(&address) {
            return *index;
        }
        let index = match self.by_id.get(id) {
            Some(index) => *index,
            None => {
                let index = self.clients.len();
                self.clients
                    .push(Client::new(id, self.keys.session(id.as_str())));
                self.by_id.insert(id.clone(), index);
                index
            }
        };
        self.by_address.insert(address, index);
        index
    }
}

pub(crate) fn session_id(op: &Op) -> Option<&ByteStr> {
    match op {
        Op::PutSession(record) => Some(&record.client_id),
        Op::DeleteSession { client_id }
        | Op::Subscribe { client_id, .. }
        | Op::Unsubscribe { client_id, .. }
        | Op::Enqueue { client_id, .. }
        | Op::Dequeue { client_id, .. }
        | Op::SetInflight { client_id, .. }
        | Op::CompleteInflight { client_id, .. }
        | Op::AddInboundQos2 { client_id, .. }
        | Op::RemoveInboundQos2 { client_id, .. } => Some(client_id),
        Op::PutMessage { .. } | Op::SetRetained { .. } | Op::Cluster(_) => None,
    }
}

pub(crate) fn push_unique<T: Copy + Eq + std::hash::Hash>(
    list: &mut Vec<T>,
    seen: &mut HashSet<T>,
    x: T,
) {
    if seen.insert(x) {
        list.push(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use easy_mqtt_core::packet::QoS;

    fn args(command: &Command) -> Vec<Vec<u8>> {
        (command.cmd.args_iter())
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => b"?".to_vec(),
            })
            .collect()
    }

    fn entry(id: u64) -> WindowEntry {
        WindowEntry {
            id: MessageId(id),
            qos: QoS::AtLeastOnce,
            retain: false,
            phase: OutboundPhase::Published,
            order: id,
        }
    }

    fn pid(n: u16) -> PacketId {
        PacketId::new(n).unwrap_or(PacketId::MAX)
    }

    #[test]
    fn runs_of_one_kind_become_one_bounded_command_in_order() {
        let keys = Keys::new("t");
        let mut client = Client::new(&ByteStr::from("c"), keys.session("c"));
        client.writes.push(Write::PutWindow(pid(1), entry(1)));
        client.writes.push(Write::PutWindow(pid(2), entry(2)));
        client.writes.push(Write::PutWindow(pid(3), entry(3)));
        // Dropped (a position twice is harmless): the entries on either
        // side of it join, and the first removal goes.
        client.dropped.extend([3, 1, 1]);
        for id in 0..MAX_MERGED_ARGS as u64 + 10 {
            client.writes.push(Write::Unhold(MessageId(id)));
        }
        client.writes.push(Write::DeleteWindow(pid(1)));
        client.writes.push(Write::Unhold(MessageId(7)));
        client.writes.push(Write::Hold(MessageId(8)));
        client.writes.push(Write::Hold(MessageId(9)));
        let mut out = Vec::new();
        client.take_writes(&mut out);
        let names: Vec<&str> = out.iter().map(|command| command.name).collect();
        assert_eq!(names, ["HSET", "SREM", "SREM", "HDEL", "SREM", "SADD"]);
        let hset = args(&out[0]);
        assert_eq!(hset.len(), 2 + 4);
        assert_eq!(hset[2], codec::encode_packet_id(pid(1)));
        assert_eq!(hset[3], codec::encode_window(&entry(1)));
        assert_eq!(hset[4], codec::encode_packet_id(pid(3)));
        assert_eq!(args(&out[1]).len(), 2 + MAX_MERGED_ARGS);
        let second = args(&out[2]);
        assert_eq!(args(&out[1])[2], codec::encode_message_id(MessageId(1)));
        assert_eq!(second.len(), 2 + 9);
        assert_eq!(
            second[2],
            codec::encode_message_id(MessageId(MAX_MERGED_ARGS as u64 + 1))
        );
        assert_eq!(args(&out[4])[2], codec::encode_message_id(MessageId(7)));
        let added = args(&out[5]);
        assert_eq!(added[1], keys.session("c").held.into_bytes());
        assert_eq!(
            added[2..],
            [8, 9].map(|n| codec::encode_message_id(MessageId(n)))
        );
        assert!(client.writes.is_empty() && client.dropped.is_empty());
    }
}
