//! `GET /api/v1/stats` and `GET /metrics`: the node's sizes and counters,
//! with message rates computed from counters sampled over time.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::admin::NodeStats;
use crate::metrics::Metrics;
use crate::sessions::lock;

/// How often the sampler records the counters.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Rates are averages over (about) this window.
const RATE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    received: u64,
    sent: u64,
}

/// Recent samples of the message counters.
#[derive(Debug, Default)]
pub struct Rates {
    samples: Mutex<VecDeque<Sample>>,
}

/// Messages per second, received and sent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MessageRates {
    pub received: f64,
    pub sent: f64,
}

impl Rates {
    /// Records the counters now; keeps one sample older than the window.
    pub fn record(&self, at: Instant, stats: &NodeStats) {
        let mut samples = lock(&self.samples);
        samples.push_back(Sample {
            at,
            received: stats.messages_received,
            sent: stats.messages_sent,
        });
        while samples.len() > 2 && samples[1].at + RATE_WINDOW <= at {
            samples.pop_front();
        }
    }

    /// Average rates between the oldest sample in the window and `stats`
    /// taken `now`; zero until a sample is at least 100 ms old.
    pub fn per_second(&self, now: Instant, stats: &NodeStats) -> MessageRates {
        let samples = lock(&self.samples);
        let Some(oldest) = samples
            .iter()
            .find(|s| s.at + RATE_WINDOW > now)
            .or(samples.back())
        else {
            return MessageRates::default();
        };
        let elapsed = now.saturating_duration_since(oldest.at).as_secs_f64();
        if elapsed < 0.1 {
            return MessageRates::default();
        }
        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / elapsed;
        MessageRates {
            received: rate(stats.messages_received, oldest.received),
            sent: rate(stats.messages_sent, oldest.sent),
        }
    }
}

/// Rates rounded to milli-messages, so the JSON stays readable.
fn round(rate: f64) -> f64 {
    (rate * 1000.0).round() / 1000.0
}

/// The cluster's part of the statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Live nodes, this one included; `None` outside a cluster.
    pub live_nodes: Option<usize>,
    /// QoS 0 messages not sent to other nodes (bus queue full).
    pub bus_dropped: u64,
}

/// The body of `GET /api/v1/stats`.
pub fn stats_json(
    stats: &NodeStats,
    rates: MessageRates,
    metrics: &Metrics,
    cluster: ClusterStats,
    uptime: Duration,
) -> serde_json::Value {
    serde_json::json!({
        "connections": stats.connections,
        "sessions": stats.sessions,
        "subscriptions": stats.subscriptions,
        "retained": stats.retained,
        "messagesReceived": stats.messages_received,
        "messagesSent": stats.messages_sent,
        "messagesReceivedPerSecond": round(rates.received),
        "messagesSentPerSecond": round(rates.sent),
        "dropped": stats.dropped_queue_full + stats.dropped_offline_qos0,
        "droppedQueueFull": stats.dropped_queue_full,
        "droppedOfflineQos0": stats.dropped_offline_qos0,
        "droppedExpired": Metrics::get(&metrics.dropped_expired),
        "aliyunStatusLost": Metrics::get(&metrics.aliyun_status_lost),
        "connectionsTotal": Metrics::get(&metrics.connections_total),
        "connectionsHibernated": Metrics::get(&metrics.connections_hibernated),
        "storageErrors": Metrics::get(&metrics.storage_errors),
        "storagePublishesFailed": Metrics::get(&metrics.storage_publishes_failed),
        "clusterNodes": cluster.live_nodes,
        "busSent": Metrics::get(&metrics.bus_sent),
        "busReceived": Metrics::get(&metrics.bus_received),
        "busDropped": cluster.bus_dropped,
        "clusterTakeovers": Metrics::get(&metrics.cluster_takeovers),
        "clusterAdoptions": Metrics::get(&metrics.cluster_adoptions),
        "uptimeSeconds": uptime.as_secs(),
    })
}

