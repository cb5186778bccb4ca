//! The real `easy-mqtt` binary, and cluster nodes in process.

use super::*;

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Cluster timings for tests: a node is dead after one second of silence.
pub fn fast_cluster(config: &mut Config) {
    cluster_timings(config, 100);
}

/// Cluster timings scaled from a heartbeat of `heartbeat_ms`: a node is
/// dead after ten heartbeats, a takeover waits up to thirty.
pub fn cluster_timings(config: &mut Config, heartbeat_ms: u32) {
    config.mqtt.cluster.heartbeat_interval = heartbeat_ms;
    config.mqtt.cluster.node_timeout = heartbeat_ms * 10;
    config.mqtt.cluster.takeover_timeout = heartbeat_ms * 30;
}

/// A cluster node named `node_id` on the Kvrocks (or Redis) `nodes`, with
/// [`fast_cluster`] timings.
pub fn cluster_node(nodes: &[String], node_id: &str) -> TestBroker {
    cluster_node_with_heartbeat(nodes, node_id, 100)
}

/// [`cluster_node`] with [`cluster_timings`] of a heartbeat of `heartbeat_ms`.
pub fn cluster_node_with_heartbeat(
    nodes: &[String],
    node_id: &str,
    heartbeat_ms: u32,
) -> TestBroker {
    let nodes = nodes.to_vec();
    let node_id = node_id.to_owned();
    TestBroker::with(move |config| {
        config.mqtt.kvrocks.cluster.nodes = nodes;
        config.mqtt.server.node_id = node_id;
        cluster_timings(config, heartbeat_ms);
    })
}

/// A configuration file for the real binary: MQTT over TCP on
/// 127.0.0.1:`port`, WebSocket and API on free ports, storage on the
/// Kvrocks (or Redis) `nodes` (`host:port[,host:port...]`).
pub fn kvrocks_binary_config(nodes: &str, port: u16) -> TempFile {
    let text = format!(
        "mqtt:\n  server:\n    host: 127.0.0.1\n    tcp-port: {port}\n    websocket-port: 0\n    api-port: 0\n    node-id: crash\n  kvrocks:\n    cluster:\n      nodes: {nodes}\n"
    );
    TempFile::new("broker.yml", text.as_bytes())
}

/// The `easy-mqtt` binary of this build, started with `-c <config>`;
/// killed (SIGKILL) on drop.
pub struct BrokerProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl BrokerProcess {
    /// Starts the binary and waits until it accepts TCP connections on
    /// 127.0.0.1:`port` (the port of the configuration).
    pub fn start(config: &TempFile, port: u16) -> BrokerProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_easy-mqtt"))
            .args(["-c", config.path.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the easy-mqtt binary");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut process = BrokerProcess { child, addr };
        process.wait_listening(port);
        process
    }

    /// Waits until the binary accepts TCP connections on 127.0.0.1:`port`
    /// (another of its listeners, e.g. the API).
    pub fn wait_listening(&mut self, port: u16) {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the binary exited before listening: {status}");
            }
            assert!(Instant::now() < deadline, "the binary never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// SIGKILL: no shutdown, nothing flushed; waits until it is gone.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
