//! Scenarios: whole simulations with fault injection and invariant checks.
//!
//! # `partitioned_subscriber`
//!
//! Hosts: `broker` (one node, in-memory storage), `pub` and `sub` (clients).
//!
//! 1. `sub` connects with a persistent session (clean session off,
//!    keep-alive 2 s) and subscribes to `t/#` at QoS 2, `t/+` at QoS 1
//!    (overlapping: the broker must deliver once, at the higher QoS) and
//!    `u/#` at QoS 1 (QoS 2 publishes are downgraded to QoS 1 there).
//! 2. `pub` (also persistent) publishes `messages` messages; message `i` has
//!    payload `pub:<i>`, QoS 1 for even `i` and QoS 2 for odd `i`, topic
//!    `t/a` when `i / 2` is even and `u/a` otherwise, so every
//!    (topic, QoS) pair occurs. It pipelines: at most `window` messages
//!    unacknowledged, one message every `interval` (seeded).
//! 3. Once a seeded number of messages is published (a quarter to a half
//!    of them), the sub-broker link is cut for a seeded 1 to 5.5 s, then
//!    repaired (`turmoil::partition` / `partition_oneway` / `repair`). The
//!    cut is seeded too: both directions, only sub to broker (its acks and
//!    pings are lost while it still receives), or only broker to sub. On
//!    half of the seeds the pub-broker link is cut the same way, later.
//!    turmoil drops the segments sent meanwhile and does not retransmit, so
//!    the stream stalls for good and both ends must notice: a client by its
//!    keep-alive (nothing received for 2 s; PINGREQ after 1 s of silence),
//!    the broker by its own (1.5 x 2 s), by a FIN or reset, or by the
//!    session takeover when the client comes back, whichever comes first
//!    (the seeds exercise each). Clients retry connecting every 0.5 s with
//!    clean session off, and bound connect, CONNACK and writes by 1 s.
//! 4. `sub` stops once it has every message (or after 90 s of virtual
//!    time), lingers 1 s to catch late duplicates, and disconnects; `pub`
//!    disconnects once every flow is complete. The simulation then runs
//!    0.5 s more so the broker sees the DISCONNECTs.
//!
//! Also seeded: link latency (1 ms to a seeded 10..60 ms maximum, drawn by
//! turmoil's seeded generator for every segment), the publish interval
//! (10..40 ms), the broker's in-flight window (1, 2, 8 or 32), and the
//! order in which hosts run within each 1 ms tick
//! (`Builder::enable_random_order`).
//!
//! # Invariants
//!
//! * `pub` completes every flow (PUBACK / PUBCOMP for each message).
//! * Every message is received at least once; every message delivered at
//!   QoS 2 (topic `t/a`, published at QoS 2) exactly once at the
//!   application (after the client's packet-id de-duplication, which only
//!   drops a PUBLISH whose id is still awaiting PUBREL).
//! * Every received message was published: known payload, the topic it was
//!   published to, and the expected QoS (`min(published, best granted)`),
//!   RETAIN clear.
//! * Order: taking each message's first receipt only, sequence numbers are
//!   strictly increasing within each delivered QoS (MQTT 4.6: one
//!   publisher, ordered topics). They are in fact strictly increasing over
//!   all messages, which this broker guarantees (one FIFO per session,
//!   in-flight messages resent in order, a publisher's stream routed in
//!   arrival order), and that is asserted too.
//! * A repeated receipt is QoS 1 only. When `pub` never reconnected, it
//!   must also carry DUP and arrive on a later connection than the first
//!   receipt (the broker resent it after the reconnect). When `pub` did
//!   reconnect and resent unacknowledged QoS 1 messages, the broker routes
//!   them again as new messages, so that check is skipped.
//! * `sub` lost its link at least once (the fault really happened), and
//!   every reconnect found its session (`session_present`).
//! * Broker metrics: `messages` publishes received and `messages`
//!   deliveries (at least that many when `pub` reconnected), nothing
//!   dropped, no protocol error, no will, no refused connection; after the
//!   clients disconnect, no connection left and the two persistent
//!   sessions kept.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use easy_mqtt_core::{QoS, SubscribeReturnCode};
use easy_mqtt_server::metrics::Metrics;
use easy_mqtt_server::node::NodeConfig;
use tokio::time::Instant;

use crate::broker_host::{self, SimNode};
use crate::client::{Client, ClientOptions, ReceivedMessage};
use crate::trace::{Log, LogSubscriber, Trace};

const BROKER: &str = "broker:1883";

/// SplitMix64: a tiny seeded generator for scenario parameters.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high` (slightly biased, which does not matter here).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }
}

