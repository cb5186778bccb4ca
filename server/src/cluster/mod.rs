//! The cluster: several nodes sharing one Kvrocks, any client on any node.
//!
//! Nodes share nothing but storage (see `easy_mqtt_core::cluster` for the
//! port). This module is the node side:
//!
//! - **Membership and lease** (`membership.rs`): the node heartbeats every
//!   `heartbeat_interval` with a time to live of `node_ttl`. Its *lease* runs
//!   until the start of the last successful heartbeat plus `node_ttl` minus a
//!   margin; storage's copy of that heartbeat expires later than the lease,
//!   so when other nodes see the node dead its lease is over. A node without
//!   a lease closes its connections and refuses new ones (CONNACK 3), and a
//!   node told it is *fenced* (declared dead and adopted meanwhile) drops
//!   every session it holds and starts again under a new incarnation.
//! - **Ownership** (`takeover.rs`): a CONNECT claims the client id under a
//!   new epoch; every other node still responsible for it (the previous
//!   owner, or a dead one through its adopter) is kicked through its inbox
//!   and the CONNACK waits until all answered: each closes the old
//!   connection, stores its last writes, and from then on forwards what its
//!   routes still match for the client to the new owner for
//!   `forward_grace` (other nodes' route caches may lag that long).
//! - **The bus** (`bus.rs`): a PUBLISH reaches every other node whose
//!   routes match, once, through that node's durable inbox, written in the
//!   same batch as the rest of the publish (so PUBACK still means stored);
//!   the receiver fans it out to its own sessions and acknowledges the
//!   inbox entry in the batch that stores them.
//! - **Routes** (`routes.rs`): every node stores the filters it has
//!   subscribers for before the SUBACK and tells the other nodes; each node
//!   caches all routes and refreshes them on such a notice and at least every
//!   `route_refresh`.
//! - **Death** (`adopt.rs`): a node whose heartbeat expired is adopted by
//!   exactly one live node, which publishes the wills of the clients that
//!   were connected there, takes over its persistent sessions (their
//!   subscriptions and routes) and processes what its inbox still held.

mod adopt;
mod bus;
mod membership;
mod received;
mod retained;
mod routes;
mod takeover;

pub use membership::run;
pub(crate) use membership::{apply_until_stored, apply_until_stored_as, apply_while_leased};
pub use received::{RECEIVED_KEEP, RECEIVED_SPACE, forget_received, log_received};
pub(crate) use retained::RetainedPeers;
pub use routes::RoutePin;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use easy_mqtt_core::ByteStr;
use easy_mqtt_core::cluster::{Cluster, ClusterOp};
use easy_mqtt_core::storage::{MessageId, Op};

use crate::node::Node;
use crate::runtime::Runtime;
use crate::sessions::lock;

pub(crate) use adopt::Adopted;
pub use routes::RouteCache;

/// Timings of the cluster protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterConfig {
    /// How often a node renews its membership.
    pub heartbeat_interval: Duration,
    /// How long a membership lasts without renewal: a node silent that
    /// long is dead and adopted.
    pub node_ttl: Duration,
    /// The longest a node's cache of the other nodes' routes goes without
    /// a refresh.
    pub route_refresh: Duration,
    /// How long a CONNECT waits for the previous owner to let go before it
    /// is refused (CONNACK 3).
    pub takeover_timeout: Duration,
    /// How long a node forwards deliveries for a client it gave up.
    pub forward_grace: Duration,
    /// Inbox entries read and stored per round trip.
    pub inbox_batch: usize,
    /// Messages waiting in the outbox to be sent to other nodes beyond
    /// which new QoS 0 ones are dropped (and counted). From half of it, the
    /// connections that publish stop reading until it is down to a quarter
    /// (see [`ClusterState::send_later`]). `mqtt.cluster.outbox-size`.
    pub bus_queue: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            heartbeat_interval: Duration::from_secs(1),
            node_ttl: Duration::from_secs(5),
            route_refresh: Duration::from_secs(1),
            takeover_timeout: Duration::from_secs(10),
            forward_grace: Duration::from_secs(5),
            inbox_batch: 256,
            bus_queue: 65_536,
        }
    }
}

