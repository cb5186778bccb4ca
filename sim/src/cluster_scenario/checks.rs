//! The invariants of the cluster scenario.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use easy_mqtt_core::storage::Storage;
use easy_mqtt_core::{QoS, SubscribeReturnCode};
use easy_mqtt_server::metrics::Metrics;
use easy_mqtt_storage_memory::MemoryStorage;

use crate::broker_host::SimNode;
use crate::storage_host::Exchange;
use crate::trace::Log;

use super::clients::subscriptions;
use super::{CLIENTS, ClusterScenario, MAX_QUEUED, Shared};

/// Violations of one kind beyond this many are counted, not listed.
const MAX_LISTED: usize = 5;
/// Requests and answers the exchange may hold at the end.
const MAX_EXCHANGE: usize = 10_000;

/// "Never two live connections for one client id", sampled while the
/// simulation runs.
#[derive(Debug, Default)]
pub struct OwnerCheck {
    pub violations: Vec<String>,
    found: usize,
}

impl OwnerCheck {
    pub fn check(&mut self, at: Duration, nodes: &BTreeMap<&'static str, Arc<SimNode>>, log: &Log) {
        let mut live: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for (host, node) in nodes {
            let (clients, _) = node.clients_page("", None, 64);
            for client in clients.into_iter().filter(|c| c.connected) {
                live.entry(client.client_id.to_string())
                    .or_default()
                    .push(*host);
            }
        }
        for (client_id, hosts) in live.into_iter().filter(|(_, h)| h.len() > 1) {
            self.found += 1;
            let what = format!(
                "at {:.3}s client {client_id} has live connections on {hosts:?}",
                at.as_secs_f64()
            );
            log.event_at(at, "check", &what);
            if self.found <= MAX_LISTED {
                self.violations.push(what);
            }
        }
    }
}

/// The checks after the run.
pub struct End<'a> {
    pub config: &'a ClusterScenario,
    pub shared: &'a Shared,
    pub backend: &'a Arc<MemoryStorage>,
    pub exchange: &'a Arc<Exchange>,
}

