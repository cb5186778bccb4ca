//! Counters of the node, read by the HTTP API (`/api/v1/stats`, `/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_current: AtomicU64,
    pub connections_total: AtomicU64,
    /// Open connections hibernating now (included in `connections_current`).
    pub connections_hibernated: AtomicU64,
    /// Connections closed at once because `max-connections` was reached.
    pub connections_refused_limit: AtomicU64,
    pub sessions_current: AtomicU64,
    /// PUBLISH packets received from clients.
    pub publishes_received: AtomicU64,
    /// Messages published through the HTTP API (to a topic or a client).
    pub api_publishes: AtomicU64,
    /// PUBLISH packets written to clients (retransmissions included).
    pub publishes_sent: AtomicU64,
    /// Messages handed to sessions (one per subscriber).
    pub deliveries: AtomicU64,
    /// Messages dropped because a session's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// QoS 0 messages not kept for an offline session.
    pub dropped_offline_qos0: AtomicU64,
    /// Messages queued for an offline session dropped on its return because
    /// they were older than `mqtt.aliyun.offline-message-retention`.
    pub dropped_expired: AtomicU64,
    /// Alibaba Cloud status events not stored (storage kept failing, or
    /// the writer's queue was full).
    pub aliyun_status_lost: AtomicU64,
    pub wills_published: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// CONNECTs the authenticator accepted.
    pub auth_accepted: AtomicU64,
    /// CONNECTs the authenticator refused (return code 4 or 5).
    pub auth_refused: AtomicU64,
    /// CONNECTs refused because the authenticator could not decide
    /// (return code 3: timeout, unreachable, error).
    pub auth_unavailable: AtomicU64,
    /// Connections closed through the HTTP API.
    pub clients_kicked: AtomicU64,
    /// Storage calls that failed (each retry counts).
    pub storage_errors: AtomicU64,
    /// Cluster bus entries written to other nodes' inboxes (outbox only).
    pub bus_sent: AtomicU64,
    /// Cluster bus entries read from inboxes (this node's and adopted ones).
    pub bus_received: AtomicU64,
    /// Client ids taken over from another node.
    pub cluster_takeovers: AtomicU64,
    /// Dead nodes this node adopted.
    pub cluster_adoptions: AtomicU64,
    /// QoS 1/2 PUBLISH packets not acknowledged because storage stayed
    /// unavailable (their connection was closed).
    pub storage_publishes_failed: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
