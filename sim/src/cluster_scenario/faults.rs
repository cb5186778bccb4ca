//! The faults of the cluster scenario: chosen from the seed, played
//! between simulation steps.

use std::time::Duration;

use crate::scenarios::SplitMix64;
use crate::trace::Log;

use super::{BROKERS, CLIENTS, STORAGE, Shared};

/// One fault: what and when (virtual time since the start).
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub at: Duration,
    pub kind: FaultKind,
}

/// A broker, named when the fault starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerPick {
    Index(usize),
    /// The broker this client is connected to then (or the one it tries).
    ServingClient(&'static str),
}

/// One end of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Client(&'static str),
    Broker(BrokerPick),
    Storage,
}

/// Which directions of a link a partition cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Both,
    /// Only what the first end sends.
    FromFirst,
    /// Only what the second end sends.
    FromSecond,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Crash a broker host; restart it after `down_for`, or never (`None`:
    /// the node dies for good).
    CrashBroker {
        target: BrokerPick,
        down_for: Option<Duration>,
    },
    /// Crash the storage host (its acknowledged writes survive) and
    /// restart it after `down_for`.
    CrashStorage { down_for: Duration },
    Partition {
        a: Endpoint,
        b: Endpoint,
        direction: Direction,
        duration: Duration,
    },
    /// Every link's latency goes up to `max` for a while.
    Latency { max: Duration, duration: Duration },
    /// A broker's links lose messages at `rate` (turmoil cuts a link on a
    /// loss until it repairs at random) for a while.
    Loss {
        target: BrokerPick,
        rate: f64,
        duration: Duration,
    },
}

impl FaultKind {
    fn duration(&self) -> Option<Duration> {
        match self {
            FaultKind::CrashBroker { down_for, .. } => *down_for,
            FaultKind::CrashStorage { down_for } => Some(*down_for),
            FaultKind::Partition { duration, .. }
            | FaultKind::Latency { duration, .. }
            | FaultKind::Loss { duration, .. } => Some(*duration),
        }
    }
}

/// `count` faults starting between 2 and 12 s, in time order; at most
/// one broker dies for good.
pub fn choose(rng: &mut SplitMix64, count: u64) -> Vec<Fault> {
    let ms =
        |rng: &mut SplitMix64, low: u64, high: u64| Duration::from_millis(rng.range(low, high));
    let mut faults = Vec::new();
    let mut for_good = false;
    for _ in 0..count {
        let at = ms(rng, 2000, 12_000);
        let broker = |rng: &mut SplitMix64| match rng.range(0, 1) {
            0 => BrokerPick::Index(rng.range(0, BROKERS.len() as u64 - 1) as usize),
            _ => {
                BrokerPick::ServingClient(CLIENTS[rng.range(0, CLIENTS.len() as u64 - 1) as usize])
            }
        };
        let kind = match rng.range(0, 9) {
            0 | 1 => FaultKind::CrashBroker {
                target: broker(rng),
                down_for: Some(ms(rng, 300, 6000)),
            },
            2 if !for_good => {
                for_good = true;
                FaultKind::CrashBroker {
                    target: if rng.range(0, 2) == 0 {
                        broker(rng)
                    } else {
                        BrokerPick::ServingClient("w1")
                    },
                    down_for: None,
                }
            }
            2 | 3 => FaultKind::CrashStorage {
                down_for: ms(rng, 300, 4000),
            },
            4 | 5 => {
                let client = CLIENTS[rng.range(0, CLIENTS.len() as u64 - 1) as usize];
                FaultKind::Partition {
                    a: Endpoint::Client(client),
                    b: Endpoint::Broker(BrokerPick::ServingClient(client)),
                    direction: direction(rng),
                    duration: ms(rng, 1000, 6000),
                }
            }
            6 => FaultKind::Partition {
                a: Endpoint::Broker(broker(rng)),
                b: Endpoint::Storage,
                direction: direction(rng),
                // Beyond the node time to live (5 s) on some seeds: the
                // node is declared dead while it runs.
                duration: ms(rng, 500, 9000),
            },
            7 => {
                let first = rng.range(0, BROKERS.len() as u64 - 1) as usize;
                let second = (first + 1 + rng.range(0, 1) as usize) % BROKERS.len();
                FaultKind::Partition {
                    a: Endpoint::Broker(BrokerPick::Index(first)),
                    b: Endpoint::Broker(BrokerPick::Index(second)),
                    direction: direction(rng),
                    duration: ms(rng, 1000, 6000),
                }
            }
            8 => FaultKind::Latency {
                max: ms(rng, 80, 400),
                duration: ms(rng, 1000, 5000),
            },
            _ => FaultKind::Loss {
                target: broker(rng),
                rate: rng.range(2, 30) as f64 / 1000.0,
                duration: ms(rng, 500, 3000),
            },
        };
        faults.push(Fault { at, kind });
    }
    faults.sort_by_key(|fault| fault.at);
    faults
}