impl End<'_> {
    pub fn check(&self, violations: &mut Vec<String>, log: &Log, at: Duration) {
        self.messages(violations);
        self.wills(violations);
        self.retained(violations);
        self.memory(violations, log, at);
    }

    /// Acknowledged messages arrive, QoS 2 ones once, nothing unpublished.
    fn messages(&self, violations: &mut Vec<String>) {
        let shared = self.shared;
        let acked = shared.acked.borrow();
        for publisher in ["p1", "p2"] {
            match acked.get(publisher) {
                None => violations.push(format!("publisher {publisher} never finished")),
                Some((_, false)) => violations.push(format!(
                    "publisher {publisher} could not complete its flows"
                )),
                Some(_) => {}
            }
        }
        let must_arrive = shared.must_arrive(&acked);
        let published = shared.published.borrow();
        let subs = shared.subs.borrow();
        for name in ["s1", "s2"] {
            let Some(report) = subs.get(name) else {
                violations.push(format!("subscriber {name} never finished"));
                continue;
            };
            let filters = subscriptions(name);
            let granted: Vec<SubscribeReturnCode> = filters
                .iter()
                .map(|(_, qos)| SubscribeReturnCode::Granted(*qos))
                .collect();
            if report.suback != granted {
                violations.push(format!("{name}: SUBACK {:?}", report.suback));
            }
            let mut qos2: BTreeMap<&Bytes, u32> = BTreeMap::new();
            let mut listed = 0;
            for message in &report.received {
                let what = format!(
                    "{name} received {} q{} {:?} (connection {})",
                    message.topic,
                    message.qos as u8,
                    String::from_utf8_lossy(&message.payload),
                    message.connection
                );
                let expected = if message.topic.starts_with("w/") {
                    (message.payload.starts_with(b"will:w1:") && message.topic == "w/w1")
                        .then_some(QoS::ExactlyOnce)
                } else {
                    published.get(&message.payload).and_then(|(topic, qos)| {
                        (*topic == message.topic).then(|| {
                            let best = if name == "s1" {
                                QoS::ExactlyOnce
                            } else {
                                QoS::AtLeastOnce
                            };
                            (*qos).min(best)
                        })
                    })
                };
                let problem = match expected {
                    None => Some("never published"),
                    Some(qos) if qos != message.qos => Some("at the wrong QoS"),
                    Some(_) if message.retain => Some("with RETAIN set"),
                    Some(_) => None,
                };
                if let Some(problem) = problem {
                    listed += 1;
                    if listed <= MAX_LISTED {
                        violations.push(format!("{what}: {problem}"));
                    }
                }
                if message.qos == QoS::ExactlyOnce {
                    *qos2.entry(&message.payload).or_default() += 1;
                }
            }
            for (payload, count) in qos2.into_iter().filter(|(_, n)| *n > 1).take(MAX_LISTED) {
                violations.push(format!(
                    "{name}: QoS 2 message {:?} delivered {count} times",
                    String::from_utf8_lossy(payload)
                ));
            }
            let got: std::collections::BTreeSet<&Bytes> =
                report.received.iter().map(|m| &m.payload).collect();
            let lost: Vec<String> = must_arrive
                .iter()
                .filter(|p| !got.contains(*p))
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            if !lost.is_empty() {
                violations.push(format!(
                    "{name}: {} acknowledged message(s) never received: {:?}",
                    lost.len(),
                    &lost[..lost.len().min(10)]
                ));
            }
        }
    }

    /// At most once each; exactly once when the node died for good.
    fn wills(&self, violations: &mut Vec<String>) {
        let shared = self.shared;
        let Some(report) = &*shared.will.borrow() else {
            violations.push("the will client never finished".into());
            return;
        };
        let subs = shared.subs.borrow();
        let Some(watcher) = subs.get("s2") else {
            return;
        };
        // Keyed by connection and CONNECT attempt: an attempt whose CONNACK
        // the client never saw may have been accepted, and its will is
        // then due when the broker sees that connection go.
        let mut counts: BTreeMap<(u32, u32), u32> = BTreeMap::new();
        for message in watcher.received.iter().filter(|m| m.topic == "w/w1") {
            let token = std::str::from_utf8(&message.payload)
                .ok()
                .and_then(|p| p.strip_prefix("will:w1:"))
                .and_then(|p| p.split_once('.'))
                .and_then(|(n, attempt)| Some((n.parse().ok()?, attempt.parse().ok()?)));
            match token {
                Some((n, attempt)) if n >= 1 && n <= report.connections => {
                    *counts.entry((n, attempt)).or_default() += 1;
                }
                _ => violations.push(format!(
                    "will {:?} names no connection of w1 ({} made)",
                    String::from_utf8_lossy(&message.payload),
                    report.connections
                )),
            }
        }
        for ((n, attempt), count) in &counts {
            if *count > 1 {
                violations.push(format!(
                    "will of w1's connection {n} (CONNECT attempt {attempt}) published {count} times"
                ));
            }
        }
        let attempts = shared.will_attempts.borrow();
        for n in shared.will_expected.borrow().iter() {
            let attempt = attempts.get(n).copied().unwrap_or(0);
            if !counts.contains_key(&(*n, attempt)) {
                violations.push(format!(
                    "will of w1's connection {n} never published, though its node died for good"
                ));
            }
        }
    }

    /// Every running node holds what storage holds; storage holds the last
    /// acknowledged write.
    fn retained(&self, violations: &mut Vec<String>) {
        let stored: BTreeMap<String, Bytes> =
            match futures_lite::future::block_on(self.backend.load_retained()) {
                Ok(messages) => messages
                    .iter()
                    .map(|m| (m.topic.to_string(), m.payload.clone()))
                    .collect(),
                Err(error) => {
                    violations.push(format!("cannot read storage's retained messages: {error}"));
                    return;
                }
            };
        let last = self.shared.retained_last.borrow();
        for (topic, (value, acked)) in last.iter() {
            let held = stored.get(*topic);
            if *acked && held != value.as_ref() {
                violations.push(format!(
                    "storage holds {held:?} retained on {topic}, the last acknowledged write was {value:?}"
                ));
            }
        }
        for (host, node) in self.shared.nodes.borrow().iter() {
            let (messages, _) = node.retained_page(None, 100);
            let held: BTreeMap<String, Bytes> = messages
                .iter()
                .map(|m| (m.topic.to_string(), m.payload.clone()))
                .collect();
            if held != stored {
                violations.push(format!(
                    "retained state did not converge: {host} holds {held:?}, storage {stored:?}"
                ));
            }
        }
    }

    fn memory(&self, violations: &mut Vec<String>, log: &Log, at: Duration) {
        let max_inflight = usize::from(self.config.max_inflight);
        for (host, node) in self.shared.nodes.borrow().iter() {
            let (clients, more) = node.clients_page("", None, 64);
            if more || clients.len() > CLIENTS.len() {
                violations.push(format!("{host} holds {} sessions", clients.len()));
            }
            for client in &clients {
                if client.inflight > max_inflight || client.queued > MAX_QUEUED as usize {
                    violations.push(format!(
                        "{host}: session {} holds {} in flight and {} queued",
                        client.client_id, client.inflight, client.queued
                    ));
                }
            }
            let stats = node.stats();
            if stats.subscriptions > 3 || stats.retained > 2 {
                violations.push(format!("{host}: {stats:?}"));
            }
        }
        for (host, life, node) in self.shared.lives.borrow().iter() {
            let m = &node.metrics;
            log.event_at(
                at,
                "end",
                format_args!(
                    "{host} life {life}: publishes_received={} deliveries={} wills={} storage_errors={} \
                     dropped_queue_full={} dropped_offline_qos0={} protocol_errors={}",
                    Metrics::get(&m.publishes_received),
                    Metrics::get(&m.deliveries),
                    Metrics::get(&m.wills_published),
                    Metrics::get(&m.storage_errors),
                    Metrics::get(&m.dropped_queue_full),
                    Metrics::get(&m.dropped_offline_qos0),
                    Metrics::get(&m.protocol_errors),
                ),
            );
            if Metrics::get(&m.dropped_queue_full) > 0 {
                violations.push(format!(
                    "{host} life {life} dropped messages for a full queue"
                ));
            }
        }
        if let Some(cluster) = self.backend.cluster() {
            let members = futures_lite::future::block_on(cluster.members());
            let routes = futures_lite::future::block_on(cluster.routes());
            log.event_at(
                at,
                "end",
                format_args!("storage: members {members:?}; routes {routes:?}"),
            );
        }
        let published = self.shared.published.borrow().len();
        let messages = self.backend.message_count();
        let sessions = self.backend.session_count();
        let exchange = self.exchange.stats();
        log.event_at(
            at,
            "end",
            format_args!(
                "storage: {messages} messages, {sessions} sessions; exchange {exchange:?}"
            ),
        );
        // Bodies still referenced by a queue; a few wills besides.
        if messages > published + 10 {
            violations.push(format!(
                "storage holds {messages} message bodies ({published} published)"
            ));
        }
        if sessions > 3 {
            violations.push(format!(
                "storage holds {sessions} sessions (3 persistent clients)"
            ));
        }
        if exchange.requests + exchange.answers + exchange.abandoned > MAX_EXCHANGE {
            violations.push(format!("the storage exchange grew to {exchange:?}"));
        }
    }
}