/// The knobs of [`partitioned_subscriber`]; [`ScenarioConfig::from_seed`]
/// derives the seeded ones.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub seed: u64,
    pub messages: u32,
    /// Unacknowledged messages `pub` allows itself.
    pub window: usize,
    pub keep_alive: u16,
    pub max_latency: Duration,
    pub interval: Duration,
    /// The broker's in-flight window per session.
    pub max_inflight: u16,
    /// The cut of the sub-broker link.
    pub sub_fault: LinkFault,
    /// A cut of the pub-broker link too, on some seeds.
    pub pub_fault: Option<LinkFault>,
}

/// One cut of the link between a client host and the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkFault {
    pub client: &'static str,
    /// Starts once `pub` has published this many messages.
    pub after_published: u32,
    pub duration: Duration,
    pub cut: Cut,
}

/// Which directions of a link a fault cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Both directions.
    Both,
    /// Only what the client sends (its acknowledgements and pings are lost;
    /// it still receives until the broker's in-flight window is full).
    ClientToBroker,
    /// Only what the broker sends (the client receives nothing; the broker
    /// still hears from it, including the FIN when it gives up).
    BrokerToClient,
}

impl ScenarioConfig {
    pub fn from_seed(seed: u64) -> ScenarioConfig {
        let messages = 200;
        let mut rng = SplitMix64::new(seed);
        let cut = |rng: &mut SplitMix64| match rng.range(0, 2) {
            0 => Cut::Both,
            1 => Cut::ClientToBroker,
            _ => Cut::BrokerToClient,
        };
        let max_latency = Duration::from_millis(rng.range(10, 60));
        let interval = Duration::from_millis(rng.range(10, 40));
        let max_inflight = [1, 2, 8, 32][rng.range(0, 3) as usize];
        let sub_fault = LinkFault {
            client: "sub",
            after_published: rng.range(u64::from(messages / 4), u64::from(messages / 2)) as u32,
            duration: Duration::from_millis(rng.range(1000, 5500)),
            cut: cut(&mut rng),
        };
        let pub_fault = (rng.range(0, 1) == 1).then(|| LinkFault {
            client: "pub",
            after_published: rng.range(u64::from(messages / 4), u64::from(messages * 3 / 4)) as u32,
            duration: Duration::from_millis(rng.range(1000, 5500)),
            cut: cut(&mut rng),
        });
        ScenarioConfig {
            seed,
            messages,
            window: 4,
            keep_alive: 2,
            max_latency,
            interval,
            max_inflight,
            sub_fault,
            pub_fault,
        }
    }
}

/// A [`LinkFault`] as the fault injector plays it.
struct Injection {
    fault: LinkFault,
    started: Option<Duration>,
    repaired: bool,
}

impl Injection {
    fn new(fault: LinkFault) -> Injection {
        Injection {
            fault,
            started: None,
            repaired: false,
        }
    }

    /// Starts or ends the fault when its time has come.
    fn step(&mut self, sim: &turmoil::Sim<'_>, published: u32, log: &Log) {
        let now = sim.elapsed();
        let client = self.fault.client;
        match self.started {
            None if published >= self.fault.after_published => {
                match self.fault.cut {
                    Cut::Both => sim.partition(client, "broker"),
                    Cut::ClientToBroker => sim.partition_oneway(client, "broker"),
                    Cut::BrokerToClient => sim.partition_oneway("broker", client),
                }
                log.event_at(
                    now,
                    "sim",
                    format_args!("cut {client}/broker: {:?}", self.fault.cut),
                );
                self.started = Some(now);
            }
            Some(at) if !self.repaired && now >= at + self.fault.duration => {
                sim.repair(client, "broker");
                log.event_at(now, "sim", format_args!("repair {client}/broker"));
                self.repaired = true;
            }
            _ => {}
        }
    }
}

/// What message `seq` looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub seq: u32,
    pub topic: &'static str,
    pub qos: QoS,
    pub payload: String,
    /// The QoS the subscriber must receive it with.
    pub delivered_qos: QoS,
}

pub fn plan(seq: u32) -> Planned {
    let qos = if seq.is_multiple_of(2) {
        QoS::AtLeastOnce
    } else {
        QoS::ExactlyOnce
    };
    let (topic, best_granted) = if (seq / 2).is_multiple_of(2) {
        ("t/a", QoS::ExactlyOnce) // t/# at 2 and t/+ at 1: the higher wins
    } else {
        ("u/a", QoS::AtLeastOnce)
    };
    Planned {
        seq,
        topic,
        qos,
        payload: format!("pub:{seq}"),
        delivered_qos: qos.min(best_granted),
    }
}