fn direction(rng: &mut SplitMix64) -> Direction {
    match rng.range(0, 3) {
        0 => Direction::FromFirst,
        1 => Direction::FromSecond,
        _ => Direction::Both,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Pending,
    /// Started at this time.
    Active(Duration),
    Done,
}

/// A fault as the injector plays it.
pub struct Injection {
    pub fault: Fault,
    phase: Phase,
    /// The hosts it acts on, resolved when it starts.
    hosts: Vec<String>,
}

impl Injection {
    pub fn new(fault: Fault) -> Injection {
        Injection {
            fault,
            phase: Phase::Pending,
            hosts: Vec::new(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether this fault kills a broker for good.
    pub fn is_for_good(&self) -> bool {
        matches!(
            self.fault.kind,
            FaultKind::CrashBroker { down_for: None, .. }
        )
    }

    /// Starts or ends the fault when its time has come.
    pub fn step(&mut self, sim: &mut turmoil::Sim<'_>, shared: &Shared, log: &Log) {
        let now = sim.elapsed();
        match self.phase {
            Phase::Pending if now >= self.fault.at => {
                self.start(sim, shared, log);
                self.phase = match self.fault.kind.duration() {
                    Some(_) => Phase::Active(now),
                    None => Phase::Done,
                };
            }
            Phase::Active(since)
                if self.fault.kind.duration().is_some_and(|d| now >= since + d) =>
            {
                self.end(sim, shared, log);
                self.phase = Phase::Done;
            }
            _ => {}
        }
    }

    fn start(&mut self, sim: &mut turmoil::Sim<'_>, shared: &Shared, log: &Log) {
        let now = sim.elapsed();
        let what = match &self.fault.kind {
            FaultKind::CrashBroker { target, down_for } => {
                let broker = resolve(*target, shared);
                let running = sim.is_host_running(broker);
                if running {
                    sim.crash(broker);
                    shared.crashed(broker, down_for.is_none());
                }
                self.hosts = vec![broker.to_owned()];
                format!(
                    "crash {broker}{}{}",
                    match down_for {
                        Some(d) => format!(" for {d:?}"),
                        None => " for good".into(),
                    },
                    if running { "" } else { " (already down)" }
                )
            }
            FaultKind::CrashStorage { down_for } => {
                let running = sim.is_host_running(STORAGE);
                if running {
                    sim.crash(STORAGE);
                }
                self.hosts = vec![STORAGE.to_owned()];
                format!(
                    "crash {STORAGE} for {down_for:?}{}",
                    if running { "" } else { " (already down)" }
                )
            }
            FaultKind::Partition {
                a, b, direction, ..
            } => {
                let (a, b) = (endpoint(*a, shared), endpoint(*b, shared));
                if a == b {
                    self.hosts.clear();
                    format!("partition {a}/{b}: same host, nothing to cut")
                } else {
                    match direction {
                        Direction::Both => sim.partition(a, b),
                        Direction::FromFirst => sim.partition_oneway(a, b),
                        Direction::FromSecond => sim.partition_oneway(b, a),
                    }
                    self.hosts = vec![a.to_owned(), b.to_owned()];
                    format!("partition {a}/{b} {direction:?}")
                }
            }
            FaultKind::Latency { max, .. } => {
                sim.set_max_message_latency(*max);
                format!("latency up to {max:?}")
            }
            FaultKind::Loss { target, rate, .. } => {
                let broker = resolve(*target, shared);
                for other in others(broker) {
                    sim.set_link_fail_rate(broker, other, *rate);
                }
                self.hosts = vec![broker.to_owned()];
                format!("loss {rate} on every link of {broker}")
            }
        };
        log.event_at(now, "sim", what);
    }

    fn end(&mut self, sim: &mut turmoil::Sim<'_>, shared: &Shared, log: &Log) {
        let now = sim.elapsed();
        let what = match &self.fault.kind {
            FaultKind::CrashBroker { .. } | FaultKind::CrashStorage { .. } => {
                let Some(host) = self.hosts.first() else {
                    return;
                };
                if sim.is_host_running(host.as_str()) {
                    format!("{host} already running")
                } else if shared.is_dead_for_good(host) {
                    format!("{host} stays dead")
                } else {
                    sim.bounce(host.as_str());
                    format!("restart {host}")
                }
            }
            FaultKind::Partition { .. } => match self.hosts.as_slice() {
                [a, b] => {
                    sim.repair(a.as_str(), b.as_str());
                    format!("repair {a}/{b}")
                }
                _ => return,
            },
            FaultKind::Latency { .. } => {
                sim.set_max_message_latency(shared.base_latency);
                "latency back to normal".into()
            }
            FaultKind::Loss { .. } => {
                let Some(broker) = self.hosts.first() else {
                    return;
                };
                for other in others(broker) {
                    sim.set_link_fail_rate(broker.as_str(), other, 0.0);
                }
                // A link the loss cut stays cut until turmoil repairs it at
                // random; repair it now.
                for other in others(broker) {
                    sim.repair(broker.as_str(), other);
                }
                format!("no more loss on {broker}")
            }
        };
        log.event_at(now, "sim", what);
    }
}

/// Every other host of the simulation.
fn others(host: &str) -> Vec<&'static str> {
    BROKERS
        .iter()
        .chain(std::iter::once(&STORAGE))
        .chain(CLIENTS.iter())
        .copied()
        .filter(|other| *other != host)
        .collect()
}

fn resolve(pick: BrokerPick, shared: &Shared) -> &'static str {
    match pick {
        BrokerPick::Index(i) => BROKERS[i % BROKERS.len()],
        BrokerPick::ServingClient(client) => BROKERS[shared.broker_of(client) % BROKERS.len()],
    }
}

fn endpoint(endpoint: Endpoint, shared: &Shared) -> &'static str {
    match endpoint {
        Endpoint::Client(client) => client,
        Endpoint::Broker(pick) => resolve(pick, shared),
        Endpoint::Storage => STORAGE,
    }
}
