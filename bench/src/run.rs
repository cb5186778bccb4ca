//! The clients of one process (a shard of the run): connecting them,
//! counting, reporting and stopping them (their loops: `roles.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_io::Timer;
use async_net::TcpStream;
use smol::Executor;
use smol::channel::Sender;
use smol::lock::Semaphore;

use crate::args::{Options, Scenario};
use crate::error::{Error, Result};
use crate::hist::{Histogram, Recorder};
use crate::roles::client_task;

/// Errors kept word for word (the rest are counted).
const KEPT_ERRORS: usize = 10;

/// Counters every client of the shard updates; read for progress and the
/// report.
#[derive(Debug, Default)]
pub struct Shared {
    pub received: AtomicU64,
    /// QoS 2 exchanges a subscriber completed (PUBREL answered).
    pub released: AtomicU64,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub connected: AtomicUsize,
    pub subs_done: AtomicUsize,
    pub pubs_done: AtomicUsize,
    /// Subscribers that got a probe from every probing broker.
    pub probed: AtomicUsize,
    pub first_send_ns: AtomicU64,
    pub last_send_ns: AtomicU64,
    pub last_delivery_ns: AtomicU64,
    pub last_ack_ns: AtomicU64,
    /// Delivery latency (publisher stamp to subscriber receipt); for `pub`,
    /// PUBLISH to PUBACK/PUBCOMP.
    pub latency: Recorder,
    /// TCP connect to CONNACK.
    pub connect_latency: Recorder,
    stopping: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
    errors: AtomicU64,
    error_list: Mutex<Vec<String>>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            first_send_ns: AtomicU64::new(u64::MAX),
            ..Shared::default()
        }
    }

    pub fn error(&self, error: &Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut list) = self.error_list.lock()
            && list.len() < KEPT_ERRORS
        {
            list.push(error.to_string());
        }
    }

    pub fn errors(&self) -> (u64, Vec<String>) {
        let list = self
            .error_list
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        (self.errors.load(Ordering::Relaxed), list)
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub(crate) fn register(&self, stream: &TcpStream) {
        if let Ok(mut streams) = self.streams.lock() {
            streams.push(stream.clone());
        }
    }

    fn shutdown_all(&self, how: std::net::Shutdown) {
        if let Ok(streams) = self.streams.lock() {
            for stream in streams.iter() {
                let _ = stream.shutdown(how);
            }
        }
    }

    pub fn progress(&self) -> Progress {
        Progress {
            connected: self.connected.load(Ordering::Relaxed) as u64,
            published: self.published.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            subs_done: self.subs_done.load(Ordering::Relaxed) as u64,
            pubs_done: self.pubs_done.load(Ordering::Relaxed) as u64,
        }
    }
}

/// A snapshot of the counters, summed over shards by the parent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub connected: u64,
    pub published: u64,
    pub acked: u64,
    pub received: u64,
    pub released: u64,
    pub subs_done: u64,
    pub pubs_done: u64,
}

impl Progress {
    pub fn add(&mut self, other: &Progress) {
        self.connected += other.connected;
        self.published += other.published;
        self.acked += other.acked;
        self.received += other.received;
        self.released += other.released;
        self.subs_done += other.subs_done;
        self.pubs_done += other.pubs_done;
    }

    pub fn to_wire(&self) -> String {
        format!(
            "connected={} published={} acked={} received={} released={} subs_done={} pubs_done={}",
            self.connected,
            self.published,
            self.acked,
            self.received,
            self.released,
            self.subs_done,
            self.pubs_done
        )
    }

    pub fn from_wire(text: &str) -> Progress {
        let kv = crate::report::key_values(text);
        let get = |k: &str| kv.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Progress {
            connected: get("connected"),
            published: get("published"),
            acked: get("acked"),
            received: get("received"),
            released: get("released"),
            subs_done: get("subs_done"),
            pubs_done: get("pubs_done"),
        }
    }
}

/// When to stop the publish/deliver phase; the same rule serves one process
/// and the parent of several.
#[derive(Debug)]
pub struct StopRule {
    /// Subscribers that can complete (0 when nothing is expected of them).
    subs: u64,
    pubs: u64,
    drain: Duration,
    deadline: Instant,
    /// Sum of the counters that show the broker still working.
    last_activity: u64,
    last_change: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Done,
    Drained,
    TimedOut,
}

