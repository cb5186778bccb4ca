//! Shared harness of the integration tests: an in-process broker on a free
//! port ([`TestBroker`]), a rumqttc client driven by a background task
//! ([`Client`]), a raw TCP client that speaks MQTT byte by byte
//! ([`RawClient`]), and wrappers around Debian's `mosquitto_sub` and
//! `mosquitto_pub` ([`MosquittoSub`], [`mosquitto_pub`]).
//!
//! Every wait has a deadline and fails the test with a message when it
//! passes; nothing sleeps to wait for a condition that can be observed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use easy_mqtt_server::broker::Broker;
use easy_mqtt_server::config::Config;
use easy_mqtt_server::metrics::Metrics;
use easy_mqtt_server::node::Node;
use easy_mqtt_server::runtime::SmolRuntime;

/// How long any expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test watches to prove that something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// Logs of the broker for a failing test: `RUST_LOG=debug cargo test ...`.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

// ---------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------

/// A broker serving on 127.0.0.1 on a free port, on its own two executor
/// threads. Shut down on drop, or with [`TestBroker::shutdown`].
pub struct TestBroker {
    broker: Option<Broker>,
    node: Arc<Node<SmolRuntime>>,
    addr: SocketAddr,
    stop: Option<async_channel::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl TestBroker {
    /// A broker on the default configuration.
    pub fn start() -> TestBroker {
        TestBroker::with(|_| {})
    }

    /// A broker on the default configuration changed by `configure`.
    pub fn with(configure: impl FnOnce(&mut Config)) -> TestBroker {
        TestBroker::try_with(configure).expect("broker starts")
    }

    /// Like [`TestBroker::with`], but returns the start-up error.
    pub fn try_with(
        configure: impl FnOnce(&mut Config),
    ) -> Result<TestBroker, easy_mqtt_server::broker::StartError> {
        init_tracing();
        let mut config = Config::default();
        config.mqtt.server.host = "127.0.0.1".parse().unwrap();
        config.mqtt.server.tcp_port = 0;
        config.mqtt.server.websocket_port = 0;
        config.mqtt.server.api_port = 0;
        config.mqtt.server.node_id = "test".into();
        configure(&mut config);
        config.validate().expect("test configuration is valid");

        let executor = Arc::new(async_executor::Executor::<'static>::new());
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let threads: Vec<std::thread::JoinHandle<()>> = (0..2)
            .map(|i| {
                let executor = executor.clone();
                let stopped = stopped.clone();
                std::thread::Builder::new()
                    .name(format!("test-broker-{i}"))
                    .spawn(move || {
                        // As the binary's workers (main.rs): they drive the
                        // reactor when idle, so tests run the same schedule.
                        async_io::block_on(executor.run(async {
                            let _ = stopped.recv().await;
                        }))
                    })
                    .unwrap()
            })
            .collect();
        let broker = match futures_lite::future::block_on(Broker::start(&config, executor)) {
            Ok(broker) => broker,
            Err(error) => {
                drop(stop);
                for thread in threads {
                    let _ = thread.join();
                }
                return Err(error);
            }
        };
        Ok(TestBroker {
            node: broker.node().clone(),
            addr: broker.tcp_addr(),
            broker: Some(broker),
            stop: Some(stop),
            threads,
        })
    }

    /// The running broker (its listener addresses, TLS reload).
    pub fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("broker is running")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn node(&self) -> &Arc<Node<SmolRuntime>> {
        &self.node
    }

    /// The current value of one of the node's counters.
    pub fn metric(&self, counter: impl FnOnce(&Metrics) -> &AtomicU64) -> u64 {
        Metrics::get(counter(&self.node.metrics))
    }

    /// Waits until the node counts `expected` open connections. Connection
    /// bookkeeping ends just after the socket is closed, so a test that
    /// saw a close and counts connections waits for the count to follow.
    pub fn wait_connections(&self, expected: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let open = self.metric(|m| &m.connections_current);
            if open == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {expected} open connections; {open} are open"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the broker gracefully (what the binary does on SIGTERM).
    pub async fn shutdown(mut self) {
        if let Some(broker) = self.broker.take() {
            broker.shutdown(Duration::from_secs(2)).await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(broker) = self.broker.take() {
            futures_lite::future::block_on(broker.shutdown(Duration::from_secs(2)));
        }
        drop(self.stop.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Polls `condition` every few milliseconds until it holds; fails the test
/// after `timeout`. Only for state that has no event to wait on (counters).
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A binary payload that is not UTF-8: NUL bytes, 0xFF, a lone continuation
/// byte and a truncated sequence.
pub fn binary_payload() -> Vec<u8> {
    let mut payload = vec![
        0x00, 0xFF, 0xFE, 0x80, 0xC3, 0x28, 0x00, b'm', b'q', b't', b't', 0xE2, 0x82,
    ];
    payload.extend((0..=255u8).rev());
    payload.push(0x00);
    payload
}

mod mosquitto;
mod process;
mod raw;
mod rumqttc_client;
pub mod wire;

#[allow(unused_imports)]
pub use mosquitto::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use rumqttc_client::*;