impl ClusterConfig {
    /// How long after it was routed a publish may still be written: other
    /// nodes forward what their routes matched for a client they gave up
    /// for `forward_grace`, and the routes it was matched with may have
    /// been `route_refresh` old already. Written later, it could reach a
    /// node that let the subscriber go and forgot where to.
    pub fn route_write_window(&self) -> Duration {
        self.forward_grace.saturating_sub(self.route_refresh)
    }

    /// The timings of `mqtt.cluster` (validated: the node timeout is more
    /// than two heartbeats).
    pub fn from_config(section: &crate::config::ClusterSection) -> ClusterConfig {
        let ms = |v: u32| Duration::from_millis(u64::from(v));
        let heartbeat = ms(section.heartbeat_interval);
        ClusterConfig {
            heartbeat_interval: heartbeat,
            node_ttl: ms(section.node_timeout),
            route_refresh: heartbeat,
            takeover_timeout: ms(section.takeover_timeout),
            // Covers a route refresh and a publish batch's retries.
            forward_grace: ms(section.node_timeout),
            bus_queue: section.outbox_size as usize,
            ..ClusterConfig::default()
        }
    }
}

/// A client this node gave up: deliveries its routes still match go to
/// `node` until `until`.
#[derive(Debug, Clone)]
pub(crate) struct Forward {
    pub node: ByteStr,
    pub until: Instant,
}