impl StopReason {
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Done => "done",
            StopReason::Drained => "drained",
            StopReason::TimedOut => "timeout",
        }
    }
}

impl StopRule {
    pub fn new(options: &Options, start: Instant) -> StopRule {
        let subs = match options.scenario {
            Scenario::Sub if options.publishers == 0 || options.messages == 0 => 0,
            Scenario::Conn | Scenario::Pub => 0,
            _ => options.subscribers as u64,
        };
        StopRule {
            subs,
            pubs: options.local_publishers() as u64,
            drain: options.drain,
            deadline: start + options.timeout,
            last_activity: 0,
            last_change: start,
        }
    }

    pub fn check(&mut self, progress: &Progress, now: Instant) -> Option<StopReason> {
        // Deliveries, acknowledgements and QoS 2 releases all count as
        // activity: a broker still completing handshakes is not drained.
        let activity = progress.received + progress.acked + progress.released;
        if activity != self.last_activity {
            self.last_activity = activity;
            self.last_change = now;
        }
        let pubs_complete = progress.pubs_done >= self.pubs;
        if pubs_complete && progress.subs_done >= self.subs && (self.subs > 0 || self.pubs > 0) {
            return Some(StopReason::Done);
        }
        if now >= self.deadline {
            return Some(StopReason::TimedOut);
        }
        if pubs_complete
            && (self.pubs > 0 || progress.received > 0)
            && now.duration_since(self.last_change) >= self.drain
        {
            return Some(StopReason::Drained);
        }
        None
    }
}

/// What a client found, summed into the shard's report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Deliveries expected by subscribers (0 when unknown).
    pub expected: u64,
    /// Distinct (publisher, sequence) deliveries.
    pub unique: u64,
    /// Deliveries of a message already delivered to the same subscriber.
    pub dup: u64,
    /// Publications that are not this run's (no stamp, or out of range).
    pub unexpected: u64,
    /// Publications never acknowledged (QoS 1/2) when the run stopped.
    pub unacked: u64,
    /// QoS 2 deliveries received and PUBREC'd whose PUBREL never came (the
    /// subscriber cannot complete the exchange).
    pub awaiting_rel: u64,
}

impl Outcome {
    fn add(&mut self, other: &Outcome) {
        self.expected += other.expected;
        self.unique += other.unique;
        self.dup += other.dup;
        self.unexpected += other.unexpected;
        self.unacked += other.unacked;
        self.awaiting_rel += other.awaiting_rel;
    }

    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.unique)
    }
}

/// One shard's result; merged across processes by the parent.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardReport {
    pub clients: u64,
    pub connected: u64,
    pub conn_failures: u64,
    pub first_connect_ns: u64,
    pub last_connack_ns: u64,
    pub progress: Progress,
    pub outcome: Outcome,
    pub errors: u64,
    pub first_send_ns: u64,
    pub last_send_ns: u64,
    pub last_delivery_ns: u64,
    pub last_ack_ns: u64,
    pub latency: Histogram,
    pub connect_latency: Histogram,
    /// CPU seconds the generator itself used from release to stop.
    pub cpu_s: f64,
    /// The longest probe of the shards (0: none).
    pub probe_ns: u64,
}

impl Default for ShardReport {
    fn default() -> ShardReport {
        ShardReport {
            clients: 0,
            connected: 0,
            conn_failures: 0,
            first_connect_ns: u64::MAX,
            last_connack_ns: 0,
            progress: Progress::default(),
            outcome: Outcome::default(),
            errors: 0,
            first_send_ns: u64::MAX,
            last_send_ns: 0,
            last_delivery_ns: 0,
            last_ack_ns: 0,
            latency: Histogram::new(),
            connect_latency: Histogram::new(),
            cpu_s: 0.0,
            probe_ns: 0,
        }
    }
}

impl ShardReport {
    pub fn merge(&mut self, other: &ShardReport) {
        self.clients += other.clients;
        self.connected += other.connected;
        self.conn_failures += other.conn_failures;
        self.first_connect_ns = self.first_connect_ns.min(other.first_connect_ns);
        self.last_connack_ns = self.last_connack_ns.max(other.last_connack_ns);
        self.progress.add(&other.progress);
        self.outcome.add(&other.outcome);
        self.errors += other.errors;
        self.first_send_ns = self.first_send_ns.min(other.first_send_ns);
        self.last_send_ns = self.last_send_ns.max(other.last_send_ns);
        self.last_delivery_ns = self.last_delivery_ns.max(other.last_delivery_ns);
        self.last_ack_ns = self.last_ack_ns.max(other.last_ack_ns);
        self.latency.merge(&other.latency);
        self.connect_latency.merge(&other.connect_latency);
        self.cpu_s += other.cpu_s;
        self.probe_ns = self.probe_ns.max(other.probe_ns);
    }

