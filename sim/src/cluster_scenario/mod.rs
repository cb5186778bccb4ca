//! The cluster scenario: three broker nodes sharing one storage host, five
//! clients, and faults chosen by the seed.
//!
//! # Hosts
//!
//! - `b1`, `b2`, `b3`: the real broker node ([`easy_mqtt_server::node`],
//!   its drivers and its cluster task) with [`RemoteStorage`](crate::storage_host::RemoteStorage),
//!   cluster timings at their defaults (heartbeat 1 s, node time to live 5 s).
//!   A restart is a new process life: a new node with a higher incarnation.
//! - `storage`: serves the storage and cluster ports over the in-memory
//!   backend, which lives outside the host: its acknowledged writes survive
//!   the host's crash.
//! - clients (each through a load balancer: a broker chosen by the seed,
//!   the next one whenever a connection fails or is lost; keep-alive 2 s):
//!   - `s1`: persistent, `m/#` at QoS 2;
//!   - `s2`: persistent, `m/+` at QoS 1 and `w/#` at QoS 2 (it watches wills);
//!   - `p1`: persistent publisher of QoS 1/2 messages on `m/p1`, which also
//!     sets `r/0` and `r/1` retained (QoS 1, one at a time, each waited
//!     for) and, on odd seeds, clears `r/1` last;
//!   - `p2`: clean-session publisher of QoS 0/1/2 messages on `m/p2`;
//!   - `w1`: clean session with a QoS 2 will `will:w1:<connection>` on
//!     `w/w1`; a lost connection is replaced 8 s later; it disconnects
//!     normally at 25 s.
//!
//! # Faults (see [`faults::choose`])
//!
//! One to three, starting between 2 and 12 s: a broker crash with a restart
//! 0.3 to 6 s later, or for good (at most one; often the will client's
//! broker); a storage crash and restart; partitions client–broker (the
//! client's broker), broker–storage (up to 9 s: beyond the node time to
//! live) and broker–broker, one or both directions; a latency spike; loss
//! on a broker's links. Also seeded: base latency, the publish interval,
//! the in-flight window, each client's first broker, and the order hosts
//! run in within a tick.
//!
//! # Invariants (see [`checks`])
//!
//! - No acknowledged QoS 1/2 message (PUBACK, or PUBREC) is lost for a
//!   persistent subscriber; no QoS 2 message is delivered twice; nothing
//!   is received that was not published, or at a QoS above what was granted.
//! - Never two live connections for one client id, over all running nodes
//!   (checked every 100 ms).
//! - Each will is published at most once, and exactly once when its node
//!   died for good while the client was connected to it.
//! - Retained state converges: every running node's retained messages equal
//!   storage's, and storage holds the last acknowledged write of each topic.
//! - Memory stays bounded: sessions, queues and windows of every node, the
//!   backend's message count, and the requests waiting in the exchange.

mod checks;
pub mod clients;
pub mod faults;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use easy_mqtt_core::{QoS, SubscribeReturnCode};
use easy_mqtt_server::cluster::ClusterConfig;
use easy_mqtt_server::node::NodeConfig;

use crate::broker_host::{self, SimNode};
use crate::client::ReceivedMessage;
use crate::scenarios::SplitMix64;
use crate::storage_host::{self, STORAGE_PORT};
use crate::trace::{Log, LogSubscriber, Trace};

use faults::{Fault, Injection};

pub const BROKERS: [&str; 3] = ["b1", "b2", "b3"];
pub const STORAGE: &str = "storage";
pub const CLIENTS: [&str; 5] = ["s1", "s2", "p1", "p2", "w1"];
/// Queue limit of every session (no message is dropped for a full queue in
/// this scenario).
pub const MAX_QUEUED: u32 = 200;
/// The simulation's time step (also the granularity of link latency).
pub const TICK: Duration = Duration::from_millis(10);