const SUBSCRIPTIONS: [(&str, QoS); 3] = [
    ("t/#", QoS::ExactlyOnce),
    ("t/+", QoS::AtLeastOnce),
    ("u/#", QoS::AtLeastOnce),
];

#[derive(Debug, Default)]
struct PubReport {
    completed: u64,
    connections: u32,
    all_acknowledged: bool,
}

#[derive(Debug, Default)]
struct SubReport {
    received: Vec<ReceivedMessage>,
    link_losses: u32,
    /// `session_present` of each reconnect (not of the first connect).
    reconnects_present: Vec<bool>,
    suback: Vec<SubscribeReturnCode>,
}

/// State shared by the hosts and the fault injector (one thread).
#[derive(Default)]
struct Shared {
    sub_ready: Cell<bool>,
    published: Cell<u32>,
    pub_report: RefCell<Option<PubReport>>,
    sub_report: RefCell<Option<SubReport>>,
    node: RefCell<Option<Arc<SimNode>>>,
}

/// Runs [`partitioned_subscriber`] with the parameters derived from `seed`.
pub fn run_scenario(seed: u64) -> Trace {
    partitioned_subscriber(&ScenarioConfig::from_seed(seed))
}

pub fn partitioned_subscriber(config: &ScenarioConfig) -> Trace {
    let log = Log::new();
    let subscriber = LogSubscriber::new(log.clone(), "broker");
    crate::isolation::isolated(|| {
        tracing::subscriber::with_default(subscriber, || run_partitioned_subscriber(config, log))
    })
}

fn run_partitioned_subscriber(config: &ScenarioConfig, log: Log) -> Trace {
    let shared = Rc::new(Shared::default());
    let mut violations = Vec::new();
    log.event_at(Duration::ZERO, "sim", format_args!("{config:?}"));

    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(Duration::from_secs(120))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(config.max_latency)
        .enable_random_order()
        .build();

    {
        let shared = shared.clone();
        let max_inflight = config.max_inflight;
        sim.host("broker", move || {
            let mut node_config = NodeConfig {
                node_id: "broker".into(),
                ..NodeConfig::default()
            };
            node_config.connection.session.max_inflight = max_inflight;
            let node = broker_host::new_node(node_config);
            *shared.node.borrow_mut() = Some(node.clone());
            broker_host::serve(node)
        });
    }
    sim.client(
        "sub",
        subscriber(config.clone(), shared.clone(), log.clone()),
    );
    sim.client(
        "pub",
        publisher(config.clone(), shared.clone(), log.clone()),
    );

    let mut injections: Vec<Injection> = std::iter::once(config.sub_fault)
        .chain(config.pub_fault)
        .map(Injection::new)
        .collect();
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
            injection.step(&sim, shared.published.get(), &log);
        }
    }
    // Let the broker see the DISCONNECTs and close its side.
    for _ in 0..500 {
        if let Err(error) = sim.step() {
            violations.push(format!("simulation failed while settling: {error}"));
            break;
        }
    }
    for injection in &injections {
        if !injection.repaired {
            violations.push(format!(
                "fault on the {}/broker link never ran its course",
                injection.fault.client
            ));
        }
    }

    let node = shared.node.borrow().clone();
    let pub_report = shared.pub_report.borrow_mut().take();
    let sub_report = shared.sub_report.borrow_mut().take();
    match (&node, &pub_report, &sub_report) {
        (Some(node), Some(pub_report), Some(sub_report)) => {
            check_clients(config, pub_report, sub_report, &mut violations);
            let exact = pub_report.connections == 1;
            let at = sim.elapsed();
            check_metrics(config, &node.metrics, exact, &log, at, &mut violations);
        }
        _ => violations.push(format!(
            "run incomplete: broker started {}, publisher finished {}, subscriber finished {}",
            node.is_some(),
            pub_report.is_some(),
            sub_report.is_some()
        )),
    }
    Trace {
        seed: config.seed,
        events: log.lines(),
        violations,
        replay: format!(
            "SIM_SEED={} cargo test -p easy-mqtt-sim --test scenario many_seeds -- --nocapture",
            config.seed
        ),
    }
}

fn options(client_id: &str, keep_alive: u16) -> ClientOptions {
    ClientOptions {
        client_id: client_id.into(),
        clean_session: false,
        keep_alive,
        io_timeout: Duration::from_secs(1),
        will: None,
    }
}