    pub fn to_wire(&self) -> String {
        format!(
            "clients={} connected={} conn_failures={} first_connect_ns={} last_connack_ns={} \
             {} expected={} unique={} dup={} unexpected={} unacked={} awaiting_rel={} errors={} \
             first_send_ns={} last_send_ns={} last_delivery_ns={} last_ack_ns={} \
             cpu_s={:.3} probe_ns={} latency={} connect_latency={}",
            self.clients,
            self.connected,
            self.conn_failures,
            self.first_connect_ns,
            self.last_connack_ns,
            self.progress.to_wire(),
            self.outcome.expected,
            self.outcome.unique,
            self.outcome.dup,
            self.outcome.unexpected,
            self.outcome.unacked,
            self.outcome.awaiting_rel,
            self.errors,
            self.first_send_ns,
            self.last_send_ns,
            self.last_delivery_ns,
            self.last_ack_ns,
            self.cpu_s,
            self.probe_ns,
            self.latency.to_wire(),
            self.connect_latency.to_wire(),
        )
    }

    pub fn from_wire(text: &str) -> Result<ShardReport> {
        let kv = crate::report::key_values(text);
        let get = |k: &str| -> Result<u64> {
            kv.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::new(format!("shard report without {k}")))
        };
        let hist = |k: &str| -> Result<Histogram> {
            kv.get(k)
                .and_then(|v| Histogram::from_wire(v))
                .ok_or_else(|| Error::new(format!("shard report with a bad {k}")))
        };
        Ok(ShardReport {
            clients: get("clients")?,
            connected: get("connected")?,
            conn_failures: get("conn_failures")?,
            first_connect_ns: get("first_connect_ns")?,
            last_connack_ns: get("last_connack_ns")?,
            progress: Progress::from_wire(text),
            outcome: Outcome {
                expected: get("expected")?,
                unique: get("unique")?,
                dup: get("dup")?,
                unexpected: get("unexpected")?,
                unacked: get("unacked")?,
                awaiting_rel: get("awaiting_rel")?,
            },
            errors: get("errors")?,
            first_send_ns: get("first_send_ns")?,
            last_send_ns: get("last_send_ns")?,
            last_delivery_ns: get("last_delivery_ns")?,
            last_ack_ns: get("last_ack_ns")?,
            latency: hist("latency")?,
            connect_latency: hist("connect_latency")?,
            cpu_s: kv.get("cpu_s").and_then(|v| v.parse().ok()).unwrap_or(0.0),
            probe_ns: kv.get("probe_ns").and_then(|v| v.parse().ok()).unwrap_or(0),
        })
    }
}

/// What a client does once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Idle(usize),
    Subscriber(usize),
    Publisher(usize),
}

impl Role {
    pub(crate) fn client_id(self, run_id: &str) -> String {
        match self {
            Role::Idle(i) => format!("eb-{run_id}-c{i}"),
            Role::Subscriber(i) => format!("eb-{run_id}-s{i}"),
            Role::Publisher(i) => format!("eb-{run_id}-p{i}"),
        }
    }

    /// The broker this client connects to.
    pub(crate) fn target(self, options: &Options) -> SocketAddr {
        match self {
            Role::Idle(i) | Role::Subscriber(i) => options.sub_target(i),
            Role::Publisher(i) => options.pub_target(i),
        }
    }

    /// Index among all clients of the run, for the source address.
    pub(crate) fn global_index(self, options: &Options) -> usize {
        match self {
            Role::Idle(i) | Role::Subscriber(i) => i,
            Role::Publisher(i) => options.subscribers + i,
        }
    }
}

/// Topic names and filters of a run.
pub struct Topics;