/// The parameters of one run; [`ClusterScenario::from_seed`] derives them.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterScenario {
    pub seed: u64,
    pub base_latency: Duration,
    pub interval: Duration,
    pub max_inflight: u16,
    pub p1_messages: u32,
    pub p2_messages: u32,
    /// Each client's first broker (index into [`BROKERS`]).
    pub first_broker: [usize; CLIENTS.len()],
    pub clear_retained: bool,
    pub faults: Vec<Fault>,
}

impl ClusterScenario {
    pub fn from_seed(seed: u64) -> ClusterScenario {
        let mut rng = SplitMix64::new(seed ^ 0x0063_6c75_7374_6572);
        let base_latency = Duration::from_millis(rng.range(2, 30));
        let interval = Duration::from_millis(rng.range(100, 400));
        let max_inflight = [1, 2, 8, 32][rng.range(0, 3) as usize];
        let mut first_broker = [0; CLIENTS.len()];
        for slot in &mut first_broker {
            *slot = rng.range(0, BROKERS.len() as u64 - 1) as usize;
        }
        let count = rng.range(1, 3);
        let faults = faults::choose(&mut rng, count);
        ClusterScenario {
            seed,
            base_latency,
            interval,
            max_inflight,
            p1_messages: 20,
            p2_messages: 15,
            first_broker,
            clear_retained: seed % 2 == 1,
            faults,
        }
    }

    /// The command that replays this seed.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run -p easy-mqtt-sim --release -- --scenario cluster --seed {}",
            self.seed
        )
    }
}

/// What a persistent subscriber saw.
#[derive(Debug, Default)]
pub struct SubReport {
    pub suback: Vec<SubscribeReturnCode>,
    pub received: Vec<ReceivedMessage>,
    pub link_losses: u32,
}

/// What the will client did.
#[derive(Debug, Default)]
pub struct WillReport {
    /// Connections made (its will tokens are `1..=connections`).
    pub connections: u32,
    /// Connections it lost (their wills may be published).
    pub lost: Vec<u32>,
    /// Its last connection ended with DISCONNECT: no will for it.
    pub clean_disconnect: bool,
}