/// The node's cluster state.
pub struct ClusterState {
    pub(crate) config: ClusterConfig,
    /// `mqtt.server.node-id`.
    pub(crate) base_id: ByteStr,
    /// This incarnation's name in the cluster, `<node id>@<incarnation>`:
    /// ownership, routes, inbox and presence belong to an incarnation, so
    /// what a dead life held is adopted as a whole, whether or not the node
    /// came back meanwhile.
    name: RwLock<ByteStr>,
    pub(crate) incarnation: AtomicU64,
    /// End of the lease; `None` before the first heartbeat.
    lease_until: Mutex<Option<Instant>>,
    /// False once the lease ran out, until a heartbeat succeeds again.
    pub(crate) serving: AtomicBool,
    pub(crate) routes: RwLock<RouteCache>,
    /// The filters this node stored as its routes, and those a loaded
    /// session pins on their way into the trie.
    pub(crate) written_routes: Arc<Mutex<routes::WrittenRoutes>>,
    pub(crate) routes_dirty: AtomicBool,
    /// Clients given up to another node, forwarded to.
    pub(crate) forwards: RwLock<HashMap<ByteStr, Forward>>,
    pub(crate) forward_count: AtomicUsize,
    /// The epoch under which this node holds (or is connecting) a client.
    pub(crate) epochs: Mutex<HashMap<ByteStr, u64>>,
    /// Takeovers waiting for the previous owner: client → (epoch, released).
    pub(crate) releases: Mutex<HashMap<ByteStr, (u64, bool)>>,
    pub(crate) release_event: event_listener::Event,
    /// Ops without a connection to wait for them (QoS 0 forwards, presence
    /// clears), written by the cluster task in batches.
    pub(crate) outbox: Mutex<VecDeque<Op>>,
    pub(crate) outbox_event: event_listener::Event,
    /// The outbox is past half its bound: publishers wait for room.
    outbox_over: AtomicBool,
    /// The outbox's last write is taking long (storage is slow or down):
    /// publishers no longer wait, QoS 0 forwards past the bound drop.
    outbox_stalled: AtomicBool,
    /// Notified when the outbox is down to a quarter of its bound again,
    /// or its writer stalls.
    outbox_room: event_listener::Event,
    pub(crate) dropped_bus: AtomicU64,
    /// Live nodes (this one included), from the last membership read.
    pub(crate) live: RwLock<Vec<ByteStr>>,
    /// The other nodes a retained message goes to (see `retained.rs`).
    retained_peers: RwLock<RetainedPeers>,
    /// The retained index must be read again from storage, three
    /// heartbeats from now (this node was fenced, or another node's
    /// incarnation ended).
    pub(crate) retained_stale: AtomicBool,
    /// The retained index must be read again from storage at once (an
    /// inbox entry asked, or a route's outcome is unknown).
    read_retained: AtomicBool,
    /// Retained batches stored late, not yet followed up: the nodes that
    /// every one of them was sent to (see `retained.rs`).
    late_retained: Mutex<Option<Vec<ByteStr>>>,
    /// The lease is back after a loss: serving resumes once the inbox is
    /// drained and the releases it asked for are done.
    pub(crate) catching_up: AtomicBool,
    pub(crate) pending_releases: AtomicUsize,
    /// Dead incarnations this node won and has not finished adopting.
    pub(crate) unfinished_adoptions: Mutex<Vec<ByteStr>>,
    /// Inbox entries already served, by inbox and message id: a replayed
    /// `XADD` can append one twice. (One message legitimately reaches two
    /// inboxes, this node's and a dead node's it adopted.)
    pub(crate) seen: Mutex<HashMap<ByteStr, RecentIds<(u64, MessageId)>>>,
    /// Sessions adopted from dead nodes, until the end of the watch on the
    /// dead node's inbox: a message may reach them both through that inbox
    /// and through this node's own.
    pub(crate) adopted_sessions: Mutex<HashMap<ByteStr, Instant>>,
    pub(crate) adopted_count: AtomicUsize,
    /// (hash of client id, message id) delivered to adopted sessions,
    /// bounded node-wide.
    pub(crate) adopted_delivered: Mutex<RecentIds<(u64, MessageId), 262_144>>,
    /// Clients taken over from another node recently, with the message ids
    /// delivered to them since: the old owner forwards what its routes
    /// matched while this node's routes also match, so one message can
    /// come both ways.
    handovers: Mutex<HashMap<ByteStr, Handover>>,
    /// `handovers.len()`, read without the lock by every delivery routed
    /// here (the lock, taken per delivery, was 2 % of a fan-out's CPU).
    handover_count: AtomicUsize,
    /// Rounds of reading this node's inbox: the last one started, and the
    /// last one that caught up (read everything appended before it
    /// started, and stored what that caused).
    pub(crate) inbox_round: AtomicU64,
    pub(crate) inbox_caught_up: AtomicU64,
    /// When the last round that caught up started: every entry appended to
    /// this node's inbox before then has been served.
    pub(crate) inbox_caught_up_at: Mutex<Option<Instant>>,
    pub(crate) inbox_event: event_listener::Event,
    /// Takeovers waiting for the inbox to catch up.
    pub(crate) barrier_waiters: AtomicUsize,
    /// Clients this node is claiming or releasing right now.
    pub(crate) ownership_busy: Arc<Mutex<HashSet<ByteStr>>>,
    pub(crate) routes_in_flight: Arc<RouteTracker>,
}

/// Routes being stored, by the order they started in.
#[derive(Debug, Default)]
pub(crate) struct RouteTracker {
    next: AtomicU64,
    open: Mutex<std::collections::BTreeSet<u64>>,
    done: event_listener::Event,
}

/// One route in flight; dropped once it is stored and delivered (or given
/// up). A route matches the trie after taking its ticket, so once a session
/// is marked as given up, every route that may still write to it holds an
/// older ticket: [`ClusterState::routes_before`] waits for those.
#[derive(Debug)]
pub struct RouteTicket {
    tracker: Arc<RouteTracker>,
    seq: u64,
}

impl Drop for RouteTicket {
    fn drop(&mut self) {
        lock(&self.tracker.open).remove(&self.seq);
        self.tracker.done.notify(usize::MAX);
    }
}