impl Topics {
    pub fn publish(options: &Options, publisher: usize) -> String {
        let run = &options.run_id;
        match options.scenario {
            Scenario::Fanout => format!("bench/{run}/fanout"),
            Scenario::Fanin => format!("bench/{run}/fanin/{publisher}"),
            Scenario::Pairs => format!("bench/{run}/pairs/{publisher}"),
            _ => options.topic.clone(),
        }
    }

    pub fn filter(options: &Options, subscriber: usize) -> String {
        let run = &options.run_id;
        match options.scenario {
            Scenario::Fanout => format!("bench/{run}/fanout"),
            Scenario::Fanin => format!("bench/{run}/fanin/#"),
            Scenario::Pairs => format!("bench/{run}/pairs/{subscriber}"),
            _ => options.topic.clone(),
        }
    }
}

/// Result of the connection phase of a shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Setup {
    pub clients: u64,
    pub connected: u64,
    pub failures: u64,
    pub first_connect_ns: u64,
    pub last_connack_ns: u64,
    /// How long the probe took (0: none was needed).
    pub probe_ns: u64,
    /// Shards whose probe did not reach every subscriber in time.
    pub probe_failed: u64,
}

impl Setup {
    /// Every client connected and, where needed, every subscription
    /// proven effective: the timed phase may start.
    pub fn ready(&self) -> bool {
        self.failures == 0 && self.probe_failed == 0
    }

    pub fn to_wire(&self) -> String {
        format!(
            "clients={} connected={} conn_failures={} first_connect_ns={} last_connack_ns={} \
             probe_ns={} probe_failed={}",
            self.clients,
            self.connected,
            self.failures,
            self.first_connect_ns,
            self.last_connack_ns,
            self.probe_ns,
            self.probe_failed
        )
    }

    pub fn from_wire(text: &str) -> Setup {
        let kv = crate::report::key_values(text);
        let get = |k: &str| kv.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Setup {
            clients: get("clients"),
            connected: get("connected"),
            failures: get("conn_failures"),
            first_connect_ns: get("first_connect_ns"),
            last_connack_ns: get("last_connack_ns"),
            probe_ns: get("probe_ns"),
            probe_failed: get("probe_failed"),
        }
    }

    /// Sums two shards; a `first_connect_ns` counts only where something
    /// connected.
    pub fn add(&mut self, other: &Setup) {
        if other.connected > 0 {
            self.first_connect_ns = if self.connected > 0 {
                self.first_connect_ns.min(other.first_connect_ns)
            } else {
                other.first_connect_ns
            };
        }
        self.clients += other.clients;
        self.connected += other.connected;
        self.failures += other.failures;
        self.last_connack_ns = self.last_connack_ns.max(other.last_connack_ns);
        self.probe_ns = self.probe_ns.max(other.probe_ns);
        self.probe_failed += other.probe_failed;
    }
}

/// The clients of one process.
pub struct Shard {
    options: Arc<Options>,
    pub shared: Arc<Shared>,
    go: Option<Sender<()>>,
    tasks: Vec<smol::Task<Outcome>>,
    pub setup: Setup,
    /// This process's CPU seconds at release.
    cpu_at_go: Option<f64>,
}