/// The body of `GET /metrics`: Prometheus text exposition format 0.0.4.
pub fn prometheus(
    stats: &NodeStats,
    rates: MessageRates,
    metrics: &Metrics,
    cluster: ClusterStats,
    uptime: Duration,
) -> String {
    let get = Metrics::get;
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP easy_mqtt_{name} {help}");
        let _ = writeln!(out, "# TYPE easy_mqtt_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "easy_mqtt_{name}{labels} {value}");
        }
    };
    let n = |v: u64| v as f64;
    metric(
        "connections",
        "gauge",
        "Client connections open now.",
        &[("", n(stats.connections))],
    );
    metric(
        "connections_total",
        "counter",
        "Client connections accepted since start.",
        &[("", n(get(&metrics.connections_total)))],
    );
    metric(
        "connections_hibernated",
        "gauge",
        "Open connections hibernating now (idle past hibernate-after).",
        &[("", n(get(&metrics.connections_hibernated)))],
    );
    metric(
        "connections_refused_limit_total",
        "counter",
        "Connections closed at once because max-connections was reached.",
        &[("", n(get(&metrics.connections_refused_limit)))],
    );
    metric(
        "sessions",
        "gauge",
        "Sessions known: connected clients and kept persistent sessions.",
        &[("", n(stats.sessions))],
    );
    metric(
        "subscriptions",
        "gauge",
        "Subscriptions: (session, filter) pairs.",
        &[("", n(stats.subscriptions))],
    );
    metric(
        "retained_messages",
        "gauge",
        "Retained messages stored.",
        &[("", n(stats.retained))],
    );
    metric(
        "messages_received_total",
        "counter",
        "Messages received: PUBLISH packets from clients plus API publishes.",
        &[("", n(stats.messages_received))],
    );
    metric(
        "messages_sent_total",
        "counter",
        "PUBLISH packets written to clients.",
        &[("", n(stats.messages_sent))],
    );
    metric(
        "messages_received_per_second",
        "gauge",
        "Messages received per second, averaged over the last 10 seconds.",
        &[("", round(rates.received))],
    );
    metric(
        "messages_sent_per_second",
        "gauge",
        "Messages sent per second, averaged over the last 10 seconds.",
        &[("", round(rates.sent))],
    );
    metric(
        "deliveries_total",
        "counter",
        "Messages handed to sessions (one per receiving session).",
        &[("", n(get(&metrics.deliveries)))],
    );
    metric(
        "messages_dropped_total",
        "counter",
        "Messages dropped, by reason.",
        &[
            ("{reason=\"queue_full\"}", n(stats.dropped_queue_full)),
            ("{reason=\"offline_qos0\"}", n(stats.dropped_offline_qos0)),
        ],
    );
    metric(
        "api_publishes_total",
        "counter",
        "Messages published through the HTTP API.",
        &[("", n(get(&metrics.api_publishes)))],
    );
    metric(
        "wills_published_total",
        "counter",
        "Will messages published.",
        &[("", n(get(&metrics.wills_published)))],
    );
    metric(
        "protocol_errors_total",
        "counter",
        "Connections closed for a protocol violation.",
        &[("", n(get(&metrics.protocol_errors)))],
    );
    metric(
        "clients_kicked_total",
        "counter",
        "Connections closed through the HTTP API.",
        &[("", n(get(&metrics.clients_kicked)))],
    );
    metric(
        "auth_total",
        "counter",
        "CONNECTs decided by the authentication service, by result.",
        &[
            ("{result=\"accepted\"}", n(get(&metrics.auth_accepted))),
            ("{result=\"refused\"}", n(get(&metrics.auth_refused))),
            (
                "{result=\"unavailable\"}",
                n(get(&metrics.auth_unavailable)),
            ),
        ],
    );
    metric(
        "dropped_expired_total",
        "counter",
        "Queued messages dropped unsent because they outlived the offline-message retention.",
        &[("", n(get(&metrics.dropped_expired)))],
    );
    metric(
        "aliyun_status_lost_total",
        "counter",
        "Alibaba Cloud status events that could not be stored after retries.",
        &[("", n(get(&metrics.aliyun_status_lost)))],
    );
    metric(
        "storage_errors_total",
        "counter",
        "Storage calls that failed (each retry counts).",
        &[("", n(get(&metrics.storage_errors)))],
    );
    metric(
        "storage_publishes_failed_total",
        "counter",
        "QoS 1/2 PUBLISH packets not acknowledged because storage stayed unavailable.",
        &[("", n(get(&metrics.storage_publishes_failed)))],
    );
    if let Some(live) = cluster.live_nodes {
        metric(
            "cluster_nodes",
            "gauge",
            "Live nodes of the cluster, this one included.",
            &[("", live as f64)],
        );
    }
    metric(
        "bus_sent_total",
        "counter",
        "Cluster bus entries this node wrote to other nodes' inboxes through its outbox.",
        &[("", n(get(&metrics.bus_sent)))],
    );
    metric(
        "bus_received_total",
        "counter",
        "Cluster bus entries read from this node's inbox and from inboxes of nodes it adopted.",
        &[("", n(get(&metrics.bus_received)))],
    );
    metric(
        "bus_dropped_total",
        "counter",
        "QoS 0 messages not sent to other nodes because the bus queue was full.",
        &[("", n(cluster.bus_dropped))],
    );
    metric(
        "cluster_takeovers_total",
        "counter",
        "Client ids this node took over from another node.",
        &[("", n(get(&metrics.cluster_takeovers)))],
    );
    metric(
        "cluster_adoptions_total",
        "counter",
        "Dead nodes this node adopted.",
        &[("", n(get(&metrics.cluster_adoptions)))],
    );
    metric(
        "uptime_seconds",
        "gauge",
        "Seconds since the HTTP API started.",
        &[("", n(uptime.as_secs()))],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(received: u64, sent: u64) -> NodeStats {
        NodeStats {
            connections: 0,
            sessions: 0,
            subscriptions: 0,
            retained: 0,
            messages_received: received,
            messages_sent: sent,
            dropped_queue_full: 0,
            dropped_offline_qos0: 0,
        }
    }

    #[test]
    fn rates_come_from_samples_over_time() {
        let rates = Rates::default();
        let t0 = Instant::now();
        assert_eq!(rates.per_second(t0, &stats(5, 5)), MessageRates::default());
        rates.record(t0, &stats(0, 0));
        let r = rates.per_second(t0 + Duration::from_secs(2), &stats(10, 40));
        assert_eq!((r.received, r.sent), (5.0, 20.0));
        for s in 1..=30u64 {
            rates.record(t0 + Duration::from_secs(s), &stats(s * 10, 0));
        }
        // Only the last 10 seconds count.
        let r = rates.per_second(t0 + Duration::from_secs(30), &stats(300, 0));
        assert!((r.received - 10.0).abs() < 1e-9, "{r:?}");
        assert!(lock(&rates.samples).len() <= 12);
    }

    #[test]
    fn prometheus_text_has_help_and_type_lines() {
        let text = prometheus(
            &stats(3, 4),
            MessageRates::default(),
            &Metrics::default(),
            ClusterStats {
                live_nodes: Some(2),
                bus_dropped: 0,
            },
            Duration::ZERO,
        );
        assert!(text.contains("# TYPE easy_mqtt_messages_received_total counter\neasy_mqtt_messages_received_total 3\n"));
        assert!(text.contains("easy_mqtt_messages_dropped_total{reason=\"queue_full\"} 0\n"));
        assert!(text.contains("\neasy_mqtt_cluster_nodes 2\n"));
        assert!(text.contains("\neasy_mqtt_bus_received_total 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}
