//! The client hosts of the cluster scenario. Each goes through a load
//! balancer: it connects to a broker chosen by the seed and, whenever a
//! connection fails or is lost, to the next one.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use easy_mqtt_core::{LastWill, QoS};
use tokio::time::Instant;

use crate::client::{Client, ClientOptions};
use crate::trace::Log;

use super::{BROKERS, Shared, SubReport, WillReport};

/// Clients give up on a connection after this long without hearing from
/// the broker (and ping after half of it).
pub const KEEP_ALIVE: u16 = 2;
/// When the will client disconnects (virtual time since the start): every
/// fault is over by 21 s, and an adoption takes the node time to live.
pub const WILL_CLIENT_END: Duration = Duration::from_secs(25);
/// How long publishers wait after the subscribers' SUBACKs.
pub const ROUTE_SETTLE: Duration = Duration::from_millis(1500);
/// The will client, once its connection is lost, waits this long before
/// it connects again, so the fate of its will (published by its node, or
/// by the node adopting it) is decided first.
pub const WILL_RECONNECT_DELAY: Duration = Duration::from_secs(8);

fn broker_addr(index: usize) -> String {
    format!(
        "{}:{}",
        BROKERS[index % BROKERS.len()],
        crate::broker_host::MQTT_PORT
    )
}

/// A client of the scenario with its load balancer.
pub struct LbClient {
    pub name: &'static str,
    pub client: Client,
    broker: usize,
    shared: Rc<Shared>,
    /// The will of each CONNECT sent, given the number the connection will
    /// have and the attempt: a CONNECT whose CONNACK the client never saw
    /// may still have been accepted, and its will is then published when
    /// the broker sees the connection go, so no two attempts share one.
    will_of: Option<fn(u32, u32) -> LastWill>,
    /// The CONNECT attempt that made the current connection.
    connected_attempt: u32,
}

impl LbClient {
    pub fn new(name: &'static str, clean_session: bool, shared: Rc<Shared>, log: Log) -> LbClient {
        let broker = shared.broker_of(name);
        let options = ClientOptions {
            client_id: name.into(),
            clean_session,
            keep_alive: KEEP_ALIVE,
            io_timeout: Duration::from_secs(1),
            will: None,
        };
        LbClient {
            name,
            client: Client::new(name, &broker_addr(broker), options, log),
            broker,
            shared,
            will_of: None,
            connected_attempt: 0,
        }
    }