/// Connects until it works; returns `session_present`.
async fn connect_retrying(client: &mut Client) -> bool {
    loop {
        match client.connect().await {
            Ok(present) => return present,
            Err(error) => {
                client.log_event(format_args!("connect failed: {error}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn publisher(config: ScenarioConfig, shared: Rc<Shared>, log: Log) -> turmoil::Result {
    let mut client = Client::new("pub", BROKER, options("pub", config.keep_alive), log);
    connect_retrying(&mut client).await;
    while !shared.sub_ready.get() {
        if client
            .run_until(Instant::now() + Duration::from_millis(10))
            .await
            .is_err()
        {
            connect_retrying(&mut client).await;
        }
    }
    for seq in 0..config.messages {
        while client.outbound_len() >= config.window {
            if client.poll(None).await.is_err() {
                connect_retrying(&mut client).await;
            }
        }
        let planned = plan(seq);
        client.log_event(format_args!(
            "publish {} q{} {:?}",
            planned.topic, planned.qos as u8, planned.payload
        ));
        let payload = Bytes::from(planned.payload);
        if client
            .publish(planned.topic, payload, planned.qos)
            .await
            .is_err()
        {
            // Already in the outbound window: resent on reconnect.
            connect_retrying(&mut client).await;
        }
        shared.published.set(seq + 1);
        let next = Instant::now() + config.interval;
        while Instant::now() < next {
            if client.run_until(next).await.is_err() {
                connect_retrying(&mut client).await;
            }
        }
    }
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut all_acknowledged = false;
    while Instant::now() < give_up {
        match client.drain_outbound(give_up).await {
            Ok(done) => {
                all_acknowledged = done;
                break;
            }
            Err(_) => {
                connect_retrying(&mut client).await;
            }
        }
    }
    let _ = client.disconnect().await;
    *shared.pub_report.borrow_mut() = Some(PubReport {
        completed: client.completed(),
        connections: client.connections(),
        all_acknowledged,
    });
    Ok(())
}

async fn subscriber(config: ScenarioConfig, shared: Rc<Shared>, log: Log) -> turmoil::Result {
    let mut client = Client::new("sub", BROKER, options("sub", config.keep_alive), log);
    let mut report = SubReport::default();
    connect_retrying(&mut client).await;
    loop {
        match client.subscribe(&SUBSCRIPTIONS).await {
            Ok(codes) => {
                report.suback = codes;
                break;
            }
            Err(_) => {
                connect_retrying(&mut client).await;
            }
        }
    }
    shared.sub_ready.set(true);

    let give_up = Instant::now() + Duration::from_secs(90);
    let mut seen = vec![false; config.messages as usize];
    let mut missing = config.messages as usize;
    let mut counted = 0;
    let mut linger_until: Option<Instant> = None;
    loop {
        for message in client.received().iter().skip(counted) {
            if let Some(slot) = parse_seq(&message.payload).and_then(|s| seen.get_mut(s as usize))
                && !*slot
            {
                *slot = true;
                missing -= 1;
            }
        }
        counted = client.received().len();
        let now = Instant::now();
        if missing == 0 && linger_until.is_none() {
            // Every message is here: stay a little for late duplicates and
            // to finish the last QoS 2 flows.
            linger_until = Some(now + Duration::from_secs(1));
        }
        if linger_until.is_some_and(|t| now >= t) || now >= give_up {
            break;
        }
        let until = linger_until
            .unwrap_or(give_up)
            .min(now + Duration::from_millis(100));
        if client.run_until(until).await.is_err() {
            report.link_losses += 1;
            let present = connect_retrying(&mut client).await;
            report.reconnects_present.push(present);
        }
    }
    let _ = client.disconnect().await;
    report.received = client.received().to_vec();
    *shared.sub_report.borrow_mut() = Some(report);
    Ok(())
}

fn parse_seq(payload: &[u8]) -> Option<u32> {
    std::str::from_utf8(payload)
        .ok()?
        .strip_prefix("pub:")?
        .parse()
        .ok()
}

fn check_clients(
    config: &ScenarioConfig,
    pub_report: &PubReport,
    sub_report: &SubReport,
    violations: &mut Vec<String>,
) {
    if !pub_report.all_acknowledged || pub_report.completed != u64::from(config.messages) {
        violations.push(format!(
            "publisher completed {} of {} flows",
            pub_report.completed, config.messages
        ));
    }
    let expected_codes: Vec<SubscribeReturnCode> = SUBSCRIPTIONS
        .iter()
        .map(|(_, qos)| SubscribeReturnCode::Granted(*qos))
        .collect();
    if sub_report.suback != expected_codes {
        violations.push(format!("SUBACK codes {:?}", sub_report.suback));
    }
    if sub_report.link_losses == 0 {
        violations.push("the subscriber never lost its link: the partition had no effect".into());
    }
    if let Some(i) = sub_report.reconnects_present.iter().position(|p| !p) {
        violations.push(format!(
            "reconnect {} of the subscriber found no session (session_present = 0)",
            i + 1
        ));
    }

    // seq -> (receipts, connection of the first receipt)
    let mut receipts: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    let mut last_first: Option<u32> = None;
    let mut last_first_by_qos: BTreeMap<u8, u32> = BTreeMap::new();
    for (index, message) in sub_report.received.iter().enumerate() {
        let what = format!(
            "receipt #{index} ({} q{} dup={} {:?} on connection {})",
            message.topic,
            message.qos as u8,
            u8::from(message.dup),
            String::from_utf8_lossy(&message.payload),
            message.connection
        );
        let Some(seq) = parse_seq(&message.payload).filter(|s| *s < config.messages) else {
            violations.push(format!("{what}: never published"));
            continue;
        };
        let planned = plan(seq);
        if message.topic != planned.topic || message.payload != planned.payload.as_bytes() {
            violations.push(format!("{what}: published as {planned:?}"));
            continue;
        }
        if message.qos != planned.delivered_qos {
            violations.push(format!(
                "{what}: expected QoS {}",
                planned.delivered_qos as u8
            ));
        }
        if message.retain {
            violations.push(format!("{what}: RETAIN set on a routed message"));
        }
        let entry = receipts.entry(seq).or_insert((0, message.connection));
        entry.0 += 1;
        if entry.0 == 1 {
            if last_first.is_some_and(|last| last >= seq) {
                violations.push(format!(
                    "{what}: first receipt out of order after seq {}",
                    last_first.unwrap_or_default()
                ));
            }
            last_first = Some(seq);
            let class = message.qos as u8;
            if let Some(last) = last_first_by_qos.insert(class, seq)
                && last >= seq
            {
                violations.push(format!(
                    "{what}: out of order among QoS {class} messages after seq {last}"
                ));
            }
            continue;
        }
        // A repeated receipt.
        if planned.delivered_qos == QoS::ExactlyOnce {
            violations.push(format!("{what}: QoS 2 message delivered {} times", entry.0));
        } else if pub_report.connections == 1 && (!message.dup || message.connection <= entry.1) {
            violations.push(format!(
                "{what}: duplicate not explained by a resend after reconnect (first receipt on connection {})",
                entry.1
            ));
        }
    }
    let lost: Vec<u32> = (0..config.messages)
        .filter(|seq| !receipts.contains_key(seq))
        .collect();
    if !lost.is_empty() {
        violations.push(format!(
            "{} message(s) never received, seqs {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        ));
    }
}

/// `exact`: the publisher never reconnected, so nothing was published twice.
fn check_metrics(
    config: &ScenarioConfig,
    m: &Metrics,
    exact: bool,
    log: &Log,
    at: Duration,
    violations: &mut Vec<String>,
) {
    let get = Metrics::get;
    let n = u64::from(config.messages);
    let snapshot = format!(
        "metrics: publishes_received={} deliveries={} dropped_queue_full={} dropped_offline_qos0={} \
         protocol_errors={} wills={} connections_total={} connections_current={} sessions_current={} refused_limit={}",
        get(&m.publishes_received),
        get(&m.deliveries),
        get(&m.dropped_queue_full),
        get(&m.dropped_offline_qos0),
        get(&m.protocol_errors),
        get(&m.wills_published),
        get(&m.connections_total),
        get(&m.connections_current),
        get(&m.sessions_current),
        get(&m.connections_refused_limit),
    );
    log.event_at(at, "end", &snapshot);
    let expect = [
        ("publishes_received", get(&m.publishes_received), n),
        ("deliveries", get(&m.deliveries), n),
        ("dropped_queue_full", get(&m.dropped_queue_full), 0),
        ("dropped_offline_qos0", get(&m.dropped_offline_qos0), 0),
        ("protocol_errors", get(&m.protocol_errors), 0),
        ("wills_published", get(&m.wills_published), 0),
        (
            "connections_refused_limit",
            get(&m.connections_refused_limit),
            0,
        ),
        ("connections_current", get(&m.connections_current), 0),
        ("sessions_current", get(&m.sessions_current), 2),
    ];
    for (name, got, want) in expect {
        let resent = matches!(name, "publishes_received" | "deliveries");
        if got != want && (exact || !resent || got < want) {
            violations.push(format!("broker metric {name} = {got}, expected {want}"));
        }
    }
}
