//! The cluster state in memory ([`easy_mqtt_core::cluster`]): the reference
//! for the durable backends, and what the simulator runs several broker
//! nodes on (one `MemoryStorage` shared by all).
//!
//! Times to live are measured by the storage's clock
//! ([`MemoryStorage::with_clock`](crate::MemoryStorage::with_clock)).
//! Expired heartbeats and records are dropped when they are next looked at.
//!
//! - Heartbeat, adoption and ownership are exact (one lock): a heartbeat
//!   of a fenced incarnation answers `Fenced` and writes nothing.
//! - Fences are kept for as long as the storage lives.
//! - Inbox ids are `(clock ms, sequence)`, increasing per inbox even when
//!   the clock stands still. `read_inbox` answers at once: `wait` is an
//!   upper bound, and the caller polls.
//! - `routes` lists the routes of members only; `forget_member` removes a
//!   node's membership, inbox, routes, presence and owned-by index (owner
//!   records and epochs stay: epochs never go back).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use easy_mqtt_core::cluster::{
    BusEntry, Claim, ClusterOp, InboxId, Liveness, Member, Owner, Presence,
};
use easy_mqtt_core::packet::ByteStr;

#[derive(Debug, Clone, Copy)]
struct Heartbeat {
    incarnation: u64,
    /// On the storage's clock.
    expires: Duration,
}

#[derive(Debug, Default)]
struct Node {
    /// The last incarnation that heartbeated.
    incarnation: u64,
    alive: Option<Heartbeat>,
    /// Whether the node is registered (heartbeated and not forgotten).
    member: bool,
}

#[derive(Debug, Clone)]
struct Record {
    value: Bytes,
    expires: Option<Duration>,
}

#[derive(Debug, Default)]
pub(crate) struct ClusterState {
    nodes: BTreeMap<ByteStr, Node>,
    /// Adopted incarnations.
    /// Fenced incarnations, with the node that adopted each.
    fences: HashMap<(ByteStr, u64), ByteStr>,
    /// Per client: the highest epoch claimed, and the owner.
    epochs: BTreeMap<ByteStr, u64>,
    owners: BTreeMap<ByteStr, Owner>,
    owned: BTreeMap<ByteStr, BTreeSet<ByteStr>>,
    inboxes: BTreeMap<ByteStr, VecDeque<(InboxId, BusEntry)>>,
    /// The last id given per inbox (kept when the inbox is emptied, so ids
    /// keep growing).
    last_ids: BTreeMap<ByteStr, InboxId>,
    routes: BTreeMap<ByteStr, BTreeSet<ByteStr>>,
    presence: BTreeMap<ByteStr, BTreeMap<ByteStr, Presence>>,
    records: BTreeMap<ByteStr, BTreeMap<ByteStr, Record>>,
    logs: BTreeMap<(ByteStr, ByteStr), VecDeque<Bytes>>,
}

fn millis(time: Duration) -> u64 {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
}

impl ClusterState {
    pub(crate) fn apply(&mut self, op: ClusterOp, now: Duration) {
        match op {
            ClusterOp::Forward { node, entry } => {
                let ms = millis(now);
                let id = match self.last_ids.get(node.as_str()) {
                    Some(last) if last.ms >= ms => InboxId {
                        ms: last.ms,
                        seq: last.seq.saturating_add(1),
                    },
                    _ => InboxId { ms, seq: 0 },
                };
                self.last_ids.insert(node.clone(), id);
                self.inboxes.entry(node).or_default().push_back((id, entry));
            }
            ClusterOp::InboxAck { node, entry } => {
                if let Some(inbox) = self.inboxes.get_mut(node.as_str()) {
                    inbox.retain(|(id, _)| *id != entry);
                }
            }
            ClusterOp::AddRoute { node, filter } => {
                self.routes.entry(node).or_default().insert(filter);
            }
            ClusterOp::RemoveRoute { node, filter } => {
                if let Some(filters) = self.routes.get_mut(node.as_str()) {
                    filters.remove(filter.as_str());
                }
            }
            ClusterOp::SetPresence { node, presence } => {
                self.presence
                    .entry(node)
                    .or_default()
                    .insert(presence.client_id.clone(), presence);
            }
            ClusterOp::ClearPresence { node, client_id } => {
                if let Some(clients) = self.presence.get_mut(node.as_str()) {
                    clients.remove(client_id.as_str());
                }
            }
            ClusterOp::Disown { node, client_id } => {
                if let Some(owned) = self.owned.get_mut(node.as_str()) {
                    owned.remove(client_id.as_str());
                }
            }
            ClusterOp::PutRecord {
                space,
                key,
                value,
                ttl,
            } => {
                // Under a millisecond (the durable backends' unit): expired
                // at once.
                if ttl.is_some_and(|ttl| ttl < Duration::from_millis(1)) {
                    self.delete_record(&space, &key);
                    return;
                }
                let expires = ttl.map(|ttl| now.saturating_add(ttl));
                self.records
                    .entry(space)
                    .or_default()
                    .insert(key, Record { value, expires });
            }
            ClusterOp::DeleteRecord { space, key } => self.delete_record(&space, &key),
            ClusterOp::PushLog {
                space,
                key,
                entry,
                keep,
            } => {
                let keep = usize::try_from(keep).unwrap_or(usize::MAX);
                if keep == 0 {
                    self.logs.remove(&(space, key));
                    return;
                }
                let log = self.logs.entry((space, key)).or_default();
                log.push_front(entry);
                log.truncate(keep);
            }
        }
    }

