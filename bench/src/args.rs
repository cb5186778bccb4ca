//! The command line, parsed by hand (a dozen `--name value` options do not
//! need a parser crate).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use easy_mqtt_core::packet::QoS;

use crate::error::{Error, Result};

pub const USAGE: &str = "\
easy-mqtt-bench: load generator for MQTT 3.1.1 brokers on this machine (loopback only)

usage: easy-mqtt-bench SCENARIO [OPTIONS]
       easy-mqtt-bench chart RESULTS.csv OUT.svg
       easy-mqtt-bench free-port

scenarios:
  conn     open --connections idle clients: connection rate, broker memory per connection
  pub      --publishers x --messages to --topic (latency = PUBLISH to PUBACK/PUBCOMP)
  sub      --subscribers on --topic until the expected messages arrived or --drain passed
  fanout   --subscribers on one topic, --publishers x --messages each
  fanin    --publishers x --messages on their own topics, --subscribers (1) on a wildcard
  pairs    --pairs publisher->subscriber pairs x --messages each

options (defaults in brackets):
  --host ADDR            broker address, loopback only [127.0.0.1]
  -p, --port PORT        broker port [1883]
  --sub-port PORT[,PORT..]  brokers of the subscribers (and of conn's clients): subscriber
                         i connects to the (i mod count)-th port [--port]
  --pub-port PORT[,PORT..]  brokers of the publishers, spread the same way [--port]
  --sub-host ADDR        address of the --sub-port brokers, loopback only [--host]
  --pub-host ADDR        address of the --pub-port brokers, loopback only [--host]
  --probe-timeout SECS   when subscribers and publishers use different brokers (cluster
                         nodes), a probe publication goes from each publishers' broker
                         until every subscriber got one, before the timed phase: the
                         subscriptions are effective on every node; limit of that wait [30]
  -q, --qos 0|1|2        QoS of publications and subscriptions [1]
  --subscribers N        subscribers [fanout 1000, fanin 1, sub 1]
  --publishers N         publishers [fanout 10, fanin 100, pub 1]
  --pairs N              pairs (sets subscribers and publishers) [500]
  --messages N           messages per publisher [fanout 100, fanin 1000, pairs 100, pub 1000]
  --size BYTES           payload size, at least 20 [64]
  --rate MSGS            total publish rate in messages/s over all publishers, 0 = unlimited [0]
  --inflight N           unacknowledged QoS 1/2 publications per publisher [64]
  --topic TOPIC          topic of pub and sub [bench/topic]; other scenarios use bench/<run id>/...
  --connections N        clients of the conn scenario [1000]
  --conn-rate N          new connections per second, 0 = as fast as --conn-concurrency allows [0]
  --conn-concurrency N   connection handshakes under way at once [100]
  --hold SECS            conn: seconds to hold the connections before sampling memory [2]
  --keep-alive SECS      CONNECT keep-alive; clients never ping, so keep it above the run [600]
  --clean-session BOOL   CONNECT clean session flag; false = persistent sessions (client ids
                         carry the run id, so every run starts with fresh sessions) [true]
  --broker-pid PID[,PID..]  sample the broker's RSS and CPU from /proc; several pids (the
                         nodes of a cluster): broker_* sums them, node_* lists each
  --timeout SECS         limit of the publish/deliver phase [120]
  --connect-timeout SECS limit of each connect, CONNACK and SUBACK [10]
  --setup-timeout SECS   limit of the whole connection phase [300]
  --drain SECS           after the publishers are done, stop once nothing (delivery, ack,
                         PUBREL) arrived for this long [3]
  --source-addrs N       bind clients to 127.0.0.1 .. 127.0.0.N, round robin [16]
  --threads N            executor threads [number of cores]
  --processes N          split the clients over N processes of this tool (fds per process) [1]
  --quiet                no progress line even on a terminal

