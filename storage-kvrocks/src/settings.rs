//! How to reach Kvrocks, and how the original's `mqtt.kvrocks.*` keys map
//! onto it.

use std::time::Duration;

/// Connection settings of a [`crate::KvrocksStorage`].
///
/// # From the original's configuration
///
/// | original key | here |
/// |---|---|
/// | `mqtt.kvrocks.cluster.nodes` | [`nodes`](Self::nodes): one entry = standalone (or a cluster seed), several = cluster |
/// | `mqtt.kvrocks.password` | [`password`](Self::password) (empty string = `None`) |
/// | `mqtt.kvrocks.cluster.max-redirects` | [`max_redirects`](Self::max_redirects): the cluster client's retry budget per request (`MOVED`, `TRYAGAIN`, reconnects) |
/// | `mqtt.kvrocks.pool.max-active` | [`connections`](Self::connections): multiplexed connections opened at start (per node in a cluster) |
/// | `mqtt.kvrocks.pool.max-wait` | no effect: a multiplexed connection is shared, nobody waits for a free one; [`timeout`](Self::timeout) bounds every call instead |
/// | `mqtt.kvrocks.pool.min-idle`, `max-idle` | no effect: all [`connections`](Self::connections) stay open; a dropped one reconnects by itself |
/// | `mqtt.kvrocks.pool.time-between-eviction-runs` | no effect: nothing is evicted |
///
/// The original pooled blocking connections, one command at a time each; the
/// `redis` crate multiplexes many in-flight requests over one connection, so
/// a handful of connections carry the load that needed a pool of a dozen.
/// Kvrocks serves each connection on one worker thread, which is why more
/// than one connection still helps on a busy server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvrocksSettings {
    /// `host:port` entries (IPv6 in brackets: `[::1]:6666`), or full
    /// `redis://` / `rediss://` URLs. One node = standalone, unless that
    /// node answers `CLUSTER INFO` (a cluster node: then it is a seed);
    /// more = cluster (the nodes are seeds: the rest is discovered).
    pub nodes: Vec<String>,
    /// `AUTH` password, if any.
    pub password: Option<String>,
    /// Cluster only: how many times one request is retried by the cluster
    /// client (following `MOVED`, waiting out `TRYAGAIN`, reconnecting).
    pub max_redirects: u32,
    /// Multiplexed connections opened at start (at least 1); requests are
    /// spread over them round robin. One more is opened for the blocking
    /// inbox reads.
    pub connections: usize,
    /// The longest one round trip (a pipeline of at most 2,000 commands)
    /// may take from when it is sent, retries included, before the call
    /// fails with `StorageError::Unavailable`; also the longest a call waits
    /// for its turn while the server answers nothing (see the crate
    /// documentation, "Errors").
    pub timeout: Duration,
    /// The longest one connection attempt may take.
    pub connect_timeout: Duration,
    /// How many times a pipeline answered with `TRYAGAIN` (a slot being
    /// migrated) is sent again by the backend itself, after the cluster
    /// client's own retries, before the call fails as unavailable.
    pub tryagain_attempts: u32,
    /// The first back-off before such a retry; it doubles each time.
    pub tryagain_backoff: Duration,
    /// Prefix of every key, so that several brokers (or tests) can share a
    /// server. Must not contain `{` or `}` (they would change the hash tags).
    pub key_prefix: String,
}

impl KvrocksSettings {
    /// Settings for the given nodes with every other value at its default.
    pub fn new(nodes: Vec<String>) -> KvrocksSettings {
        KvrocksSettings {
            nodes,
            ..KvrocksSettings::default()
        }
    }

    /// Maps the original's keys (as read by the server's configuration)
    /// onto settings: `password` empty = none, `max_active` = connections
    /// (capped at 64: more multiplexed connections buy nothing). The other
    /// pool keys have no effect (see the table above).
    pub fn from_original(
        nodes: Vec<String>,
        password: &str,
        max_redirects: u32,
        max_active: u32,
    ) -> KvrocksSettings {
        KvrocksSettings {
            nodes,
            password: (!password.is_empty()).then(|| password.to_owned()),
            max_redirects,
            connections: usize::try_from(max_active.clamp(1, 64)).unwrap_or(1),
            ..KvrocksSettings::default()
        }
    }
}

impl Default for KvrocksSettings {
    fn default() -> KvrocksSettings {
        KvrocksSettings {
            nodes: Vec::new(),
            password: None,
            max_redirects: 5,
            connections: 4,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            tryagain_attempts: 5,
            tryagain_backoff: Duration::from_millis(20),
            key_prefix: "emq".to_owned(),
        }
    }
}