    /// Connects until it works, moving to the next broker after each
    /// failure; returns `session_present`.
    pub async fn connect(&mut self) -> bool {
        self.shared.set_connected(self.name, None);
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(will_of) = self.will_of {
                let will = will_of(self.client.connections() + 1, attempt);
                self.client.set_will(Some(will));
            }
            self.client.set_broker(&broker_addr(self.broker));
            self.shared.set_broker(self.name, self.broker);
            match self.client.connect().await {
                Ok(present) => {
                    self.connected_attempt = attempt;
                    self.shared
                        .set_connected(self.name, Some((self.broker, self.client.connections())));
                    return present;
                }
                Err(error) => {
                    self.client.log_event(format_args!(
                        "connect to {} failed: {error}",
                        self.client.broker()
                    ));
                    self.broker = (self.broker + 1) % BROKERS.len();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// The connection was lost: the next connect goes to another broker.
    pub async fn reconnect(&mut self) -> bool {
        self.shared.set_connected(self.name, None);
        self.broker = (self.broker + 1) % BROKERS.len();
        self.connect().await
    }

    /// Serves the connection until `until`, reconnecting when it is lost.
    pub async fn run_until(&mut self, until: Instant) -> u32 {
        let mut losses = 0;
        while Instant::now() < until {
            if self.client.run_until(until).await.is_err() {
                losses += 1;
                self.reconnect().await;
            }
        }
        losses
    }

    /// Waits until every outbound flow is complete (or `give_up`).
    pub async fn drain(&mut self, give_up: Instant) -> bool {
        while Instant::now() < give_up {
            match self.client.drain_outbound(give_up).await {
                Ok(done) => return done,
                Err(_) => {
                    self.reconnect().await;
                }
            }
        }
        false
    }

    pub async fn disconnect(&mut self) -> bool {
        let sent = self.client.disconnect().await.is_ok();
        self.shared.set_connected(self.name, None);
        sent
    }
}

/// The messages of a publisher: `(topic, qos)` of message `seq`.
pub fn plan(publisher: &str, seq: u32) -> (&'static str, QoS) {
    if publisher == "p1" {
        let qos = [QoS::AtLeastOnce, QoS::ExactlyOnce][seq as usize % 2];
        ("m/p1", qos)
    } else {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][seq as usize % 3];
        ("m/p2", qos)
    }
}

pub fn payload(publisher: &str, seq: u32) -> Bytes {
    Bytes::from(format!("{publisher}:{seq}"))
}

/// A publisher: `p1` keeps a persistent session and also sets and clears
/// retained messages; `p2` has a clean session (what is not acknowledged
/// when its connection drops is lost, by design).
pub async fn publisher(
    name: &'static str,
    messages: u32,
    interval: Duration,
    shared: Rc<Shared>,
    log: Log,
) -> turmoil::Result {
    let persistent = name == "p1";
    let mut lb = LbClient::new(name, !persistent, shared.clone(), log);
    tokio::time::sleep(Duration::from_millis(300)).await;
    lb.connect().await;
    while !shared.subscribers_ready() {
        let until = Instant::now() + Duration::from_millis(20);
        lb.run_until(until).await;
    }
    // Other nodes learn of a new subscription within `route_refresh` (1 s,
    // sooner through the bus): a message published on another node before
    // then may miss it (see the cluster's `routes.rs`).
    lb.run_until(Instant::now() + ROUTE_SETTLE).await;
    let give_up = Instant::now() + Duration::from_secs(40);
    for seq in 0..messages {
        while lb.client.outbound_len() >= 4 {
            if lb.client.poll(None).await.is_err() {
                lb.reconnect().await;
            }
        }
        let (topic, qos) = plan(name, seq);
        let body = payload(name, seq);
        shared.published(body.clone(), topic, qos);
        lb.client
            .log_event(format_args!("publish {topic} q{} {body:?}", qos as u8));
        if lb.client.publish(topic, body, qos).await.is_err() {
            lb.reconnect().await;
        }
        if persistent && (seq + 1).is_multiple_of(5) {
            retained(&mut lb, seq, messages, give_up, &shared).await;
        }
        let next = Instant::now() + interval;
        lb.run_until(next).await;
    }
    let drained = lb.drain(give_up).await;
    lb.disconnect().await;
    shared.publisher_done(name, lb.client.acknowledged(), drained);
    Ok(())
}

/// Sets `r/<k>` (or clears `r/1` with the last one, on odd seeds) and
/// waits for the acknowledgement, so that retained writes of one topic
/// never overlap and the last acknowledged one is what must remain.
async fn retained(lb: &mut LbClient, seq: u32, messages: u32, give_up: Instant, shared: &Shared) {
    if !lb.drain(give_up).await {
        return;
    }
    let topic = if (seq / 5).is_multiple_of(2) {
        "r/0"
    } else {
        "r/1"
    };
    let clear = topic == "r/1" && seq + 5 >= messages && shared.clear_retained;
    let body = if clear {
        Bytes::new()
    } else {
        Bytes::from(format!("p1:r{seq}"))
    };
    lb.client
        .log_event(format_args!("publish retained {topic} {body:?}"));
    shared.retained_sent(topic, (!body.is_empty()).then(|| body.clone()));
    if lb
        .client
        .publish_with(topic, body.clone(), QoS::AtLeastOnce, true)
        .await
        .is_err()
    {
        lb.reconnect().await;
    }
    if lb.drain(give_up).await {
        shared.retained_acked(topic);
    }
}

/// What each persistent subscriber subscribes to.
pub fn subscriptions(name: &str) -> Vec<(&'static str, QoS)> {
    if name == "s1" {
        vec![("m/#", QoS::ExactlyOnce)]
    } else {
        vec![("m/+", QoS::AtLeastOnce), ("w/#", QoS::ExactlyOnce)]
    }
}

/// A persistent subscriber: stays until it has every acknowledged message
/// of both publishers (and, for `s2`, the will client is done), lingers
/// 1 s for late duplicates, and disconnects; gives up after 45 s.
pub async fn subscriber(name: &'static str, shared: Rc<Shared>, log: Log) -> turmoil::Result {
    let mut lb = LbClient::new(name, false, shared.clone(), log);
    let mut report = SubReport::default();
    lb.connect().await;
    let filters = subscriptions(name);
    loop {
        match lb.client.subscribe(&filters).await {
            Ok(codes) => {
                report.suback = codes;
                break;
            }
            Err(_) => {
                lb.reconnect().await;
            }
        }
    }
    shared.subscriber_ready();
    let give_up = Instant::now() + Duration::from_secs(45);
    let mut linger_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if linger_until.is_none() && shared.has_everything(name, lb.client.received()) {
            linger_until = Some(now + Duration::from_secs(1));
        }
        if linger_until.is_some_and(|t| now >= t) || now >= give_up {
            break;
        }
        let until = linger_until
            .unwrap_or(give_up)
            .min(now + Duration::from_millis(100));
        report.link_losses += lb.run_until(until).await;
    }
    lb.disconnect().await;
    report.received = lb.client.received().to_vec();
    shared.subscriber_done(name, report);
    Ok(())
}

/// The will of the will client's `attempt`-th CONNECT for its connection
/// `n`: `will:w1:<n>.<attempt>`.
fn will_of_attempt(n: u32, attempt: u32) -> LastWill {
    LastWill {
        topic: "w/w1".into(),
        payload: Bytes::from(format!("will:w1:{n}.{attempt}")),
        qos: QoS::ExactlyOnce,
        retain: false,
    }
}

/// The will client: a clean session whose will names its connection and
/// the CONNECT attempt (`will:w1:<n>.<attempt>`), connected from when `s2`
/// watches `w/#` until [`WILL_CLIENT_END`].
/// A lost connection is replaced after [`WILL_RECONNECT_DELAY`].
pub async fn will_client(shared: Rc<Shared>, log: Log) -> turmoil::Result {
    let name = "w1";
    let mut lb = LbClient::new(name, true, shared.clone(), log);
    lb.will_of = Some(will_of_attempt);
    while !shared.subscribers_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = turmoil::sim_elapsed().unwrap_or_default();
    let end = Instant::now() + WILL_CLIENT_END.saturating_sub(elapsed);
    let mut report = WillReport::default();
    loop {
        lb.connect().await;
        shared.will_attempt(lb.client.connections(), lb.connected_attempt);
        while Instant::now() < end {
            if lb.client.run_until(end).await.is_err() {
                break;
            }
        }
        if Instant::now() >= end {
            break;
        }
        shared.set_connected(name, None);
        report.lost.push(lb.client.connections());
        tokio::time::sleep(WILL_RECONNECT_DELAY).await;
    }
    report.connections = lb.client.connections();
    report.clean_disconnect = lb.client.is_connected() && lb.disconnect().await;
    shared.will_done(report);
    Ok(())
}