output: a progress line on stderr each second when stderr is a terminal, then one
RESULT line of key=value pairs on stdout (probe_secs: the probe's wait). Exit status: 0 ok; 1 a connection or
protocol failure (reported); 2 usage; 3 loss at QoS 1/2 or a QoS 2 duplicate.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Conn,
    Pub,
    Sub,
    Fanout,
    Fanin,
    Pairs,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Conn => "conn",
            Scenario::Pub => "pub",
            Scenario::Sub => "sub",
            Scenario::Fanout => "fanout",
            Scenario::Fanin => "fanin",
            Scenario::Pairs => "pairs",
        }
    }

    fn parse(name: &str) -> Option<Scenario> {
        Some(match name {
            "conn" => Scenario::Conn,
            "pub" => Scenario::Pub,
            "sub" => Scenario::Sub,
            "fanout" => Scenario::Fanout,
            "fanin" => Scenario::Fanin,
            "pairs" => Scenario::Pairs,
            _ => return None,
        })
    }
}

/// Everything one run needs. [`Options::new`] gives a scenario's defaults.
#[derive(Debug, Clone)]
pub struct Options {
    pub scenario: Scenario,
    /// The broker of every client unless `sub_targets`/`pub_targets` say
    /// otherwise.
    pub target: SocketAddr,
    /// Brokers of the subscribers (and idle clients), round robin; empty =
    /// `target`.
    pub sub_targets: Vec<SocketAddr>,
    /// Brokers of the publishers, round robin; empty = `target`.
    pub pub_targets: Vec<SocketAddr>,
    /// Limit of the wait for the probe publications (see [`Options::probes`]).
    pub probe_timeout: Duration,
    pub qos: QoS,
    pub subscribers: usize,
    pub publishers: usize,
    pub messages: u32,
    pub size: usize,
    pub rate: f64,
    pub inflight: u16,
    pub topic: String,
    pub connections: usize,
    pub conn_rate: f64,
    pub conn_concurrency: usize,
    pub hold: Duration,
    pub keep_alive: u16,
    /// The CONNECT's clean session flag (false: persistent sessions).
    pub clean_session: bool,
    /// Broker processes sampled from /proc (a cluster: one per node).
    pub broker_pids: Vec<u32>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub setup_timeout: Duration,
    pub drain: Duration,
    pub source_addrs: u8,
    pub threads: usize,
    pub processes: usize,
    /// Set in a child process: `(index, count)`.
    pub shard: Option<(usize, usize)>,
    /// Names topics and client ids, so that runs do not meet.
    pub run_id: String,
    pub progress: bool,
}

pub enum Command {
    Run(Box<Options>),
    Chart { csv: String, svg: String },
    FreePort,
    Help,
}

impl Options {
    pub fn new(scenario: Scenario, target: SocketAddr) -> Options {
        let (subscribers, publishers, messages) = match scenario {
            Scenario::Conn => (0, 0, 0),
            Scenario::Pub => (0, 1, 1000),
            Scenario::Sub => (1, 0, 0),
            Scenario::Fanout => (1000, 10, 100),
            Scenario::Fanin => (1, 100, 1000),
            Scenario::Pairs => (500, 500, 100),
        };
        Options {
            scenario,
            target,
            sub_targets: Vec::new(),
            pub_targets: Vec::new(),
            probe_timeout: Duration::from_secs(30),
            qos: QoS::AtLeastOnce,
            subscribers,
            publishers,
            messages,
            size: 64,
            rate: 0.0,
            inflight: 64,
            topic: "bench/topic".to_owned(),
            connections: 1000,
            conn_rate: 0.0,
            conn_concurrency: 100,
            hold: Duration::from_secs(2),
            keep_alive: 600,
            clean_session: true,
            broker_pids: Vec::new(),
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            setup_timeout: Duration::from_secs(300),
            drain: Duration::from_secs(3),
            source_addrs: 16,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            processes: 1,
            shard: None,
            run_id: default_run_id(),
            progress: true,
        }
    }

    /// Source address of client number `index`: 127.0.0.1 + index mod N.
    pub fn source_addr(&self, index: usize) -> Ipv4Addr {
        let n = usize::from(self.source_addrs.max(1));
        Ipv4Addr::new(127, 0, 0, 1 + (index % n) as u8)
    }

