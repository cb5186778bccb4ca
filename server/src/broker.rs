//! The broker on smol: listeners, accept loops and the node, started from a
//! [`Config`] and stopped gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_executor::Executor;
use easy_mqtt_core::session::{ConnectionConfig, QueueOverflow, SessionLimits};
use easy_mqtt_core::storage::Storage;
use easy_mqtt_storage_memory::MemoryStorage;
use easy_mqtt_transport::TcpListener;

use crate::config::{self, Config};
use crate::driver;
use crate::node::{Node, NodeConfig};
use crate::runtime::SmolRuntime;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for MQTT over TCP on {addr} (mqtt.server.tcp-port): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot load stored state: {0}")]
    Recover(#[from] easy_mqtt_core::storage::StorageError),
}

/// Maps the configuration onto the node's settings.
pub fn node_config(config: &Config) -> NodeConfig {
    let server = &config.mqtt.server;
    let node_id = if server.node_id.is_empty() {
        format!("{}-{}", hostname(), std::process::id())
    } else {
        server.node_id.clone()
    };
    NodeConfig {
        node_id,
        max_connections: server.max_connections as usize,
        connection: ConnectionConfig {
            max_packet_size: server.max_packet_size as usize,
            connect_timeout: Duration::from_secs(u64::from(server.connect_timeout)),
            min_keep_alive: server.min_keep_alive,
            max_keep_alive: server.max_keep_alive,
            max_topic_levels: server.max_topic_levels as usize,
            session: SessionLimits {
                max_inflight: server.max_inflight,
                max_queued: server.max_queued_messages as usize,
                overflow: match server.queue_overflow {
                    config::QueueOverflow::DropOldest => QueueOverflow::DropOldest,
                    config::QueueOverflow::DropNewest => QueueOverflow::DropNewest,
                },
            },
        },
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
    accept_task: Option<async_executor::Task<()>>,
}

impl Broker {
    /// Binds the listeners and starts serving on `executor`.
    pub async fn start(
        config: &Config,
        executor: Arc<Executor<'static>>,
    ) -> Result<Broker, StartError> {
        let server = &config.mqtt.server;
        if config.uses_kvrocks() {
            return Err(StartError::Unsupported(
                "mqtt.kvrocks.cluster.nodes is set, but this build serves the in-memory backend only; remove the key to run in memory".into(),
            ));
        }
        if server.is_open_ssl {
            return Err(StartError::Unsupported(
                "mqtt.server.is-open-ssl is true, but TLS listeners are not available in this build yet".into(),
            ));
        }
        if !server.authentication_url.is_empty() {
            return Err(StartError::Unsupported(
                "mqtt.server.authentication-url is set, but connect-time authentication is not available in this build yet; remove the key to run without authentication".into(),
            ));
        }
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let runtime = SmolRuntime::new(executor.clone());
        let node = Node::new(node_config(config), runtime, storage);
        node.recover().await?;

        let addr = config.tcp_bind_addr();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let tcp_addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        tracing::info!(
            node = %node.config().node_id,
            %tcp_addr,
            storage = node.storage().name(),
            "listening for MQTT over TCP"
        );
        let accept_node = node.clone();
        let accept_executor = executor.clone();
        let accept_task = executor.spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await;
                if accept_node.is_shutting_down() {
                    break;
                }
                accept_executor
                    .spawn(driver::serve(
                        accept_node.clone(),
                        stream,
                        driver::ConnectionInfo::tcp(peer),
                    ))
                    .detach();
            }
        });
        Ok(Broker {
            node,
            tcp_addr,
            accept_task: Some(accept_task),
        })
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    pub fn node(&self) -> &Arc<Node<SmolRuntime>> {
        &self.node
    }

    /// Stops accepting, closes every connection (publishing no wills) and
    /// waits up to `grace` for them to finish.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(task) = self.accept_task.take() {
            task.cancel().await;
        }
        self.node.shutdown(grace).await;
        tracing::info!("broker stopped");
    }
}