/// The last `CAPACITY` ids seen, in a set and in arrival order.
#[derive(Debug)]
pub(crate) struct RecentIds<T = MessageId, const CAPACITY: usize = 65_536> {
    set: HashSet<T>,
    order: VecDeque<T>,
}

impl<T, const CAPACITY: usize> Default for RecentIds<T, CAPACITY> {
    fn default() -> Self {
        RecentIds {
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }
}

impl<T: std::hash::Hash + Eq + Copy, const CAPACITY: usize> RecentIds<T, CAPACITY> {
    /// Records `id`; false when it was seen already.
    pub(crate) fn insert(&mut self, id: T) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    /// Forgets `id` (its slot in the arrival order is left to age out; it
    /// only ever evicts an id early, which weakens no more than one
    /// dedupe).
    pub(crate) fn forget(&mut self, id: &T) {
        self.set.remove(id);
    }
}

/// What a client's hand-over (or adoption) watch knows of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Watched {
    /// The client is not watched.
    No,
    /// Watched, and the id reaches it for the first time.
    First,
    /// Watched, and the id reached it already.
    Again,
}

impl Watched {
    fn seen_before(again: bool) -> Watched {
        if again {
            Watched::Again
        } else {
            Watched::First
        }
    }
}

/// A client recently taken over from another node.
#[derive(Debug)]
pub(crate) struct Handover {
    pub until: Instant,
    pub delivered: RecentIds,
}