    /// The broker of subscriber (or idle client) number `index`.
    pub fn sub_target(&self, index: usize) -> SocketAddr {
        spread(&self.sub_targets, index).unwrap_or(self.target)
    }

    /// The broker of publisher number `index`.
    pub fn pub_target(&self, index: usize) -> SocketAddr {
        spread(&self.pub_targets, index).unwrap_or(self.target)
    }

    /// The distinct brokers the publishers of the run use, in order of first
    /// use.
    pub fn publisher_brokers(&self) -> Vec<SocketAddr> {
        let mut brokers = Vec::new();
        // Round robin: the first list's length of publishers use them all.
        let used = self.local_publishers().min(self.pub_targets.len().max(1));
        for index in 0..used {
            let target = self.pub_target(index);
            if !brokers.contains(&target) {
                brokers.push(target);
            }
        }
        brokers
    }

    /// The brokers that probe publications go through before the timed
    /// phase: every publishers' broker when a publication may cross from
    /// one broker to another (a cluster), so that the run starts only once
    /// every subscription is effective where it is published to; none when
    /// every client uses the same broker (a SUBACK is enough there).
    pub fn probes(&self) -> Vec<SocketAddr> {
        if self.subscribers == 0 || matches!(self.scenario, Scenario::Conn | Scenario::Sub) {
            return Vec::new();
        }
        let brokers = self.publisher_brokers();
        let subs = self.subscribers.min(self.sub_targets.len().max(1));
        let crossing = (0..subs).any(|i| brokers.iter().any(|&b| b != self.sub_target(i)));
        if crossing { brokers } else { Vec::new() }
    }

    /// Deliveries the subscribers should see in all (0 when unknown).
    pub fn expected_deliveries(&self) -> u64 {
        let per_source = u64::from(self.messages);
        match self.scenario {
            Scenario::Conn | Scenario::Pub => 0,
            Scenario::Pairs => self.subscribers as u64 * per_source,
            Scenario::Fanout | Scenario::Fanin | Scenario::Sub => {
                self.subscribers as u64 * self.publishers as u64 * per_source
            }
        }
    }

    /// Clients that publish in this process (`sub` has none: its publishers
    /// are another process).
    pub fn local_publishers(&self) -> usize {
        match self.scenario {
            Scenario::Conn | Scenario::Sub => 0,
            _ => self.publishers,
        }
    }

    pub fn is_mine(&self, index: usize) -> bool {
        match self.shard {
            Some((shard, count)) => index % count == shard,
            None => true,
        }
    }

    /// The arguments that reproduce these options in a child process.
    pub fn child_args(&self, shard: usize) -> Vec<String> {
        let mut args = vec![
            self.scenario.name().to_owned(),
            "--host".into(),
            self.target.ip().to_string(),
            "--port".into(),
            self.target.port().to_string(),
            "--qos".into(),
            (self.qos as u8).to_string(),
            "--subscribers".into(),
            self.subscribers.to_string(),
            "--publishers".into(),
            self.publishers.to_string(),
            "--messages".into(),
            self.messages.to_string(),
            "--size".into(),
            self.size.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "--inflight".into(),
            self.inflight.to_string(),
            "--topic".into(),
            self.topic.clone(),
            "--connections".into(),
            self.connections.to_string(),
            "--conn-rate".into(),
            (self.conn_rate / self.processes.max(1) as f64).to_string(),
            "--conn-concurrency".into(),
            self.conn_concurrency
                .div_ceil(self.processes.max(1))
                .to_string(),
            "--keep-alive".into(),
            self.keep_alive.to_string(),
            "--clean-session".into(),
            self.clean_session.to_string(),
            "--timeout".into(),
            // The parent stops the children; this is their own safety net.
            (self.timeout.as_secs_f64() + 30.0).to_string(),
            "--connect-timeout".into(),
            self.connect_timeout.as_secs_f64().to_string(),
            "--setup-timeout".into(),
            self.setup_timeout.as_secs_f64().to_string(),
            "--drain".into(),
            self.drain.as_secs_f64().to_string(),
            "--source-addrs".into(),
            self.source_addrs.to_string(),
            "--threads".into(),
            self.threads.to_string(),
            "--run-id".into(),
            self.run_id.clone(),
            "--shard".into(),
            format!("{shard}/{}", self.processes),
            "--quiet".into(),
        ];
        // Ports joined; the host of a list is the host of its first entry
        // (all of a list share one host, see `parse`).
        for (name, host, list) in [
            ("--sub", "--sub-host", &self.sub_targets),
            ("--pub", "--pub-host", &self.pub_targets),
        ] {
            if let Some(first) = list.first() {
                let ports: Vec<String> = list.iter().map(|t| t.port().to_string()).collect();
                args.extend([
                    host.to_owned(),
                    first.ip().to_string(),
                    format!("{name}-port"),
                    ports.join(","),
                ]);
            }
        }
        args.extend([
            "--probe-timeout".to_owned(),
            self.probe_timeout.as_secs_f64().to_string(),
        ]);
        // --rate stays the total: each publisher, in whatever process, runs
        // at rate / publishers.
        args
    }
}

