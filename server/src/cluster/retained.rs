//! Retained messages across the cluster: every node keeps every retained
//! message in memory, so each change must reach every node.
//!
//! A retained publish is stored in one batch with a `Publish` entry for the
//! inbox of every node in this node's last membership read (its
//! [`RetainedPeers`]). A node that joins reads the retained state from
//! storage three heartbeats after it registered, by when every other node's
//! membership read names it. Three ways a change could still miss it, and
//! what closes each:
//!
//! - **A batch stored late**: built from a membership read taken before the
//!   node registered, and stored after its catch-up read (the sender was
//!   cut off from storage meanwhile; sim seeds 250490 and 292188). Once such
//!   a batch is stored, the sender's next membership read tells every node
//!   the batch was not sent to ([`BusEntry::ReadRetained`]). "Late" means
//!   the batch was stored more than two heartbeats after its membership
//!   read started: a batch stored sooner reached storage before any node
//!   that registered after that read made its catch-up read (three
//!   heartbeats after it registered).
//! - **The sender died before telling**: the other nodes see its
//!   incarnation end in their membership read, and read the retained state
//!   again three heartbeats later.
//! - **A retained message deleted through the HTTP API**: stored, then
//!   every peer is told to read again.
//!
//! A catch-up read keeps the in-memory value of every topic changed while
//! it ran (`Node::retained_touched`): the stored value it read may be older.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use easy_mqtt_core::ByteStr;
use easy_mqtt_core::cluster::{BusEntry, ClusterOp};
use easy_mqtt_core::storage::Op;

use super::ClusterState;
use crate::node::Node;
use crate::runtime::Runtime;
use crate::sessions::lock;

/// The other nodes a retained message goes to, as one membership read
/// found them: the live ones, and those whose heartbeat expired but that
/// nobody adopted yet. Cut off from storage for about a time to live, such
/// a node may heartbeat again without ever being fenced, and so without
/// reading the retained state again: what was not sent to its inbox
/// meanwhile it would miss for good.
#[derive(Debug, Clone, Default)]
pub(crate) struct RetainedPeers {
    pub(crate) nodes: Arc<[ByteStr]>,
    /// When the membership read that found them started; `None` before the
    /// first one.
    pub(crate) read_at: Option<Instant>,
}

/// When the retained state must be read again from storage: at or after
/// each time asked for, so one read at the latest of them serves all.
#[derive(Debug, Default)]
pub(super) struct CatchUp(Option<Instant>);

impl CatchUp {
    pub(super) fn at_or_after(&mut self, at: Instant) {
        self.0 = Some(self.0.map_or(at, |pending| pending.max(at)));
    }

    pub(super) fn due(&self, now: Instant) -> bool {
        self.0.is_some_and(|at| now >= at)
    }

    pub(super) fn done(&mut self) {
        self.0 = None;
    }
}

impl ClusterState {
    /// The nodes a retained message goes to now.
    pub(crate) fn retained_peers(&self) -> RetainedPeers {
        crate::node::read(&self.retained_peers).clone()
    }

    /// A retained change was stored that went to `peers` only: if late (see
    /// the module docs), the nodes missing from `peers` in the next
    /// membership read are told to read the retained state again.
    pub(crate) fn retained_stored(&self, peers: &RetainedPeers, now: Instant) {
        let late = peers
            .read_at
            .is_none_or(|read_at| now.duration_since(read_at) > self.config.heartbeat_interval * 2);
        if !late {
            return;
        }
        self.merge_late_retained(&peers.nodes);
    }

    /// Adds a late batch that reached `nodes`: told later are the nodes
    /// missing from any of them, so only those that every late batch
    /// reached are kept.
    fn merge_late_retained(&self, nodes: &[ByteStr]) {
        let mut pending = lock(&self.late_retained);
        *pending = Some(match pending.take() {
            None => nodes.to_vec(),
            Some(mut reached) => {
                reached.retain(|node| nodes.contains(node));
                reached
            }
        });
    }

    /// Installs a membership read that started at `read_at`: the `live`
    /// nodes (this one included) and the retained peers. Returns the ops
    /// that tell the nodes late retained batches missed (`late`, taken with
    /// [`ClusterState::take_late_retained`] before the read started).
    pub(super) fn set_members(
        &self,
        live: Vec<ByteStr>,
        retained_peers: Vec<ByteStr>,
        read_at: Instant,
        late: Option<Vec<ByteStr>>,
    ) -> Vec<Op> {
        let own = self.name();
        let ended: Vec<ByteStr> = {
            let mut known = crate::node::write(&self.live);
            let ended = known
                .iter()
                .filter(|name| **name != own && !live.contains(name))
                .cloned()
                .collect();
            *known = live;
            ended
        };
        if !ended.is_empty() {
            // A retained batch an ended incarnation stored late may have
            // missed this node, and it can no longer tell.
            tracing::debug!(
                ?ended,
                "incarnations ended; reading the retained state again"
            );
            self.retained_stale.store(true, Ordering::Release);
        }
        self.set_retained_peers(retained_peers, read_at, late)
    }