impl Shard {
    /// Connects this shard's clients (subscribers, and subscribes them, then
    /// publishers; or the idle clients of `conn`), paced by --conn-rate and
    /// --conn-concurrency. Failures are counted, not fatal here.
    pub async fn connect(
        options: Arc<Options>,
        shared: Arc<Shared>,
        executor: &Arc<Executor<'static>>,
    ) -> Shard {
        let roles: Vec<Role> = match options.scenario {
            Scenario::Conn => (0..options.connections)
                .filter(|&i| options.is_mine(i))
                .map(Role::Idle)
                .collect(),
            _ => (0..options.subscribers)
                .filter(|&i| options.is_mine(i))
                .map(Role::Subscriber)
                .chain(
                    (0..options.local_publishers())
                        .filter(|&i| options.is_mine(i))
                        .map(Role::Publisher),
                )
                .collect(),
        };
        let (go_tx, go_rx) = smol::channel::bounded::<()>(1);
        let (ready_tx, ready_rx) = smol::channel::unbounded::<Option<(u64, u64)>>();
        let gate = Arc::new(Semaphore::new(options.conn_concurrency));
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(roles.len());
        for (k, role) in roles.iter().copied().enumerate() {
            // Subscribers are all connected and subscribed before the
            // publishers connect: pace on the position in that order.
            let not_before = if options.conn_rate > 0.0 {
                Some(start + Duration::from_secs_f64(k as f64 / options.conn_rate))
            } else {
                None
            };
            tasks.push(executor.spawn(client_task(
                options.clone(),
                shared.clone(),
                role,
                not_before,
                gate.clone(),
                go_rx.clone(),
                ready_tx.clone(),
            )));
        }
        drop(ready_tx);
        let mut setup = Setup {
            clients: roles.len() as u64,
            first_connect_ns: u64::MAX,
            ..Setup::default()
        };
        let deadline = Timer::at(start + options.setup_timeout);
        let collect = async {
            while let Ok(ready) = ready_rx.recv().await {
                match ready {
                    Some((started, connacked)) => {
                        setup.connected += 1;
                        setup.first_connect_ns = setup.first_connect_ns.min(started);
                        setup.last_connack_ns = setup.last_connack_ns.max(connacked);
                    }
                    None => setup.failures += 1,
                }
            }
        };
        let finished = futures_lite::future::or(
            async {
                collect.await;
                true
            },
            async {
                deadline.await;
                false
            },
        )
        .await;
        if !finished {
            shared.error(&Error::new(format!(
                "connection phase not finished after {:?}",
                options.setup_timeout
            )));
            setup.failures = setup.clients - setup.connected;
        }
        if setup.connected == 0 {
            setup.first_connect_ns = 0;
        }
        let brokers = options.probes();
        let subscribers = roles
            .iter()
            .filter(|r| matches!(r, Role::Subscriber(_)))
            .count();
        if setup.failures == 0 && !brokers.is_empty() && subscribers > 0 {
            let started = Instant::now();
            match crate::probe::probe(&options, &shared, &brokers, subscribers).await {
                Ok(()) => {
                    setup.probe_ns =
                        u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                }
                Err(error) => {
                    shared.error(&error);
                    setup.probe_failed = 1;
                }
            }
        }
        Shard {
            options,
            shared,
            go: Some(go_tx),
            tasks,
            setup,
            cpu_at_go: None,
        }
    }

    /// Releases the clients: publishers start publishing.
    pub fn go(&mut self) {
        self.cpu_at_go = own_cpu();
        self.go = None;
    }

    /// Stops every client and sums what they found.
    pub async fn stop(mut self) -> ShardReport {
        let cpu_s = match (self.cpu_at_go, own_cpu()) {
            (Some(from), Some(to)) => to - from,
            _ => 0.0,
        };
        self.shared.stopping.store(true, Ordering::Relaxed);
        self.go = None;
        // Reads end (the clients then send DISCONNECT); a client stuck in a
        // write is cut off after a grace period.
        self.shared.shutdown_all(std::net::Shutdown::Read);
        let grace = Timer::after(Duration::from_secs(3));
        let shared = self.shared.clone();
        let cut = async move {
            grace.await;
            shared.shutdown_all(std::net::Shutdown::Both);
            Timer::after(Duration::from_secs(3)).await;
        };
        let mut outcome = Outcome::default();
        let tasks = std::mem::take(&mut self.tasks);
        let join = async {
            for task in tasks {
                outcome.add(&task.await);
            }
        };
        let joined = futures_lite::future::or(
            async {
                join.await;
                true
            },
            async {
                cut.await;
                false
            },
        )
        .await;
        if !joined {
            self.shared
                .error(&Error::new("some clients did not stop within 6 s"));
        }
        let s = &self.shared;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ShardReport {
            clients: self.setup.clients,
            connected: self.setup.connected,
            conn_failures: self.setup.failures,
            first_connect_ns: self.setup.first_connect_ns,
            last_connack_ns: self.setup.last_connack_ns,
            progress: s.progress(),
            outcome,
            errors: s.errors().0,
            first_send_ns: load(&s.first_send_ns),
            last_send_ns: load(&s.last_send_ns),
            last_delivery_ns: load(&s.last_delivery_ns),
            last_ack_ns: load(&s.last_ack_ns),
            latency: s.latency.snapshot(),
            connect_latency: s.connect_latency.snapshot(),
            cpu_s,
            probe_ns: self.setup.probe_ns,
        }
    }

    pub fn options(&self) -> &Options {
        &self.options
    }
}

fn own_cpu() -> Option<f64> {
    crate::broker::sample(std::process::id())
        .ok()
        .map(|s| s.cpu_s)
}