/// The `index`-th client's pick from `list`, round robin (`None`: empty).
fn spread(list: &[SocketAddr], index: usize) -> Option<SocketAddr> {
    list.get(index.checked_rem(list.len())?).copied()
}

fn default_run_id() -> String {
    let nanos = crate::clock::now_ns();
    format!(
        "{:06x}",
        (nanos ^ (u64::from(std::process::id()) << 20)) & 0xFF_FFFF
    )
}

fn value<'a>(
    name: &str,
    inline: Option<&'a str>,
    rest: &mut impl Iterator<Item = &'a str>,
) -> Result<&'a str> {
    inline
        .or_else(|| rest.next())
        .ok_or_else(|| Error::new(format!("{name} needs a value")))
}

fn number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T> {
    text.parse()
        .map_err(|_| Error::new(format!("{name}: '{text}' is not a valid number")))
}

fn seconds(name: &str, text: &str) -> Result<Duration> {
    let secs: f64 = number(name, text)?;
    if !(0.0..=1e6).contains(&secs) {
        return Err(Error::new(format!(
            "{name}: '{text}' is not a duration in seconds"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A comma-separated list of ports (at most 64, none 0).
fn ports(name: &str, text: &str) -> Result<Vec<u16>> {
    let ports = text
        .split(',')
        .map(|p| number::<u16>(name, p.trim()))
        .collect::<Result<Vec<u16>>>()?;
    if ports.len() > 64 || ports.contains(&0) {
        return Err(Error::new(format!(
            "{name}: '{text}' must be 1 to 64 ports, none 0"
        )));
    }
    Ok(ports)
}

/// The broker address: loopback only (127.0.0.0/8, ::1 or localhost).
pub fn loopback(host: &str) -> Result<IpAddr> {
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| Error::new(format!("--host: '{host}' is not an IP address")))?
    };
    if !ip.is_loopback() {
        return Err(Error::new(format!(
            "--host {ip}: only loopback addresses (127.0.0.0/8, ::1) may be targeted"
        )));
    }
    if ip.is_ipv6() {
        return Err(Error::new(
            "--host: IPv6 is not supported (clients bind to 127.0.0.x)",
        ));
    }
    Ok(ip)
}

pub fn parse(args: &[String]) -> Result<Command> {
    let mut iter = args.iter().map(String::as_str);
    let Some(first) = iter.next() else {
        return Err(Error::new("a scenario is needed"));
    };
    match first {
        "-h" | "--help" | "help" => return Ok(Command::Help),
        "free-port" => return Ok(Command::FreePort),
        "chart" => {
            let (Some(csv), Some(svg), None) = (iter.next(), iter.next(), iter.next()) else {
                return Err(Error::new(
                    "usage: easy-mqtt-bench chart RESULTS.csv OUT.svg",
                ));
            };
            return Ok(Command::Chart {
                csv: csv.to_owned(),
                svg: svg.to_owned(),
            });
        }
        _ => {}
    }
    let scenario =
        Scenario::parse(first).ok_or_else(|| Error::new(format!("unknown scenario '{first}'")))?;
    let mut o = Options::new(scenario, SocketAddr::from((Ipv4Addr::LOCALHOST, 1883)));
    let mut host = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut port = 1883u16;
    let (mut sub_host, mut pub_host) = (None, None);
    let (mut sub_ports, mut pub_ports): (Option<Vec<u16>>, Option<Vec<u16>>) = (None, None);
    while let Some(arg) = iter.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, v)) if name.starts_with("--") => (name, Some(v)),
            _ => (arg, None),
        };
        let mut v = || value(name, inline, &mut iter);
        match name {
            "-h" | "--help" => return Ok(Command::Help),
            "--host" => host = loopback(v()?)?,
            "-p" | "--port" => port = number(name, v()?)?,
            "--sub-host" => sub_host = Some(loopback(v()?)?),
            "--pub-host" => pub_host = Some(loopback(v()?)?),
            "--sub-port" => sub_ports = Some(ports(name, v()?)?),
            "--pub-port" => pub_ports = Some(ports(name, v()?)?),
            "--probe-timeout" => o.probe_timeout = seconds(name, v()?)?,
            "-q" | "--qos" => {
                let text = v()?;
                o.qos = number::<u8>(name, text)
                    .ok()
                    .and_then(QoS::from_u8)
                    .ok_or_else(|| Error::new(format!("{name}: '{text}' is not 0, 1 or 2")))?;
            }
            "--subscribers" => o.subscribers = number(name, v()?)?,
            "--publishers" => o.publishers = number(name, v()?)?,
            "--pairs" => {
                o.subscribers = number(name, v()?)?;
                o.publishers = o.subscribers;
            }
            "--messages" => o.messages = number(name, v()?)?,
            "--size" => o.size = number(name, v()?)?,
            "--rate" => o.rate = number(name, v()?)?,
            "--inflight" => o.inflight = number(name, v()?)?,
            "--topic" => o.topic = v()?.to_owned(),
            "--connections" => o.connections = number(name, v()?)?,
            "--conn-rate" => o.conn_rate = number(name, v()?)?,
            "--conn-concurrency" => o.conn_concurrency = number(name, v()?)?,
            "--hold" => o.hold = seconds(name, v()?)?,
            "--keep-alive" => o.keep_alive = number(name, v()?)?,
            "--clean-session" => {
                let text = v()?;
                o.clean_session = match text {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(Error::new(format!("{name}: '{text}' is not true or false")));
                    }
                };
            }
            "--broker-pid" => {
                let text = v()?;
                o.broker_pids = text
                    .split(',')
                    .map(|p| number(name, p.trim()))
                    .collect::<Result<_>>()?;
            }
            "--timeout" => o.timeout = seconds(name, v()?)?,
            "--connect-timeout" => o.connect_timeout = seconds(name, v()?)?,
            "--setup-timeout" => o.setup_timeout = seconds(name, v()?)?,
            "--drain" => o.drain = seconds(name, v()?)?,
            "--source-addrs" => o.source_addrs = number(name, v()?)?,
            "--threads" => o.threads = number(name, v()?)?,
            "--processes" => o.processes = number(name, v()?)?,
            "--run-id" => o.run_id = v()?.to_owned(),
            "--shard" => {
                let text = v()?;
                let shard = text
                    .split_once('/')
                    .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)))
                    .filter(|&(i, n): &(usize, usize)| i < n)
                    .ok_or_else(|| Error::new(format!("--shard: '{text}' is not I/N")))?;
                o.shard = Some(shard);
            }
            "--quiet" => o.progress = false,
            other => return Err(Error::new(format!("unknown option '{other}'"))),
        }
    }
    o.target = SocketAddr::new(host, port);
    // A host alone moves its clients to that host on --port.
    let list = |h: Option<IpAddr>, p: Option<Vec<u16>>| -> Vec<SocketAddr> {
        if h.is_none() && p.is_none() {
            return Vec::new();
        }
        let h = h.unwrap_or(host);
        p.unwrap_or_else(|| vec![port])
            .into_iter()
            .map(|p| SocketAddr::new(h, p))
            .collect()
    };
    o.sub_targets = list(sub_host, sub_ports);
    o.pub_targets = list(pub_host, pub_ports);
    validate(&o)?;
    Ok(Command::Run(Box::new(o)))
}