/// State shared by the hosts, the fault injector and the checks (one
/// thread).
pub struct Shared {
    pub base_latency: Duration,
    pub clear_retained: bool,
    /// The broker each client uses (connected to or trying).
    brokers: RefCell<BTreeMap<&'static str, usize>>,
    /// The broker and connection number of each connected client.
    connected: RefCell<BTreeMap<&'static str, (usize, u32)>>,
    /// Running nodes.
    nodes: RefCell<BTreeMap<&'static str, Arc<SimNode>>>,
    /// Every node life: (host, life, node).
    lives: RefCell<Vec<(&'static str, u64, Arc<SimNode>)>>,
    dead_for_good: RefCell<BTreeSet<&'static str>>,
    ready: Cell<u32>,
    /// Every message a publisher sent: payload → (topic, QoS).
    published: RefCell<BTreeMap<Bytes, (&'static str, QoS)>>,
    /// Acknowledged payloads per publisher, once it is done.
    acked: RefCell<BTreeMap<&'static str, (Vec<Bytes>, bool)>>,
    /// The last retained write of each topic (`None`: a clear) and whether
    /// it was acknowledged.
    retained_last: RefCell<BTreeMap<&'static str, (Option<Bytes>, bool)>>,
    subs: RefCell<BTreeMap<&'static str, SubReport>>,
    will: RefCell<Option<WillReport>>,
    /// Will tokens of connections whose node died for good under them.
    will_expected: RefCell<Vec<u32>>,
    /// The will client's connections: the CONNECT attempt that made each.
    will_attempts: RefCell<BTreeMap<u32, u32>>,
}

impl Shared {
    fn new(config: &ClusterScenario) -> Shared {
        Shared {
            base_latency: config.base_latency,
            clear_retained: config.clear_retained,
            brokers: RefCell::new(CLIENTS.iter().copied().zip(config.first_broker).collect()),
            connected: RefCell::default(),
            nodes: RefCell::default(),
            lives: RefCell::default(),
            dead_for_good: RefCell::default(),
            ready: Cell::new(0),
            published: RefCell::default(),
            acked: RefCell::default(),
            retained_last: RefCell::default(),
            subs: RefCell::default(),
            will: RefCell::default(),
            will_expected: RefCell::default(),
            will_attempts: RefCell::default(),
        }
    }

    pub fn broker_of(&self, client: &str) -> usize {
        self.brokers.borrow().get(client).copied().unwrap_or(0)
    }

    pub fn set_broker(&self, client: &'static str, broker: usize) {
        self.brokers.borrow_mut().insert(client, broker);
    }

    pub fn set_connected(&self, client: &'static str, at: Option<(usize, u32)>) {
        let mut connected = self.connected.borrow_mut();
        match at {
            Some(at) => connected.insert(client, at),
            None => connected.remove(client),
        };
    }

    /// The will client's connection `n` was made by its CONNECT `attempt`.
    pub fn will_attempt(&self, n: u32, attempt: u32) {
        self.will_attempts.borrow_mut().insert(n, attempt);
    }

    fn started(&self, host: &'static str, life: u64, node: Arc<SimNode>) {
        self.nodes.borrow_mut().insert(host, node.clone());
        self.lives.borrow_mut().push((host, life, node));
    }

    /// A broker host crashed; `for_good`: it never comes back.
    pub fn crashed(&self, host: &str, for_good: bool) {
        let Some(index) = BROKERS.iter().position(|b| *b == host) else {
            return;
        };
        self.nodes.borrow_mut().remove(BROKERS[index]);
        if for_good {
            self.dead_for_good.borrow_mut().insert(BROKERS[index]);
            if let Some((broker, n)) = self.connected.borrow().get("w1")
                && *broker == index
            {
                self.will_expected.borrow_mut().push(*n);
            }
        }
    }

    pub fn is_dead_for_good(&self, host: &str) -> bool {
        self.dead_for_good.borrow().contains(host)
    }

    pub fn subscriber_ready(&self) {
        self.ready.set(self.ready.get() + 1);
    }

    pub fn subscribers_ready(&self) -> bool {
        self.ready.get() >= 2
    }

    pub fn published(&self, payload: Bytes, topic: &'static str, qos: QoS) {
        self.published.borrow_mut().insert(payload, (topic, qos));
    }

    pub fn publisher_done(&self, name: &'static str, acknowledged: &[Bytes], drained: bool) {
        self.acked
            .borrow_mut()
            .insert(name, (acknowledged.to_vec(), drained));
    }

    pub fn retained_sent(&self, topic: &'static str, value: Option<Bytes>) {
        self.retained_last
            .borrow_mut()
            .insert(topic, (value, false));
    }

    pub fn retained_acked(&self, topic: &'static str) {
        if let Some((_, acked)) = self.retained_last.borrow_mut().get_mut(topic) {
            *acked = true;
        }
    }

    /// Whether subscriber `name` may stop: both publishers done, every
    /// acknowledged message of theirs received (and, for `s2`, the will
    /// client done).
    pub fn has_everything(&self, name: &str, received: &[ReceivedMessage]) -> bool {
        let acked = self.acked.borrow();
        if acked.len() < 2 || (name == "s2" && self.will.borrow().is_none()) {
            return false;
        }
        let got: BTreeSet<&Bytes> = received.iter().map(|m| &m.payload).collect();
        self.must_arrive(&acked).iter().all(|p| got.contains(p))
    }

    /// The acknowledged messages every persistent subscriber must get (the
    /// retained ones go to no subscriber).
    fn must_arrive<'a>(
        &self,
        acked: &'a BTreeMap<&'static str, (Vec<Bytes>, bool)>,
    ) -> Vec<&'a Bytes> {
        let published = self.published.borrow();
        acked
            .values()
            .flat_map(|(payloads, _)| payloads)
            .filter(|p| {
                published
                    .get(*p)
                    .is_some_and(|(_, qos)| *qos != QoS::AtMostOnce)
            })
            .collect()
    }

    pub fn subscriber_done(&self, name: &'static str, report: SubReport) {
        self.subs.borrow_mut().insert(name, report);
    }

