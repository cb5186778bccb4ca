//! The broker on smol: listeners, accept loops and the node, started from a
//! [`Config`] and stopped gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_executor::Executor;
use easy_mqtt_core::session::{ConnectionConfig, QueueOverflow, SessionLimits};
use easy_mqtt_core::storage::{Storage, StorageError};
use easy_mqtt_storage_kvrocks::{KvrocksSettings, KvrocksStorage};
use easy_mqtt_storage_memory::MemoryStorage;
use easy_mqtt_transport::{TlsContext, TlsError};

use crate::api::{ApiConfig, ApiServer};
use crate::auth;
use crate::config::{self, Config};
use crate::listeners::{self, ListenerAddrs};
use crate::node::{Node, NodeConfig};
use crate::runtime::SmolRuntime;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for MQTT over TCP on {addr} (mqtt.server.tcp-port): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen for {what} on {addr} ({key}): {source}")]
    Listen {
        what: &'static str,
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A certificate, key or CA file is missing or unusable; names the key
    /// and the file.
    #[error("cannot load the TLS certificate: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen for the HTTP API on {addr} (mqtt.server.api-port): {source}")]
    ApiBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The authentication settings are unusable (URL, CA file).
    #[error("mqtt.server.authentication-url: {0}")]
    Auth(String),
    #[error("{0}")]
    Unsupported(String),
    /// Kvrocks could not be reached within the start-up budget (5 s).
    #[error("cannot reach Kvrocks at {0:?} (mqtt.kvrocks.cluster.nodes): {1}")]
    Storage(Vec<String>, easy_mqtt_core::storage::StorageError),
    /// The Kvrocks settings cannot work (an unparsable address, a refused
    /// password, nodes that are not one cluster): the message names the
    /// `mqtt.kvrocks.*` key.
    #[error("invalid Kvrocks settings: {0}")]
    StorageSettings(String),
    #[error("cannot load stored state: {0}")]
    Recover(#[from] easy_mqtt_core::storage::StorageError),
}

/// Maps the configuration onto the node's settings.
pub fn node_config(config: &Config) -> NodeConfig {
    let server = &config.mqtt.server;
    let node_id = if server.node_id.is_empty() && config.uses_kvrocks() {
        // Stable across restarts, so a restarted node finds its previous
        // life in the cluster; the port tells nodes on one host apart.
        format!("{}-{}", hostname(), server.tcp_port)
    } else if server.node_id.is_empty() {
        format!("{}-{}", hostname(), std::process::id())
    } else {
        server.node_id.clone()
    };
    NodeConfig {
        node_id,
        max_connections: server.max_connections as usize,
        hibernate_after: (server.hibernate_after > 0)
            .then(|| Duration::from_secs(u64::from(server.hibernate_after))),
        // Every node on one Kvrocks is part of its cluster.
        cluster: (config.uses_kvrocks() && config.mqtt.cluster.enabled)
            .then(|| crate::cluster::ClusterConfig::from_config(&config.mqtt.cluster)),
        incarnation: crate::persist::sequence_seed() / 1000,
        journal: crate::journal::WriterLimits {
            max_merged_ops: config.mqtt.kvrocks.write_batch_ops as usize,
            max_queued_ops: config.mqtt.kvrocks.write_queue_ops as usize,
            ..crate::journal::WriterLimits::default()
        },
        connection: ConnectionConfig {
            max_packet_size: server.max_packet_size as usize,
            connect_timeout: Duration::from_secs(u64::from(server.connect_timeout)),
            min_keep_alive: server.min_keep_alive,
            max_keep_alive: server.max_keep_alive,
            max_topic_levels: server.max_topic_levels as usize,
            session: SessionLimits {
                max_inflight: server.max_inflight,
                max_queued: server.max_queued_messages,
                overflow: match server.queue_overflow {
                    config::QueueOverflow::DropOldest => QueueOverflow::DropOldest,
                    config::QueueOverflow::DropNewest => QueueOverflow::DropNewest,
                },
            },
        },
    }
}

/// How long start-up keeps trying to reach Kvrocks (and to load from it)
/// before it fails.
const STORAGE_START_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to Kvrocks (`mqtt.kvrocks.*`), retrying with back-off for up
/// to [`STORAGE_START_TIMEOUT`]; a misconfiguration fails at once.
async fn connect_kvrocks(config: &Config) -> Result<KvrocksStorage, StartError> {
    let kvrocks = &config.mqtt.kvrocks;
    let settings = KvrocksSettings::from_original(
        kvrocks.cluster.nodes.clone(),
        &kvrocks.password,
        kvrocks.cluster.max_redirects,
        kvrocks.pool.max_active,
    );
    let deadline = std::time::Instant::now() + STORAGE_START_TIMEOUT;
    let mut attempt = 0;
    loop {
        match KvrocksStorage::connect(settings.clone()).await {
            Ok(storage) => {
                tracing::info!(nodes = ?settings.nodes, cluster = storage.is_cluster(), "connected to Kvrocks");
                return Ok(storage);
            }
            Err(StorageError::Invalid(reason)) => {
                return Err(StartError::StorageSettings(reason));
            }
            Err(error) if std::time::Instant::now() >= deadline => {
                return Err(StartError::Storage(settings.nodes.clone(), error));
            }
            Err(error) => {
                attempt += 1;
                tracing::warn!(%error, attempt, "cannot reach Kvrocks yet; retrying");
                async_io::Timer::after(crate::persist::backoff(attempt + 2)).await;
            }
        }
    }
}

/// Loads retained messages and persistent sessions, retrying like
/// [`connect_kvrocks`].
async fn recover(node: &Arc<Node<SmolRuntime>>) -> Result<(), StartError> {
    let deadline = std::time::Instant::now() + STORAGE_START_TIMEOUT;
    let mut attempt = 0;
    loop {
        match node.recover().await {
            Ok(()) => return Ok(()),
            Err(error @ StorageError::Unavailable(_)) if std::time::Instant::now() < deadline => {
                attempt += 1;
                tracing::warn!(%error, attempt, "cannot load stored state yet; retrying");
                async_io::Timer::after(crate::persist::backoff(attempt + 2)).await;
            }
            Err(StorageError::Invalid(reason)) => return Err(StartError::StorageSettings(reason)),
            Err(error) => return Err(StartError::Recover(error)),
        }
    }
}

/// How often the sweeper of leaked message bodies runs a pass over
/// Kvrocks (the first one right after recovery).
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// Bodies younger than this are never swept (far above the longest a
/// routing batch is retried: the connect timeout).
const SWEEP_GRACE: Duration = Duration::from_secs(600);
/// Keys one sweeper round scans at most; rounds of a pass are 100 ms apart.
const SWEEP_ROUND_KEYS: usize = 1000;

/// Sweeps leaked message bodies (see `KvrocksStorage::sweep_leaked_bodies`):
/// one pass now, then one every [`SWEEP_INTERVAL`], each in bounded rounds.
async fn sweep_bodies(storage: Arc<KvrocksStorage>) {
    loop {
        loop {
            match storage
                .sweep_leaked_bodies(SWEEP_GRACE, SWEEP_ROUND_KEYS)
                .await
            {
                Ok(round) if round.pass_complete => break,
                Ok(_) => async_io::Timer::after(Duration::from_millis(100)).await,
                Err(error) => {
                    tracing::warn!(%error, "sweeping leaked message bodies failed; next pass later");
                    break;
                }
            };
        }
        async_io::Timer::after(SWEEP_INTERVAL).await;
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "easy-mqtt".to_owned())
}

/// A running broker.
pub struct Broker {
    node: Arc<Node<SmolRuntime>>,
    tcp_addr: SocketAddr,
    /// Every MQTT listener's address.
    listeners: ListenerAddrs,
    /// The certificates of the TLS listeners, reloadable.
    tls: Option<Arc<TlsContext>>,
    accept_task: Option<async_executor::Task<()>>,
    /// The sweeper of leaked bodies on Kvrocks (cancelled when dropped).
    sweeper: Option<async_executor::Task<()>>,
    /// The HTTP API server.
    api: Option<ApiServer>,
}

impl Broker {
    /// Binds the listeners and starts serving on `executor`.
    pub async fn start(
        config: &Config,
        executor: Arc<Executor<'static>>,
    ) -> Result<Broker, StartError> {
        let authenticator =
            auth::from_config(config, executor.clone()).map_err(StartError::Auth)?;
        // The Alibaba Cloud mode, when on, goes in front of the URL.
        let (authenticator, aliyun) = crate::aliyun::wire(config, authenticator);
        let policy = aliyun.clone().map(|a| a as Arc<dyn crate::node::Policy>);
        let kvrocks = match config.uses_kvrocks() {
            true => Some(Arc::new(connect_kvrocks(config).await?)),
            false => None,
        };
        let storage: Arc<dyn Storage> = match &kvrocks {
            Some(kvrocks) => kvrocks.clone(),
            None => Arc::new(MemoryStorage::new()),
        };
        let runtime = SmolRuntime::new(executor.clone());
        let node = Node::with_policy(node_config(config), runtime, storage, authenticator, policy);
        if let Some(aliyun) = &aliyun {
            aliyun.attach(&node, &executor);
        }
        recover(&node).await?;
        executor.spawn(crate::cluster::run(node.clone())).detach();
        let sweeper = kvrocks.map(|kvrocks| executor.spawn(sweep_bodies(kvrocks)));
        let api_config = ApiConfig::from_config(config);
        let api_addr = api_config.addr;
        let api = ApiServer::start(node.clone(), api_config, executor.clone())
            .await
            .map_err(|source| StartError::ApiBind {
                addr: api_addr,
                source,
            })?;

        let listeners = listeners::start(config, &node, &executor).await?;
        Ok(Broker {
            node,
            tcp_addr: listeners.addrs.tcp,
            listeners: listeners.addrs,
            tls: listeners.tls,
            accept_task: Some(listeners.task),
            sweeper,
            api: Some(api),
        })
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// The addresses of the MQTT listeners: TCP, WebSocket, and the TLS
    /// and WSS ports when set.
    pub fn listener_addrs(&self) -> ListenerAddrs {
        self.listeners
    }

    /// Reads the certificate files again: new TLS connections use them,
    /// open ones keep theirs. On error (logged) the previous certificate
    /// stays. `Ok(false)` when no listener speaks TLS. Blocking (file reads).
    pub fn reload_tls(&self) -> Result<bool, TlsError> {
        match &self.tls {
            Some(context) => listeners::reload(context).map(|()| true),
            None => Ok(false),
        }
    }

    pub fn node(&self) -> &Arc<Node<SmolRuntime>> {
        &self.node
    }

    /// The address of the HTTP API (`api-host`, `api-port`).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(ApiServer::addr)
    }

    /// Stops accepting, closes every connection (publishing no wills) and
    /// waits up to `grace` for them to finish.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(task) = self.accept_task.take() {
            task.cancel().await;
        }
        if let Some(task) = self.sweeper.take() {
            task.cancel().await;
        }
        if let Some(api) = self.api.take() {
            api.shutdown().await;
        }
        self.node.shutdown(grace).await;
        tracing::info!("broker stopped");
    }
}