fn validate(o: &Options) -> Result<()> {
    let fail = |m: &str| Err(Error::new(m.to_owned()));
    if o.size < crate::payload::HEADER_LEN {
        return fail("--size must be at least 20 (the payload carries a 20-byte stamp)");
    }
    let valid_rate = |r: f64| r.is_finite() && r >= 0.0;
    if !valid_rate(o.rate) || !valid_rate(o.conn_rate) {
        return fail("--rate and --conn-rate must be finite and not negative");
    }
    if o.inflight == 0 || o.inflight == u16::MAX {
        return fail("--inflight must be from 1 to 65534");
    }
    if o.conn_concurrency == 0 || o.threads == 0 || o.processes == 0 || o.source_addrs == 0 {
        return fail(
            "--conn-concurrency, --threads, --processes and --source-addrs must be at least 1",
        );
    }
    if o.processes > 64 {
        return fail("--processes: at most 64");
    }
    if o.target.port() == 0 {
        return fail("--port must not be 0");
    }
    match o.scenario {
        Scenario::Pairs if o.subscribers != o.publishers => {
            fail("pairs: --subscribers and --publishers must be equal (use --pairs)")
        }
        Scenario::Fanout | Scenario::Fanin | Scenario::Pairs
            if o.subscribers == 0 || o.publishers == 0 || o.messages == 0 =>
        {
            fail("--subscribers, --publishers and --messages must be at least 1")
        }
        Scenario::Pub if o.publishers == 0 || o.messages == 0 => {
            fail("pub: --publishers and --messages must be at least 1")
        }
        Scenario::Sub if o.subscribers == 0 => fail("sub: --subscribers must be at least 1"),
        Scenario::Conn if o.connections == 0 => fail("conn: --connections must be at least 1"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&args)? {
            Command::Run(options) => Ok(*options),
            _ => Err(Error::new("not a run")),
        }
    }

    #[test]
    fn scenario_defaults_and_overrides() {
        let o = run(&["fanout", "-p", "1884", "--qos=2", "--subscribers", "5"]).ok();
        let o = o.as_ref();
        assert_eq!(o.map(|o| o.target.port()), Some(1884));
        assert_eq!(o.map(|o| o.qos), Some(QoS::ExactlyOnce));
        assert_eq!(o.map(|o| o.expected_deliveries()), Some(5 * 10 * 100));
        let pairs = run(&["pairs", "--pairs", "7", "--messages", "3"]).ok();
        assert_eq!(pairs.map(|o| o.expected_deliveries()), Some(21));
    }

    #[test]
    fn refuses_non_loopback_and_bad_values() {
        assert!(run(&["fanout", "--host", "10.0.0.1"]).is_err());
        assert!(run(&["fanout", "--host", "192.168.1.1"]).is_err());
        assert!(run(&["fanout", "--host", "127.0.0.5"]).is_ok());
        assert!(run(&["fanout", "--qos", "3"]).is_err());
        assert!(run(&["fanout", "--size", "8"]).is_err());
        assert!(run(&["fanout", "--bogus"]).is_err());
        assert!(run(&["pairs", "--subscribers", "3"]).is_err());
        assert!(run(&["nothing"]).is_err());
        assert!(run(&["fanout", "--clean-session", "maybe"]).is_err());
        let persistent = run(&["fanout", "--clean-session", "false"]).ok();
        assert_eq!(persistent.map(|o| o.clean_session), Some(false));
        assert_eq!(run(&["fanout"]).ok().map(|o| o.clean_session), Some(true));
    }

    #[test]
    fn subscribers_and_publishers_spread_over_brokers() {
        let at = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        // Unchanged without the new flags: everyone on --port, no probe.
        let plain = run(&["fanout", "-p", "1884"]).ok();
        let plain = plain.as_ref();
        assert_eq!(plain.map(|o| o.sub_target(7)), Some(at(1884)));
        assert_eq!(plain.map(|o| o.pub_target(3)), Some(at(1884)));
        assert_eq!(plain.map(|o| o.probes().is_empty()), Some(true));

        // Subscribers on one node, publishers on another: a probe through
        // the publishers' node.
        let split = run(&["fanout", "--sub-port", "2001", "--pub-port=2002"]).ok();
        let split = split.as_ref();
        assert_eq!(split.map(|o| o.sub_target(999)), Some(at(2001)));
        assert_eq!(split.map(|o| o.pub_target(9)), Some(at(2002)));
        assert_eq!(split.map(|o| o.probes()), Some(vec![at(2002)]));

        // Lists: round robin by client index.
        let spread = run(&[
            "fanout",
            "--sub-port",
            "2001,2002,2003",
            "--pub-port",
            "2002,2001",
            "--publishers",
            "5",
        ])
        .ok();
        let spread = spread.as_ref();
        let subs: Vec<u16> = (0..4)
            .filter_map(|i| spread.map(|o| o.sub_target(i).port()))
            .collect();
        assert_eq!(subs, [2001, 2002, 2003, 2001]);
        let pubs: Vec<u16> = (0..3)
            .filter_map(|i| spread.map(|o| o.pub_target(i).port()))
            .collect();
        assert_eq!(pubs, [2002, 2001, 2002]);
        assert_eq!(spread.map(|o| o.probes()), Some(vec![at(2002), at(2001)]));

        // One publisher uses only the first of its list's brokers.
        let one = run(&["fanout", "--pub-port", "2002,2003", "--publishers", "1"]).ok();
        assert_eq!(one.map(|o| o.publisher_brokers()), Some(vec![at(2002)]));

        // Both lists the same single broker: no probe. sub has no
        // publishers here: none either.
        let same = run(&["fanout", "--sub-port", "2001", "--pub-port", "2001"]).ok();
        assert_eq!(same.map(|o| o.probes().is_empty()), Some(true));
        let sub = run(&["sub", "--sub-port", "2001", "--pub-port", "2002"]).ok();
        assert_eq!(sub.map(|o| o.probes().is_empty()), Some(true));

        // A host alone moves its clients to that host on --port.
        let hosts = run(&["fanout", "-p", "2005", "--pub-host", "127.0.0.2"]).ok();
        assert_eq!(
            hosts.map(|o| o.pub_target(0)),
            Some(SocketAddr::from(([127, 0, 0, 2], 2005)))
        );

        assert!(run(&["fanout", "--sub-port", "2001,0"]).is_err());
        assert!(run(&["fanout", "--pub-port", "2001,x"]).is_err());
        assert!(run(&["fanout", "--pub-port", ""]).is_err());
        assert!(run(&["fanout", "--sub-host", "10.0.0.1"]).is_err());
        let pids = run(&["fanout", "--broker-pid", "10,20"]).ok();
        assert_eq!(pids.map(|o| o.broker_pids), Some(vec![10, 20]));
    }

    #[test]
    fn child_args_round_trip() {
        let mut o = Options::new(
            Scenario::Fanout,
            SocketAddr::from((Ipv4Addr::LOCALHOST, 2000)),
        );
        o.processes = 2;
        o.subscribers = 19_500;
        o.clean_session = false;
        o.sub_targets = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 2001))];
        o.pub_targets = vec![
            SocketAddr::from((Ipv4Addr::LOCALHOST, 2002)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 2003)),
        ];
        o.probe_timeout = Duration::from_millis(1500);
        let child = run(&o
            .child_args(1)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>())
        .ok();
        assert_eq!(child.as_ref().map(|c| c.shard), Some(Some((1, 2))));
        assert_eq!(child.as_ref().map(|c| c.subscribers), Some(19_500));
        assert_eq!(child.as_ref().map(|c| c.clean_session), Some(false));
        assert_eq!(
            child.as_ref().map(|c| c.sub_targets.clone()),
            Some(o.sub_targets.clone())
        );
        assert_eq!(
            child.as_ref().map(|c| c.pub_targets.clone()),
            Some(o.pub_targets.clone())
        );
        assert_eq!(
            child.as_ref().map(|c| c.probe_timeout),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(child.map(|c| c.run_id), Some(o.run_id));
    }
}