    fn delete_record(&mut self, space: &str, key: &str) {
        if let Some(records) = self.records.get_mut(space) {
            records.remove(key);
            if records.is_empty() {
                self.records.remove(space);
            }
        }
    }

    fn current(&self, node: &str, now: Duration) -> Option<u64> {
        self.nodes
            .get(node)
            .and_then(|node| node.alive)
            .filter(|alive| alive.expires > now)
            .map(|alive| alive.incarnation)
    }

    pub(crate) fn heartbeat(
        &mut self,
        node: &str,
        incarnation: u64,
        ttl: Duration,
        now: Duration,
    ) -> Liveness {
        let node = ByteStr::from(node);
        if self.fences.contains_key(&(node.clone(), incarnation)) {
            return Liveness::Fenced;
        }
        let entry = self.nodes.entry(node).or_default();
        entry.member = true;
        entry.incarnation = incarnation;
        entry.alive = Some(Heartbeat {
            incarnation,
            expires: now.saturating_add(ttl),
        });
        Liveness::Alive
    }

    pub(crate) fn members(&self, now: Duration) -> Vec<Member> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.member)
            .map(|(name, node)| Member {
                node: name.clone(),
                alive: self.current(name, now),
                incarnation: node.incarnation,
            })
            .collect()
    }

    pub(crate) fn claim_adoption(
        &mut self,
        dead: &str,
        incarnation: u64,
        by: &str,
        now: Duration,
    ) -> bool {
        if self.current(dead, now) == Some(incarnation) {
            return false;
        }
        match self.fences.entry((ByteStr::from(dead), incarnation)) {
            // The winner claiming again (a retry after a lost answer) wins.
            std::collections::hash_map::Entry::Occupied(winner) => winner.get() == by,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(ByteStr::from(by));
                true
            }
        }
    }

    pub(crate) fn adopter(&self, dead: &str, incarnation: u64) -> Option<ByteStr> {
        self.fences
            .get(&(ByteStr::from(dead), incarnation))
            .cloned()
    }

    pub(crate) fn forget_member(&mut self, node: &str) {
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.member = false;
            entry.alive = None;
        }
        self.inboxes.remove(node);
        self.routes.remove(node);
        self.presence.remove(node);
        self.owned.remove(node);
    }

    pub(crate) fn claim_owner(&mut self, client_id: &str, node: &str) -> Claim {
        let client_id = ByteStr::from(client_id);
        let node = ByteStr::from(node);
        let epoch = self.epochs.entry(client_id.clone()).or_default();
        *epoch = epoch.saturating_add(1);
        let epoch = *epoch;
        let previous = self.owners.insert(
            client_id.clone(),
            Owner {
                node: node.clone(),
                epoch,
            },
        );
        self.owned.entry(node).or_default().insert(client_id);
        Claim { epoch, previous }
    }

    pub(crate) fn owner(&self, client_id: &str) -> Option<Owner> {
        self.owners.get(client_id).cloned()
    }

    pub(crate) fn owned_by(&self, node: &str) -> Vec<ByteStr> {
        self.owned
            .get(node)
            .map(|owned| owned.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn responsible(&self, client_id: &str) -> Vec<ByteStr> {
        self.owned
            .iter()
            .filter(|(node, owned)| {
                owned.contains(client_id) && self.nodes.get(*node).is_some_and(|n| n.member)
            })
            .map(|(node, _)| node.clone())
            .collect()
    }

    pub(crate) fn presence(&self, node: &str) -> Vec<Presence> {
        self.presence
            .get(node)
            .map(|clients| clients.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn routes(&self) -> Vec<(ByteStr, Vec<ByteStr>)> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.member)
            .filter_map(|(name, _)| {
                let filters = self.routes.get(name)?;
                Some((name.clone(), filters.iter().cloned().collect()))
            })
            .collect()
    }

    pub(crate) fn read_inbox(
        &self,
        node: &str,
        after: Option<InboxId>,
        max: usize,
    ) -> Vec<(InboxId, BusEntry)> {
        let Some(inbox) = self.inboxes.get(node) else {
            return Vec::new();
        };
        inbox
            .iter()
            .filter(|(id, _)| after.is_none_or(|after| *id > after))
            .take(max)
            .cloned()
            .collect()
    }

    pub(crate) fn get_record(&mut self, space: &str, key: &str, now: Duration) -> Option<Bytes> {
        self.expire_records(space, now);
        self.records
            .get(space)
            .and_then(|records| records.get(key))
            .map(|record| record.value.clone())
    }

    pub(crate) fn scan_records(&mut self, space: &str, now: Duration) -> Vec<(ByteStr, Bytes)> {
        self.expire_records(space, now);
        self.records
            .get(space)
            .map(|records| {
                records
                    .iter()
                    .map(|(key, record)| (key.clone(), record.value.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn expire_records(&mut self, space: &str, now: Duration) {
        if let Some(records) = self.records.get_mut(space) {
            records.retain(|_, record| record.expires.is_none_or(|expires| expires > now));
            if records.is_empty() {
                self.records.remove(space);
            }
        }
    }

    pub(crate) fn read_log(&self, space: &str, key: &str, max: usize) -> Vec<Bytes> {
        self.logs
            .get(&(ByteStr::from(space), ByteStr::from(key)))
            .map(|log| log.iter().take(max).cloned().collect())
            .unwrap_or_default()
    }
}