impl ClusterState {
    pub fn new(config: ClusterConfig, node_id: &str, incarnation: u64) -> ClusterState {
        ClusterState {
            config,
            base_id: ByteStr::from(node_id.to_owned()),
            name: RwLock::new(incarnation_name(node_id, incarnation)),
            incarnation: AtomicU64::new(incarnation),
            lease_until: Mutex::new(None),
            serving: AtomicBool::new(true),
            routes: RwLock::new(RouteCache::default()),
            written_routes: Arc::default(),
            routes_dirty: AtomicBool::new(true),
            forwards: RwLock::new(HashMap::new()),
            forward_count: AtomicUsize::new(0),
            epochs: Mutex::new(HashMap::new()),
            releases: Mutex::new(HashMap::new()),
            release_event: event_listener::Event::new(),
            outbox: Mutex::new(VecDeque::new()),
            outbox_event: event_listener::Event::new(),
            outbox_over: AtomicBool::new(false),
            outbox_stalled: AtomicBool::new(false),
            outbox_room: event_listener::Event::new(),
            dropped_bus: AtomicU64::new(0),
            live: RwLock::new(Vec::new()),
            retained_peers: RwLock::new(RetainedPeers::default()),
            retained_stale: AtomicBool::new(false),
            read_retained: AtomicBool::new(false),
            late_retained: Mutex::new(None),
            catching_up: AtomicBool::new(false),
            pending_releases: AtomicUsize::new(0),
            unfinished_adoptions: Mutex::new(Vec::new()),
            seen: Mutex::new(HashMap::new()),
            adopted_sessions: Mutex::new(HashMap::new()),
            adopted_count: AtomicUsize::new(0),
            adopted_delivered: Mutex::new(RecentIds::default()),
            handovers: Mutex::new(HashMap::new()),
            handover_count: AtomicUsize::new(0),
            ownership_busy: Arc::default(),
            inbox_round: AtomicU64::new(0),
            inbox_caught_up: AtomicU64::new(0),
            inbox_caught_up_at: Mutex::new(None),
            inbox_event: event_listener::Event::new(),
            barrier_waiters: AtomicUsize::new(0),
            routes_in_flight: Arc::new(RouteTracker::default()),
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// This incarnation's name (`<node id>@<incarnation>`).
    pub fn name(&self) -> ByteStr {
        crate::node::read(&self.name).clone()
    }

    /// Moves to a new incarnation (after this one was fenced).
    pub(crate) fn reincarnate(&self, incarnation: u64) {
        self.incarnation.store(incarnation, Ordering::Release);
        *crate::node::write(&self.name) = incarnation_name(&self.base_id, incarnation);
    }

    /// Whether this node holds a lease at `now`.
    pub fn lease_valid(&self, now: Instant) -> bool {
        lock(&self.lease_until).is_some_and(|end| now < end)
    }

    /// Whether this node serves clients at `now`: it holds a lease and,
    /// after losing one, has caught up with its inbox (kicks sent to it
    /// meanwhile are handled before it acknowledges anything again).
    pub fn accepting(&self, now: Instant) -> bool {
        self.serving.load(Ordering::Acquire) && self.lease_valid(now)
    }

    /// The other live nodes.
    pub fn peers(&self) -> Vec<ByteStr> {
        let own = self.name();
        crate::node::read(&self.live)
            .iter()
            .filter(|n| **n != own)
            .cloned()
            .collect()
    }

    /// Queues an op for the cluster task. Bounded: beyond `bus_queue` a
    /// QoS 0 forward is dropped and counted (`essential` ops never are);
    /// but from half of it the outbox is *over*, and the connections that
    /// publish wait for room ([`ClusterState::outbox_room`]) rather than
    /// read more, so that a burst is slowed down to what the bus carries
    /// instead of being dropped. Not while the writer is stalled (storage
    /// slow or down): publishers then go on, and QoS 0 drops as before.
    pub(crate) fn send_later(&self, op: Op, essential: bool) {
        let mut outbox = lock(&self.outbox);
        if !essential && outbox.len() >= self.config.bus_queue {
            self.dropped_bus.fetch_add(1, Ordering::Relaxed);
            return;
        }
        outbox.push_back(op);
        let over = outbox.len() >= self.config.bus_queue / 2;
        drop(outbox);
        if over && !self.outbox_stalled.load(Ordering::Acquire) {
            self.outbox_over.store(true, Ordering::Release);
        }
        self.outbox_event.notify(1);
    }

    /// While the outbox is over half its bound, a listener notified when
    /// a publisher may read again.
    pub(crate) fn outbox_room(&self) -> Option<event_listener::EventListener> {
        if !self.outbox_over.load(Ordering::Acquire) {
            return None;
        }
        let listener = self.outbox_room.listen();
        // Checked again once listening: a release in between is not missed.
        self.outbox_over.load(Ordering::Acquire).then_some(listener)
    }

    /// The writer took `left` ops out of the outbox: below a quarter of
    /// its bound, the publishers waiting for room go on.
    pub(crate) fn outbox_drained(&self, left: usize) {
        if left < self.config.bus_queue / 4 && self.outbox_over.swap(false, Ordering::AcqRel) {
            self.outbox_room.notify(usize::MAX);
        }
    }

    /// Whether the writer's current write is taking long (`true`: the
    /// waiting publishers go on, and none waits until it is done) or done.
    pub(crate) fn set_outbox_stalled(&self, stalled: bool) {
        self.outbox_stalled.store(stalled, Ordering::Release);
        if stalled && self.outbox_over.swap(false, Ordering::AcqRel) {
            self.outbox_room.notify(usize::MAX);
        }
    }

    /// Where deliveries for `client_id` go instead, if this node gave it up.
    pub(crate) fn forward_of(&self, client_id: &str) -> Option<ByteStr> {
        if self.forward_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        crate::node::read(&self.forwards)
            .get(client_id)
            .map(|f| f.node.clone())
    }

    /// A ticket for a route about to match the trie.
    pub(crate) fn route_ticket(&self) -> RouteTicket {
        let tracker = &self.routes_in_flight;
        let seq = tracker.next.fetch_add(1, Ordering::AcqRel);
        lock(&tracker.open).insert(seq);
        RouteTicket {
            tracker: tracker.clone(),
            seq,
        }
    }

    /// The horizon of [`ClusterState::routes_before`]: routes started until now.
    pub(crate) fn route_horizon(&self) -> u64 {
        self.routes_in_flight.next.load(Ordering::Acquire)
    }

    /// Whether every route started before `horizon` is done; else a
    /// listener woken when one finishes.
    pub(crate) fn routes_before(&self, horizon: u64) -> Result<(), event_listener::EventListener> {
        let tracker = &self.routes_in_flight;
        let listener = tracker.done.listen();
        match lock(&tracker.open).first() {
            Some(first) if *first < horizon => Err(listener),
            _ => Ok(()),
        }
    }

    /// Marks `client_id` as given up to `node`: deliveries routed here for
    /// it are forwarded there for `forward_grace`.
    pub(crate) fn give_up(&self, client_id: &ByteStr, node: &ByteStr, now: Instant) {
        let mut forwards = crate::node::write(&self.forwards);
        let previous = forwards.insert(
            client_id.clone(),
            Forward {
                node: node.clone(),
                until: now + self.config.forward_grace,
            },
        );
        if previous.is_none() {
            self.forward_count.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Ends the forwarding of `client_id`: this node holds it again.
    pub(crate) fn end_forward(&self, client_id: &str) {
        if crate::node::write(&self.forwards)
            .remove(client_id)
            .is_some()
        {
            self.forward_count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether `id` already went to `client_id` during its handover, or
    /// since it was adopted (and records it when not).
    pub(crate) fn delivered_in_handover(&self, client_id: &ByteStr, id: MessageId) -> Watched {
        if let Some(watched) = self.with_handover(client_id, |handover| {
            Watched::seen_before(!handover.delivered.insert(id))
        }) {
            return watched;
        }
        if self.adopted_count.load(Ordering::Acquire) == 0
            || !lock(&self.adopted_sessions).contains_key(client_id)
        {
            return Watched::No;
        }
        let key = (bus::client_key(client_id), id);
        Watched::seen_before(!lock(&self.adopted_delivered).insert(key))
    }

    /// Watches `client_id`, taken over from another node, for messages that
    /// reach it twice (see `handovers`).
    pub(crate) fn watch_handover(&self, client_id: ByteStr, handover: Handover) {
        let mut handovers = lock(&self.handovers);
        handovers.insert(client_id, handover);
        self.handover_count
            .store(handovers.len(), Ordering::Release);
    }

    /// The hand-over watch of `client_id`, if it is watched.
    pub(crate) fn with_handover<T>(
        &self,
        client_id: &str,
        f: impl FnOnce(&mut Handover) -> T,
    ) -> Option<T> {
        if self.handover_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        lock(&self.handovers).get_mut(client_id).map(f)
    }

    /// Ends the hand-over watches that ran out.
    pub(crate) fn expire_handovers(&self, now: Instant) {
        if self.handover_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut handovers = lock(&self.handovers);
        handovers.retain(|_, h| h.until > now);
        self.handover_count
            .store(handovers.len(), Ordering::Release);
    }

    /// Watches `client_id`, adopted from a dead node, for messages that
    /// reach it twice until `until`.
    pub(crate) fn watch_adopted(&self, client_id: ByteStr, until: Instant) {
        let mut adopted = lock(&self.adopted_sessions);
        adopted.insert(client_id, until);
        self.adopted_count.store(adopted.len(), Ordering::Release);
    }

    /// Ends the watches that ran out.
    fn expire_adopted(&self, now: Instant) {
        if self.adopted_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut adopted = lock(&self.adopted_sessions);
        adopted.retain(|_, until| *until > now);
        self.adopted_count.store(adopted.len(), Ordering::Release);
        if adopted.is_empty() {
            *lock(&self.adopted_delivered) = RecentIds::default();
        }
    }

    /// `RoutesChanged` for every other live node.
    pub(crate) fn routes_changed_ops(&self) -> Vec<Op> {
        self.peers()
            .into_iter()
            .map(|node| {
                Op::from(ClusterOp::Forward {
                    node,
                    entry: easy_mqtt_core::cluster::BusEntry::RoutesChanged { node: self.name() },
                })
            })
            .collect()
    }
}

/// The records space of the clients `node` released and forwards for.
pub(crate) fn forwards_space(node: &str) -> ByteStr {
    ByteStr::from(format!("cluster-forwards/{node}"))
}

/// The cluster name of `node_id`'s `incarnation`.
pub(crate) fn incarnation_name(node_id: &str, incarnation: u64) -> ByteStr {
    ByteStr::from(format!("{node_id}@{incarnation}"))
}

impl<R: Runtime> Node<R> {
    /// Whether this node may write to storage now: always, unless it is in
    /// a cluster without a lease.
    pub fn may_write(&self) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|c| c.accepting(self.runtime.now()))
    }

    /// This node's cluster incarnation (`None` outside a cluster).
    pub fn incarnation(&self) -> Option<u64> {
        self.cluster
            .as_ref()
            .map(|c| c.incarnation.load(Ordering::Acquire))
    }

    /// The cluster state, when this node is part of a cluster.
    pub fn cluster(&self) -> Option<&ClusterState> {
        self.cluster.as_ref()
    }

    pub(crate) fn cluster_store(&self) -> Option<&dyn Cluster> {
        self.cluster.as_ref().and_then(|_| self.storage.cluster())
    }
}

#[cfg(test)]
mod outbox_tests {
    use super::*;
    use easy_mqtt_core::cluster::BusEntry;
    use futures_lite::future::{block_on, poll_once};

    fn forward() -> Op {
        Op::from(ClusterOp::Forward {
            node: "b".into(),
            entry: BusEntry::RoutesChanged { node: "a".into() },
        })
    }

    fn queued(cluster: &ClusterState) -> usize {
        lock(&cluster.outbox).len()
    }

    /// Publishers wait from half the bound until a quarter; past the bound
    /// QoS 0 drops (essential ops never do); a stalled writer lets the
    /// waiting publishers go and keeps new ones from waiting.
    #[test]
    fn publishers_wait_from_half_full_to_a_quarter_unless_the_writer_stalls() {
        let config = ClusterConfig {
            bus_queue: 8,
            ..ClusterConfig::default()
        };
        let cluster = ClusterState::new(config, "a", 1);
        for _ in 0..3 {
            cluster.send_later(forward(), false);
        }
        assert!(cluster.outbox_room().is_none(), "under half full");
        cluster.send_later(forward(), false);
        let waiting = cluster.outbox_room().expect("half full");
        for _ in 0..5 {
            cluster.send_later(forward(), false);
        }
        cluster.send_later(forward(), true);
        assert_eq!(
            (
                queued(&cluster),
                cluster.dropped_bus.load(Ordering::Relaxed)
            ),
            (9, 1)
        );

        // Down to 2 of 8 (not under a quarter): still waiting.
        lock(&cluster.outbox).drain(..7);
        cluster.outbox_drained(2);
        assert!(cluster.outbox_room().is_some());
        lock(&cluster.outbox).drain(..1);
        cluster.outbox_drained(1);
        assert!(cluster.outbox_room().is_none());
        assert_eq!(
            block_on(poll_once(waiting)),
            Some(()),
            "the waiter is woken"
        );

        for _ in 0..3 {
            cluster.send_later(forward(), false);
        }
        let waiting = cluster.outbox_room().expect("half full again");
        cluster.set_outbox_stalled(true);
        assert_eq!(
            block_on(poll_once(waiting)),
            Some(()),
            "released by the stall"
        );
        cluster.send_later(forward(), false);
        assert!(
            cluster.outbox_room().is_none(),
            "nobody waits while stalled"
        );
        cluster.set_outbox_stalled(false);
        cluster.send_later(forward(), false);
        assert!(
            cluster.outbox_room().is_some(),
            "waiting again once it is not"
        );
    }
}