    fn set_retained_peers(
        &self,
        nodes: Vec<ByteStr>,
        read_at: Instant,
        late: Option<Vec<ByteStr>>,
    ) -> Vec<Op> {
        let notices = late.map_or_else(Vec::new, |reached| {
            let reached: HashSet<&ByteStr> = reached.iter().collect();
            nodes
                .iter()
                .filter(|node| !reached.contains(node))
                .map(|node| {
                    tracing::info!(
                        %node,
                        "a retained message stored late did not reach this node: telling it to read them again"
                    );
                    read_retained_notice(node)
                })
                .collect()
        });
        *crate::node::write(&self.retained_peers) = RetainedPeers {
            nodes: nodes.into(),
            read_at: Some(read_at),
        };
        notices
    }

    /// Takes the nodes late retained batches reached, before a membership
    /// read starts (the batches were stored before it, so it names every
    /// node they missed).
    pub(super) fn take_late_retained(&self) -> Option<Vec<ByteStr>> {
        lock(&self.late_retained).take()
    }

    /// Puts back what [`ClusterState::take_late_retained`] took, after a
    /// membership read failed.
    pub(super) fn restore_late_retained(&self, late: Option<Vec<ByteStr>>) {
        if let Some(reached) = late {
            self.merge_late_retained(&reached);
        }
    }

    /// Has the retained state read again from storage at the next
    /// heartbeat.
    pub(crate) fn read_retained_soon(&self) {
        self.read_retained.store(true, Ordering::Release);
    }

    /// Whether [`ClusterState::read_retained_soon`] was called since the
    /// last call.
    pub(super) fn take_read_retained(&self) -> bool {
        self.read_retained.swap(false, Ordering::AcqRel)
    }
}

/// The op that tells `node` to read the retained state again.
fn read_retained_notice(node: &ByteStr) -> Op {
    Op::from(ClusterOp::Forward {
        node: node.clone(),
        entry: BusEntry::ReadRetained,
    })
}

impl<R: Runtime> Node<R> {
    /// After a retained change went to `peers` and was stored (or may have
    /// been: an outcome unknown counts as stored).
    pub(crate) fn retained_stored(&self, peers: Option<&RetainedPeers>) {
        if let (Some(cluster), Some(peers)) = (self.cluster.as_ref(), peers) {
            cluster.retained_stored(peers, self.runtime.now());
        }
    }