    pub fn will_done(&self, report: WillReport) {
        *self.will.borrow_mut() = Some(report);
    }
}

/// Runs the cluster scenario of `seed`.
pub fn run_cluster(seed: u64) -> Trace {
    let config = ClusterScenario::from_seed(seed);
    let log = Log::new();
    let subscriber = LogSubscriber::per_host(log.clone(), "sim");
    crate::isolation::isolated(|| {
        tracing::subscriber::with_default(subscriber, || run(&config, log))
    })
}

fn run(config: &ClusterScenario, log: Log) -> Trace {
    let shared = Rc::new(Shared::new(config));
    let mut violations = Vec::new();
    log.event_at(Duration::ZERO, "sim", format_args!("{config:?}"));

    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(Duration::from_secs(120))
        .tick_duration(TICK)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(config.base_latency)
        .enable_random_order()
        .build();

    let exchange = storage_host::Exchange::new();
    let backend = storage_host::new_backend();
    {
        let (exchange, backend) = (exchange.clone(), backend.clone());
        sim.host(STORAGE, move || {
            storage_host::serve(exchange.clone(), backend.clone())
        });
    }
    let storage_addr = format!("{STORAGE}:{STORAGE_PORT}");
    for host in BROKERS {
        let shared = shared.clone();
        let exchange = exchange.clone();
        let storage_addr = storage_addr.clone();
        let lives = Cell::new(0u64);
        let max_inflight = config.max_inflight;
        sim.host(host, move || {
            let life = lives.get() + 1;
            lives.set(life);
            let mut node_config = NodeConfig {
                node_id: host.into(),
                cluster: Some(ClusterConfig::default()),
                // Above any incarnation a fenced node picks for itself
                // (milliseconds since the epoch), and growing.
                incarnation: life * 10_000_000_000_000,
                ..NodeConfig::default()
            };
            node_config.connection.session.max_inflight = max_inflight;
            node_config.connection.session.max_queued = MAX_QUEUED;
            let node = broker_host::new_cluster_node(node_config, exchange.clone(), &storage_addr);
            shared.started(host, life, node.clone());
            broker_host::serve_cluster(node)
        });
    }
    for name in ["s1", "s2"] {
        sim.client(name, clients::subscriber(name, shared.clone(), log.clone()));
    }
    sim.client(
        "p1",
        clients::publisher(
            "p1",
            config.p1_messages,
            config.interval,
            shared.clone(),
            log.clone(),
        ),
    );
    sim.client(
        "p2",
        clients::publisher(
            "p2",
            config.p2_messages,
            config.interval,
            shared.clone(),
            log.clone(),
        ),
    );
    sim.client("w1", clients::will_client(shared.clone(), log.clone()));

    let mut injections: Vec<Injection> =
        config.faults.iter().cloned().map(Injection::new).collect();
    let mut owners = checks::OwnerCheck::default();
    let checkpoint = Duration::from_millis(100);
    let mut next_checkpoint = checkpoint;
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                violations.push(format!("simulation failed: {error}"));
                break;
            }
        }
        for injection in &mut injections {
            injection.step(&mut sim, &shared, &log);
        }
        if sim.elapsed() >= next_checkpoint {
            next_checkpoint += checkpoint;
            owners.check(sim.elapsed(), &shared.nodes.borrow(), &log);
        }
    }
    // Let the nodes see the DISCONNECTs and finish their inboxes.
    for _ in 0..(Duration::from_secs(2).as_millis() / TICK.as_millis().max(1)) {
        if let Err(error) = sim.step() {
            violations.push(format!("simulation failed while settling: {error}"));
            break;
        }
    }
    for injection in &injections {
        if !injection.is_done() {
            violations.push(format!("fault {:?} never ran its course", injection.fault));
        }
    }
    violations.extend(owners.violations);
    let end = checks::End {
        config,
        shared: &shared,
        backend: &backend,
        exchange: &exchange,
    };
    end.check(&mut violations, &log, sim.elapsed());
    Trace {
        seed: config.seed,
        events: log.lines(),
        violations,
        replay: config.replay_command(),
    }
}
