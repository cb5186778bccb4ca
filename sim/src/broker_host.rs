//! A broker node serving MQTT on a turmoil host.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use easy_mqtt_server::driver;
use easy_mqtt_server::node::{Node, NodeConfig};
use easy_mqtt_server::runtime::Runtime;
use easy_mqtt_storage_memory::MemoryStorage;
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::runtime::TokioRuntime;

/// The port brokers listen on in the simulation.
pub const MQTT_PORT: u16 = 1883;

/// A node as the simulator runs it.
pub type SimNode = Node<TokioRuntime>;

/// Builds a node with in-memory storage on the current host's clock.
pub fn new_node(config: NodeConfig) -> Arc<SimNode> {
    Node::new(config, TokioRuntime, Arc::new(MemoryStorage::new()))
}

/// Serves `node` on `0.0.0.0:1883` of the current turmoil host until the
/// host stops: one driver task per accepted connection, exactly as the
/// real binary does, but over simulated TCP.
pub async fn serve(node: Arc<SimNode>) -> turmoil::Result {
    node.recover().await?;
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), MQTT_PORT);
    let listener = turmoil::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let conn = driver::serve(
            node.clone(),
            stream.compat(),
            driver::ConnectionInfo::tcp(peer),
        );
        node.runtime().spawn(Box::pin(conn));
    }
}

/// Builds a node of a cluster whose storage is the storage host at
/// `storage_addr` (see [`crate::storage_host`]).
pub fn new_cluster_node(
    config: NodeConfig,
    exchange: Arc<crate::storage_host::Exchange>,
    storage_addr: &str,
) -> Arc<SimNode> {
    let storage = crate::storage_host::RemoteStorage::new(exchange, storage_addr);
    Node::new(config, TokioRuntime, Arc::new(storage))
}

/// Serves a cluster node: recovers what storage holds (retrying every
/// 500 ms while storage is unreachable; meanwhile connections are refused),
/// then runs the node's cluster task and listens, one driver per
/// connection.
pub async fn serve_cluster(node: Arc<SimNode>) -> turmoil::Result {
    while let Err(error) = node.recover().await {
        tracing::warn!(%error, "recovery failed; retrying");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), MQTT_PORT);
    let listener = turmoil::net::TcpListener::bind(addr).await?;
    node.runtime()
        .spawn(Box::pin(easy_mqtt_server::cluster::run(node.clone())));
    loop {
        let (stream, peer) = listener.accept().await?;
        let conn = driver::serve(
            node.clone(),
            stream.compat(),
            driver::ConnectionInfo::tcp(peer),
        );
        node.runtime().spawn(Box::pin(conn));
    }
}