    /// Tells every other node to read the retained state again (a retained
    /// message was deleted through the HTTP API, and is stored so).
    pub(crate) fn tell_peers_read_retained(&self) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        for node in cluster.retained_peers().nodes.iter() {
            cluster.send_later(read_retained_notice(node), true);
        }
    }

    /// Replaces the retained index with what storage holds; false when
    /// storage failed. A topic changed in memory while storage was read
    /// (routed here, or read from the inbox) keeps its value: the one read
    /// may be older, and installing it would undo a change that no later
    /// message repairs.
    pub(super) async fn catch_up_retained(&self) -> bool {
        *lock(&self.retained_touched) = Some(HashSet::new());
        let loaded = self.storage.load_retained().await;
        let mut retained = crate::node::write(&self.retained);
        let touched = lock(&self.retained_touched).take().unwrap_or_default();
        match loaded {
            Ok(stored) => {
                let mut index = easy_mqtt_core::topic::RetainedIndex::new();
                let count = stored.len();
                for message in stored {
                    let topic = message.topic.clone();
                    index.insert(&topic, message);
                }
                for topic in &touched {
                    match retained.get(topic) {
                        Some(message) => {
                            index.insert(topic, message.clone());
                        }
                        None => {
                            index.remove(topic);
                        }
                    }
                }
                *retained = index;
                drop(retained);
                tracing::debug!(count, "retained messages read again from storage");
                true
            }
            Err(error) => {
                self.storage_failed("retained catch-up", &error);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::ClusterConfig;

    const BEAT: Duration = Duration::from_secs(1);

    fn cluster() -> ClusterState {
        let config = ClusterConfig {
            heartbeat_interval: BEAT,
            ..ClusterConfig::default()
        };
        ClusterState::new(config, "a", 1)
    }

    fn peers(nodes: &[&str], read_at: Option<Instant>) -> RetainedPeers {
        RetainedPeers {
            nodes: nodes.iter().map(|n| ByteStr::from(*n)).collect(),
            read_at,
        }
    }

    /// The nodes told to read the retained state again.
    fn told(ops: &[Op]) -> Vec<&str> {
        ops.iter()
            .map(|op| match op {
                Op::Cluster(cluster) => match &**cluster {
                    ClusterOp::Forward {
                        node,
                        entry: BusEntry::ReadRetained,
                    } => node.as_str(),
                    other => panic!("not a read-retained notice: {other:?}"),
                },
                other => panic!("not a cluster op: {other:?}"),
            })
            .collect()
    }

    fn names(nodes: &[&str]) -> Vec<ByteStr> {
        nodes.iter().map(|n| ByteStr::from(*n)).collect()
    }

    #[test]
    fn a_catch_up_runs_at_the_latest_time_asked_for() {
        let now = Instant::now();
        let mut catch_up = CatchUp::default();
        assert!(!catch_up.due(now));
        catch_up.at_or_after(now + BEAT * 3);
        catch_up.at_or_after(now);
        assert!(
            !catch_up.due(now + BEAT),
            "an earlier request waits for the later"
        );
        assert!(catch_up.due(now + BEAT * 3));
        catch_up.done();
        assert!(!catch_up.due(now + BEAT * 10));
    }

    #[test]
    fn a_retained_batch_stored_soon_after_its_membership_read_needs_no_follow_up() {
        let cluster = cluster();
        let read_at = Instant::now();
        cluster.retained_stored(&peers(&["b"], Some(read_at)), read_at + BEAT * 2);
        assert_eq!(cluster.take_late_retained(), None);
    }

    /// Stored late, the batches reached the nodes in all their membership
    /// reads; the next read's other nodes are told, once.
    #[test]
    fn nodes_missed_by_late_retained_batches_are_told_after_the_next_membership_read() {
        let cluster = cluster();
        let read_at = Instant::now();
        let stored = read_at + BEAT * 2 + Duration::from_millis(1);
        cluster.retained_stored(&peers(&["b", "c"], Some(read_at)), stored);
        cluster.retained_stored(&peers(&["c", "d"], Some(read_at)), stored);
        let late = cluster.take_late_retained();
        assert_eq!(late, Some(names(&["c"])));
        let now = stored + BEAT;
        let ops = cluster.set_retained_peers(names(&["b", "c", "e"]), now, late);
        assert_eq!(told(&ops), ["b", "e"]);
        let installed = cluster.retained_peers();
        assert_eq!(
            (&installed.nodes[..], installed.read_at),
            (&names(&["b", "c", "e"])[..], Some(now))
        );
        assert!(
            cluster
                .set_retained_peers(names(&["b", "c", "e"]), now, cluster.take_late_retained())
                .is_empty()
        );
    }

    /// Another node's incarnation that leaves the live nodes (dead, or
    /// replaced by its next) makes this node read the retained state
    /// again; a node joining does not.
    #[test]
    fn an_incarnation_that_ends_makes_the_retained_state_read_again() {
        let cluster = cluster();
        let own = cluster.name();
        let stale = || cluster.retained_stale.swap(false, Ordering::AcqRel);
        let now = Instant::now();
        let live = |others: &[&str]| {
            let mut nodes = names(others);
            nodes.push(own.clone());
            nodes
        };
        let _ = cluster.set_members(live(&["b@1"]), names(&["b@1"]), now, None);
        assert!(!stale(), "the first read");
        let _ = cluster.set_members(live(&["b@1", "c@1"]), names(&["b@1", "c@1"]), now, None);
        assert!(!stale(), "a node joined");
        let _ = cluster.set_members(live(&["b@2", "c@1"]), names(&["b@2", "c@1"]), now, None);
        assert!(stale(), "b's first incarnation ended");
        let _ = cluster.set_members(live(&["b@2"]), names(&["b@2", "c@1"]), now, None);
        assert!(stale(), "c's heartbeat expired");
        let _ = cluster.set_members(live(&["b@2"]), names(&["b@2"]), now, None);
        assert!(!stale(), "nothing changed");
    }

    /// Before its first membership read, a node cannot know whom a
    /// retained message missed: every batch counts as late.
    #[test]
    fn without_a_membership_read_every_retained_batch_is_late() {
        let cluster = cluster();
        cluster.retained_stored(&peers(&[], None), Instant::now());
        assert_eq!(cluster.take_late_retained(), Some(Vec::new()));
    }

    /// A failed membership read keeps the follow-up for the next one,
    /// merged with the batches stored meanwhile.
    #[test]
    fn a_failed_membership_read_keeps_the_follow_up() {
        let cluster = cluster();
        let read_at = Instant::now();
        let stored = read_at + BEAT * 3;
        cluster.retained_stored(&peers(&["b", "c"], Some(read_at)), stored);
        let late = cluster.take_late_retained();
        cluster.retained_stored(&peers(&["c"], Some(read_at)), stored);
        cluster.restore_late_retained(late);
        assert_eq!(cluster.take_late_retained(), Some(names(&["c"])));
        cluster.restore_late_retained(None);
        assert_eq!(cluster.take_late_retained(), None);
    }
}
